//! Nodes and pods: connectivity, placement, cleanup, and the creation budget.

use mb_sys::testing::kernel_tests_enabled;
use mb_testbed::{Node, PodSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Opens a listener in `server`'s namespace and connects from `client`'s; returns the
/// source address the server saw.
fn tcp_roundtrip(
    client: &mb_testbed::Pod,
    server: &mb_testbed::Pod,
    addr: SocketAddr,
) -> SocketAddr {
    let listener = server
        .run_in_netns(move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let accept = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        peer
    });
    let mut stream = client
        .run_in_netns(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    stream.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    accept.join().unwrap()
}

#[test]
fn pods_on_one_node_talk_over_ipv4_and_ipv6() {
    if !kernel_tests_enabled("pods_on_one_node_talk_over_ipv4_and_ipv6") {
        return;
    }
    let node = Node::new("one-node").unwrap();
    let a = node.add_pod(PodSpec::named("a")).unwrap();
    let b = node.add_pod(PodSpec::named("b")).unwrap();
    assert_ne!(a.ipv4(), b.ipv4());
    let seen = tcp_roundtrip(&a, &b, SocketAddr::new(b.ipv4().into(), 7000));
    assert_eq!(seen.ip(), std::net::IpAddr::from(a.ipv4()));
    let seen = tcp_roundtrip(&a, &b, SocketAddr::new(b.ipv6().into(), 7001));
    assert_eq!(seen.ip(), std::net::IpAddr::from(a.ipv6()));
    // Different pods live in different namespaces: different namespace files on every
    // kernel, and different cookies where the kernel has SO_NETNS_COOKIE (5.14+).
    use std::os::unix::fs::MetadataExt;
    let inode = |path: &std::path::Path| std::fs::metadata(path).unwrap().ino();
    assert_ne!(inode(a.netns_path()), inode(b.netns_path()));
    if mb_sys::testing::kernel_has_so_netns_cookie() {
        assert_ne!(a.netns_cookie().unwrap(), b.netns_cookie().unwrap());
    } else {
        let e = a.netns_cookie().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    }
}

#[test]
fn joined_nodes_route_between_pods() {
    if !kernel_tests_enabled("joined_nodes_route_between_pods") {
        return;
    }
    let n1 = Node::new("join1").unwrap();
    let n2 = Node::new("join2").unwrap();
    Node::join(&n1, &n2).unwrap();
    let a = n1.add_pod(PodSpec::named("a")).unwrap();
    let b = n2.add_pod(PodSpec::named("b")).unwrap();
    let seen = tcp_roundtrip(&a, &b, SocketAddr::new(b.ipv4().into(), 7000));
    assert_eq!(seen.ip(), std::net::IpAddr::from(a.ipv4()));
    let seen = tcp_roundtrip(&b, &a, SocketAddr::new(a.ipv6().into(), 7000));
    assert_eq!(seen.ip(), std::net::IpAddr::from(b.ipv6()));
}

#[test]
fn unjoined_nodes_are_isolated() {
    if !kernel_tests_enabled("unjoined_nodes_are_isolated") {
        return;
    }
    let n1 = Node::new("iso1").unwrap();
    let n2 = Node::new("iso2").unwrap();
    let a = n1.add_pod(PodSpec::named("a")).unwrap();
    let b = n2.add_pod(PodSpec::named("b")).unwrap();
    let target = SocketAddr::new(b.ipv4().into(), 7000);
    let _listener = b
        .run_in_netns(move || TcpListener::bind(target))
        .unwrap()
        .unwrap();
    let result = a
        .run_in_netns(move || TcpStream::connect_timeout(&target, Duration::from_millis(300)))
        .unwrap();
    assert!(result.is_err(), "reached a pod of an unjoined node");
}

#[test]
fn spawned_process_is_in_pod_netns_cgroup_and_uid_and_dies_on_drop() {
    if !kernel_tests_enabled("spawned_process_is_in_pod_netns_cgroup_and_uid_and_dies_on_drop") {
        return;
    }
    let node = Node::new("spawn").unwrap();
    let pod = node.add_pod(PodSpec::named("p")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "id -u; readlink /proc/self/ns/net; exec sleep 30"]);
    cmd.stdout(std::process::Stdio::piped());
    let mut child = pod.spawn(cmd, 1337).unwrap();
    let mut out = std::io::BufReader::new(child.child_mut().stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "1337");
    line.clear();
    out.read_line(&mut line).unwrap();
    let ino = mb_sys::netns::netns_inode(pod.netns_path()).unwrap();
    assert_eq!(line.trim(), format!("net:[{ino}]"));
    let pid = child.pid();
    assert!(mb_sys::cgroup::pids(pod.cgroup_path())
        .unwrap()
        .contains(&pid));
    assert!(pod.cgroup_path().starts_with(node.cgroup_path()));
    drop(child);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} survived its guard"
    );
}

#[test]
fn teardown_removes_namespaces_and_cgroups_even_on_panic() {
    if !kernel_tests_enabled("teardown_removes_namespaces_and_cgroups_even_on_panic") {
        return;
    }
    let mut paths = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let node = Node::new("panic").unwrap();
        let pod = node.add_pod(PodSpec::named("p")).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let _sleeper = pod.spawn(cmd, 0).unwrap();
        paths.push(node.netns_path().to_path_buf());
        paths.push(node.cgroup_path().to_path_buf());
        paths.push(pod.netns_path().to_path_buf());
        panic!("deliberate");
    }));
    assert!(result.is_err());
    assert_eq!(paths.len(), 3);
    for p in &paths {
        assert!(!p.exists(), "{} left behind after a panic", p.display());
    }
}

#[test]
fn bad_pod_names_are_refused_with_a_reason() {
    if !kernel_tests_enabled("bad_pod_names_are_refused_with_a_reason") {
        return;
    }
    let node = Node::new("names").unwrap();
    let err = node.add_pod(PodSpec::named("no/slash")).unwrap_err();
    assert!(err.to_string().contains("no/slash"), "{err}");
    let _a = node.add_pod(PodSpec::named("a")).unwrap();
    let err = node.add_pod(PodSpec::named("a")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
}

/// Budget: creating and destroying a two-pod node takes under 1 s.
#[test]
fn two_pod_node_lifecycle_is_under_one_second() {
    if !kernel_tests_enabled("two_pod_node_lifecycle_is_under_one_second") {
        return;
    }
    let start = Instant::now();
    {
        let node = Node::new("budget").unwrap();
        let _a = node.add_pod(PodSpec::named("a")).unwrap();
        let _b = node.add_pod(PodSpec::named("b")).unwrap();
    }
    let took = start.elapsed();
    eprintln!("two-pod node create+destroy: {took:?}");
    assert!(took < Duration::from_secs(1), "two-pod node took {took:?}");
}
