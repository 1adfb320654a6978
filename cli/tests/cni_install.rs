//! `merbridge cni install|uninstall` against a temporary CNI config dir: insert after the
//! primary plugin, no-op on a second run, re-insert after the primary plugin rewrites its
//! config, convert a single-plugin `.conf`, remove on uninstall, and the `--watch-secs` loop
//! (re-insert, then remove on SIGTERM). Plain files: no root needed.

#[path = "../../agent/tests/k8s_support/mod.rs"]
mod k8s_support;

use k8s_support::TempDir;
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn merbridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_merbridge"))
        .args(args)
        .output()
        .expect("run merbridge")
}

fn read(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} invalid JSON ({e}):\n{text}", path.display()))
}

fn types(conf: &Value) -> Vec<String> {
    conf["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_owned())
        .collect()
}

fn primary(version: u32) -> Value {
    json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "bridge", "bridge": "cni0", "mtu": 1400 + version,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]})
}

fn install_args<'a>(conf: &'a str, bin: &'a str) -> Vec<&'a str> {
    vec![
        "cni",
        "install",
        "--conf-dir",
        conf,
        "--bin-dir",
        bin,
        "--mesh",
        "linkerd",
        "--kubeconfig",
        "/etc/cni/net.d/merbridge-cni.kubeconfig",
    ]
}

#[test]
fn install_inserts_once_reinserts_and_uninstall_removes() {
    let dir = TempDir::new("cni-install");
    let conf_dir = dir.0.join("net.d");
    let bin_dir = dir.0.join("bin");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&bin_dir).unwrap();
    let (conf, bin) = (conf_dir.to_str().unwrap(), bin_dir.to_str().unwrap());

    // No config yet: a clear error, nothing written.
    let out = merbridge(&install_args(conf, bin));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no CNI config"),
        "{out:?}"
    );

    let list = conf_dir.join("10-k8s.conflist");
    std::fs::write(&list, serde_json::to_string_pretty(&primary(0)).unwrap()).unwrap();
    // A later file the runtime does not use stays untouched.
    let other = conf_dir.join("99-other.conflist");
    std::fs::write(&other, serde_json::to_string(&primary(9)).unwrap()).unwrap();

    let out = merbridge(&install_args(conf, bin));
    assert!(out.status.success(), "{out:?}");
    let installed = read(&list);
    assert_eq!(types(&installed), ["bridge", "portmap", "merbridge-cni"]);
    let ours = &installed["plugins"][2];
    assert_eq!(ours["mesh"], "linkerd");
    assert_eq!(ours["pinDir"], "/sys/fs/bpf/merbridge");
    assert_eq!(
        ours["kubeconfig"],
        "/etc/cni/net.d/merbridge-cni.kubeconfig"
    );
    assert_eq!(
        installed["plugins"][0],
        primary(0)["plugins"][0],
        "primary kept as it was"
    );
    assert_eq!(types(&read(&other)), ["bridge", "portmap"]);
    let binary = bin_dir.join("merbridge-cni");
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_merbridge")).unwrap()
    );
    assert_eq!(std::fs::metadata(&binary).unwrap().mode() & 0o777, 0o755);
    // The copy is the plugin (argv[0]).
    let version = Command::new(&binary)
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("supportedVersions"),
        "{version:?}"
    );

    // Second install: a no-op (same inode, same bytes, no temp files left).
    let before = (
        std::fs::metadata(&list).unwrap().ino(),
        std::fs::read(&list).unwrap(),
    );
    let out = merbridge(&install_args(conf, bin));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        (
            std::fs::metadata(&list).unwrap().ino(),
            std::fs::read(&list).unwrap()
        ),
        before
    );
    let names: Vec<_> = std::fs::read_dir(&conf_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // The primary plugin rewrites its config (new MTU, without us): re-inserted, change kept.
    std::fs::write(&list, serde_json::to_string(&primary(1)).unwrap()).unwrap();
    let out = merbridge(&install_args(conf, bin));
    assert!(out.status.success(), "{out:?}");
    let again = read(&list);
    assert_eq!(types(&again), ["bridge", "portmap", "merbridge-cni"]);
    assert_eq!(again["plugins"][0]["mtu"], 1401);

    // Uninstall: our entry goes, the rest stays valid.
    let out = merbridge(&["cni", "uninstall", "--conf-dir", conf]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&list), primary(1));
    assert!(binary.exists(), "the binary stays unless asked");
    let out = merbridge(&[
        "cni",
        "uninstall",
        "--conf-dir",
        conf,
        "--remove-binary-from",
        bin,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(!binary.exists());
}

#[test]
fn install_converts_a_single_plugin_conf_and_refuses_broken_json() {
    let dir = TempDir::new("cni-install-conf");
    let conf_dir = dir.0.join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conf = conf_dir.to_str().unwrap();
    let single = conf_dir.join("10-flannel.conf");
    std::fs::write(
        &single,
        r#"{"cniVersion":"0.4.0","name":"cbr0","type":"flannel","delegate":{"isDefaultGateway":true}}"#,
    )
    .unwrap();
    let out = merbridge(&["cni", "install", "--conf-dir", conf]);
    assert!(out.status.success(), "{out:?}");
    assert!(!single.exists(), "the .conf would sort first and win");
    let list = read(&conf_dir.join("10-flannel.conflist"));
    assert_eq!(list["cniVersion"], "0.4.0");
    assert_eq!(list["name"], "cbr0");
    assert_eq!(types(&list), ["flannel", "merbridge-cni"]);
    assert_eq!(list["plugins"][0]["delegate"]["isDefaultGateway"], true);

    let broken = conf_dir.join("05-broken.conflist");
    std::fs::write(&broken, "{\"plugins\": [").unwrap();
    let out = merbridge(&["cni", "install", "--conf-dir", conf]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("05-broken.conflist") && err.contains("not valid JSON"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&broken).unwrap(),
        "{\"plugins\": [",
        "left alone"
    );
}

#[test]
fn watch_mode_reinserts_and_removes_on_sigterm() {
    let dir = TempDir::new("cni-install-watch");
    let conf_dir = dir.0.join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let list = conf_dir.join("10-k8s.conflist");
    std::fs::write(&list, serde_json::to_string(&primary(0)).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_merbridge"))
        .args(["cni", "install", "--watch-secs", "1", "--conf-dir"])
        .arg(&conf_dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let wait = |what: &str, check: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !check() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let has_us = || {
        std::fs::read_to_string(&list)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| types(&v).last().map(String::as_str) == Some("merbridge-cni"))
    };
    wait("first insert", &has_us);
    std::fs::write(&list, serde_json::to_string(&primary(2)).unwrap()).unwrap();
    wait("re-insert after the primary rewrote its config", &has_us);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(read(&list), primary(2), "removed on SIGTERM");
}
