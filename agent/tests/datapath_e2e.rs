//! The data path against real traffic: `merbridge load` on a private node cgroup, pods added
//! with `merbridge pod add`, the reference sidecar in each pod, real TCP between real
//! processes in network namespaces. Asserts what the sidecars and the app saw and what the
//! counters say, then `merbridge unload` and checks that traffic flows directly again.

use mb_sys::bpffs::PrivateBpffs;
use mb_testbed::scenarios::{start_app, whoami, Binaries, APP_UID, WHOAMI_PORT};
use mb_testbed::sidecar::{Listener, Record};
use mb_testbed::{MeshPorts, Node, Pod, PodSpec, Sidecar, SidecarConfig};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn merbridge(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_merbridge"))
        .args(args)
        .output()
        .expect("run merbridge");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "merbridge {args:?} failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A loaded data path on a node; unloaded on drop (the private bpffs goes after it).
struct Loaded {
    pin_dir: PathBuf,
    cgroup: PathBuf,
    _bpffs: PrivateBpffs,
}

impl Loaded {
    fn new(node: &Node, extra: &[&str]) -> Loaded {
        let bpffs = PrivateBpffs::new("mb-e2e").expect("private bpffs");
        let pin_dir = bpffs.path().join("merbridge");
        let cgroup = node.cgroup_path().to_path_buf();
        let mut args = vec![
            "load",
            "--cgroup",
            cgroup.to_str().unwrap(),
            "--pin-dir",
            pin_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        merbridge(&args);
        Loaded {
            pin_dir,
            cgroup,
            _bpffs: bpffs,
        }
    }

    fn pin(&self) -> &str {
        self.pin_dir.to_str().unwrap()
    }

    fn add_pod(&self, pod: &Pod, extra: &[&str]) {
        let ips = format!("{},{}", pod.ipv4(), pod.ipv6());
        let mut args = vec![
            "pod",
            "add",
            &ips,
            "--netns",
            pod.netns_path().to_str().unwrap(),
            "--pin-dir",
            self.pin(),
        ];
        args.extend_from_slice(extra);
        merbridge(&args);
    }

    fn counter(&self, name: &str) -> u64 {
        let json = merbridge(&["status", "--json", "--pin-dir", self.pin()]);
        let key = format!("\"{name}\":");
        let at = json
            .find(&key)
            .unwrap_or_else(|| panic!("{name} not in {json}"));
        json[at + key.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn unload(&self) {
        merbridge(&[
            "unload",
            "--pin-dir",
            self.pin(),
            "--cgroup",
            self.cgroup.to_str().unwrap(),
        ]);
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            let _ = Command::new(env!("CARGO_BIN_EXE_merbridge"))
                .args(["unload", "--pin-dir"])
                .arg(&self.pin_dir)
                .arg("--cgroup")
                .arg(&self.cgroup)
                .output();
        }
    }
}

fn sidecar(bins: &Binaries, pod: &Pod) -> Sidecar {
    Sidecar::start_binary(
        &bins.sidecar,
        pod,
        SidecarConfig::for_mesh(&MeshPorts::istio()),
        1337,
    )
    .expect("sidecar")
}

fn one(records: Vec<Record>, listener: Listener, what: &str) -> Record {
    let matching: Vec<Record> = records
        .iter()
        .filter(|r| r.listener == listener)
        .cloned()
        .collect();
    assert_eq!(matching.len(), 1, "{what}: {records:#?}");
    assert_eq!(matching[0].error, None, "{what}: {:#?}", matching[0]);
    matching[0].clone()
}

fn app_to_service(v6: bool) {
    let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
    let node = Node::new("e2e").expect("node");
    let loaded = Loaded::new(&node, &["--mesh", "istio", "--ipv6"]);
    let client = node.add_pod(PodSpec::named("client")).expect("pod");
    let server = node.add_pod(PodSpec::named("server")).expect("pod");
    loaded.add_pod(&client, &[]);
    loaded.add_pod(&server, &[]);
    let client_sidecar = sidecar(&bins, &client);
    let server_sidecar = sidecar(&bins, &server);
    let _app = start_app(&server, &bins).expect("app");

    let server_ip: IpAddr = if v6 {
        server.ipv6().into()
    } else {
        server.ipv4().into()
    };
    let client_ip: IpAddr = if v6 {
        client.ipv6().into()
    } else {
        client.ipv4().into()
    };
    let target = SocketAddr::new(server_ip, WHOAMI_PORT);
    let (peer, local) = whoami(&client, &bins, APP_UID, target, None);
    assert_eq!(local, target);
    let passthrough: IpAddr = if v6 {
        "::6".parse().unwrap()
    } else {
        "127.0.0.6".parse().unwrap()
    };
    assert_eq!(
        peer.ip(),
        passthrough,
        "the app sees the sidecar's passthrough source"
    );

    let out = one(
        client_sidecar.wait_for_records(1, Duration::from_secs(5)),
        Listener::Outbound,
        "client sidecar",
    );
    assert_eq!(
        out.original_dst,
        Some(target),
        "outbound original destination"
    );
    let inbound = one(
        server_sidecar.wait_for_records(1, Duration::from_secs(5)),
        Listener::Inbound,
        "server sidecar",
    );
    assert_eq!(
        inbound.original_dst,
        Some(target),
        "inbound original destination"
    );
    assert_eq!(
        inbound.peer.ip(),
        client_ip,
        "the server sidecar sees the client pod"
    );
    assert_eq!(
        inbound.upstream_local.map(|a| a.ip()),
        Some(passthrough),
        "passthrough source"
    );

    assert_eq!(loaded.counter("redirected_outbound"), 1);
    assert_eq!(loaded.counter("redirected_inbound"), 1);
    assert!(loaded.counter("orig_dst_answers") >= 2);
    // app<->sidecar, sidecar<->sidecar, sidecar<->app: six sockets.
    assert_eq!(loaded.counter("sockhash_inserts"), 6);
    assert!(loaded.counter("spliced_bytes") > 0);
    assert_eq!(
        server.conntrack_count().unwrap(),
        0,
        "no conntrack without iptables"
    );

    // After unload the same connect goes straight to the app.
    loaded.unload();
    let (peer, _) = whoami(&client, &bins, APP_UID, target, None);
    assert_eq!(
        peer.ip(),
        client_ip,
        "after unload the app sees the client directly"
    );
    assert!(!Path::new(loaded.pin()).exists(), "unload removed the pins");
}

#[test]
fn app_to_service_through_both_sidecars_ipv4() {
    if !mb_sys::testing::kernel_tests_enabled("app_to_service_through_both_sidecars_ipv4") {
        return;
    }
    app_to_service(false);
}

#[test]
fn app_to_service_through_both_sidecars_ipv6() {
    if !mb_sys::testing::kernel_tests_enabled("app_to_service_through_both_sidecars_ipv6") {
        return;
    }
    app_to_service(true);
}
