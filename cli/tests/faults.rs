//! Faults under load, counted (issue 17, CI form). Two test-bed pods with the reference
//! sidecar, the real `merbridge run` agent following a fake API server, and a steady load
//! from the client pod: `MB_FAULTS_RATE` (default 200) new connections per second, each
//! answer checked (right server, seen through its sidecar), plus 8 long-lived echo
//! connections doing round trips. During the load, one fault after another:
//!
//! 1. the agent SIGKILLed and a new one started (it adopts the pins);
//! 2. `merbridge load` over the loaded data path (every program swapped in place);
//! 3. two agents at once: a second one started (it waits on the lock), the first SIGTERMed;
//! 4. a meshed pod's network namespace and cgroup removed while the pod is in the maps.
//!
//! Counted per fault window: failed connects, failed requests, bypassed (the server saw a
//! peer other than its sidecar, or a connection is missing from the client sidecar's
//! records), and the fault's own time (to ready, or to swap). Prints a table and a JSON line;
//! `MB_FAULTS_JSON=<file>` also writes the JSON there. Goal: 0 failed, 0 bypassed.

mod common;
#[path = "../../agent/tests/k8s_support/mod.rs"]
mod k8s_support;

use common::{wait_until, Agent, AgentOptions};
use k8s_support::server::FakeApiServer;
use k8s_support::{fixture_pod_value, synthesize_running, TempDir};
use mb_agent::run::BpfPodStore;
use mb_sys::bpffs::PrivateBpffs;
use mb_testbed::scenarios::{start_app, Binaries, APP_UID, ECHO_PORT, WHOAMI_PORT};
use mb_testbed::sidecar::Listener;
use mb_testbed::workload::LoadStats;
use mb_testbed::{Node, Pod, PodSpec, Sidecar};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NODE: &str = "mb-faults-node";
const LOAD_SECS: u64 = 14;

fn api_pod(pod: &Pod, uid: &str) -> serde_json::Value {
    let template = fixture_pod_value("istio/istio-master__pod.yaml.injected");
    let v4 = pod.ipv4().to_string();
    let v6 = pod.ipv6().to_string();
    synthesize_running(template, uid, NODE, &[&v4, &v6], "1")
}

struct UnloadOnDrop {
    pin_dir: std::path::PathBuf,
    cgroup: std::path::PathBuf,
}

impl Drop for UnloadOnDrop {
    fn drop(&mut self) {
        let _ = mb_loader::datapath::unload_datapath(&self.pin_dir, Some(&self.cgroup));
    }
}

/// One fault: when it started (ms into the load) and how long its own step took.
struct Fault {
    name: &'static str,
    at_ms: u64,
    took_ms: u64,
}

impl Fault {
    /// The fault `name` whose step ran from `at_ms` to `now_ms` into the load.
    fn since(name: &'static str, at_ms: u64, now_ms: u64) -> Fault {
        Fault {
            name,
            at_ms,
            took_ms: now_ms - at_ms,
        }
    }
}

#[test]
fn faults_under_load_lose_nothing() {
    if !mb_sys::testing::kernel_tests_enabled("faults_under_load_lose_nothing") {
        return;
    }
    let rate: u32 = std::env::var("MB_FAULTS_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
    let node = Node::new("faults").expect("node");
    let bpffs = PrivateBpffs::new("mb-faults").expect("private bpffs");
    let pin_dir = bpffs.path().join("merbridge");
    let _cleanup = UnloadOnDrop {
        pin_dir: pin_dir.clone(),
        cgroup: node.cgroup_path().to_path_buf(),
    };
    // An IPv6 address unique to this process tells the agent's scanner which namespace is
    // ours (other test beds reuse the IPv4 subnets).
    let unique_pod = |name: &str, host: u16| {
        let mut spec = PodSpec::named(name);
        spec.ipv6 = Some(node.process_unique_v6(0x78, host));
        node.add_pod(spec).expect("pod")
    };
    let client = unique_pod("client", 2);
    let server = unique_pod("server", 3);
    let ghost = unique_pod("ghost", 4);
    let sidecar = |pod: &Pod| Sidecar::start_istio(&bins.sidecar, pod).expect("sidecar");
    let client_sidecar = sidecar(&client);
    let server_sidecar = sidecar(&server);
    let _app = start_app(&server, &bins).expect("app");

    let api = FakeApiServer::start(None);
    api.add_pod(api_pod(&client, "uid-client"));
    api.add_pod(api_pod(&server, "uid-server"));
    api.add_pod(api_pod(&ghost, "uid-ghost"));
    let dir = TempDir::new("faults");
    let options = AgentOptions {
        api: &api,
        dir: &dir.0,
        node: NODE,
        cgroup: node.cgroup_path(),
        pin_dir: &pin_dir,
        extra: &["--on-exit", "keep", "--log-level", "info"],
    };
    let mut agent = Agent::start(&options);
    agent.wait_ready(Duration::from_secs(30));
    let maps = BpfPodStore::open(&pin_dir).expect("maps");
    for pod in [&client, &server, &ghost] {
        let cookie = pod.netns_cookie().unwrap();
        wait_until(Duration::from_secs(10), "pod namespace found", || {
            maps.find(pod.ipv4().into())
                .unwrap()
                .is_some_and(|e| e.netns == cookie)
        })
        .unwrap_or_else(|e| panic!("{e} for {}:\n{}", pod.name(), agent.log()));
    }

    let whoami = SocketAddr::new(IpAddr::V4(server.ipv4()), WHOAMI_PORT);
    let echo = SocketAddr::new(IpAddr::V4(server.ipv4()), ECHO_PORT);
    let outbound_before = count_outbound(&client_sidecar, whoami);
    let mut cmd = Command::new(&bins.workload);
    cmd.args(["load", "--whoami", &whoami.to_string()])
        .args(["--echo", &echo.to_string(), "--expect-peer", "127.0.0.6"])
        .args(["--rate", &rate.to_string(), "--rr-connections", "8"])
        .args(["--secs", &LOAD_SECS.to_string()])
        .stdout(Stdio::piped());
    let load = client.spawn(cmd, APP_UID).expect("load");
    let started = Instant::now();
    let at = || started.elapsed().as_millis() as u64;
    let wait_to = |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms).saturating_sub(started.elapsed()));
    };
    let mut faults = Vec::new();

    // 1. SIGKILL, then a new agent: nothing in the data path depended on the process.
    wait_to(2_000);
    let t = at();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(agent);
    let mut agent = Agent::start(&options);
    agent.wait_ready(Duration::from_secs(30));
    faults.push(Fault::since("agent SIGKILL + restart", t, at()));

    // 2. A reload over the loaded data path: every program swapped in place.
    wait_to(5_000);
    let t = at();
    let out = Command::new(env!("CARGO_BIN_EXE_merbridge"))
        .args(["load", "--mesh", "istio", "--cgroup"])
        .arg(node.cgroup_path())
        .arg("--pin-dir")
        .arg(&pin_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.matches("(replaced)").count() >= 4, "{text}");
    faults.push(Fault::since("reload, programs swapped", t, at()));

    // 3. A rolling update: the new agent waits for the old one's lock, then takes over.
    wait_to(8_000);
    let t = at();
    let mut successor = Agent::start(&options);
    wait_until(Duration::from_secs(10), "the successor waits", || {
        successor.log().contains("another merbridge agent")
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", successor.log()));
    assert!(agent.terminate(Duration::from_secs(10)).success());
    successor.wait_ready(Duration::from_secs(30));
    faults.push(Fault::since("two agents, rolling update", t, at()));

    // 4. A meshed pod's namespace goes while the pod is in the maps.
    wait_to(11_000);
    let t = at();
    drop(ghost);
    faults.push(Fault::since("pod netns + cgroup removed", t, at()));

    let line = load
        .finish(Duration::from_secs(LOAD_SECS + 30))
        .expect("load finished");
    let stats = LoadStats::parse(line.trim()).expect("load line");
    // Records are written when a relayed connection ends: let the last ones land.
    std::thread::sleep(Duration::from_millis(500));
    let answered = stats.connects - stats.failed_connects - stats.failed_requests;
    let through_client_sidecar = count_outbound(&client_sidecar, whoami) - outbound_before;
    let missed_client_sidecar = answered.saturating_sub(through_client_sidecar as u64);
    let server_inbound = server_sidecar
        .records()
        .iter()
        .filter(|r| r.listener == Listener::Inbound)
        .count();

    let window = |i: usize| {
        let from = faults[i].at_ms;
        let to = faults.get(i + 1).map_or(u64::MAX, |f| f.at_ms);
        stats
            .failures_ms
            .iter()
            .filter(|&&ms| ms >= from && ms < to)
            .count()
    };
    let before_first = stats
        .failures_ms
        .iter()
        .filter(|&&ms| ms < faults[0].at_ms)
        .count();
    println!(
        "\nfaults under load: {rate} new connections/s + 8 RR connections for {LOAD_SECS} s \
         (client -> sidecar -> sidecar -> server)"
    );
    println!("| fault | at (s) | took (ms) | failures in its window |\n|---|---:|---:|---:|");
    for (i, f) in faults.iter().enumerate() {
        println!(
            "| {} | {:.1} | {} | {} |",
            f.name,
            f.at_ms as f64 / 1000.0,
            f.took_ms,
            window(i)
        );
    }
    println!(
        "totals: connects {} (failed {}), requests failed {}, bypassed {} (server saw another \
         peer) + {} (missing from the client sidecar's records), RR round trips {} (failed {}), \
         failures before the first fault {}; server sidecar inbound records {}",
        stats.connects,
        stats.failed_connects,
        stats.failed_requests,
        stats.bypassed,
        missed_client_sidecar,
        stats.rr_requests,
        stats.rr_failed,
        before_first,
        server_inbound
    );
    let json = serde_json::json!({
        "rate_per_s": rate,
        "rr_connections": 8,
        "seconds": LOAD_SECS,
        "connects": stats.connects,
        "failed_connects": stats.failed_connects,
        "failed_requests": stats.failed_requests,
        "bypassed": stats.bypassed + missed_client_sidecar,
        "rr_round_trips": stats.rr_requests,
        "rr_failed": stats.rr_failed,
        "faults": faults.iter().enumerate().map(|(i, f)| serde_json::json!({
            "fault": f.name, "at_ms": f.at_ms, "took_ms": f.took_ms, "failures": window(i),
        })).collect::<Vec<_>>(),
    });
    println!("{json}");
    if let Ok(path) = std::env::var("MB_FAULTS_JSON") {
        std::fs::write(path, format!("{json}\n")).expect("write MB_FAULTS_JSON");
    }

    assert!(stats.connects >= u64::from(rate) * LOAD_SECS / 2, "{line}");
    assert!(stats.rr_requests > 1000, "{line}");
    assert_eq!(
        (
            stats.failed_connects,
            stats.failed_requests,
            stats.rr_failed
        ),
        (0, 0, 0),
        "{line}"
    );
    assert_eq!((stats.bypassed, missed_client_sidecar), (0, 0), "{line}");

    // 5. bpffs unmounted under the running agent (the test's private one). A named failure
    //    mode: the agent's open pin directory keeps the detached bpffs, its pinned links and
    //    so interception alive while it runs, and /readyz says what happened; once it exits
    //    the links go and every connection bypasses the sidecars, and a new agent refuses
    //    the pin directory until bpffs is mounted again.
    let small_load = || {
        let mut cmd = Command::new(&bins.workload);
        cmd.args(["load", "--whoami", &whoami.to_string()])
            .args(["--echo", &echo.to_string(), "--expect-peer", "127.0.0.6"])
            .args(["--rate", "50", "--rr-connections", "1", "--secs", "2"])
            .stdout(Stdio::piped());
        let line = client
            .spawn(cmd, APP_UID)
            .unwrap()
            .finish(Duration::from_secs(30))
            .unwrap();
        LoadStats::parse(line.trim()).unwrap()
    };
    nix::mount::umount2(bpffs.path(), nix::mount::MntFlags::MNT_DETACH).expect("umount bpffs");
    let while_running = small_load();
    let readyz = successor.get("/readyz").expect("readyz");
    assert!(successor.terminate(Duration::from_secs(10)).success());
    let after_exit = small_load();
    let mut restarted = Agent::start(&options);
    wait_until(Duration::from_secs(10), "the restart refuses", || {
        restarted.log().contains("is not a bpf filesystem")
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", restarted.log()));
    let restart_exit = restarted.terminate(Duration::from_secs(5));
    println!(
        "| bpffs unmounted, agent running | - | - | failed {}, bypassed {} of {}; /readyz {} |",
        while_running.failed_connects + while_running.failed_requests,
        while_running.bypassed,
        while_running.connects,
        readyz.0
    );
    println!(
        "| bpffs unmounted, after the agent exits | - | - | failed {}, bypassed {} of {} (links \
         gone; a new agent refuses: not bpffs) |",
        after_exit.failed_connects + after_exit.failed_requests,
        after_exit.bypassed,
        after_exit.connects
    );
    assert_eq!(
        (
            while_running.failed_connects,
            while_running.failed_requests,
            while_running.bypassed
        ),
        (0, 0, 0)
    );
    assert_eq!(readyz.0, 503, "{}", readyz.1);
    assert!(readyz.1.contains("pinned links are gone"), "{}", readyz.1);
    assert_eq!(
        after_exit.bypassed, after_exit.connects,
        "every connection bypasses"
    );
    assert!(!restart_exit.success());
}

/// Outbound records of `sidecar` for connections to `target`.
fn count_outbound(sidecar: &Sidecar, target: SocketAddr) -> usize {
    sidecar
        .records()
        .iter()
        .filter(|r| r.listener == Listener::Outbound && r.original_dst == Some(target))
        .count()
}
