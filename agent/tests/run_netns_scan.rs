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

/// One address in two namespaces (a dying sandbox whose address was already reused; two test
/// beds at once): matching by address alone must give up, but a pod registered with its
/// namespace cookie is still found exactly — the splice classifier and `pod show` rely on it.
#[test]
fn the_registered_cookie_picks_between_namespaces_sharing_an_address() {
    if !mb_sys::testing::kernel_tests_enabled(
        "the_registered_cookie_picks_between_namespaces_sharing_an_address",
    ) {
        return;
    }
    let node = Node::new("twins").expect("node");
    let v6 = node.process_unique_v6(0x7a, 9);
    let pod = |name: &str| {
        let mut spec = PodSpec::named(name);
        spec.ipv6 = Some(v6);
        node.add_pod(spec).expect("pod")
    };
    let (a, b) = (pod("twin-a"), pod("twin-b"));
    let ips = [IpAddr::V6(v6)];
    let inode = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    };
    let mut scanner = NetnsScanner::new();
    scanner.scan();
    assert_eq!(scanner.cookie_for(&ips), None, "ambiguous by address");
    for p in [&a, &b] {
        let cookie = p.netns_cookie().unwrap();
        assert_eq!(
            scanner.inode_for_pod(&ips, cookie),
            Some(inode(p.netns_path())),
            "the namespace with cookie {cookie}"
        );
    }
    assert_eq!(
        scanner.inode_for_pod(&ips, 1),
        None,
        "no namespace has cookie 1"
    );
}
