//! `deploy/`: every overlay renders with `kubectl kustomize` (no cluster needed) and the
//! result validates offline against the Kubernetes schemas with `kubernetes-validate
//! --strict` (PyPI); then the rendered objects are checked for what the agent needs.
//!
//! Needs `kubectl` and `kubernetes-validate` on PATH. Without them the test is skipped with
//! a message, except under CI (`CI` set), where a missing tool is a failure.

mod deploy_support;

use deploy_support::{check_every_overlay, deploy_dir, host_paths};
use serde_json::Value;

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// Ports a host-network pod must not take: the meshes' (../shared/reference/
/// kubernetes-api-and-meshes.md; Istio's gateways serve 15090 on the host with
/// hostNetwork), the kubelet's and kube-proxy's, Cilium's and node-exporter's.
const TAKEN_ON_A_NODE: &[std::ops::RangeInclusive<u16>] = &[
    15000..=15099, // Istio sidecar, gateway and ztunnel ports
    15443..=15443, // Istio east-west gateway
    4140..=4191,   // Linkerd proxy
    9990..=9998,   // Linkerd controllers
    5676..=5685,   // Kuma control plane
    9000..=9000,   // Kuma probes proxy
    9901..=9901,   // Kuma Envoy admin
    15901..=15904, // OSM
    10248..=10259, // kubelet, kube-proxy, scheduler, controller-manager
    9962..=9965,   // Cilium agent, operator and Hubble metrics
    9100..=9100,   // node-exporter
];

#[test]
fn every_overlay_renders_and_validates_strictly() {
    check_every_overlay("", |mesh, namespace, docs| {
        let mut kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            vec![
                "ClusterRole",
                "ClusterRoleBinding",
                "DaemonSet",
                "Role",
                "RoleBinding",
                "ServiceAccount"
            ],
            "{mesh}"
        );
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap();
            if !kind.starts_with("Cluster") {
                assert_eq!(doc["metadata"]["namespace"], namespace, "{mesh}: {kind}");
            }
            for subject in doc["subjects"].as_array().into_iter().flatten() {
                assert_eq!(subject["namespace"], namespace, "{mesh}: {kind} subject");
            }
        }
        let rules = &find(docs, "ClusterRole")["rules"][0];
        assert_eq!(rules["resources"], serde_json::json!(["pods"]));
        assert_eq!(rules["verbs"], serde_json::json!(["get", "list", "watch"]));

        let pod = &find(docs, "DaemonSet")["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["hostPID"], true);
        assert_eq!(pod["serviceAccountName"], "merbridge");
        let container = &pod["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], "run");
        assert!(
            args.contains(&format!("--mesh={mesh}").as_str()),
            "{args:?}"
        );
        assert!(args.contains(&"--node-name=$(NODE_NAME)"), "{args:?}");
        let env = &container["env"][0];
        assert_eq!(env["name"], "NODE_NAME");
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
        let security = &container["securityContext"];
        assert_eq!(security["privileged"], false);
        let added: Vec<&str> = security["capabilities"]["add"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        for needed in ["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"] {
            assert!(added.contains(&needed), "{mesh}: missing CAP_{needed}");
        }
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        // On the host's network: the metrics port must be one no mesh (or node daemon) uses.
        let metrics_arg = args
            .iter()
            .find_map(|a| a.strip_prefix("--metrics-addr="))
            .expect("--metrics-addr");
        let port: u16 = metrics_arg.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            !TAKEN_ON_A_NODE.iter().any(|r| r.contains(&port)),
            "{mesh}: metrics port {port} is used by a mesh or node daemon"
        );
        assert_eq!(container["ports"][0]["containerPort"], port);
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], port);
        assert_eq!(container["livenessProbe"]["httpGet"]["port"], port);
        let host_paths = host_paths(pod);
        assert!(host_paths.contains(&"/sys/fs/bpf"));
        assert!(host_paths.contains(&"/sys/fs/cgroup"));
    });
}

#[test]
fn containerfile_is_from_scratch_with_the_static_binary() {
    let text = std::fs::read_to_string(deploy_dir().join("Containerfile")).unwrap();
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(instructions.contains(&"FROM scratch"), "{instructions:?}");
    assert!(instructions
        .iter()
        .any(|l| l.starts_with("COPY target/${TARGET}/release/merbridge ")));
    assert!(text.contains("x86_64-unknown-linux-musl"));
    assert!(instructions.iter().any(|l| l.starts_with("ENTRYPOINT")));
}
