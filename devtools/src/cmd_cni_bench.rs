//! `merbridge-dev cni-bench`: how long `merbridge cni` ADD takes, over N calls each, for a
//! meshed pod (API GET + map writes), a pod the API says is not meshed (one GET), and a pod
//! of an excluded namespace (nothing), both in-process (the plugin's own work) and as the
//! runtime runs it (a process per call, the `merbridge` binary as `merbridge-cni`).
//! Budgets (issue 13): meshed ADD ≤ 20 ms, non-meshed ≤ 2 ms.
//!
//! Everything is private: a cgroup with the data path attached, a bpffs, one network
//! namespace as the sandbox, a loopback HTTP responder standing in for the API server, and a
//! temp dir for kubeconfig and records; all removed at the end.

use crate::bench::stats::{mean, quantile};
use clap::Args;
use mb_agent::cni::{run_plugin, Env};
use mb_agent::mesh::Mesh;
use mb_agent::pods::PodMaps;
use mb_loader::datapath::{load_datapath, unload_datapath, LoadOptions};
use mb_sys::bpffs::PrivateBpffs;
use mb_sys::cgroup::OwnedCgroup;
use mb_sys::netns::NamedNetns;
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct CniBenchArgs {
    /// Calls per case.
    #[arg(long, default_value_t = 1000)]
    pub calls: usize,
    /// Skip the process-per-call cases (in-process only).
    #[arg(long)]
    pub no_exec: bool,
    /// Pods already in the maps (each with Istio's default rules) before measuring: ADD opens
    /// the maps afresh every call, so its cost grows with what they hold.
    #[arg(long, default_value_t = 0)]
    pub prefill: u32,
}

/// Answers `GET <path>` with a fixed body per path (the pod objects), `Connection: close`.
fn serve_api(pods: HashMap<String, String>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let pods = Arc::new(pods);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let pods = Arc::clone(&pods);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = first.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = match pods.get(path) {
                    Some(b) => ("200 OK", b.as_str()),
                    None => ("404 Not Found", r#"{"kind":"Status","code":404}"#),
                };
                let _ = (&stream).write_all(
                    format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    Ok(addr)
}

struct Unload(PathBuf, PathBuf);
impl Drop for Unload {
    fn drop(&mut self) {
        let _ = unload_datapath(&self.0, Some(&self.1));
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env(command: &str, netns: &Path, pod: &str, namespace: &str) -> Env {
    Env {
        command: Some(command.into()),
        container_id: Some(format!("bench-{pod}")),
        netns: Some(netns.display().to_string()),
        ifname: Some("eth0".into()),
        args: Some(format!(
            "K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod}"
        )),
    }
}

fn exec(binary: &Path, e: &Env, stdin: &[u8]) -> Result<(), String> {
    let mut child = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", e.command.as_deref().unwrap_or(""))
        .env("CNI_CONTAINERID", e.container_id.as_deref().unwrap_or(""))
        .env("CNI_NETNS", e.netns.as_deref().unwrap_or(""))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", e.args.as_deref().unwrap_or(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("{}: {err}", binary.display()))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(stdin)
        .map_err(|err| err.to_string())?;
    let out = child.wait_with_output().map_err(|err| err.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn line(name: &str, samples: &mut [u64], budget_us: u64) -> bool {
    samples.sort_unstable();
    let p50 = quantile(samples, 0.5);
    let p99 = quantile(samples, 0.99);
    let max = samples.last().copied().unwrap_or(0);
    let ok = p99 <= budget_us;
    println!(
        "{name:<44} {:>6} calls  p50 {:>8.3} ms  p99 {:>8.3} ms  mean {:>8.3} ms  max {:>8.3} ms  budget {} ms: {}",
        samples.len(),
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        mean(samples) / 1000.0,
        max as f64 / 1000.0,
        budget_us / 1000,
        if ok { "ok (p99)" } else { "OVER (p99)" }
    );
    ok
}

pub fn run(args: CniBenchArgs) -> Result<ExitCode, String> {
    if !mb_sys::testing::is_root() {
        return Err("cni-bench needs root (it loads the data path into a private cgroup)".into());
    }
    let cgroup = OwnedCgroup::create_private("mb-cnibench").map_err(|e| e.to_string())?;
    let bpffs = PrivateBpffs::new("mb-cnibench").map_err(|e| e.to_string())?;
    let pin_dir = bpffs.path().join("merbridge");
    let istio = Mesh::Istio
        .defaults()
        .constants(mb_maps::datapath::SPLICE_SIDECARS);
    load_datapath(&LoadOptions::for_mesh(cgroup.path(), &pin_dir, istio))
        .map_err(|e| format!("load the data path: {e}"))?;
    let _unload = Unload(pin_dir.clone(), cgroup.path().to_path_buf());
    let netns = NamedNetns::create(&format!("mb-{}-cnibench", std::process::id()))
        .map_err(|e| e.to_string())?;
    let dir = TempDir(std::env::temp_dir().join(format!("mb-cnibench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| e.to_string())?;

    let meshed = json!({"kind":"Pod","apiVersion":"v1",
        "metadata":{"name":"meshed","namespace":"default","uid":"uid-meshed",
            "annotations":{"sidecar.istio.io/status":"{\"initContainers\":[\"istio-validation\"],\"containers\":[\"istio-proxy\"]}"}},
        "spec":{"containers":[{"name":"app","image":"app"},
            {"name":"istio-proxy","image":"proxyv2","args":["proxy","sidecar"]}]}});
    let plain = json!({"kind":"Pod","apiVersion":"v1",
        "metadata":{"name":"plain","namespace":"default","uid":"uid-plain"},
        "spec":{"containers":[{"name":"app","image":"app"}]}});
    let api = serve_api(HashMap::from([
        (
            "/api/v1/namespaces/default/pods/meshed".to_string(),
            meshed.to_string(),
        ),
        (
            "/api/v1/namespaces/default/pods/plain".to_string(),
            plain.to_string(),
        ),
    ]))
    .map_err(|e| format!("API responder: {e}"))?;
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{api}\n\
             users:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n\
             current-context: x\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let conf = json!({"cniVersion":"1.0.0","name":"bench","type":"merbridge-cni","mesh":"istio",
        "pinDir": pin_dir, "stateDir": dir.0.join("state"), "kubeconfig": kubeconfig,
        "prevResult": {"cniVersion":"1.0.0",
            "interfaces":[{"name":"eth0","sandbox": netns.path()}],
            "ips":[{"address":"10.99.0.5/24","interface":0}]}})
    .to_string();
    let stdin = conf.as_bytes();

    let maps = PodMaps::open(&pin_dir)?;
    for i in 0..args.prefill {
        let pod = mb_agent::pods::LocalPod {
            ips: vec![std::net::IpAddr::from([
                100,
                64 + (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            ])],
            netns_cookie: 0xfeed_0000_0000_0000 | u64::from(i),
            policy: mb_agent::mesh::PodPolicy::defaults(mb_agent::mesh::Mesh::Istio),
            dns_capture: false,
        };
        maps.upsert(&pod)?;
    }
    let n = args.calls;
    println!(
        "merbridge cni ADD, {n} calls per case, {} pods already in the maps (kernel {}, a shared \
         machine: figures are noisy)",
        args.prefill,
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let time = |f: &mut dyn FnMut() -> Result<(), String>| -> Result<Vec<u64>, String> {
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            f()?;
            samples.push(started.elapsed().as_micros() as u64);
        }
        Ok(samples)
    };
    let check = |outcome: mb_agent::cni::Outcome| -> Result<(), String> {
        if outcome.exit_code == 0 {
            Ok(())
        } else {
            Err(outcome.stdout)
        }
    };
    let (add_m, del_m) = (
        env("ADD", netns.path(), "meshed", "default"),
        env("DEL", netns.path(), "meshed", "default"),
    );
    let add_p = env("ADD", netns.path(), "plain", "default");
    let add_x = env("ADD", netns.path(), "skipped", "kube-system");
    let mut all_ok = true;
    let mut meshed_samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        check(run_plugin(&add_m, stdin))?;
        meshed_samples.push(started.elapsed().as_micros() as u64);
        check(run_plugin(&del_m, stdin))?;
    }
    all_ok &= line(
        "in-process, meshed pod (GET + maps)",
        &mut meshed_samples,
        20_000,
    );
    let mut s = time(&mut || check(run_plugin(&add_p, stdin)))?;
    all_ok &= line("in-process, not meshed (one GET)", &mut s, 2_000);
    let mut s = time(&mut || check(run_plugin(&add_x, stdin)))?;
    all_ok &= line("in-process, excluded namespace (no GET)", &mut s, 2_000);
    if !args.no_exec {
        let binary = dir.0.join("merbridge-cni");
        let merbridge = mb_testbed::merbridge::merbridge_binary().map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&merbridge, &binary).map_err(|e| e.to_string())?;
        let mut meshed_samples = Vec::with_capacity(n);
        for _ in 0..n {
            let started = Instant::now();
            exec(&binary, &add_m, stdin)?;
            meshed_samples.push(started.elapsed().as_micros() as u64);
            exec(&binary, &del_m, stdin)?;
        }
        all_ok &= line("process per call, meshed pod", &mut meshed_samples, 20_000);
        let mut s = time(&mut || exec(&binary, &add_p, stdin))?;
        all_ok &= line("process per call, not meshed", &mut s, 2_000);
        let mut s = time(&mut || exec(&binary, &add_x, stdin))?;
        all_ok &= line("process per call, excluded namespace", &mut s, 2_000);
        println!(
            "(process cases: fork+exec of {} included)",
            merbridge.display()
        );
    }
    let left = PodMaps::open(&pin_dir)?.pods()?.len();
    if left != args.prefill as usize {
        return Err(format!(
            "{left} pods in the maps after the bench, {} expected",
            args.prefill
        ));
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
