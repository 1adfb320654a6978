//! The data path against real traffic: `merbridge load` on a private node cgroup, pods added
//! with `merbridge pod add`, the reference sidecar in each pod, real TCP between real
//! processes in network namespaces. Asserts what the sidecars and the app saw and what the
//! counters say, then `merbridge unload` and checks that traffic flows directly again.
//!
//! The tests about interception (not about the reference sidecar's own features, such as its
//! DNS proxy) run twice, `NAME::reference` and `NAME::haproxy`: with HAProxy as the sidecar
//! too. HAProxy 2.6 finds no IPv6 original destination (it asks `SO_ORIGINAL_DST` on IPv4
//! sockets only): where a test makes IPv6 calls, the HAProxy run asserts that limit instead
//! ([`Cluster::assert_known_limits`]).

#[path = "common/loaded.rs"]
mod loaded;

use loaded::{merbridge, Loaded, PYTHON_BLOCKING_PRELUDE};

use mb_testbed::scenarios::{start_app, whoami, Binaries, APP_UID, WHOAMI_PORT};
use mb_testbed::sidecar::{Listener, Record, SidecarKind};
use mb_testbed::{MeshPorts, Node, Pod, PodSpec, Sidecar, SidecarConfig};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn sidecar(bins: &Binaries, pod: &Pod) -> Sidecar {
    Sidecar::start_binary(
        &bins.sidecar,
        pod,
        bins.sidecar_config(&MeshPorts::istio()),
        1337,
    )
    .expect("sidecar")
}

/// The test bed's binaries with `kind` as the sidecar.
fn binaries(kind: SidecarKind) -> Binaries {
    Binaries::find()
        .expect("test bed binaries: cargo build --workspace")
        .with_sidecar(kind)
}

/// Address families a sidecar of `kind` relays: HAProxy finds IPv4 original destinations only.
fn families(kind: SidecarKind) -> &'static [bool] {
    match kind {
        SidecarKind::Reference => &[false, true],
        SidecarKind::Haproxy => &[false],
    }
}

/// `NAME::reference` and `NAME::haproxy`: `body(kind)` with each sidecar, gated on root and
/// the kernel.
macro_rules! with_both_sidecars {
    ($(#[$doc:meta])* $name:ident, $gate:literal, $body:expr) => {
        $(#[$doc])*
        mod $name {
            use super::*;

            #[test]
            fn reference() {
                if mb_sys::testing::kernel_tests_enabled($gate) {
                    let run: &dyn Fn(SidecarKind) = &$body;
                    run(SidecarKind::Reference);
                }
            }

            #[test]
            fn haproxy() {
                if mb_sys::testing::kernel_tests_enabled(concat!($gate, "_haproxy")) {
                    let run: &dyn Fn(SidecarKind) = &$body;
                    run(SidecarKind::Haproxy);
                }
            }
        }
    };
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

fn app_to_service(kind: SidecarKind, v6: bool) {
    let bins = binaries(kind);
    let node = Node::new("e2e").expect("node");
    let loaded = Loaded::new(&node, "mb-e2e", &["--mesh", "istio", "--ipv6"]);
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
    if !families(kind).contains(&v6) {
        assert_ipv6_rejected(&client, &bins, target, &client_sidecar);
        return;
    }
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

with_both_sidecars!(
    app_to_service_through_both_sidecars_ipv4,
    "app_to_service_through_both_sidecars_ipv4",
    |kind| app_to_service(kind, false)
);
with_both_sidecars!(
    app_to_service_through_both_sidecars_ipv6,
    "app_to_service_through_both_sidecars_ipv6",
    |kind| app_to_service(kind, true)
);

/// HAProxy's known limit: an intercepted IPv6 call from `client` to `target` fails, and the
/// client's sidecar logged it rejected (by the loop guard) for want of an original destination.
fn assert_ipv6_rejected(client: &Pod, bins: &Binaries, target: SocketAddr, sidecar: &Sidecar) {
    let before = sidecar.records().len();
    let outcome = mb_testbed::scenarios::run_client(
        client,
        bins,
        APP_UID,
        &["whoami".to_owned(), format!("--to={target}")],
    );
    assert!(
        outcome.is_err(),
        "HAProxy relayed an IPv6 call ({outcome:?}): it now finds IPv6 original \
         destinations; drop the known limit here and in the README"
    );
    let records = sidecar.wait_for_records(before + 1, Duration::from_secs(5));
    let new = &records[before.min(records.len())..];
    assert!(
        new.iter().any(|r| r.listener == Listener::Outbound
            && r.original_dst.is_none()
            && r.error.as_deref() == Some("haproxy_termination_PR")),
        "expected a rejected outbound connection with no original destination: {new:#?}"
    );
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
        Cluster::with(SidecarKind::Reference, name, mesh, load_args)
    }

    /// A cluster whose meshed pods run a sidecar of `kind`.
    fn with(kind: SidecarKind, name: &str, mesh: (&str, MeshPorts), load_args: &[&str]) -> Cluster {
        let bins = binaries(kind);
        let node = Node::new(name).expect("node");
        let mut args = vec!["--mesh", mesh.0, "--ipv6"];
        args.extend_from_slice(load_args);
        let loaded = Loaded::new(&node, "mb-e2e", &args);
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
                self.bins.sidecar_config(&self.mesh),
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

    /// Address families this cluster's sidecar relays (see [`families`]).
    fn families(&self) -> &'static [bool] {
        families(self.bins.sidecar_kind)
    }

    /// With HAProxy, asserts its known limit on a call from `from` to `to` (see
    /// [`assert_ipv6_rejected`]); nothing with the reference sidecar.
    fn assert_known_limits(&self, from: usize, to: usize) {
        if !self.families().contains(&true) {
            let target = SocketAddr::new(self.ip(to, true), WHOAMI_PORT);
            let sidecar = self.sidecars[from].as_ref().expect("a meshed client");
            assert_ipv6_rejected(&self.pods[from], &self.bins, target, sidecar);
        }
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
        // Records are written when a relay ends, late on a loaded machine: wait for one on
        // each side, at most 500 ms (a call that passes a sidecar by waits that long).
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        loop {
            let counts = (
                self.records(from).len() - before.0,
                self.records(to).len() - before.1,
            );
            if (counts.0 >= 1 && counts.1 >= 1) || std::time::Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(20));
                return (
                    peer.ip(),
                    self.records(from).len() - before.0,
                    self.records(to).len() - before.1,
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn passthrough(v6: bool) -> IpAddr {
    if v6 {
        "::6".parse().unwrap()
    } else {
        "127.0.0.6".parse().unwrap()
    }
}

fn policy_fields(kind: SidecarKind, v6: bool) {
    let mut c = Cluster::with(kind, "pol", ("istio", MeshPorts::istio()), &[]);
    let client = c.pod("client", Some(&[]));
    let server = c.pod("server", Some(&[]));
    if !c.families().contains(&v6) {
        c.assert_known_limits(client, server);
        return;
    }
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

with_both_sidecars!(
    policy_fields_are_honoured_ipv4,
    "policy_fields_are_honoured_ipv4",
    |kind| policy_fields(kind, false)
);
with_both_sidecars!(
    policy_fields_are_honoured_ipv6,
    "policy_fields_are_honoured_ipv6",
    |kind| policy_fields(kind, true)
);

with_both_sidecars!(
    loopback_untouched_and_pods_without_sidecar_enter_through_the_sidecar,
    "loopback_and_pods_without_sidecar_are_untouched",
    loopback_and_plain_pods
);

fn loopback_and_plain_pods(kind: SidecarKind) {
    let mut c = Cluster::with(kind, "untouched", ("istio", MeshPorts::istio()), &[]);
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

with_both_sidecars!(
    linkerd_kuma_and_osm_constants,
    "linkerd_kuma_and_osm_constants",
    other_meshes
);

fn other_meshes(kind: SidecarKind) {
    for (name, ports) in [
        ("linkerd", MeshPorts::linkerd()),
        ("kuma", MeshPorts::kuma()),
        ("osm", MeshPorts::osm()),
    ] {
        let mut c = Cluster::with(kind, name, (name, ports.clone()), &[]);
        let mesh_flag: &[&str] = &["--mesh", name];
        let client = c.pod("client", Some(mesh_flag));
        let server = c.pod("server", Some(mesh_flag));
        c.assert_known_limits(client, server);
        for &v6 in c.families() {
            assert_eq!(
                c.call(client, server, 9080, v6),
                (passthrough(v6), 1, 1),
                "{name} v6={v6}"
            );
        }
        let inbound = c.records(server);
        assert!(!inbound.is_empty(), "{name}: no inbound records");
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
    // No --splice: the run-time probe of the splice hazard decides, and the summary says so.
    let hazard = mb_loader::splice_hazard::probe_splice_hazard();
    let first = out.lines().next().unwrap_or_default();
    match hazard {
        mb_loader::splice_hazard::SpliceHazard::Absent => assert!(
            first.contains("splice all (auto: this kernel has no splice hazard)"),
            "{out}"
        ),
        _ => {
            assert!(first.contains("splice sidecars (auto: "), "{out}");
            assert!(out.contains("sidecars must be event-driven"), "{out}");
        }
    }
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
    let loaded = Loaded::new(&node, "mb-e2e", &["--mesh", "istio"]);
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

with_both_sidecars!(
    /// Blocking clients through two spliced legs: 100 MB with a checksum, then 5,000 round
    /// trips; neither sees an error (no spurious EAGAIN on blocking sockets), and the counters
    /// show the bytes moved socket to socket.
    spliced_bulk_and_rr_arrive_intact_on_blocking_sockets,
    "spliced_bulk_and_rr_arrive_intact",
    spliced_bulk_and_rr
);

fn spliced_bulk_and_rr(kind: SidecarKind) {
    let mut c = Cluster::with(kind, "splice", ("istio", MeshPorts::istio()), &[]);
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
            format!(
                "--to={}",
                SocketAddr::new(c.ip(server, c.families().contains(&true)), 8080)
            ),
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

/// The safety suite's blocking Python client: `sendall`/`recv` on the echo server, then a
/// 100 MB upload to the bulk server and a blocking `recv` of its reply, once plain and once
/// with `SO_RCVTIMEO`. Every socket is a plain blocking one (no Python timeout, which would
/// make it non-blocking underneath). Runs after [`PYTHON_BLOCKING_PRELUDE`].
const PYTHON_BLOCKING_CLIENT: &str = r#"
host = sys.argv[1]
s = connect(host, 8080, 0)
echo_rounds(s, 200)
s.close()
for rcvtimeo in (0, 20):
    s = connect(host, 8081, rcvtimeo)
    block = b"\x5a" * (1 << 20)
    for _ in range(100):
        s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    if b"count=104857600" not in reply:
        sys.exit("bulk reply %r (SO_RCVTIMEO %d)" % (reply, rcvtimeo))
    s.close()
print("python-blocking ok")
"#;

with_both_sidecars!(
    /// Safety suite (issue 15): under the default mode (`--splice auto`: whatever the kernel
    /// probe allows, `sidecars` on a kernel with the splice hazard), same-node topology,
    /// clients and servers with BLOCKING sockets complete every request: the test bed's bulk
    /// client (blocking reads with SO_RCVTIMEO) reading the reply to a 100 MB upload, a
    /// Python client (sendall/recv, then 100 MB uploads, plain and with SO_RCVTIMEO), against
    /// the test bed's blocking thread-per-connection servers. The sidecar-to-sidecar leg is
    /// spliced meanwhile (the sidecars are event-driven). The same clients fail under
    /// `--splice all` on such a kernel (checked by hand: both sidecars, exit status 1).
    safety_suite_blocking_apps_complete_under_the_default_mode,
    "safety_suite_blocking_apps",
    safety_suite_blocking_apps
);

fn safety_suite_blocking_apps(kind: SidecarKind) {
    let mut c = Cluster::with(kind, "safety", ("istio", MeshPorts::istio()), &[]);
    let client = c.pod("client", Some(&[]));
    let server = c.pod("server", Some(&[]));
    let bytes: u64 = 100 * 1024 * 1024;
    c.bulk(
        client,
        server,
        bytes,
        false,
        "blocking bulk client: 100 MB upload, then a blocking read of the reply",
    );
    let mut python = Command::new("python3");
    python.args([
        "-c",
        &format!("{PYTHON_BLOCKING_PRELUDE}{PYTHON_BLOCKING_CLIENT}"),
        &c.ip(server, false).to_string(),
    ]);
    python.stdout(std::process::Stdio::piped());
    let out = c.pods[client]
        .spawn(python, APP_UID)
        .and_then(|p| p.finish(Duration::from_secs(180)))
        .unwrap_or_else(|e| {
            panic!(
                "python blocking client: {e}\nclient sidecar: {:#?}",
                c.records(client)
            )
        });
    assert!(out.contains("python-blocking ok"), "{out}");
    // The default mode spliced the sidecar-to-sidecar leg of these uploads.
    let spliced = c.loaded.counter("spliced_bytes");
    assert!(
        spliced >= 3 * bytes,
        "spliced {spliced} bytes of 3 x {bytes}"
    );
    for pod in [client, server] {
        let records = c.records(pod);
        assert!(records.iter().all(|r| r.error.is_none()), "{records:#?}");
    }
}

with_both_sidecars!(
    /// `--splice all` puts the applications' sockets in the sockhash too. Clients that wait for
    /// readiness on EAGAIN (as event-driven apps do; the kernel's tcp_bpf_recvmsg answers a
    /// blocking read woken without data with EAGAIN, e.g. by send-buffer space freed while the
    /// client waits for the reply to its upload) get every byte intact, all three legs spliced.
    splice_all_carries_bulk_and_rr_intact_for_event_driven_clients,
    "splice_all_carries_bulk_and_rr_intact",
    splice_all_bulk_and_rr
);

fn splice_all_bulk_and_rr(kind: SidecarKind) {
    let mut c = Cluster::with(
        kind,
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
            format!(
                "--to={}",
                SocketAddr::new(c.ip(server, c.families().contains(&true)), 8080)
            ),
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

with_both_sidecars!(
    /// `pod add --splice-app` (annotation `merbridge.io/splice-app: "true"`): under the default
    /// `--splice sidecars`, an opted-in pod's application legs join the sidecar-to-sidecar
    /// splice — its outbound leg (app -> own sidecar) and its inbound passthrough leg (sidecar ->
    /// app) — and no other pod's.
    pods_can_opt_in_to_splicing_their_application_legs,
    "pods_can_opt_in_to_splicing",
    splice_app_opt_in
);

fn splice_app_opt_in(kind: SidecarKind) {
    let mut c = Cluster::with(kind, "spapp", ("istio", MeshPorts::istio()), &[]);
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
        for &v6 in c.families() {
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
    c.assert_known_limits(client, server);
}

with_both_sidecars!(
    /// A redirected connection's original destination lives in `pair_orig` under its 4-tuple
    /// only while it is open: sockops forgets it when the socket closes, so a later connection
    /// reusing the 4-tuple cannot pick up a stale entry (and the LRU map does not fill up).
    original_destinations_are_forgotten_when_connections_close,
    "original_destinations_are_forgotten",
    forgotten_original_destinations
);

fn forgotten_original_destinations(kind: SidecarKind) {
    let mut c = Cluster::with(kind, "forget", ("istio", MeshPorts::istio()), &[]);
    let client = c.pod("client", Some(&[]));
    let server = c.pod("server", Some(&[]));
    let families = c.families();
    for i in 0..10 {
        let v6 = families[i % families.len()];
        assert_eq!(c.call(client, server, 9080, v6), (passthrough(v6), 1, 1));
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

/// Inbound from outside the pod enters through its sidecar (sk_lookup, nothing rewritten):
/// from a meshed pod on another node (after its own sidecar), from a non-meshed caller on
/// another node, from the node's own namespace; IPv4 and IPv6. The server's sidecar sees the
/// original destination (SO_ORIGINAL_DST from the steered socket's own address), the app
/// sees the passthrough address. Two pods with the same ports never get each other's
/// connections; an excluded port reaches the app directly; a sidecar that is down refuses
/// (RST, counted) and takes over again when it listens anew; unload removes every link.
#[test]
fn inbound_from_other_nodes_enters_through_the_server_sidecar() {
    if !mb_sys::testing::kernel_tests_enabled("inbound_from_other_nodes") {
        return;
    }
    use mb_testbed::scenarios::EXCLUDED_INBOUND_PORT;
    use mb_testbed::workload;
    let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
    let n1 = Node::new("x1").expect("node");
    let n2 = Node::new("x2").expect("node");
    Node::join(&n1, &n2).expect("join");
    let l1 = Loaded::new(&n1, "mb-e2e", &["--mesh", "istio", "--ipv6"]);
    let l2 = Loaded::new(&n2, "mb-e2e", &["--mesh", "istio", "--ipv6"]);
    let client = n1.add_pod(PodSpec::named("client")).expect("pod");
    let plain = n1.add_pod(PodSpec::named("plain")).expect("pod");
    let servers = [
        n2.add_pod(PodSpec::named("srva")).expect("pod"),
        n2.add_pod(PodSpec::named("srvb")).expect("pod"),
    ];
    l1.add_pod(&client, &[]);
    let excluded = EXCLUDED_INBOUND_PORT.to_string();
    for s in &servers {
        l2.add_pod(s, &["--exclude-inbound-ports", &excluded]);
    }
    let client_sidecar = sidecar(&bins, &client);
    let mut server_sidecars: Vec<Option<Sidecar>> =
        servers.iter().map(|s| Some(sidecar(&bins, s))).collect();
    let _apps: Vec<_> = servers
        .iter()
        .map(|s| start_app(s, &bins).expect("app"))
        .collect();
    // 6.1+: sock_ops puts each listener in place at listen(). 5.10 (no netns cookie there):
    // listeners are adopted from user space, which the agent repeats on every resync; here
    // a second `pod add` does it.
    let listen_hook = mb_loader::datapath::kernel_has_netns_keys();
    let readopt = |pod: &Pod| {
        if !listen_hook {
            l2.add_pod(pod, &["--exclude-inbound-ports", &excluded]);
        }
    };
    servers.iter().for_each(readopt);
    let ip = |pod: &Pod, v6: bool| -> IpAddr {
        if v6 {
            pod.ipv6().into()
        } else {
            pod.ipv4().into()
        }
    };
    let mut expected_per_server = [0usize; 2];
    let mut steered = 0;
    let mut client_calls = 0;
    for v6 in [false, true] {
        for (i, server) in servers.iter().enumerate() {
            let target = SocketAddr::new(ip(server, v6), WHOAMI_PORT);
            // A meshed client on node 1: out through its sidecar, in through the server's.
            let (peer, _) = whoami(&client, &bins, APP_UID, target, None);
            assert_eq!(peer.ip(), passthrough(v6), "meshed caller to {target}");
            client_calls += 1;
            // Records are written when a relay ends (slow on emulated guests): wait for it.
            let out = client_sidecar.wait_for_records(client_calls, Duration::from_secs(10));
            assert_eq!(out.len(), client_calls, "{out:#?}");
            assert_eq!(out[client_calls - 1].original_dst, Some(target));
            // A caller without sidecar on node 1, and one in node 2's own namespace.
            let (peer, _) = plain
                .run_in_netns(move || workload::whoami(target))
                .unwrap()
                .unwrap();
            assert_eq!(peer.ip(), passthrough(v6), "non-meshed pod to {target}");
            let (peer, _) =
                mb_sys::netns::run_in_netns(n2.netns_path(), move || workload::whoami(target))
                    .unwrap()
                    .unwrap();
            assert_eq!(peer.ip(), passthrough(v6), "node netns to {target}");
            expected_per_server[i] += 3;
            steered += 3;
            let records = server_sidecars[i]
                .as_ref()
                .unwrap()
                .wait_for_records(expected_per_server[i], Duration::from_secs(5));
            assert_eq!(records.len(), expected_per_server[i], "{records:#?}");
            for r in &records[records.len() - 3..] {
                assert_eq!(r.listener, Listener::Inbound, "{r}");
                assert_eq!(r.original_dst, Some(target), "{r}");
                assert_eq!(r.local, target, "nothing rewritten: {r}");
                assert!(r.error.is_none(), "{r}");
            }
            // An excluded inbound port reaches the application directly.
            let direct = SocketAddr::new(ip(server, v6), EXCLUDED_INBOUND_PORT);
            let (peer, _) = plain
                .run_in_netns(move || workload::whoami(direct))
                .unwrap()
                .unwrap();
            assert_eq!(peer.ip(), ip(&plain, v6), "excluded port {direct}");
        }
    }
    // Same ports on both pods, and each sidecar only ever saw its own pod's addresses.
    for (i, s) in server_sidecars.iter().enumerate() {
        let mine = [ip(&servers[i], false), ip(&servers[i], true)];
        for r in s.as_ref().unwrap().records() {
            assert!(mine.contains(&r.local.ip()), "pod {i}'s sidecar got {r}");
        }
    }
    assert_eq!(l2.counter("inbound_steered"), steered);
    assert_eq!(l2.counter("redirected_outbound"), 0);
    assert_eq!(l1.counter("redirected_outbound"), 4);
    assert_eq!(
        l2.counter("listener_inserts"),
        if listen_hook { 4 } else { 0 },
        "two listeners per sidecar"
    );

    // Fail closed: pod b's sidecar stops; its captured port refuses at once, pod a's works.
    let refused_before = l2.counter("inbound_refused");
    server_sidecars[1] = None;
    let target_b = SocketAddr::new(ip(&servers[1], false), WHOAMI_PORT);
    let started = std::time::Instant::now();
    let err = plain
        .run_in_netns(move || workload::whoami(target_b))
        .unwrap()
        .expect_err("no sidecar: refused, never delivered to the app");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an RST, not a timeout"
    );
    assert_eq!(l2.counter("inbound_refused"), refused_before + 1);
    let target_a = SocketAddr::new(ip(&servers[0], false), WHOAMI_PORT);
    let (peer, _) = plain
        .run_in_netns(move || workload::whoami(target_a))
        .unwrap()
        .unwrap();
    assert_eq!(peer.ip(), passthrough(false));
    // A new sidecar's listen() puts its listener in place with no merbridge command (on
    // 6.1+; on 5.10 the next adoption does).
    server_sidecars[1] = Some(sidecar(&bins, &servers[1]));
    readopt(&servers[1]);
    let (peer, _) = plain
        .run_in_netns(move || workload::whoami(target_b))
        .unwrap()
        .unwrap();
    assert_eq!(peer.ip(), passthrough(false), "restarted sidecar");
    let records = server_sidecars[1]
        .as_ref()
        .unwrap()
        .wait_for_records(1, Duration::from_secs(5));
    assert_eq!(records[0].original_dst, Some(target_b));

    // status lists one link per pod; pod del and unload take them away.
    let status = merbridge(&["status", "--pin-dir", l2.pin()]);
    assert!(
        status.contains("inbound (sk_lookup per pod netns): 2"),
        "{status}"
    );
    merbridge(&[
        "pod",
        "del",
        &servers[0].ipv4().to_string(),
        "--pin-dir",
        l2.pin(),
    ]);
    let status = merbridge(&["status", "--pin-dir", l2.pin()]);
    assert!(
        status.contains("inbound (sk_lookup per pod netns): 1"),
        "{status}"
    );
    let (peer, _) = plain
        .run_in_netns(move || workload::whoami(target_a))
        .unwrap()
        .unwrap();
    assert_eq!(
        peer.ip(),
        ip(&plain, false),
        "pod a no longer meshed: direct"
    );
    l2.unload();
    assert!(!l2.pin_dir.exists(), "unload left pins behind");
    let (peer, _) = plain
        .run_in_netns(move || workload::whoami(target_b))
        .unwrap()
        .unwrap();
    assert_eq!(peer.ip(), ip(&plain, false), "after unload: direct");
}

/// The `--keys bind` variant (kernels whose sock_ops lack the netns cookie: 5.10) has no
/// listen() hook for inbound listeners: `pod add` adopts the sidecar's listener from user
/// space (pidfd_getfd). After a sidecar restart the new listener is adopted by the next
/// `pod add` (the agent's resync); until then connections are refused, never delivered
/// around the sidecar.
#[test]
fn without_netns_cookies_listeners_are_adopted_from_user_space() {
    if !mb_sys::testing::kernel_tests_enabled("listeners_adopted_from_user_space") {
        return;
    }
    use mb_testbed::workload;
    let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
    let node = Node::new("adopt").expect("node");
    let loaded = Loaded::new(
        &node,
        "mb-e2e",
        &["--mesh", "istio", "--ipv6", "--keys", "bind"],
    );
    let server = node.add_pod(PodSpec::named("server")).expect("pod");
    let mut server_sidecar = Some(sidecar(&bins, &server));
    let _app = start_app(&server, &bins).expect("app");
    loaded.add_pod(&server, &[]);
    let from_node = |to: SocketAddr| {
        mb_sys::netns::run_in_netns(node.netns_path(), move || workload::whoami(to)).unwrap()
    };
    for v6 in [false, true] {
        let ip: IpAddr = if v6 {
            server.ipv6().into()
        } else {
            server.ipv4().into()
        };
        let (peer, _) = from_node(SocketAddr::new(ip, WHOAMI_PORT)).expect("steered");
        assert_eq!(peer.ip(), passthrough(v6));
    }
    assert_eq!(
        loaded.counter("listener_inserts"),
        0,
        "no listen() hook here"
    );
    assert_eq!(loaded.counter("inbound_steered"), 2);

    let target = SocketAddr::new(server.ipv4().into(), WHOAMI_PORT);
    server_sidecar.take();
    let err = from_node(target).expect_err("sidecar down: refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    server_sidecar = Some(sidecar(&bins, &server));
    let err = from_node(target).expect_err("new listener not adopted yet: still refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    loaded.add_pod(&server, &[]);
    let (peer, _) = from_node(target).expect("adopted again");
    assert_eq!(peer.ip(), passthrough(false));
    assert_eq!(loaded.counter("inbound_refused"), 2);
    let records = server_sidecar
        .as_ref()
        .unwrap()
        .wait_for_records(1, Duration::from_secs(5));
    assert_eq!(records[0].original_dst, Some(target), "{records:#?}");
}

/// A pod whose sidecar runs under its own UID (not the load's --proxy-uid): the data path
/// compares the pod entry's identity, so that sidecar's upstream connections are not sent
/// back to it (no loop) and its application's are; a pod without an identity of its own
/// keeps the load's. The gid rule (istio-iptables -g) is checked by the verifier and the
/// unit tests only: the test bed starts processes with gid = uid.
#[test]
fn per_pod_proxy_uid_is_the_sidecar() {
    if !mb_sys::testing::kernel_tests_enabled("per_pod_proxy_uid") {
        return;
    }
    const OWN_UID: u32 = 4242;
    let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
    let node = Node::new("uid").expect("node");
    let loaded = Loaded::new(&node, "mb-e2e", &["--mesh", "istio", "--ipv6"]);
    let client = node.add_pod(PodSpec::named("client")).expect("pod");
    let server = node.add_pod(PodSpec::named("server")).expect("pod");
    let uid = OWN_UID.to_string();
    loaded.add_pod(&client, &["--proxy-uid", &uid]);
    loaded.add_pod(&server, &[]);
    let client_sidecar = Sidecar::start_binary(
        &bins.sidecar,
        &client,
        SidecarConfig {
            expect_uid: Some(OWN_UID),
            ..SidecarConfig::for_mesh(&MeshPorts::istio())
        },
        OWN_UID,
    )
    .expect("sidecar as its own uid");
    let server_sidecar = sidecar(&bins, &server);
    let _app = start_app(&server, &bins).expect("app");
    for v6 in [false, true] {
        let ip: IpAddr = if v6 {
            server.ipv6().into()
        } else {
            server.ipv4().into()
        };
        let target = SocketAddr::new(ip, WHOAMI_PORT);
        let (peer, _) = whoami(&client, &bins, APP_UID, target, None);
        assert_eq!(peer.ip(), passthrough(v6), "through both sidecars");
        let n = if v6 { 2 } else { 1 };
        let out = client_sidecar.wait_for_records(n, Duration::from_secs(5));
        assert_eq!(
            out.len(),
            n,
            "one outbound record per call, no loop: {out:#?}"
        );
        assert_eq!(out[n - 1].listener, Listener::Outbound);
        assert_eq!(out[n - 1].original_dst, Some(target));
        assert!(out[n - 1].error.is_none(), "{:?}", out[n - 1]);
        let inb = server_sidecar.wait_for_records(n, Duration::from_secs(5));
        assert_eq!(inb[n - 1].original_dst, Some(target));
    }
    assert_eq!(loaded.counter("redirected_outbound"), 2);
    // The client sidecar's upstream connects went to the server's inbound port, as a
    // sidecar's (same-node sidecar-to-sidecar), not to its own outbound port again.
    assert_eq!(loaded.counter("redirected_inbound"), 2);
}

/// Bad input leaves nothing behind: a namespace that does not exist is refused with a
/// message naming it and no map entry or link; a pod whose namespace vanished shows as such
/// in `status`, and `pod del` and `unload` still take its link away.
#[test]
fn vanished_namespaces_leave_nothing_behind() {
    if !mb_sys::testing::kernel_tests_enabled("vanished_namespaces") {
        return;
    }
    let node = Node::new("gone").expect("node");
    let loaded = Loaded::new(&node, "mb-e2e", &["--mesh", "istio"]);
    let out = Command::new(env!("CARGO_BIN_EXE_merbridge"))
        .args([
            "pod",
            "add",
            "10.250.0.9",
            "--netns",
            "/run/netns/mb-no-such-namespace",
            "--pin-dir",
            loaded.pin(),
        ])
        .output()
        .expect("run merbridge");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/run/netns/mb-no-such-namespace"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let list = merbridge(&["pod", "list", "--pin-dir", loaded.pin()]);
    assert!(!list.contains("10.250.0.9"), "{list}");
    assert_eq!(mb_agent::inbound::list(&loaded.pin_dir).unwrap().len(), 0);

    let pod = node.add_pod(PodSpec::named("short")).expect("pod");
    let ip = pod.ipv4().to_string();
    loaded.add_pod(&pod, &[]);
    assert_eq!(mb_agent::inbound::list(&loaded.pin_dir).unwrap().len(), 1);
    drop(pod); // its namespace goes (the kernel frees it asynchronously): the link is defunct
    let started = std::time::Instant::now();
    while !merbridge(&["status", "--pin-dir", loaded.pin()]).contains("netns gone") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            merbridge(&["status", "--pin-dir", loaded.pin()])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    merbridge(&["pod", "del", &ip, "--pin-dir", loaded.pin()]);
    assert_eq!(mb_agent::inbound::list(&loaded.pin_dir).unwrap().len(), 0);
    assert_eq!(loaded.map_entries("pod_ips"), 0);
}

with_both_sidecars!(
    /// `--splice all` also splices the application legs (six sockets for one call through two
    /// sidecars); `--splice none` splices nothing and interception still works.
    splice_modes_choose_which_sockets_enter_the_sockhash,
    "splice_modes",
    splice_modes
);

fn splice_modes(kind: SidecarKind) {
    for (mode, inserts) in [("all", 6), ("none", 0)] {
        let mut c = Cluster::with(
            kind,
            "smode",
            ("istio", MeshPorts::istio()),
            &["--splice", mode],
        );
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

with_both_sidecars!(
    /// Kernels whose sock_ops, sk_msg and getsockopt lack the netns cookie (5.10) get the variant
    /// that binds redirected sockets to their pod's address instead; forced here on this kernel.
    bound_source_keys_serve_kernels_without_netns_cookies,
    "bound_source_keys",
    bound_source_keys
);

fn bound_source_keys(kind: SidecarKind) {
    let mut c = Cluster::with(
        kind,
        "bindkeys",
        ("istio", MeshPorts::istio()),
        &["--keys", "bind", "--splice", "all"],
    );
    let client = c.pod("client", Some(&[]));
    let server = c.pod("server", Some(&[]));
    for &v6 in c.families() {
        assert_eq!(
            c.call(client, server, 9080, v6),
            (passthrough(v6), 1, 1),
            "v6={v6}"
        );
        let out = c.records(client).pop().unwrap();
        // The application's socket was bound to its pod's address.
        assert_eq!(out.peer.ip(), c.ip(client, v6));
    }
    assert_eq!(
        c.loaded.counter("sockhash_inserts"),
        6 * c.families().len() as u64
    );
    assert_eq!(c.loaded.counter("map_update_failures"), 0);
}

/// Known failure (a finding of issue 19, asserted so a change is noticed): a sidecar that
/// relays with `splice()` — HAProxy with `option splice-request`/`splice-response`, as its
/// own docs suggest for TCP, or the reference sidecar's `--relay splice` — loses the stream
/// once its sockets are in merbridge's sockhash (the default `--splice sidecars`): `splice()`
/// reads the TCP receive queue, and bytes that sk_msg redirected socket to socket wait in the
/// psock's queue instead, which only `recvmsg()` serves. The bulk client gets no reply. With
/// `--splice none` (no sockhash) the same sidecars relay every byte: turn HAProxy's splice off
/// under merbridge (the test bed does).
#[test]
fn sidecar_splice_loses_data_under_the_sockhash() {
    if !mb_sys::testing::kernel_tests_enabled("sidecar_splice_loses_data_under_the_sockhash") {
        return;
    }
    for kind in SidecarKind::ALL {
        for (splice_mode, intact) in [("sidecars", false), ("none", true)] {
            let bins = binaries(kind);
            let node = Node::new("hsplice").expect("node");
            let loaded = Loaded::new(
                &node,
                "mb-e2e",
                &["--mesh", "istio", "--splice", splice_mode],
            );
            let mut pods = Vec::new();
            let mut sidecars = Vec::new();
            for name in ["client", "server"] {
                let pod = node.add_pod(PodSpec::named(name)).expect("pod");
                loaded.add_pod(&pod, &[]);
                let config = mb_testbed::SidecarConfig {
                    relay: mb_testbed::sidecar::RelayMode::Splice,
                    ..bins.sidecar_config(&MeshPorts::istio())
                };
                sidecars.push(Sidecar::start_binary(&bins.sidecar, &pod, config, 1337).unwrap());
                pods.push(pod);
            }
            let _app = start_app(&pods[1], &bins).expect("app");
            let bytes: u64 = 4 * 1024 * 1024 + 1;
            let outcome = mb_testbed::scenarios::run_client(
                &pods[0],
                &bins,
                APP_UID,
                &[
                    "bulk".into(),
                    format!("--to={}:8081", pods[1].ipv4()),
                    format!("--bytes={bytes}"),
                ],
            );
            let what = format!("{kind} relaying with splice(), merbridge --splice {splice_mode}");
            let out = one(
                sidecars[0].wait_for_records(1, Duration::from_secs(5)),
                Listener::Outbound,
                &what,
            );
            let inbound = one(
                sidecars[1].wait_for_records(1, Duration::from_secs(5)),
                Listener::Inbound,
                &what,
            );
            // The client's sidecar sent every byte either way, and no one saw an error.
            assert_eq!(out.bytes_up, bytes, "{what}: {out:#?}");
            if intact {
                let line = outcome.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(line.contains(&format!("bytes={bytes}")), "{what}: {line}");
                assert_eq!(inbound.bytes_up, bytes, "{what}: {inbound:#?}");
            } else {
                // Silent loss: the server's sidecar spliced little or nothing of the upload to
                // its app (most runs none; under load a first few KiB sometimes), and no answer
                // ever reached the client.
                assert!(
                    outcome.is_err(),
                    "{what}: the stream arrived intact ({outcome:?}); if splice() now sees \
                     sockmap data, drop this known failure"
                );
                assert!(
                    inbound.bytes_up < bytes && out.bytes_down == 0,
                    "{what}: {out:#?} {inbound:#?}"
                );
            }
        }
    }
}
