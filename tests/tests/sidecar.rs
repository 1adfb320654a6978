//! The reference sidecar and workloads in pods: error records, UID check, half-close, loop
//! guard, installed rules, DNS responder.

use mb_sys::testing::kernel_tests_enabled;
use mb_testbed::interception::saved_nat_rules;
use mb_testbed::scenarios::{self, Binaries, MeshedPod, APP_UID, WHOAMI_PORT};
use mb_testbed::sidecar::Listener;
use mb_testbed::{Interception, MeshPorts, Node, PodSpec, Sidecar, SidecarConfig};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn bins() -> Binaries {
    Binaries::at(
        env!("CARGO_BIN_EXE_mb-sidecar").as_ref(),
        env!("CARGO_BIN_EXE_mb-workload").as_ref(),
    )
    .expect("the sidecar and workload binaries")
}

/// The test bed of kernel test `test`: its binaries and a node named `node`; `None` (the
/// test skips) without root.
fn kernel_node(test: &str, node: &str) -> Option<(Binaries, Node)> {
    if !kernel_tests_enabled(test) {
        return None;
    }
    Some((bins(), Node::new(node).unwrap()))
}

/// [`kernel_node`] with a client and a server pod, each meshed (Istio's iptables rules and
/// the reference sidecar).
fn meshed_pair(test: &str, node: &str) -> Option<(Node, Binaries, MeshedPod, MeshedPod)> {
    let (bins, node) = kernel_node(test, node)?;
    let mode = Interception::Iptables(MeshPorts::istio());
    let client = scenarios::start_pod(&node, "client", &mode, true, &bins).unwrap();
    let server = scenarios::start_pod(&node, "server", &mode, true, &bins).unwrap();
    Some((node, bins, client, server))
}

#[test]
fn unredirected_connection_is_recorded_with_an_error_and_closed() {
    let Some((bins, node)) = kernel_node(
        "unredirected_connection_is_recorded_with_an_error_and_closed",
        "sc-err",
    ) else {
        return;
    };
    let a = node.add_pod(PodSpec::named("a")).unwrap();
    let b = node.add_pod(PodSpec::named("b")).unwrap();
    // A sidecar without interception rules: nothing can tell it an original destination.
    let sidecar = Sidecar::start_binary(&bins.sidecar, &b, SidecarConfig::default(), 1337).unwrap();
    let to = SocketAddr::new(b.ipv4().into(), 15001);
    let mut s = a
        .run_in_netns(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "sidecar should close a connection it cannot route");
    let records = sidecar.wait_for_records(1, Duration::from_secs(5));
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].listener, Listener::Outbound);
    assert_eq!(records[0].original_dst, None);
    let err = records[0].error.as_deref().unwrap_or("");
    assert!(err.starts_with("no_original_dst"), "{err}");
}

#[test]
fn sidecar_refuses_to_run_as_the_wrong_uid() {
    let Some((bins, node)) = kernel_node("sidecar_refuses_to_run_as_the_wrong_uid", "sc-uid")
    else {
        return;
    };
    let p = node.add_pod(PodSpec::named("p")).unwrap();
    let config = SidecarConfig::for_mesh(&MeshPorts::istio());
    let err = Sidecar::start_binary(&bins.sidecar, &p, config, APP_UID).unwrap_err();
    assert!(err.to_string().contains("did not become ready"), "{err}");
}

#[test]
fn half_close_is_passed_through_both_sidecars() {
    let Some((_node, _bins, client, server)) =
        meshed_pair("half_close_is_passed_through_both_sidecars", "sc-half")
    else {
        return;
    };
    let addr = SocketAddr::new(server.ip(false), 7777);
    let listener = server
        .pod
        .run_in_netns(move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let server_side = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        // Reads to EOF: only possible if the client's half-close made it through.
        s.read_to_end(&mut got).unwrap();
        s.write_all(b"done").unwrap();
        got
    });
    let mut s = client
        .pod
        .run_in_netns(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"request").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"done");
    assert_eq!(server_side.join().unwrap(), b"request");
    let out = client.records(1);
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!((out[0].bytes_up, out[0].bytes_down), (7, 4));
    let inbound = server.records(1);
    assert_eq!(inbound.len(), 1, "{inbound:#?}");
    assert_eq!((inbound[0].bytes_up, inbound[0].bytes_down), (7, 4));
}

/// The sidecar bounds reads per wake-up; an EOF read by the last of them must still be passed
/// on (it once was not, and the connection hung). A 1-byte relay buffer makes every byte a
/// read, and sizes 1 to 40 put the EOF at every position of a wake-up's reads.
#[test]
fn half_close_after_many_small_reads_is_passed_on() {
    let test = "half_close_after_many_small_reads_is_passed_on";
    let Some((bins, node)) = kernel_node(test, "sc-reads") else {
        return;
    };
    let mesh = MeshPorts::istio();
    let mode = Interception::Iptables(mesh.clone());
    let client = scenarios::start_pod(&node, "client", &mode, false, &bins).unwrap();
    mode.install_pod(&client.pod).unwrap();
    let config = SidecarConfig {
        buffer: 1,
        workers: 1,
        ..SidecarConfig::for_mesh(&mesh)
    };
    let sidecar =
        Sidecar::start_binary(&bins.sidecar, &client.pod, config, mesh.proxy_uid).unwrap();
    let server = node.add_pod(PodSpec::named("server")).unwrap();
    let addr = SocketAddr::new(server.ipv4().into(), 7778);
    let listener = server
        .run_in_netns(move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let server_side = std::thread::spawn(move || {
        for _ in 1..=40 {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(got.len().to_string().as_bytes()).unwrap();
        }
    });
    for n in 1..=40usize {
        let mut s = client
            .pod
            .run_in_netns(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
            .unwrap()
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&vec![b'x'; n]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .unwrap_or_else(|e| panic!("{n} bytes then EOF: no reply ({e}): the EOF was lost"));
        assert_eq!(reply, n.to_string());
    }
    server_side.join().unwrap();
    let records = sidecar.wait_for_records(40, Duration::from_secs(5));
    assert_eq!(records.len(), 40, "{records:#?}");
    assert!(records.iter().all(|r| r.error.is_none()), "{records:#?}");
}

#[test]
fn connection_to_a_sidecar_port_is_refused_as_a_loop() {
    let Some((_node, bins, client, server)) = meshed_pair(
        "connection_to_a_sidecar_port_is_refused_as_a_loop",
        "sc-loop",
    ) else {
        return;
    };
    let to = SocketAddr::new(server.ip(false), 15006);
    let result = scenarios::run_client(
        &client.pod,
        &bins,
        APP_UID,
        &["whoami".into(), format!("--to={to}")],
    );
    assert!(
        result.is_err(),
        "a call to a sidecar port must not be relayed: {result:?}"
    );
    let records = client.records(1);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(
        records[0]
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("loop"),
        "{records:#?}"
    );
}

#[test]
fn installed_rules_are_istios_chains() {
    let Some((_bins, node)) = kernel_node("installed_rules_are_istios_chains", "sc-rules") else {
        return;
    };
    let p = node.add_pod(PodSpec::named("p")).unwrap();
    assert!(!saved_nat_rules(&p, false).unwrap().contains("ISTIO"));
    Interception::Iptables(MeshPorts::istio())
        .install_pod(&p)
        .unwrap();
    let v4 = saved_nat_rules(&p, false).unwrap();
    for want in [
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "--uid-owner 1337",
    ] {
        assert!(v4.contains(want), "missing {want:?} in\n{v4}");
    }
    let v6 = saved_nat_rules(&p, true).unwrap();
    assert!(
        v6.contains("-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"),
        "{v6}"
    );
    // The machine's own tables are untouched: our rules live only in the pod's namespace.
    let host = mb_testbed::cmd::output_of({
        let mut c = std::process::Command::new("iptables-save");
        c.args(["-t", "nat"]);
        c
    })
    .unwrap_or_default();
    assert!(
        !host.contains("ISTIO_"),
        "ISTIO chains found in the host namespace"
    );
}

#[test]
fn dns_responder_answers_across_pods() {
    let Some((bins, node)) = kernel_node("dns_responder_answers_across_pods", "sc-dns") else {
        return;
    };
    let a = node.add_pod(PodSpec::named("a")).unwrap();
    let b = node.add_pod(PodSpec::named("b")).unwrap();
    let mut cmd = std::process::Command::new(&bins.workload);
    cmd.args(["serve", "--dns", "53", "--dns-answer", "10.96.1.2"])
        .stdout(std::process::Stdio::piped());
    let mut server = b.spawn(cmd, 0).unwrap();
    let mut out = std::io::BufReader::new(server.child_mut().stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    for to in [
        SocketAddr::new(b.ipv4().into(), 53),
        SocketAddr::new(b.ipv6().into(), 53),
    ] {
        let reply =
            scenarios::run_client(&a, &bins, APP_UID, &["dns".into(), format!("--to={to}")])
                .unwrap();
        let m = mb_testbed::workload::parse_kv(&reply);
        assert_eq!(
            m.get("answer").map(String::as_str),
            Some("10.96.1.2"),
            "{reply}"
        );
        assert_eq!(
            m.get("from").map(String::as_str),
            Some(to.to_string().as_str()),
            "{reply}"
        );
    }
}

#[test]
fn whoami_port_constant_is_what_the_app_serves() {
    let Some((bins, node)) = kernel_node("whoami_port_constant_is_what_the_app_serves", "sc-app")
    else {
        return;
    };
    let p = scenarios::start_pod(&node, "p", &Interception::None, false, &bins).unwrap();
    let to = SocketAddr::new(p.ip(false), WHOAMI_PORT);
    let (peer, local) = scenarios::whoami(&p.pod, &bins, APP_UID, to, None);
    assert_eq!(local, to);
    assert_eq!(peer.ip(), p.ip(false));
}
