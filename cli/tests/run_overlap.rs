//! Two `merbridge run` agents on one node at once, as a DaemonSet rolling update makes them:
//! the second waits on the pin directory's lock (and says so, naming the first's pid), loads
//! and writes nothing while the first runs, and takes over when it exits.
//!
//! Real agents against the fake API server, a private cgroup and a private bpffs. The pods
//! carry SYNTHETIC addresses (10.251.0.x): they only ever exist in the maps, no traffic.

mod common;
#[path = "../../agent/tests/k8s_support/mod.rs"]
mod k8s_support;

use common::fixture::AgentBed;
use common::{wait_until, Agent};
use k8s_support::{fixture_pod_value, synthesize_running};
use mb_agent::run::BpfPodStore;
use mb_loader::datapath::hook_status;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

const NODE: &str = "mb-overlap-node";

fn pod(uid: &str, ip: &str) -> serde_json::Value {
    let template = fixture_pod_value("istio/istio-master__pod.yaml.injected");
    synthesize_running(template, uid, NODE, &[ip], "1")
}

/// The program id behind each pinned link: changes exactly when some agent (re)loads.
fn link_prog_ids(pin_dir: &Path) -> Vec<u32> {
    hook_status(pin_dir)
        .iter()
        .filter_map(|h| h.link.as_ref().map(|l| l.prog_id))
        .collect()
}

#[test]
fn a_second_agent_waits_for_the_first_and_then_takes_over() {
    if !mb_sys::testing::kernel_tests_enabled(
        "a_second_agent_waits_for_the_first_and_then_takes_over",
    ) {
        return;
    }
    let bed = AgentBed::new("run-overlap");
    let (api, pin_dir) = (&bed.api, bed.pins.pin_dir.clone());
    api.add_pod(pod("uid-one", "10.251.0.1"));
    let options = bed.agent_options(NODE, &["--on-exit", "keep"]);
    let in_maps = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        BpfPodStore::open(&pin_dir)
            .ok()
            .and_then(|m| m.find(ip).ok().flatten())
            .is_some()
    };

    let mut first = Agent::start(&options);
    first.wait_ready(Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "pod one in the maps", || {
        in_maps("10.251.0.1")
    })
    .unwrap();
    let first_progs = link_prog_ids(&pin_dir);
    assert!(!first_progs.is_empty());

    let mut second = Agent::start(&options);
    let waiting = format!("another merbridge agent (pid {})", first.pid());
    wait_until(
        Duration::from_secs(20),
        "the second agent says it waits",
        || second.log().contains(&waiting),
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", second.log()));

    // While it waits, the first agent alone follows the API; the second has loaded nothing
    // (same programs behind the links) and serves no metrics (so it is not ready).
    api.add_pod(pod("uid-two", "10.251.0.2"));
    wait_until(
        Duration::from_secs(10),
        "pod two written by the first",
        || in_maps("10.251.0.2"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(link_prog_ids(&pin_dir), first_progs, "{}", second.log());
    assert!(second.get("/readyz").is_none(), "{}", second.log());
    assert!(
        !second.log().contains("data path attached"),
        "{}",
        second.log()
    );

    // The first exits (rolling update, data path kept): the second takes over and adopts it.
    let status = first.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", first.log());
    second.wait_ready(Duration::from_secs(30));
    let log = second.log();
    assert!(log.contains("took over"), "{log}");
    assert!(log.contains("replaced in place"), "{log}");
    let second_progs = link_prog_ids(&pin_dir);
    assert_eq!(second_progs.len(), first_progs.len());
    assert!(
        second_progs.iter().all(|id| !first_progs.contains(id)),
        "the second agent swapped every program: {first_progs:?} -> {second_progs:?}"
    );
    assert!(in_maps("10.251.0.1") && in_maps("10.251.0.2"));
    api.add_pod(pod("uid-three", "10.251.0.3"));
    api.delete_pod("uid-one");
    wait_until(
        Duration::from_secs(10),
        "the second agent follows the API",
        || in_maps("10.251.0.3") && !in_maps("10.251.0.1"),
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", second.log()));
    assert!(second.terminate(Duration::from_secs(10)).success());
}

/// A waiting agent is not stuck: SIGTERM ends it at once, and it has touched nothing.
#[test]
fn a_waiting_agent_dies_of_sigterm_without_touching_the_data_path() {
    if !mb_sys::testing::kernel_tests_enabled(
        "a_waiting_agent_dies_of_sigterm_without_touching_the_data_path",
    ) {
        return;
    }
    let bed = AgentBed::new("run-overlap2");
    let pin_dir = bed.pins.pin_dir.clone();
    let options = bed.agent_options(NODE, &["--on-exit", "unload"]);
    let mut first = Agent::start(&options);
    first.wait_ready(Duration::from_secs(30));
    let progs = link_prog_ids(&pin_dir);
    let mut second = Agent::start(&options);
    wait_until(Duration::from_secs(20), "the second agent waits", || {
        second.log().contains("another merbridge agent")
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", second.log()));
    // SIGTERM's default action: the waiting agent had not blocked it yet.
    let status = second.terminate(Duration::from_secs(5));
    assert!(!status.success());
    assert_eq!(link_prog_ids(&pin_dir), progs);
    assert!(first.get("/readyz").is_some_and(|(code, _)| code == 200));
    assert!(first.terminate(Duration::from_secs(10)).success());
    assert!(!pin_dir.exists(), "the first unloaded on exit");
}
