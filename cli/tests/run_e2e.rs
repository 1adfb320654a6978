//! `merbridge run` end to end, as root: a test-bed node with two pods (the reference sidecar
//! in each), a fake API server on loopback that says which pods exist, and the real agent
//! binary spawned with `--kubeconfig` (the fake server), `--cgroup` (the node's private
//! cgroup) and `--pin-dir` (a private bpffs).
//!
//! The pods are the real injected fixture `istio/istio-master__pod.yaml.injected` with a
//! SYNTHETIC uid, nodeName and status (the test-bed pods' addresses), added by
//! `synthesize_running`.

mod common;
#[path = "../../agent/tests/k8s_support/mod.rs"]
mod k8s_support;

use common::fixture::{api_pod, PrivatePins, TwoPodNode};
use common::{wait_until, Agent, AgentOptions};
use k8s_support::server::FakeApiServer;
use k8s_support::TempDir;
use mb_loader::datapath::hook_status;
use mb_testbed::scenarios::{whoami, APP_UID, ECHO_PORT, WHOAMI_PORT};
use mb_testbed::sidecar::{Listener, Record};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const NODE: &str = "mb-run-node";
const DS_PATH: &str = "/apis/apps/v1/namespaces/mb-system/daemonsets/merbridge";

fn outbound(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| r.listener == Listener::Outbound)
        .count()
}

#[test]
fn run_follows_the_api_and_leaves_or_unloads_on_sigterm() {
    if !mb_sys::testing::kernel_tests_enabled(
        "run_follows_the_api_and_leaves_or_unloads_on_sigterm",
    ) {
        return;
    }
    let fixture = TwoPodNode::start("run", NODE, 0x77);
    let TwoPodNode {
        api,
        node,
        client,
        server,
        client_sidecar,
        server_sidecar,
        bins,
        ..
    } = &fixture;
    let pin_dir = &fixture.pins.pin_dir;
    api.set_object(
        DS_PATH,
        Some(
            serde_json::json!({"kind":"DaemonSet","apiVersion":"apps/v1",
            "metadata":{"name":"merbridge","namespace":"mb-system","uid":"ds-1"}}),
        ),
    );
    let options = fixture.agent_options(&[
        "--ipv6",
        "--daemonset-namespace",
        "mb-system",
        "--daemonset-name",
        "merbridge",
    ]);
    let mut agent = Agent::start(&options);
    agent.wait_ready(Duration::from_secs(30));

    // Both pods are in the maps, each with its own namespace found by the scanner.
    let maps = fixture.wait_for_both_pods(&agent);
    let server_id = maps.find(server.ipv4().into()).unwrap().unwrap().pod_id;

    // The client's connect goes through its sidecar.
    let target = SocketAddr::new(IpAddr::V4(server.ipv4()), WHOAMI_PORT);
    let (peer, local) = whoami(client, bins, APP_UID, target, None);
    assert_eq!(local, target);
    assert_eq!(
        peer.ip(),
        "127.0.0.6".parse::<IpAddr>().unwrap(),
        "via the sidecars"
    );
    let records = client_sidecar.wait_for_records(1, Duration::from_secs(5));
    assert_eq!(outbound(&records), 1, "client sidecar: {records:#?}");
    assert_eq!(records[0].original_dst, Some(target));

    // Inbound from outside the pod (here: the node's own namespace, outside the node
    // cgroup) goes through the server's sidecar: the agent attached sk_lookup to the pod's
    // namespace and adopted the listener the sidecar opened before the data path existed.
    wait_until(Duration::from_secs(10), "server listener adopted", || {
        mb_agent::inbound::listeners(pin_dir, server_id).is_ok_and(|l| l.ipv4 && l.ipv6)
    })
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    for ip in [IpAddr::V4(server.ipv4()), IpAddr::V6(server.ipv6())] {
        let to = SocketAddr::new(ip, WHOAMI_PORT);
        let (peer, _) = mb_sys::netns::run_in_netns(node.netns_path(), move || {
            mb_testbed::workload::whoami(to)
        })
        .unwrap()
        .unwrap_or_else(|e| panic!("node -> {to}: {e}; agent log:\n{}", agent.log()));
        let passthrough: IpAddr = if ip.is_ipv4() {
            "127.0.0.6".parse().unwrap()
        } else {
            "::6".parse().unwrap()
        };
        assert_eq!(peer.ip(), passthrough, "{to}: what the app saw");
        // The sidecar prints a record when the connection has ended.
        wait_until(
            Duration::from_secs(5),
            "the server sidecar's record",
            || {
                server_sidecar
                    .records()
                    .iter()
                    .any(|r| r.local == to && r.original_dst == Some(to))
            },
        )
        .unwrap_or_else(|e| panic!("{e}: {:#?}", server_sidecar.records()));
    }
    assert_eq!(mb_agent::inbound::list(pin_dir).unwrap().len(), 2);

    let metrics = agent.get("/metrics").expect("metrics").1;
    assert!(metrics.contains("merbridge_inbound_links 2"), "{metrics}");
    assert!(
        metrics.contains("merbridge_inbound_errors_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("merbridge_pods{mesh=\"istio\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("merbridge_pods_without_netns 0"),
        "{metrics}"
    );
    assert!(metrics.contains("merbridge_ready 1"), "{metrics}");
    // The per-process splice classifier runs (default mode = sidecars on this kernel): the
    // test bed's blocking app server is marked blocking, never spliced.
    wait_until(Duration::from_secs(10), "blocking apps classified", || {
        agent.get("/metrics").is_some_and(|(_, m)| {
            m.lines().any(|l| {
                l.strip_prefix(
                    "merbridge_splice_processes{verdict=\"blocking\",reason=\"blocking_socket\"} ",
                )
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 1)
            })
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            agent.get("/metrics").map(|m| m.1).unwrap_or_default()
        )
    });

    // The API deletes the client: its traffic is no longer redirected.
    api.delete_pod("uid-client");
    wait_until(
        Duration::from_secs(10),
        "client removed from the maps",
        || {
            maps.find(client.ipv4().into()).unwrap().is_none()
                && maps.find(client.ipv6().into()).unwrap().is_none()
        },
    )
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    let links = mb_agent::inbound::list(pin_dir).unwrap();
    assert_eq!(
        links.len(),
        1,
        "the client's inbound link went with it: {links:?}"
    );
    assert_eq!(links[0].0, Some(server_id));
    let (_, local) = whoami(client, bins, APP_UID, target, None);
    assert_eq!(local, target);
    std::thread::sleep(Duration::from_millis(300));
    let records = client_sidecar.records();
    assert_eq!(
        outbound(&records),
        1,
        "no new outbound record: {records:#?}"
    );

    // SIGTERM while our DaemonSet exists (rolling upgrade): everything stays attached.
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}\n{}", agent.log());
    assert!(agent.log().contains("rolling upgrade"), "{}", agent.log());
    assert!(!hook_status(pin_dir).is_empty(), "still attached");
    assert_eq!(
        maps.find(server.ipv4().into()).unwrap().map(|e| e.pod_id),
        Some(server_id),
        "maps kept"
    );

    // The successor adopts the data path: programs replaced in place, the server keeps its id,
    // and the re-added client is intercepted again.
    let mut agent = Agent::start(&options);
    agent.wait_ready(Duration::from_secs(30));
    assert!(agent.log().contains("replaced in place"), "{}", agent.log());
    assert_eq!(
        maps.find(server.ipv4().into()).unwrap().map(|e| e.pod_id),
        Some(server_id),
        "adopted with the same id"
    );
    api.add_pod(api_pod(client, "uid-client-2", NODE));
    let client_cookie = client.netns_cookie().unwrap();
    wait_until(
        Duration::from_secs(10),
        "client back in the maps, with its namespace",
        || {
            maps.find(client.ipv4().into())
                .unwrap()
                .is_some_and(|e| e.netns == client_cookie)
        },
    )
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    wait_until(Duration::from_secs(10), "both inbound links again", || {
        mb_agent::inbound::list(pin_dir).is_ok_and(|l| l.len() == 2)
    })
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    wait_until(Duration::from_secs(5), "the adoption logged", || {
        agent.log().contains("inbound capture Adopted")
    })
    .unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
    assert!(
        agent.log().contains("Adopted"),
        "server link adopted: {}",
        agent.log()
    );
    let _ = whoami(client, bins, APP_UID, target, None);
    let records = client_sidecar.wait_for_records(2, Duration::from_secs(5));
    assert_eq!(
        outbound(&records),
        2,
        "through the sidecar again: {records:#?}"
    );

    // SIGTERM while the DaemonSet is being deleted: unloaded.
    api.set_object(
        DS_PATH,
        Some(
            serde_json::json!({"kind":"DaemonSet","apiVersion":"apps/v1",
            "metadata":{"name":"merbridge","namespace":"mb-system","uid":"ds-1",
                        "deletionTimestamp":"2026-01-01T00:00:00Z"}}),
        ),
    );
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "agent exit: {status:?}\n{}", agent.log());
    assert!(
        agent.log().contains("is being deleted: unloading"),
        "{}",
        agent.log()
    );
    assert!(
        hook_status(pin_dir).is_empty(),
        "detached:\n{}",
        agent.log()
    );
    assert!(!pin_dir.exists(), "pins removed");
}

#[test]
fn run_refuses_bad_flags_with_a_hint() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_merbridge"))
        .args(["run", "--mesh", "istio", "--node-name", "n"])
        .args(["--on-exit", "sometimes"])
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--on-exit \"sometimes\": use keep, unload or auto"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_merbridge"))
        .args(["run", "--mesh", "istio"])
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no node name"), "{err}");
}

/// An agent upgrade (SIGTERM with `--on-exit keep`, a new agent adopts the pins) while a
/// client holds a redirected connection and keeps talking on it: not one round trip fails.
#[test]
fn run_restart_keeps_a_live_connection() {
    if !mb_sys::testing::kernel_tests_enabled("run_restart_keeps_a_live_connection") {
        return;
    }
    let fixture = TwoPodNode::start("run-restart", NODE, 0x78);
    let TwoPodNode {
        client,
        server,
        client_sidecar,
        bins,
        node,
        ..
    } = &fixture;
    let pin_dir = &fixture.pins.pin_dir;
    let options = fixture.agent_options(&["--on-exit", "keep"]);
    let mut agent = Agent::start(&options);
    agent.wait_ready(Duration::from_secs(30));
    fixture.wait_for_both_pods(&agent);

    // One persistent connection, many round trips, spanning the restart.
    let mut cmd = std::process::Command::new(&bins.workload);
    cmd.args([
        "rr".to_string(),
        format!(
            "--to={}",
            SocketAddr::new(IpAddr::V4(server.ipv4()), ECHO_PORT)
        ),
        "--count=80000".into(),
        "--warmup=10".into(),
    ])
    .stdout(std::process::Stdio::piped());
    let mut rr = client.spawn(cmd, APP_UID).expect("rr client");
    std::thread::sleep(Duration::from_millis(200));
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", agent.log());
    let mut successor = Agent::start(&options);
    successor.wait_ready(Duration::from_secs(30));
    assert!(
        successor.log().contains("replaced in place"),
        "{}",
        successor.log()
    );
    assert!(
        rr.child_mut().try_wait().unwrap().is_none(),
        "the connection must still be in use after the restart: raise --count"
    );
    let out = rr
        .finish(Duration::from_secs(120))
        .expect("every round trip succeeded across the restart");
    assert!(
        out.contains("rr count=80000 "),
        "every round trip answered on the one connection: {out}"
    );
    let records = client_sidecar.wait_for_records(1, Duration::from_secs(5));
    assert_eq!(
        outbound(&records),
        1,
        "one redirected connection: {records:#?}"
    );
    assert_eq!(records[0].error, None, "{records:#?}");

    // Someone unloads behind the agent's back: it stops saying ready, and says why.
    assert_eq!(successor.get("/readyz").map(|r| r.0), Some(200));
    mb_loader::datapath::unload_datapath(pin_dir, Some(node.cgroup_path())).expect("unload");
    let (code, body) = successor.get("/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("pinned links are gone"), "{body}");
}

/// No pods at all, the DaemonSet gone (404): SIGTERM unloads; `--on-exit` parsing and the
/// empty first list are covered on the way.
#[test]
fn run_unloads_when_its_daemonset_is_gone() {
    if !mb_sys::testing::kernel_tests_enabled("run_unloads_when_its_daemonset_is_gone") {
        return;
    }
    let cgroup = mb_sys::cgroup::OwnedCgroup::create_private("mb-test-run-gone").expect("cgroup");
    let pins = PrivatePins::new("mb-run-gone", cgroup.path());
    let pin_dir = &pins.pin_dir;
    let api = FakeApiServer::start(None);
    let dir = TempDir::new("run-gone");
    let extra = [
        "--on-exit",
        "auto",
        "--daemonset-namespace",
        "mb-system",
        "--daemonset-name",
        "merbridge",
    ];
    let options = AgentOptions::new(&api, &dir, NODE, cgroup.path(), pin_dir, &extra);
    let mut agent = Agent::start(&options);
    agent.wait_ready(Duration::from_secs(30));
    assert!(!hook_status(pin_dir).is_empty());
    let metrics = agent.get("/metrics").expect("metrics").1;
    assert!(
        metrics.contains("merbridge_pods{mesh=\"istio\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("merbridge_map_entries{map=\"pod_ips\"} 0"),
        "{metrics}"
    );
    let status = agent.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", agent.log());
    assert!(
        agent.log().contains("is gone: unloading"),
        "{}",
        agent.log()
    );
    assert!(hook_status(pin_dir).is_empty());
    assert!(!pin_dir.exists());
    assert!(
        api.requests().iter().any(|r| r.path == DS_PATH),
        "asked the API about its DaemonSet"
    );
}
