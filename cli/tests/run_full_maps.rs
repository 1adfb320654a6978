//! Full maps (issue 17 item 4): `merbridge run --max-pods 2` sizes `pod_ips` to 4 entries;
//! with more meshed pods than that, the pods that do not fit get a clear warning, are counted
//! by `merbridge_pods_not_intercepted`, and leave nothing half-written; the others are
//! written and kept up to date, the agent is ready, and a pod leaving makes room for one
//! that waited. A pinned map of another size is refused with what to do.
//!
//! Real agent, fake API server, private cgroup and bpffs. The pods carry SYNTHETIC
//! addresses (10.252.0.x, fd77::x): they only exist in the maps, no traffic.

mod common;
#[path = "../../agent/tests/k8s_support/mod.rs"]
mod k8s_support;

use common::fixture::AgentBed;
use common::{wait_until, Agent};
use k8s_support::{fixture_pod_value, synthesize_running};
use mb_agent::run::BpfPodStore;
use std::net::IpAddr;
use std::time::Duration;

const NODE: &str = "mb-full-node";

fn pod(n: u8) -> serde_json::Value {
    let template = fixture_pod_value("istio/istio-master__pod.yaml.injected");
    let v4 = format!("10.252.0.{n}");
    let v6 = format!("fd77::{n}");
    synthesize_running(template, &format!("uid-{n}"), NODE, &[&v4, &v6], "1")
}

fn not_intercepted(agent: &Agent) -> Option<u64> {
    let body = agent.get("/metrics")?.1;
    body.lines()
        .find(|l| l.starts_with("merbridge_pods_not_intercepted"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_full_pod_map_warns_counts_and_keeps_the_others_working() {
    if !mb_sys::testing::kernel_tests_enabled(
        "a_full_pod_map_warns_counts_and_keeps_the_others_working",
    ) {
        return;
    }
    let bed = AgentBed::new("full");
    let (api, pin_dir) = (&bed.api, bed.pins.pin_dir.clone());
    // Three pods of two addresses each at the first list: pod_ips holds 4 addresses.
    for n in 1..=3 {
        api.add_pod(pod(n));
    }
    let options = bed.agent_options(NODE, &["--on-exit", "keep", "--max-pods", "2"]);
    let mut agent = Agent::start(&options);
    agent.wait_ready(Duration::from_secs(30));
    let maps = BpfPodStore::open(&pin_dir).expect("maps");
    let has = |n: u8| {
        let v4: IpAddr = format!("10.252.0.{n}").parse().unwrap();
        let v6: IpAddr = format!("fd77::{n}").parse().unwrap();
        match (maps.find(v4).unwrap(), maps.find(v6).unwrap()) {
            (Some(_), Some(_)) => Some(true),
            (None, None) => Some(false),
            _ => None, // half-written: never acceptable
        }
    };
    let written = || (1..=4).filter(|&n| has(n) == Some(true)).count();
    let half = || (1..=4).any(|n| has(n).is_none());
    assert_eq!(written(), 2, "{}", agent.log());
    assert!(!half(), "a pod is half-written:\n{}", agent.log());
    assert_eq!(not_intercepted(&agent), Some(1), "{}", agent.log());
    let log = agent.log();
    assert!(log.contains("is full"), "{log}");
    assert!(log.contains("NOT intercepted"), "{log}");
    assert!(log.contains("--max-pods"), "{log}");

    // A fourth arrives while running: refused the same way, the others untouched.
    api.add_pod(pod(4));
    wait_until(Duration::from_secs(10), "pod 4 counted", || {
        not_intercepted(&agent) == Some(2)
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log()));
    assert_eq!(written(), 2);
    assert!(!half());
    assert_eq!(has(4), Some(false));

    // One written pod leaves: a waiting one takes its room.
    let leaving = (1..=3).find(|&n| has(n) == Some(true)).unwrap();
    api.delete_pod(&format!("uid-{leaving}"));
    wait_until(Duration::from_secs(10), "a waiting pod written", || {
        not_intercepted(&agent) == Some(1) && written() == 2 && has(leaving) == Some(false)
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log()));
    assert!(!half());
    assert!(agent.log().contains("now that they have room"));
    assert!(agent.terminate(Duration::from_secs(10)).success());

    // The pins keep their size: another --max-pods over them is refused, saying what to do.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_merbridge"))
        .args(["load", "--mesh", "istio", "--max-pods", "3", "--cgroup"])
        .arg(bed.cgroup.path())
        .arg("--pin-dir")
        .arg(&pin_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("with 2 entries, --max-pods asks for 3") && text.contains("merbridge unload"),
        "{text}"
    );
}
