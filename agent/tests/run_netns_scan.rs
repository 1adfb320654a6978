//! The pod-identity scanner against real namespaces (root): a test-bed pod is a named network
//! namespace with addresses and, at first, no process in it — found through `/run/netns` by
//! entering it; then with a process in it — found through `/proc/<pid>/ns/net` without
//! entering. Either way the cookie is the namespace's own.

use mb_agent::run::NetnsScanner;
use mb_testbed::{Node, PodSpec};
use std::net::IpAddr;
use std::process::Command;

#[test]
fn scanner_finds_a_pod_namespace_by_its_addresses() {
    if !mb_sys::testing::kernel_tests_enabled("scanner_finds_a_pod_namespace_by_its_addresses") {
        return;
    }
    let node = Node::new("scan").expect("node");
    let mut spec = PodSpec::named("lonely");
    let v6 = node.process_unique_v6(0x79, 9);
    spec.ipv6 = Some(v6);
    let pod = node.add_pod(spec).expect("pod");
    let ips = [IpAddr::V4(pod.ipv4()), IpAddr::V6(v6)];
    let cookie = pod.netns_cookie().unwrap();

    let mut scanner = NetnsScanner::new();
    let stats = scanner.scan();
    assert!(stats.namespaces >= 2, "{stats:?}");
    assert_eq!(scanner.cookie_for(&ips), Some(cookie), "via /run/netns");
    assert_eq!(scanner.cookie_for(&["192.0.2.254".parse().unwrap()]), None);

    // Through /proc only (no /run/netns): a process must live in the namespace. Asked by the
    // IPv6 address alone: another test bed's pod may hold the same IPv4 address, with a
    // process in it, while this runs.
    let ips = [IpAddr::V6(v6)];
    let mut procs_only = NetnsScanner::with_roots(std::path::Path::new("/proc"), vec![]);
    procs_only.scan();
    assert_eq!(procs_only.cookie_for(&ips), None, "no process in it yet");
    let mut sleeper = pod
        .spawn(
            {
                let mut c = Command::new("sleep");
                c.arg("30");
                c
            },
            0,
        )
        .expect("a process in the pod");
    let stats = procs_only.scan();
    assert!(stats.new_namespaces >= 1, "{stats:?}");
    assert_eq!(
        procs_only.cookie_for(&ips),
        Some(cookie),
        "via /proc/<pid>/ns/net"
    );
    let _ = sleeper.child_mut().kill();
    let _ = sleeper.child_mut().wait();
    let stats = procs_only.scan();
    assert!(stats.gone >= 1, "{stats:?}");
    assert_eq!(procs_only.cookie_for(&ips), None, "forgotten when gone");
}
