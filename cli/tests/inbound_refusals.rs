//! Pods merbridge refuses or cannot finish, end to end against the kernel: an Istio
//! TPROXY-mode pod through `merbridge pod add --annotations` is refused with an error naming
//! the pod and the field, leaves no map entry and no inbound link, and its traffic (made as
//! uid 0, as TPROXY's Envoy runs) goes straight to its destination, never looped to a sidecar
//! port; a pod whose network namespace vanished, one whose sidecar does not listen yet, a
//! malformed UID annotation and an unknown interception mode are named the same way, and
//! `pod del` leaves nothing behind; a namespace that vanishes between a pod's link and the
//! adoption of its listener takes the link with it.

#[path = "common/cli.rs"]
mod cli;

use cli::{merbridge, LoadedIstio};
use mb_agent::pods::PodMaps;
use mb_testbed::scenarios::{start_app, whoami, Binaries, WHOAMI_PORT};
use mb_testbed::{Node, PodSpec};
use std::net::SocketAddr;

/// `merbridge pod add IPS [EXTRA...] --netns POD'S --pin-dir PIN --annotations FILE`, the file
/// holding the JSON `annotations` (removed again).
fn pod_add_annotated(
    ips: &str,
    pod: &mb_testbed::Pod,
    pin: &str,
    extra: &[&str],
    annotations: &str,
) -> (bool, String) {
    let dir =
        std::env::temp_dir().join(format!("mb-refusals-{}-{}", std::process::id(), pod.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("annotations.json");
    std::fs::write(&file, annotations).unwrap();
    let mut args = vec!["pod", "add", ips];
    args.extend(extra);
    args.extend([
        "--netns",
        pod.netns_path().to_str().unwrap(),
        "--pin-dir",
        pin,
    ]);
    args.extend(["--annotations", file.to_str().unwrap()]);
    let result = merbridge(&args);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Nothing of any pod in the maps and no inbound link.
fn assert_nothing_written(pin_dir: &std::path::Path, what: &str) {
    let pods = PodMaps::open(pin_dir)
        .expect("open maps")
        .pods()
        .expect("pods");
    assert!(pods.is_empty(), "{what}: map entries left: {pods:?}");
    let links = mb_agent::inbound::list(pin_dir).expect("links");
    assert!(links.is_empty(), "{what}: inbound links left: {links:?}");
}

#[test]
fn tproxy_pod_is_refused_and_its_traffic_is_not_looped() {
    if !mb_sys::testing::kernel_tests_enabled("tproxy_pod_is_refused_and_its_traffic_is_not_looped")
    {
        return;
    }
    let node = Node::new("tproxy").expect("node");
    let tproxy = node.add_pod(PodSpec::named("tproxy")).expect("pod");
    let server = node.add_pod(PodSpec::named("server")).expect("pod");
    let loaded = LoadedIstio::load("mb-tproxy", node.cgroup_path(), &["--ipv6"]);
    let (pin, pin_dir) = (loaded.pin(), loaded.pin_dir());

    let ips = format!("{},{}", tproxy.ipv4(), tproxy.ipv6());
    let (added, text) = pod_add_annotated(
        &ips,
        &tproxy,
        pin,
        &[],
        r#"{"sidecar.istio.io/interceptionMode": "TPROXY", "sidecar.istio.io/status": "{}"}"#,
    );
    assert!(!added, "a TPROXY pod must be refused: {text}");
    assert!(
        text.contains(&ips) && text.contains("sidecar.istio.io/interceptionMode=TPROXY"),
        "the error names the pod and the field: {text}"
    );
    assert_nothing_written(&pin_dir, "TPROXY pod");

    // Its traffic, as root (TPROXY's Envoy runs as uid 0), from the pod's cgroup where the
    // data path is attached: reaches the server's app directly from the pod's own address.
    // (The test bed's own client and server: the kernel matrix's guests have no bash.)
    let bins = Binaries::find().expect("test bed binaries: cargo build --workspace");
    let _app = start_app(&server, &bins).expect("the server pod's app");
    let to = SocketAddr::new(server.ipv4().into(), WHOAMI_PORT);
    let (peer, local) = whoami(&tproxy, &bins, 0, to, None);
    assert_eq!(local, to, "the server's app answered, not a sidecar port");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::from(tproxy.ipv4()),
        "straight from the pod, not through anything"
    );
    assert_nothing_written(&pin_dir, "after the traffic");
}

#[test]
fn vanished_netns_and_malformed_uid_are_named_and_leave_nothing() {
    if !mb_sys::testing::kernel_tests_enabled(
        "vanished_netns_and_malformed_uid_are_named_and_leave_nothing",
    ) {
        return;
    }
    let node = Node::new("badpod").expect("node");
    let gone = node.add_pod(PodSpec::named("gone")).expect("pod");
    let loaded = LoadedIstio::load("mb-badpod", node.cgroup_path(), &[]);
    let (pin, pin_dir) = (loaded.pin(), loaded.pin_dir());

    // The namespace path of a pod that is gone.
    let ip = gone.ipv4().to_string();
    let netns = gone.netns_path().to_path_buf();
    drop(gone);
    let (added, text) = merbridge(&[
        "pod",
        "add",
        &ip,
        "--netns",
        netns.to_str().unwrap(),
        "--pin-dir",
        pin,
    ]);
    assert!(!added, "a vanished namespace must be an error: {text}");
    assert!(
        text.contains(&format!("pod {ip}")) && text.contains(netns.to_str().unwrap()),
        "the error names the pod and its namespace: {text}"
    );
    assert_nothing_written(&pin_dir, "vanished netns");

    // A malformed UID annotation: a warning naming the annotation, the mesh's default applies.
    let live = node.add_pod(PodSpec::named("baduid")).expect("pod");
    let live_ip = live.ipv4().to_string();
    let (added, text) = pod_add_annotated(
        &live_ip,
        &live,
        pin,
        &["--mesh", "kuma"],
        r#"{"kuma.io/sidecar-uid": "12x"}"#,
    );
    assert!(added, "a malformed UID is a warning, not a refusal: {text}");
    assert!(
        text.contains("warning") && text.contains("kuma.io/sidecar-uid") && text.contains("12x"),
        "the warning names the annotation and the value: {text}"
    );
    // No sidecar listens there yet: a note naming the pod; its link is attached (refusing).
    assert!(
        text.contains(&format!("pod {live_ip}: no sidecar listens on 15006 yet")),
        "{text}"
    );
    let pods = PodMaps::open(&pin_dir).unwrap().pods().unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].proxy_uid, 5678, "Kuma's default UID");
    assert_eq!(mb_agent::inbound::list(&pin_dir).unwrap().len(), 1);
    let (removed, text) = merbridge(&["pod", "del", &live_ip, "--pin-dir", pin]);
    assert!(removed, "{text}");
    assert_nothing_written(&pin_dir, "after pod del");

    // An unknown interception mode: a warning naming the annotation and the value.
    let (added, text) = pod_add_annotated(
        &live_ip,
        &live,
        pin,
        &[],
        r#"{"sidecar.istio.io/interceptionMode": "SOMETIMES"}"#,
    );
    assert!(added, "{text}");
    assert!(
        text.contains("warning")
            && text.contains("sidecar.istio.io/interceptionMode")
            && text.contains("SOMETIMES"),
        "{text}"
    );
    let (removed, text) = merbridge(&["pod", "del", &live_ip, "--pin-dir", pin]);
    assert!(removed, "{text}");
    assert_nothing_written(&pin_dir, "after the second pod del");
}

/// The race `attach_pod` guards against: the pod's namespace goes after its link was attached
/// and before its listener is adopted. The adoption step then fails naming the namespace and
/// detaches the link (the caller records nothing for the pod, so a pinned link would leak);
/// while the namespace lives, the same step keeps the link (fail closed, no listener yet).
#[test]
fn namespace_vanishing_between_link_and_adoption_leaves_no_link() {
    if !mb_sys::testing::kernel_tests_enabled(
        "namespace_vanishing_between_link_and_adoption_leaves_no_link",
    ) {
        return;
    }
    let node = Node::new("race").expect("node");
    let pod = node.add_pod(PodSpec::named("racer")).expect("pod");
    let loaded = LoadedIstio::load("mb-race", node.cgroup_path(), &[]);
    let (pin, pin_dir) = (loaded.pin(), loaded.pin_dir());
    let ip = pod.ipv4().to_string();
    let netns = pod.netns_path().to_path_buf();
    // The first step, as `pod add` makes it: the link (no sidecar listens: it refuses).
    let (added, text) = merbridge(&[
        "pod",
        "add",
        &ip,
        "--netns",
        netns.to_str().unwrap(),
        "--pin-dir",
        pin,
    ]);
    assert!(added, "{text}");
    let pods = PodMaps::open(&pin_dir).unwrap().pods().unwrap();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod_id = pods[0].pod_id;
    assert_eq!(mb_agent::inbound::list(&pin_dir).unwrap().len(), 1);

    // The namespace lives: nothing to adopt, the link stays.
    assert_eq!(
        mb_agent::inbound::adopt_after_attach(&pin_dir, pod_id, &netns, 15006),
        Ok(0)
    );
    assert_eq!(mb_agent::inbound::list(&pin_dir).unwrap().len(), 1);

    // Now it goes before the adoption step runs.
    drop(pod);
    assert!(!netns.exists(), "{} still there", netns.display());
    let err = mb_agent::inbound::adopt_after_attach(&pin_dir, pod_id, &netns, 15006)
        .expect_err("adopting in a vanished namespace must fail");
    assert!(
        err.contains(netns.to_str().unwrap()),
        "the error names the namespace: {err}"
    );
    let links = mb_agent::inbound::list(&pin_dir).unwrap();
    assert!(
        links.is_empty(),
        "the link went with its namespace: {links:?}"
    );
    assert!(!mb_agent::inbound::listeners(&pin_dir, pod_id)
        .unwrap()
        .any());

    let (removed, text) = merbridge(&["pod", "del", &ip, "--pin-dir", pin]);
    assert!(removed, "{text}");
    assert_nothing_written(&pin_dir, "after pod del");
}
