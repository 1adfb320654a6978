//! `merbridge pod show` and `pod list --json` read a pod's policy back from the maps: a pod
//! added with the annotations of a real injected Istio workload (../shared/fixtures/k8s),
//! every decoded field checked against what those annotations say.

#[path = "common/cli.rs"]
mod cli;

#[path = "../../agent/tests/k8s_support/mod.rs"]
mod k8s_support;

use cli::{merbridge, LoadedIstio};
use mb_testbed::{Node, PodSpec};

fn ok(args: &[&str]) -> String {
    let (success, text) = merbridge(args);
    assert!(success, "merbridge {args:?} failed: {text}");
    text
}

/// The fixture's annotations: excludeInboundPorts 4,5,6; excludeOutboundIPRanges
/// 10.96.0.2/24,10.96.0.3/24; excludeOutboundPorts 7,8,9; includeInboundPorts 1,2,3;
/// includeOutboundIPRanges 127.0.0.1/24,10.96.0.1/24.
const FIXTURE: &str = "istio/istio-1.26.0__traffic-annotations.yaml.injected";

#[test]
fn pod_show_decodes_every_field_of_an_annotated_pod() {
    if !mb_sys::testing::kernel_tests_enabled("pod_show_decodes_every_field_of_an_annotated_pod") {
        return;
    }
    let annotations = k8s_support::fixtures_dir().join(FIXTURE);
    let node = Node::new("podshow").expect("node");
    let pod = node.add_pod(PodSpec::named("annotated")).expect("pod");
    let plain = node.add_pod(PodSpec::named("plain")).expect("pod");
    let loaded = LoadedIstio::load("mb-podshow", node.cgroup_path(), &[]);
    let pin = loaded.pin();
    let ips = format!("{},{}", pod.ipv4(), pod.ipv6());
    let netns = pod.netns_path().to_str().unwrap();
    let added = ok(&[
        "pod",
        "add",
        &ips,
        "--netns",
        netns,
        "--pin-dir",
        pin,
        "--annotations",
        annotations.to_str().unwrap(),
        "--dns-capture",
        "--splice-app",
    ]);
    let id = added
        .split("(id ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("pod add names the id");
    let id_number: u64 = id.parse().expect("a numeric pod id");
    let plain_ip = plain.ipv4().to_string();
    ok(&[
        "pod",
        "add",
        &plain_ip,
        "--netns",
        plain.netns_path().to_str().unwrap(),
        "--pin-dir",
        pin,
    ]);

    // Text, looked up by address and by id: the same lines.
    let by_ip = ok(&["pod", "show", &pod.ipv6().to_string(), "--pin-dir", pin]);
    assert_eq!(by_ip, ok(&["pod", "show", id, "--pin-dir", pin]));
    let cookie = netns_cookie(&pod);
    let want = [
        format!("pod {id}"),
        format!("addresses:                {},{}", pod.ipv4(), pod.ipv6()),
        format!("netns cookie:             {cookie}"),
        "outbound include ports:   (none)".into(),
        "outbound exclude ports:   7-9".into(),
        "outbound include CIDRs:   10.96.0.0/24,127.0.0.0/24".into(),
        "outbound exclude CIDRs:   10.96.0.0/24".into(),
        "inbound include ports:    1-3".into(),
        // 4,5,6 from the annotation; then Istio's own ports, never redirected inbound.
        "inbound exclude ports:    4-6,15000-15001,15006,15008,15020-15021,15090".into(),
        "DNS capture:              yes".into(),
        "splice application legs:  yes".into(),
        "sidecar UID:              1337".into(),
        "sidecar GID:              1337".into(),
        "flags:                    0x00ea".into(),
        "source:                   not kept in the maps".into(),
    ];
    for line in &want {
        assert!(
            by_ip
                .lines()
                .any(|l| l.trim_start().starts_with(line.as_str())),
            "pod show lacks {line:?}:\n{by_ip}"
        );
    }
    assert_eq!(by_ip.lines().count(), want.len(), "{by_ip}");

    // The one-line list counts the trie keys: 7-9 is 2 prefixes, 1-3 is 2, and the inbound
    // exclusions 4-6,15000-15001,15006,15008,15020-15021,15090 are 7; 3 address prefixes.
    let list = ok(&["pod", "list", "--pin-dir", pin]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("no row for pod {id}: {list}"));
    assert!(row.ends_with("11 port, 3 cidr"), "{row}");

    // JSON: the same fields, for both pods; the plain pod has Istio's defaults.
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["pod", "list", "--json", "--pin-dir", pin])).expect("JSON");
    let pods = list.as_array().expect("an array");
    assert_eq!(pods.len(), 2, "{list}");
    let annotated = pods
        .iter()
        .find(|p| p["id"] == id_number)
        .expect("the annotated pod");
    assert_eq!(
        annotated,
        &serde_json::from_str::<serde_json::Value>(&ok(&[
            "pod",
            "show",
            id,
            "--json",
            "--pin-dir",
            pin
        ]))
        .unwrap()
    );
    assert_eq!(
        annotated["addresses"],
        serde_json::json!([pod.ipv4().to_string(), pod.ipv6().to_string()])
    );
    assert_eq!(annotated["netns_cookie"], cookie);
    assert_eq!(annotated["flags"], 0xea);
    assert_eq!(
        annotated["outbound"],
        serde_json::json!({"include_ports": [], "exclude_ports": ["7-9"],
            "include_cidrs": ["10.96.0.0/24", "127.0.0.0/24"], "exclude_cidrs": ["10.96.0.0/24"]})
    );
    assert_eq!(
        annotated["inbound"],
        serde_json::json!({"include_ports": ["1-3"],
            "exclude_ports": ["4-6", "15000-15001", "15006", "15008", "15020-15021", "15090"]})
    );
    assert_eq!(annotated["dns_capture"], true);
    assert_eq!(annotated["splice_app"], true);
    // Istio's sidecar identity from the mesh's defaults: UID 1337, its GID the same.
    assert_eq!(annotated["proxy_uid"], 1337);
    assert_eq!(annotated["proxy_gid"], 1337);
    assert!(annotated["source"]
        .as_str()
        .unwrap()
        .starts_with("not kept in the maps"));
    let defaults = pods.iter().find(|p| p["id"] != id_number).unwrap();
    assert_eq!(defaults["addresses"], serde_json::json!([plain_ip]));
    assert_eq!(
        defaults["outbound"]["include_cidrs"],
        serde_json::json!(["*"])
    );
    assert_eq!(defaults["outbound"]["exclude_ports"], serde_json::json!([]));
    assert_eq!(
        defaults["inbound"]["include_ports"],
        serde_json::json!(["*"])
    );
    assert_eq!(defaults["dns_capture"], false);
    assert_eq!(defaults["splice_app"], false);
    // No annotations: the load's --proxy-uid, no GID rule.
    assert_eq!(defaults["proxy_uid"], serde_json::Value::Null);
    assert_eq!(defaults["proxy_gid"], serde_json::Value::Null);

    // Unknown pods and bad input are named.
    let (found, text) = merbridge(&["pod", "show", "10.255.0.1", "--pin-dir", pin]);
    assert!(!found && text.contains("no local pod 10.255.0.1"), "{text}");
    let (found, text) = merbridge(&["pod", "show", "web-1", "--pin-dir", pin]);
    assert!(
        !found && text.contains("neither an address nor a pod id"),
        "{text}"
    );
}

/// The pod's namespace cookie as the kernel reports it (SO_NETNS_COOKIE from inside it).
fn netns_cookie(pod: &mb_testbed::Pod) -> u64 {
    mb_loader::netns_cookie::netns_cookie(pod.netns_path()).expect("netns cookie")
}
