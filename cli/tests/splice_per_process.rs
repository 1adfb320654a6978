//! Per-process splice decisions (issue 15) against the real kernel, in the default mode (no
//! `--splice` flag, no annotation): the agent's classifier (`mb_agent::splice`) reads the
//! pods' processes from the host's /proc and fills `splice_procs` / `splice_ports`; the data
//! path splices the application legs of event-driven processes only. Proof by the maps and the
//! data path's counters (`splice_app_by_process`, `splice_app_by_port`), not by timing.
//!
//! On a kernel with the splice hazard (this machine's 6.18, docs/splice-hazard.md) the default
//! `--splice auto` is `sidecars`, the mode these decisions apply to; the tests check that.

#[path = "common/loaded.rs"]
mod loaded;

use loaded::{Loaded, PYTHON_BLOCKING_PRELUDE};
use mb_agent::splice::{ProcessVerdict, Reason, SpliceAgent, SpliceReport, Verdict};
use mb_maps::layout::{SplicePortKey, SpliceProcKey, SPLICE_VERDICT_NO, SPLICE_VERDICT_YES};
use mb_testbed::scenarios::{
    start_app, start_server, Binaries, APP_UID, BULK_PORT, ECHO_PORT, WHOAMI_PORT,
};
use mb_testbed::{MeshPorts, Node, Pod, PodSpec, Sidecar, Spawned};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROXY_UID: u32 = 1337;

/// A node with the data path loaded in the default mode, two meshed pods (client, server)
/// with reference sidecars and an app each, and the agent's splice classifier.
struct Setup {
    agent: SpliceAgent,
    apps: Vec<Spawned>,
    _sidecars: Vec<Sidecar>,
    pods: Vec<Pod>,
    bins: Binaries,
    /// Unloaded on drop, before the node goes.
    loaded: Loaded,
    _node: Node,
}

const CLIENT: usize = 0;
const SERVER: usize = 1;

impl Setup {
    /// `event_driven`: the apps are `mb-workload --event-driven serve` (else the blocking
    /// thread-per-connection servers); `flags`: `pod add` flags of each pod.
    fn new(name: &str, event_driven: bool, flags: [&[&str]; 2]) -> Setup {
        let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
        let node = Node::new(name).expect("node");
        let loaded = Loaded::new(&node, "mb-perproc", &["--mesh", "istio", "--ipv6"]);
        let out = &loaded.load_output;
        assert!(
            out.contains("sidecars"),
            "the default mode on this kernel should be `sidecars` (splice hazard present): {out}"
        );
        let mut pods = Vec::new();
        let mut sidecars = Vec::new();
        let mut apps = Vec::new();
        for (i, pod_name) in ["client", "server"].into_iter().enumerate() {
            let pod = node.add_pod(PodSpec::named(pod_name)).expect("pod");
            loaded.add_pod(&pod, flags[i]);
            sidecars.push(
                Sidecar::start_binary(
                    &bins.sidecar,
                    &pod,
                    bins.sidecar_config(&MeshPorts::istio()),
                    PROXY_UID,
                )
                .expect("sidecar"),
            );
            let app = if event_driven {
                let mut args = vec!["--event-driven".to_owned(), "serve".to_owned()];
                args.extend(["--echo".into(), ECHO_PORT.to_string()]);
                args.extend(["--bulk".into(), BULK_PORT.to_string()]);
                args.extend(["--whoami".into(), WHOAMI_PORT.to_string()]);
                start_server(&pod, &bins, &args, APP_UID)
            } else {
                start_app(&pod, &bins)
            };
            apps.push(app.expect("app"));
            pods.push(pod);
        }
        let agent = SpliceAgent::open(&loaded.pin_dir, PROXY_UID).expect("splice maps");
        Setup {
            agent,
            apps,
            _sidecars: sidecars,
            pods,
            bins,
            loaded,
            _node: node,
        }
    }

    fn counter(&self, name: &str) -> u64 {
        self.loaded.counter(name)
    }

    fn scan(&mut self) -> SpliceReport {
        self.agent.scan_once().expect("splice scan")
    }

    /// Scans until `pid` has a verdict other than unknown (at most 5 s); returns it.
    fn verdict_of(&mut self, pid: u32) -> ProcessVerdict {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let report = self.scan();
            if let Some(v) = report.verdicts.iter().find(|v| v.pid == pid) {
                if v.verdict != Verdict::Unknown || Instant::now() > deadline {
                    return v.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} never classified: {:#?}",
                report.verdicts
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `mb-workload <args>` in pod `pod` as the app user, scanning every 20 ms while it
    /// runs; returns its output line and every verdict it was given.
    fn run_scanned(&mut self, pod: usize, args: &[String]) -> (String, Vec<ProcessVerdict>) {
        let mut cmd = Command::new(&self.bins.workload);
        cmd.args(args).stdout(Stdio::piped());
        let mut client = self.pods[pod].spawn(cmd, APP_UID).expect("client");
        let pid = client.pid();
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        while client.child_mut().try_wait().expect("wait").is_none() {
            assert!(Instant::now() < deadline, "{args:?} still running");
            let report = self.scan();
            seen.extend(report.verdicts.into_iter().filter(|v| v.pid == pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = client
            .finish(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        (out.trim().to_owned(), seen)
    }

    fn server(&self, port: u16) -> String {
        format!("--to={}:{port}", self.pods[SERVER].ipv4())
    }

    /// The client's event-driven app makes `connections` connect-request-close calls to the
    /// server's echo port, under the classifier's scans; what the scans saw of it.
    fn event_driven_crr(&mut self, connections: u64) -> Vec<ProcessVerdict> {
        let server = self.server(ECHO_PORT);
        let (line, seen) = self.run_scanned(
            CLIENT,
            &[
                "--event-driven".into(),
                // A non-blocking socket held first: classified before its first connect, as
                // a long-running app is (and scans are slow under emulation).
                "--settle-ms=1500".into(),
                "crr".into(),
                server,
                format!("--count={connections}"),
            ],
        );
        assert!(
            line.contains(&format!("connections={connections}")),
            "{line}"
        );
        seen
    }

    fn pod_id(&self, pod: usize) -> u32 {
        let pid = self.apps[pod].pid();
        self.agent
            .last_verdicts()
            .iter()
            .find(|v| v.pid == pid)
            .map(|v| v.pod_id)
            .expect("app classified")
    }
}

/// Default mode, event-driven client and server: both are classified event-driven
/// (non-blocking sockets, two scans), the server's listening ports enter `splice_ports`, the
/// client's (cgroup, tgid) enters `splice_procs`, and from then on their application legs are
/// spliced — counted by the data path, on every connection of a 3,000-connection run for the
/// server side, and on the client's connections made after it was classified (it holds a
/// non-blocking socket 1.5 s before connecting, as a long-running app would). The 5.10
/// variant (no netns keys) decides the connect side by annotation only: there the client's
/// legs stay unspliced, the server's are spliced.
#[test]
fn event_driven_apps_have_their_legs_spliced_by_default() {
    if !mb_sys::testing::kernel_tests_enabled("event_driven_apps_spliced_by_default") {
        return;
    }
    let mut s = Setup::new("perproc-ev", true, [&[], &[]]);
    let server_pid = s.apps[SERVER].pid();
    let server = s.verdict_of(server_pid);
    assert_eq!(
        (server.verdict, server.reason),
        (Verdict::Splice, Reason::NonBlockingSockets),
        "{server:#?}"
    );
    for port in [ECHO_PORT, BULK_PORT, WHOAMI_PORT] {
        assert!(server.listen_ports.contains(&port), "{server:#?}");
    }
    let server_pod = s.pod_id(SERVER);
    let ports = s.agent.maps.port_entries().unwrap();
    let echo_key = SplicePortKey {
        pod_id: server_pod,
        port: ECHO_PORT.to_be(),
    };
    assert!(
        ports
            .iter()
            .any(|(k, v)| *k == echo_key && v.verdict == SPLICE_VERDICT_YES),
        "{ports:?}"
    );

    // `pod show` lists the verdicts of the pod's processes and ports.
    let shown = s.loaded.pod_show_json(&s.pods[SERVER]);
    let process = format!(
        "{{\"pid\":{server_pid},\"comm\":\"mb-workload\",\"verdict\":\"splice\",\"reason\":\"non_blocking_sockets\"}}"
    );
    let port = format!(
        "{{\"port\":{ECHO_PORT},\"verdict\":\"splice\",\"reason\":\"non_blocking_sockets\"}}"
    );
    assert!(shown.contains(&process) && shown.contains(&port), "{shown}");
    let (by_process, by_port) = (
        s.counter("splice_app_by_process"),
        s.counter("splice_app_by_port"),
    );
    let inserts = s.counter("sockhash_inserts");
    let connections = 3000u64;
    let seen = s.event_driven_crr(connections);
    let marked = seen.iter().find(|v| v.verdict == Verdict::Splice);
    assert!(
        marked.is_some_and(|v| v.reason == Reason::NonBlockingSockets && v.cgroup_id.is_some()),
        "the event-driven client was never marked: {seen:#?}"
    );
    assert!(
        seen.iter().all(|v| v.verdict != Verdict::Blocking),
        "{seen:#?}"
    );
    let by_process = s.counter("splice_app_by_process") - by_process;
    let by_port = s.counter("splice_app_by_port") - by_port;
    let inserts = s.counter("sockhash_inserts") - inserts;
    eprintln!(
        "{connections} connections: client legs marked by process {by_process}, server leg \
         sockets marked by port {by_port}, sockhash inserts {inserts}"
    );
    if mb_loader::datapath::kernel_has_netns_keys() {
        // Settled first, it is marked before its first connect: its connections are
        // spliced from then on (all of them unless a scan came late).
        assert!(
            by_process > 0 && by_process <= connections,
            "client legs spliced: {by_process} of {connections}"
        );
    } else {
        assert_eq!(
            by_process, 0,
            "the 5.10 variant has no per-process connect lookup"
        );
    }
    // The server was marked before the client started: every passthrough leg, both sockets.
    assert_eq!(by_port, 2 * connections, "server leg sockets spliced");
    // Sidecar leg (2) + server leg (2) per connection, + 2 per marked client leg.
    assert_eq!(inserts, 4 * connections + 2 * by_process);

    // A bulk stream through three spliced legs arrives intact (the bulk client is a new
    // process: classified during the transfer, its one connection stays unspliced).
    let bytes: u64 = 32 * 1024 * 1024 + 3;
    let spliced = s.counter("spliced_bytes");
    let (line, _) = s.run_scanned(
        CLIENT,
        &[
            "--event-driven".into(),
            "bulk".into(),
            s.server(BULK_PORT),
            format!("--bytes={bytes}"),
        ],
    );
    assert!(line.contains(&format!("bytes={bytes}")), "{line}");
    let spliced = s.counter("spliced_bytes") - spliced;
    assert!(
        spliced >= 2 * bytes,
        "sidecar and server legs spliced {spliced} of 2 x {bytes} bytes"
    );

    assert_eq!(s.counter("map_update_failures"), 0);
}

/// The safety suite's blocking applications in the default mode, with the classifier
/// running all along: the blocking servers and clients are marked blocking, none of their
/// legs is spliced (the counters stay at zero), and every read completes — a 100 MB upload
/// with a blocking read of the reply, 2,000 blocking round trips, and a Python client
/// (sendall/recv, SO_RCVTIMEO).
#[test]
fn blocking_apps_are_never_spliced_by_default() {
    if !mb_sys::testing::kernel_tests_enabled("blocking_apps_never_spliced_by_default") {
        return;
    }
    let mut s = Setup::new("perproc-blk", false, [&[], &[]]);
    let server = s.verdict_of(s.apps[SERVER].pid());
    assert_eq!(
        (server.verdict, server.reason),
        (Verdict::Blocking, Reason::BlockingSocket),
        "{server:#?}"
    );
    let bytes: u64 = 100 * 1024 * 1024;
    let spliced = s.counter("spliced_bytes");
    let (line, seen) = s.run_scanned(
        CLIENT,
        &[
            "bulk".into(),
            s.server(BULK_PORT),
            format!("--bytes={bytes}"),
        ],
    );
    assert!(line.contains(&format!("bytes={bytes}")), "{line}");
    assert!(
        seen.iter().all(|v| v.verdict != Verdict::Splice),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|v| v.verdict == Verdict::Blocking),
        "the blocking bulk client was never seen: {seen:#?}"
    );
    let (line, seen) = s.run_scanned(
        CLIENT,
        &[
            "rr".into(),
            s.server(ECHO_PORT),
            "--count=2000".into(),
            "--warmup=0".into(),
        ],
    );
    assert!(line.contains("count=2000"), "{line}");
    assert!(
        seen.iter().all(|v| v.verdict != Verdict::Splice),
        "{seen:#?}"
    );

    let python = format!(
        r#"{PYTHON_BLOCKING_PRELUDE}
for rcvtimeo in (0, 20):
    s = connect("{ip}", {echo}, rcvtimeo)
    echo_rounds(s, 300)
    s.close()
print("python-blocking ok")
"#,
        ip = s.pods[SERVER].ipv4(),
        echo = ECHO_PORT
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &python]).stdout(Stdio::piped());
    let mut child = s.pods[CLIENT].spawn(cmd, APP_UID).expect("python3");
    let pid = child.pid();
    let mut verdicts = Vec::new();
    while child.child_mut().try_wait().unwrap().is_none() {
        verdicts.extend(s.scan().verdicts.into_iter().filter(|v| v.pid == pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.finish(Duration::from_secs(5)).expect("python client");
    assert!(out.contains("python-blocking ok"), "{out}");
    assert!(
        verdicts.iter().all(|v| v.verdict != Verdict::Splice),
        "{verdicts:#?}"
    );

    assert_eq!(s.counter("splice_app_by_process"), 0);
    assert_eq!(s.counter("splice_app_by_port"), 0);
    // The sidecar-to-sidecar leg is spliced as before.
    let spliced = s.counter("spliced_bytes") - spliced;
    assert!(spliced >= bytes, "spliced {spliced} of {bytes}");
    // Whoever was seen is in the map as blocking; no "splice" entry at all.
    let procs = s.agent.maps.proc_entries().unwrap();
    assert!(!procs.is_empty());
    assert!(
        procs.iter().all(|(_, v)| v.verdict == SPLICE_VERDICT_NO),
        "{procs:?}"
    );
    assert!(s
        .agent
        .maps
        .port_entries()
        .unwrap()
        .iter()
        .all(|(_, v)| v.verdict == SPLICE_VERDICT_NO));
}

/// The annotation has the last word: `merbridge.io/splice-app: "false"` forbids splicing the
/// legs of event-driven apps the classifier marked (`"true"` forcing it for blocking-by-
/// default apps is `pods_can_opt_in_to_splicing_their_application_legs` in datapath_e2e).
#[test]
fn splice_app_false_forbids_what_the_classifier_allows() {
    if !mb_sys::testing::kernel_tests_enabled("splice_app_false_forbids") {
        return;
    }
    let annotations =
        std::env::temp_dir().join(format!("mb-perproc-deny-{}.json", std::process::id()));
    std::fs::write(&annotations, r#"{"merbridge.io/splice-app": "false"}"#).unwrap();
    let path = annotations.to_str().unwrap().to_owned();
    let deny: &[&str] = &["--annotations", &path];
    let mut s = Setup::new("perproc-deny", true, [deny, deny]);
    std::fs::remove_file(&annotations).unwrap();
    let server = s.verdict_of(s.apps[SERVER].pid());
    assert_eq!(server.verdict, Verdict::Splice, "{server:#?}");
    let inserts = s.counter("sockhash_inserts");
    let connections = 3000u64;
    let seen = s.event_driven_crr(connections);
    assert!(
        seen.iter().any(|v| v.verdict == Verdict::Splice),
        "{seen:#?}"
    );
    assert_eq!(s.counter("splice_app_by_process"), 0);
    assert_eq!(s.counter("splice_app_by_port"), 0);
    // Only the sidecar-to-sidecar leg.
    assert_eq!(s.counter("sockhash_inserts") - inserts, 2 * connections);
    let json = s.loaded.pod_show_json(&s.pods[SERVER]);
    assert!(json.contains("\"splice_app_denied\":true"), "{json}");
}

/// A process the classifier marked event-driven that then turns its socket blocking is marked
/// blocking by the next scan, and its entry says so; the entry goes when the process goes.
/// (Between the switch and that scan its new connections may still be spliced: the window
/// docs/splice-hazard.md states.) Needs python3 (host only: the kernel-matrix guests have none).
#[test]
fn a_marked_process_that_turns_a_socket_blocking_is_reclassified() {
    if !mb_sys::testing::kernel_tests_enabled("marked_process_turns_blocking") {
        return;
    }
    let mut s = Setup::new("perproc-re", true, [&[], &[]]);
    // Re-classification: a process that was marked and then turns its socket blocking.
    let flag = std::env::temp_dir().join(format!("mb-perproc-block-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let script = format!(
        r#"
import os, select, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
s.connect_ex(("{ip}", {port}))
select.select([], [s], [], 10)
print("connected", flush=True)
while not os.path.exists("{flag}"):
    time.sleep(0.01)
s.setblocking(True)
time.sleep(30)
"#,
        ip = s.pods[SERVER].ipv4(),
        port = ECHO_PORT,
        flag = flag.display()
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]);
    let python = s.pods[CLIENT].spawn(cmd, 0).expect("python3");
    // Root in the pod is not the sidecar (UID 1337): an application process.
    let pid = python.pid();
    let before = s.verdict_of(pid);
    // Two scans with its one non-blocking socket.
    let before = if before.verdict == Verdict::Unknown {
        s.verdict_of(pid)
    } else {
        before
    };
    assert_eq!(before.verdict, Verdict::Splice, "{before:#?}");
    let key = SpliceProcKey {
        cgroup_id: before.cgroup_id.unwrap(),
        tgid: pid,
    };
    let entry = |s: &Setup| {
        s.agent
            .maps
            .proc_entries()
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.verdict)
    };
    assert_eq!(entry(&s), Some(SPLICE_VERDICT_YES));
    std::fs::write(&flag, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let report = s.scan();
        let v = report.verdicts.into_iter().find(|v| v.pid == pid).unwrap();
        if v.verdict != Verdict::Splice || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(
        (after.verdict, after.reason),
        (Verdict::Blocking, Reason::BlockingSocket)
    );
    assert_eq!(entry(&s), Some(SPLICE_VERDICT_NO));
    drop(python);
    // Gone processes leave the map.
    let deadline = Instant::now() + Duration::from_secs(5);
    while entry(&s).is_some() && Instant::now() < deadline {
        s.scan();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(entry(&s), None, "the entry of a gone process stayed");
    assert_eq!(s.counter("map_update_failures"), 0);
}
