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

    /// Entries in one of the data path's maps, from `status --json`.
    fn map_entries(&self, name: &str) -> u64 {
        let json = merbridge(&["status", "--json", "--pin-dir", self.pin()]);
        let key = format!("{{\"name\":\"{name}\",\"entries\":");
        let at = json
            .find(&key)
            .unwrap_or_else(|| panic!("map {name} not in {json}"));
        json[at + key.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("map {name} has no entry count in {json}"))
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
    Sidecar::start_istio(&bins.sidecar, pod).expect("sidecar")
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
    // By default only the sidecar-to-sidecar connection is spliced: its two sockets.
    assert_eq!(loaded.counter("sockhash_inserts"), 2);
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

/// A node with merbridge loaded and meshed pods, each running the app (who-am-I on 9080, 9091,
/// 9092; echo on 8080; bulk on 8081) and, when meshed, the reference sidecar.
/// Fields drop in order: processes, pods, the data path, the node.
struct Cluster {
    sidecars: Vec<Option<Sidecar>>,
    _apps: Vec<mb_testbed::Spawned>,
    pods: Vec<Pod>,
    loaded: Loaded,
    node: Node,
    bins: Binaries,
    mesh: MeshPorts,
}

impl Cluster {
    fn new(name: &str, mesh: (&str, MeshPorts), load_args: &[&str]) -> Cluster {
        let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
        let node = Node::new(name).expect("node");
        let mut args = vec!["--mesh", mesh.0, "--ipv6"];
        args.extend_from_slice(load_args);
        let loaded = Loaded::new(&node, &args);
        Cluster {
            sidecars: Vec::new(),
            _apps: Vec::new(),
            pods: Vec::new(),
            loaded,
            node,
            bins,
            mesh: mesh.1,
        }
    }

    /// Adds a pod with its app; `policy` = `pod add` flags, `None` = not meshed.
    fn pod(&mut self, name: &str, policy: Option<&[&str]>) -> usize {
        let pod = self.node.add_pod(PodSpec::named(name)).expect("pod");
        let sidecar = policy.map(|flags| {
            self.loaded.add_pod(&pod, flags);
            Sidecar::start_binary(
                &self.bins.sidecar,
                &pod,
                SidecarConfig::for_mesh(&self.mesh),
                self.mesh.proxy_uid,
            )
            .expect("sidecar")
        });
        self._apps.push(start_app(&pod, &self.bins).expect("app"));
        self.sidecars.push(sidecar);
        self.pods.push(pod);
        self.pods.len() - 1
    }

    fn ip(&self, pod: usize, v6: bool) -> IpAddr {
        if v6 {
            self.pods[pod].ipv6().into()
        } else {
            self.pods[pod].ipv4().into()
        }
    }

    /// Streams `bytes` from `from`'s app to `to`'s bulk sink (the client checks count and
    /// checksum) and asserts it arrived; on failure says what both sidecars saw (their
    /// records carry the errno of the hop that broke). `event_driven`: the client waits on an
    /// early EAGAIN (`mb-workload --wait-on-eagain`).
    fn bulk(&self, from: usize, to: usize, bytes: u64, event_driven: bool, what: &str) {
        let mut args = Vec::new();
        if event_driven {
            args.push("--wait-on-eagain".to_owned());
        }
        args.push("bulk".into());
        args.push(format!("--to={}:8081", self.ip(to, false)));
        args.push(format!("--bytes={bytes}"));
        let line = mb_testbed::scenarios::run_client(&self.pods[from], &self.bins, APP_UID, &args)
            .unwrap_or_else(|e| {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{what}: {e}\nclient sidecar: {:#?}\nserver sidecar: {:#?}",
                    self.records(from),
                    self.records(to)
                )
            });
        assert!(line.contains(&format!("bytes={bytes}")), "{what}: {line}");
    }

    fn records(&self, pod: usize) -> Vec<Record> {
        self.sidecars[pod]
            .as_ref()
            .map_or_else(Vec::new, |s| s.records())
    }

    /// who-am-I from `from` to `to`:`port`; returns what the app saw as the peer, and how
    /// many records each sidecar gained.
    fn call(&self, from: usize, to: usize, port: u16, v6: bool) -> (IpAddr, usize, usize) {
        let before = (self.records(from).len(), self.records(to).len());
        let target = SocketAddr::new(self.ip(to, v6), port);
        let (peer, local) = whoami(&self.pods[from], &self.bins, APP_UID, target, None);
        assert_eq!(local, target, "the app saw another destination");
        // Records are written when a relay ends; give the sidecars a moment.
        std::thread::sleep(Duration::from_millis(50));
        (
            peer.ip(),
            self.records(from).len() - before.0,
            self.records(to).len() - before.1,
        )
    }
}

fn passthrough(v6: bool) -> IpAddr {
    if v6 {
        "::6".parse().unwrap()
    } else {
        "127.0.0.6".parse().unwrap()
    }
}

fn policy_fields(v6: bool) {
    let mut c = Cluster::new("pol", ("istio", MeshPorts::istio()), &[]);
    let client = c.pod("client", Some(&[]));
    let server = c.pod("server", Some(&[]));
    let client_ip = c.ip(client, v6);
    let server_ip = c.ip(server, v6);
    let pt = passthrough(v6);
    let intercepted = (pt, 1, 1);
    // Kept from the client's sidecar by its outbound policy, the call still enters the
    // server pod through its sidecar (as Istio's inbound rules would have it).
    let around_sidecar = (pt, 0, 1);

    assert_eq!(
        c.call(client, server, 9092, v6),
        intercepted,
        "defaults intercept"
    );

    let repolicy = |c: &Cluster, pod: usize, flags: &[&str]| c.loaded.add_pod(&c.pods[pod], flags);
    repolicy(&c, client, &["--exclude-outbound-ports", "9090-9099"]);
    assert_eq!(
        c.call(client, server, 9092, v6),
        around_sidecar,
        "excluded port range"
    );
    assert_eq!(
        c.call(client, server, 9080, v6).0,
        pt,
        "a port outside the range"
    );

    repolicy(&c, client, &["--include-outbound-ip-ranges", ""]);
    assert_eq!(
        c.call(client, server, 9092, v6),
        around_sidecar,
        "empty include list = nothing"
    );

    // Host bits set in the prefix are masked, as Istio does.
    let (wide, narrow) = if v6 {
        (format!("{server_ip}/64"), format!("{server_ip}/128"))
    } else {
        (format!("{server_ip}/16"), format!("{server_ip}/32"))
    };
    repolicy(&c, client, &["--include-outbound-ip-ranges", &wide]);
    assert_eq!(
        c.call(client, server, 9092, v6),
        intercepted,
        "included prefix"
    );
    repolicy(
        &c,
        client,
        &[
            "--include-outbound-ip-ranges",
            "*",
            "--exclude-outbound-ip-ranges",
            &narrow,
        ],
    );
    assert_eq!(
        c.call(client, server, 9092, v6),
        around_sidecar,
        "excluded prefix"
    );
    repolicy(
        &c,
        client,
        &[
            "--include-outbound-ip-ranges",
            "",
            "--include-outbound-ports",
            "9092",
        ],
    );
    assert_eq!(
        c.call(client, server, 9092, v6),
        intercepted,
        "included port wins"
    );
    assert_eq!(
        c.call(client, server, 9091, v6),
        around_sidecar,
        "other ports stay out"
    );
    repolicy(&c, client, &[]);

    // Inbound: the client's sidecar still takes the call, but the server pod's policy keeps
    // its own sidecar out: the app sees the client pod's sidecar connecting from the pod IP.
    repolicy(&c, server, &["--exclude-inbound-ports", "9091"]);
    assert_eq!(
        c.call(client, server, 9091, v6),
        (client_ip, 1, 0),
        "excluded inbound"
    );
    assert_eq!(c.call(client, server, 9080, v6), intercepted);
    repolicy(&c, server, &["--include-inbound-ports", "9080"]);
    assert_eq!(
        c.call(client, server, 9092, v6),
        (client_ip, 1, 0),
        "not an included port"
    );
    assert_eq!(
        c.call(client, server, 9080, v6),
        intercepted,
        "included inbound port"
    );
    // The mesh's own ports are never redirected inbound (15020 is Istio's status port).
    let list = merbridge(&["pod", "list", "--pin-dir", c.loaded.pin()]);
    assert_eq!(list.lines().count(), 3, "{list}");
}

#[test]
fn policy_fields_are_honoured_ipv4() {
    if !mb_sys::testing::kernel_tests_enabled("policy_fields_are_honoured_ipv4") {
        return;
    }
    policy_fields(false);
}

#[test]
fn policy_fields_are_honoured_ipv6() {
    if !mb_sys::testing::kernel_tests_enabled("policy_fields_are_honoured_ipv6") {
        return;
    }
    policy_fields(true);
}

#[test]
fn loopback_untouched_and_pods_without_sidecar_enter_through_the_sidecar() {
    if !mb_sys::testing::kernel_tests_enabled("loopback_and_pods_without_sidecar_are_untouched") {
        return;
    }
    let mut c = Cluster::new("untouched", ("istio", MeshPorts::istio()), &[]);
    let meshed = c.pod("meshed", Some(&[]));
    let plain = c.pod("plain", None);
    let to_self = SocketAddr::new("127.0.0.1".parse().unwrap(), WHOAMI_PORT);
    let (peer, _) = whoami(&c.pods[meshed], &c.bins, APP_UID, to_self, None);
    assert_eq!(peer.ip(), to_self.ip(), "loopback stays loopback");
    let to_self6 = SocketAddr::new("::1".parse().unwrap(), WHOAMI_PORT);
    let (peer, _) = whoami(&c.pods[meshed], &c.bins, APP_UID, to_self6, None);
    assert_eq!(peer.ip(), to_self6.ip());
    assert!(c.records(meshed).is_empty(), "{:#?}", c.records(meshed));
    // A pod without a sidecar is called directly; its calls to a meshed pod enter through
    // that pod's sidecar (no bypass of the server's policy from the same node).
    assert_eq!(
        c.call(plain, meshed, 9080, false),
        (passthrough(false), 0, 1)
    );
    let (peer, out, _) = c.call(meshed, plain, 9080, false);
    assert_eq!(
        (peer, out),
        (c.ip(meshed, false), 1),
        "outbound still goes via the sidecar"
    );
    assert_eq!(c.loaded.counter("redirected_inbound"), 1);
}

#[test]
fn dns_queries_reach_the_dns_proxy_and_replies_show_the_server() {
    if !mb_sys::testing::kernel_tests_enabled("dns_queries_reach_the_dns_proxy") {
        return;
    }
    let mut c = Cluster::new("dns", ("istio", MeshPorts::istio()), &["--dns-capture"]);
    let client = c.pod("client", Some(&["--dns-capture"]));
    let server = c.pod("server", None);
    // The sidecar's DNS proxy, as the proxy UID, answers 10.0.0.99; the "cluster DNS" in
    // another pod answers 10.0.0.1.
    let mut proxy_cmd = Command::new(&c.bins.workload);
    proxy_cmd.args(["serve", "--dns", "15053", "--dns-answer", "10.0.0.99"]);
    proxy_cmd.stdout(std::process::Stdio::null());
    let _proxy = c.pods[client].spawn(proxy_cmd, 1337).expect("dns proxy");
    let mut dns_cmd = Command::new(&c.bins.workload);
    dns_cmd.args(["serve", "--dns", "53", "--dns-answer", "10.0.0.1"]);
    dns_cmd.stdout(std::process::Stdio::null());
    let _dns = c.pods[server].spawn(dns_cmd, 0).expect("dns server");
    std::thread::sleep(Duration::from_millis(200));
    for v6 in [false, true] {
        let dns = SocketAddr::new(c.ip(server, v6), 53);
        let out = mb_testbed::scenarios::run_client(
            &c.pods[client],
            &c.bins,
            APP_UID,
            &["dns".into(), format!("--to={dns}")],
        )
        .expect("dns query");
        let m = mb_testbed::workload::parse_kv(&out);
        assert_eq!(
            m.get("answer").map(String::as_str),
            Some("10.0.0.99"),
            "{out}"
        );
        let from: SocketAddr = m["from"].parse().expect("from");
        assert_eq!(
            mb_testbed::workload::canonical(from),
            dns,
            "the reply shows the server: {out}"
        );
    }
    // Two queries; a slow machine (TCG guests) may retry one, never fewer.
    let (redirects, restores) = (
        c.loaded.counter("dns_redirects"),
        c.loaded.counter("dns_restores"),
    );
    assert!(
        redirects >= 2 && restores >= 2,
        "{redirects} redirected, {restores} restored"
    );
    // The proxy's own queries go out unchanged.
    let dns = SocketAddr::new(c.ip(server, false), 53);
    let out = mb_testbed::scenarios::run_client(
        &c.pods[client],
        &c.bins,
        1337,
        &["dns".into(), format!("--to={dns}")],
    )
    .expect("dns query as the proxy");
    assert!(out.contains("answer=10.0.0.1"), "{out}");
}

#[test]
fn linkerd_kuma_and_osm_constants() {
    if !mb_sys::testing::kernel_tests_enabled("linkerd_kuma_and_osm_constants") {
        return;
    }
    for (name, ports) in [
        ("linkerd", MeshPorts::linkerd()),
        ("kuma", MeshPorts::kuma()),
        ("osm", MeshPorts::osm()),
    ] {
        let mut c = Cluster::new(name, (name, ports.clone()), &[]);
        let mesh_flag: &[&str] = &["--mesh", name];
        let client = c.pod("client", Some(mesh_flag));
        let server = c.pod("server", Some(mesh_flag));
        for v6 in [false, true] {
            assert_eq!(
                c.call(client, server, 9080, v6),
                (passthrough(v6), 1, 1),
                "{name} v6={v6}"
            );
        }
        let inbound = c.records(server);
        assert!(
            inbound.iter().all(|r| r.local.port() == ports.inbound_port),
            "{name}: {inbound:#?}"
        );
    }
}

#[test]
fn unload_leaves_nothing_attached_and_reload_swaps_in_place() {
    if !mb_sys::testing::kernel_tests_enabled("unload_leaves_nothing_attached") {
        return;
    }
    use mb_loader::attach::query_cgroup;
    use mb_maps::datapath::Hook;
    let c = Cluster::new("unload", ("istio", MeshPorts::istio()), &[]);
    let attached = |c: &Cluster| -> Vec<String> {
        Hook::ALL
            .iter()
            .filter(|h| h.attaches_to_cgroup())
            .flat_map(|h| query_cgroup(&c.loaded.cgroup, h.attach_type(), false).unwrap())
            .map(|p| p.name)
            .collect()
    };
    let before = attached(&c);
    for name in ["mb_connect4", "mb_connect6", "mb_sockops", "mb_getsockopt"] {
        assert!(
            before.iter().any(|n| n == name),
            "{name} not attached: {before:?}"
        );
    }
    // A second load swaps every program in place: same number attached, new program ids.
    let status = merbridge(&["status", "--json", "--pin-dir", c.loaded.pin()]);
    let out = merbridge(&[
        "load",
        "--mesh",
        "istio",
        "--ipv6",
        "--cgroup",
        c.loaded.cgroup.to_str().unwrap(),
        "--pin-dir",
        c.loaded.pin(),
    ]);
    assert!(out.contains("(replaced)"), "{out}");
    assert_eq!(attached(&c).len(), before.len(), "no duplicate attachments");
    assert_ne!(
        status,
        merbridge(&["status", "--json", "--pin-dir", c.loaded.pin()])
    );
    c.loaded.unload();
    assert!(
        attached(&c).is_empty(),
        "still attached: {:?}",
        attached(&c)
    );
}

#[test]
fn connections_opened_before_load_keep_working() {
    if !mb_sys::testing::kernel_tests_enabled("connections_opened_before_load_keep_working") {
        return;
    }
    let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
    let node = Node::new("before").expect("node");
    let client = node.add_pod(PodSpec::named("client")).expect("pod");
    let server = node.add_pod(PodSpec::named("server")).expect("pod");
    let _app = start_app(&server, &bins).expect("app");
    let _client_sidecar = sidecar(&bins, &client);
    let _server_sidecar = sidecar(&bins, &server);
    // A long request/response run on one connection, opened before anything is loaded.
    let mut rr = Command::new(&bins.workload);
    rr.args([
        "rr",
        &format!(
            "--to={}:{}",
            server.ipv4(),
            mb_testbed::scenarios::ECHO_PORT
        ),
        "--count=60000",
        "--warmup=0",
    ])
    .stdout(std::process::Stdio::piped());
    let running = client.spawn(rr, APP_UID).expect("rr client");
    std::thread::sleep(Duration::from_millis(300));
    let loaded = Loaded::new(&node, &["--mesh", "istio"]);
    loaded.add_pod(&client, &[]);
    loaded.add_pod(&server, &[]);
    let out = running
        .finish(Duration::from_secs(60))
        .expect("the old connection kept working");
    assert!(out.contains("count=60000"), "{out}");
    // New connections are intercepted.
    let target = SocketAddr::new(server.ipv4().into(), WHOAMI_PORT);
    let (peer, _) = whoami(&client, &bins, APP_UID, target, None);
    assert_eq!(peer.ip(), passthrough(false));
}

/// Blocking clients through two spliced legs: 100 MB with a checksum, then 5,000 round
/// trips; neither sees an error (no spurious EAGAIN on blocking sockets), and the counters
/// show the bytes moved socket to socket.
#[test]
fn spliced_bulk_and_rr_arrive_intact_on_blocking_sockets() {
    if !mb_sys::testing::kernel_tests_enabled("spliced_bulk_and_rr_arrive_intact") {
        return;
    }
    let mut c = Cluster::new("splice", ("istio", MeshPorts::istio()), &[]);
    let client = c.pod("client", Some(&[]));
    let server = c.pod("server", Some(&[]));
    let bytes: u64 = 100 * 1024 * 1024 + 7;
    c.bulk(
        client,
        server,
        bytes,
        false,
        "bulk through the sidecars (the client checks the checksum)",
    );
    let line = mb_testbed::scenarios::run_client(
        &c.pods[client],
        &c.bins,
        APP_UID,
        &[
            "rr".into(),
            format!("--to=[{}]:8080", c.ip(server, true)),
            "--count=5000".into(),
            "--warmup=0".into(),
        ],
    )
    .expect("rr through the sidecars");
    assert!(line.contains("count=5000"), "{line}");
    // The sidecar-to-sidecar leg moved every byte socket to socket.
    let spliced = c.loaded.counter("spliced_bytes");
    assert!(spliced >= bytes, "spliced {spliced} bytes of {bytes}");
    for pod in [client, server] {
        let records = c.records(pod);
        assert!(records.iter().all(|r| r.error.is_none()), "{records:#?}");
    }
}

/// `--splice all` puts the applications' sockets in the sockhash too. Clients that wait for
/// readiness on EAGAIN (as event-driven apps do; the kernel's tcp_bpf_recvmsg answers a
/// blocking read woken without data with EAGAIN, e.g. by send-buffer space freed while the
/// client waits for the reply to its upload) get every byte intact, all three legs spliced.
#[test]
fn splice_all_carries_bulk_and_rr_intact_for_event_driven_clients() {
    if !mb_sys::testing::kernel_tests_enabled("splice_all_carries_bulk_and_rr_intact") {
        return;
    }
    let mut c = Cluster::new(
        "splall",
        ("istio", MeshPorts::istio()),
        &["--splice", "all"],
    );
    let client = c.pod("client", Some(&[]));
    let server = c.pod("server", Some(&[]));
    let bytes: u64 = 32 * 1024 * 1024 + 5;
    for round in 0..3 {
        c.bulk(
            client,
            server,
            bytes,
            true,
            &format!("bulk round {round} with every leg spliced"),
        );
    }
    let line = mb_testbed::scenarios::run_client(
        &c.pods[client],
        &c.bins,
        APP_UID,
        &[
            "--wait-on-eagain".into(),
            "rr".into(),
            format!("--to=[{}]:8080", c.ip(server, true)),
            "--count=3000".into(),
            "--warmup=0".into(),
        ],
    )
    .expect("rr with every leg spliced");
    assert!(line.contains("count=3000"), "{line}");
    // App -> sidecar, sidecar -> sidecar and sidecar -> app all moved the uploads.
    let spliced = c.loaded.counter("spliced_bytes");
    assert!(
        spliced >= 9 * bytes,
        "spliced {spliced} bytes of 3 x 3 x {bytes}"
    );
    for pod in [client, server] {
        let records = c.records(pod);
        assert!(records.iter().all(|r| r.error.is_none()), "{records:#?}");
    }
}

/// `pod add --splice-app` (annotation `merbridge.io/splice-app: "true"`): under the default
/// `--splice sidecars`, an opted-in pod's application legs join the sidecar-to-sidecar
/// splice — its outbound leg (app -> own sidecar) and its inbound passthrough leg (sidecar ->
/// app) — and no other pod's.
#[test]
fn pods_can_opt_in_to_splicing_their_application_legs() {
    if !mb_sys::testing::kernel_tests_enabled("pods_can_opt_in_to_splicing") {
        return;
    }
    let mut c = Cluster::new("spapp", ("istio", MeshPorts::istio()), &[]);
    let plain = c.pod("plain", Some(&[]));
    let plain2 = c.pod("plain2", Some(&[]));
    let client = c.pod("client", Some(&["--splice-app"]));
    let server = c.pod("server", Some(&["--splice-app"]));
    let mut inserts = c.loaded.counter("sockhash_inserts");
    for (from, to, sockets, what) in [
        (plain, plain2, 2, "sidecar leg only"),
        (client, plain, 4, "sidecar leg + client's app leg"),
        (plain, server, 4, "sidecar leg + server's passthrough leg"),
        (client, server, 6, "every leg"),
    ] {
        for v6 in [false, true] {
            assert_eq!(
                c.call(from, to, 9080, v6),
                (passthrough(v6), 1, 1),
                "{what}"
            );
            let now = c.loaded.counter("sockhash_inserts");
            assert_eq!(now - inserts, sockets, "{what}, v6={v6}");
            inserts = now;
        }
    }
    let bytes: u64 = 16 * 1024 * 1024 + 3;
    let spliced = c.loaded.counter("spliced_bytes");
    c.bulk(
        client,
        server,
        bytes,
        true,
        "bulk between two opted-in pods",
    );
    let spliced = c.loaded.counter("spliced_bytes") - spliced;
    assert!(
        spliced >= 3 * bytes,
        "spliced {spliced} of 3 x {bytes} bytes"
    );
    assert_eq!(c.loaded.counter("map_update_failures"), 0);
}

/// A redirected connection's original destination lives in `pair_orig` under its 4-tuple
/// only while it is open: sockops forgets it when the socket closes, so a later connection
/// reusing the 4-tuple cannot pick up a stale entry (and the LRU map does not fill up).
#[test]
fn original_destinations_are_forgotten_when_connections_close() {
    if !mb_sys::testing::kernel_tests_enabled("original_destinations_are_forgotten") {
        return;
    }
    let mut c = Cluster::new("forget", ("istio", MeshPorts::istio()), &[]);
    let client = c.pod("client", Some(&[]));
    let server = c.pod("server", Some(&[]));
    for i in 0..10 {
        assert_eq!(
            c.call(client, server, 9080, i % 2 == 1),
            (passthrough(i % 2 == 1), 1, 1)
        );
    }
    // Every call redirected two connections (app -> sidecar, sidecar -> sidecar).
    assert!(c.loaded.counter("redirected_outbound") >= 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut left = c.loaded.map_entries("pair_orig");
    while left > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = c.loaded.map_entries("pair_orig");
    }
    assert_eq!(
        left, 0,
        "pair_orig entries left after every connection closed"
    );
    assert_eq!(c.loaded.map_entries("cookie_orig"), 0);

    // Forgetting must wait for the sidecar: a client that writes and closes at once is done
    // (its FIN acked by the kernel) before a busy sidecar even accepts. Stop the client's
    // sidecar across such a client; its request must still reach the server.
    use std::io::Read;
    let addr = SocketAddr::new(c.ip(server, false), 7799);
    let listener = c.pods[server]
        .run_in_netns(move || std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(c.sidecars[client].as_ref().unwrap().pid() as i32);
    struct Resume(nix::unistd::Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
        }
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let resume = Resume(pid);
    let line = mb_testbed::scenarios::run_client(
        &c.pods[client],
        &c.bins,
        APP_UID,
        &[
            "send".into(),
            format!("--to={addr}"),
            "--text=fire-and-forget".into(),
        ],
    )
    .expect("send while the sidecar is stopped");
    assert!(line.starts_with("sent bytes=15"), "{line}");
    std::thread::sleep(Duration::from_millis(300));
    drop(resume);
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the request never reached the server (original destination forgotten?): {:#?}",
                    c.records(client)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "fire-and-forget", "{:#?}", c.records(client));
}

#[test]
fn cross_node_outbound_goes_through_the_client_sidecar() {
    if !mb_sys::testing::kernel_tests_enabled("cross_node_outbound") {
        return;
    }
    let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
    let n1 = Node::new("x1").expect("node");
    let n2 = Node::new("x2").expect("node");
    Node::join(&n1, &n2).expect("join");
    let l1 = Loaded::new(&n1, &["--mesh", "istio", "--ipv6"]);
    let l2 = Loaded::new(&n2, &["--mesh", "istio", "--ipv6"]);
    let client = n1.add_pod(PodSpec::named("client")).expect("pod");
    let server = n2.add_pod(PodSpec::named("server")).expect("pod");
    l1.add_pod(&client, &[]);
    l2.add_pod(&server, &[]);
    let client_sidecar = sidecar(&bins, &client);
    let _server_sidecar = sidecar(&bins, &server);
    let _app = start_app(&server, &bins).expect("app");
    for v6 in [false, true] {
        let (server_ip, client_ip): (IpAddr, IpAddr) = if v6 {
            (server.ipv6().into(), client.ipv6().into())
        } else {
            (server.ipv4().into(), client.ipv4().into())
        };
        let target = SocketAddr::new(server_ip, WHOAMI_PORT);
        let (peer, _) = whoami(&client, &bins, APP_UID, target, None);
        // Inbound from another node is not intercepted by merbridge (like the original
        // without CNI mode): the app sees the client pod's sidecar connecting directly.
        assert_eq!(peer.ip(), client_ip);
        let records =
            client_sidecar.wait_for_records(if v6 { 2 } else { 1 }, Duration::from_secs(5));
        let last = records.last().unwrap();
        assert_eq!(last.listener, Listener::Outbound);
        assert_eq!(last.original_dst, Some(target));
    }
    assert_eq!(l2.counter("redirected_outbound"), 0);
    assert_eq!(l1.counter("redirected_outbound"), 2);
}

/// `--splice all` also splices the application legs (six sockets for one call through two
/// sidecars); `--splice none` splices nothing and interception still works.
#[test]
fn splice_modes_choose_which_sockets_enter_the_sockhash() {
    if !mb_sys::testing::kernel_tests_enabled("splice_modes") {
        return;
    }
    for (mode, inserts) in [("all", 6), ("none", 0)] {
        let mut c = Cluster::new("smode", ("istio", MeshPorts::istio()), &["--splice", mode]);
        let client = c.pod("client", Some(&[]));
        let server = c.pod("server", Some(&[]));
        assert_eq!(
            c.call(client, server, 9080, false),
            (passthrough(false), 1, 1),
            "{mode}"
        );
        assert_eq!(c.loaded.counter("sockhash_inserts"), inserts, "{mode}");
        assert_eq!(c.loaded.counter("spliced_bytes") > 0, inserts > 0, "{mode}");
    }
}

/// Kernels whose sock_ops, sk_msg and getsockopt lack the netns cookie (5.10) get the variant
/// that binds redirected sockets to their pod's address instead; forced here on this kernel.
#[test]
fn bound_source_keys_serve_kernels_without_netns_cookies() {
    if !mb_sys::testing::kernel_tests_enabled("bound_source_keys") {
        return;
    }
    let mut c = Cluster::new(
        "bindkeys",
        ("istio", MeshPorts::istio()),
        &["--keys", "bind", "--splice", "all"],
    );
    let client = c.pod("client", Some(&[]));
    let server = c.pod("server", Some(&[]));
    for v6 in [false, true] {
        assert_eq!(
            c.call(client, server, 9080, v6),
            (passthrough(v6), 1, 1),
            "v6={v6}"
        );
        let out = c.records(client).pop().unwrap();
        // The application's socket was bound to its pod's address.
        assert_eq!(out.peer.ip(), c.ip(client, v6));
    }
    assert_eq!(c.loaded.counter("sockhash_inserts"), 12);
    assert_eq!(c.loaded.counter("map_update_failures"), 0);
}
