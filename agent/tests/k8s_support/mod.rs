//! Shared by the k8s_* and mesh_* integration tests: the fixture files of
//! `../shared/fixtures/k8s/` (read in place, never copied into the repository).
#![allow(dead_code)]

pub mod server;

use mb_agent::k8s::PodInfo;
use std::path::PathBuf;

/// `$MB_K8S_FIXTURES`, else `<repo>/../shared/fixtures/k8s`.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MB_K8S_FIXTURES") {
        return PathBuf::from(dir);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/k8s");
    assert!(
        dir.join("MANIFEST.md").is_file(),
        "Kubernetes fixtures not found at {}: check out shared/ beside the repository or set MB_K8S_FIXTURES",
        dir.display()
    );
    dir
}

pub fn fixture_text(relative: &str) -> String {
    let path = fixtures_dir().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// The first Pod or workload document of a fixture, as JSON. For a workload (Deployment…)
/// this is the object itself; [`fixture_pod_value`] extracts its pod template.
pub fn fixture_value(relative: &str) -> serde_json::Value {
    let text = fixture_text(relative);
    for document in serde_norway::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|e| panic!("fixture {relative} is not YAML: {e}"));
        if value.get("spec").is_some() {
            return value;
        }
    }
    panic!("fixture {relative} has no Pod or workload document");
}

/// The pod of a fixture as a JSON Pod object (a workload's `spec.template`).
pub fn fixture_pod_value(relative: &str) -> serde_json::Value {
    let value = fixture_value(relative);
    if value.get("kind").and_then(|k| k.as_str()) == Some("Pod") {
        return value;
    }
    let mut pod = value
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| panic!("fixture {relative} is neither a Pod nor has spec.template"));
    pod["kind"] = "Pod".into();
    pod["apiVersion"] = "v1".into();
    pod
}

pub fn fixture_pod(relative: &str) -> PodInfo {
    PodInfo::from_value(&fixture_pod_value(relative))
        .unwrap_or_else(|e| panic!("fixture {relative}: {e}"))
}

/// Makes a fixture pod look like a running pod on `node` (the injector testdata has no
/// status, nodeName, uid or resourceVersion: these values are SYNTHETIC, added by the test).
pub fn synthesize_running(
    mut pod: serde_json::Value,
    uid: &str,
    node: &str,
    ips: &[&str],
    resource_version: &str,
) -> serde_json::Value {
    let name = pod
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("pod")
        .to_string();
    pod["metadata"]["name"] = format!("{name}-{uid}").into();
    if pod.pointer("/metadata/namespace").is_none() {
        pod["metadata"]["namespace"] = "default".into();
    }
    pod["metadata"]["uid"] = uid.into();
    pod["metadata"]["resourceVersion"] = resource_version.into();
    pod["spec"]["nodeName"] = node.into();
    pod["status"] = serde_json::json!({
        "phase": "Running",
        "podIP": ips.first().copied().unwrap_or(""),
        "podIPs": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>(),
    });
    pod
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mb-k8s-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kubeconfig text for a server at `url` with an optional token and CA PEM.
pub fn kubeconfig_text(
    url: &str,
    token: Option<&str>,
    ca_pem: Option<&str>,
    client: Option<(&str, &str)>,
) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut cluster = format!("    server: {url}\n");
    if let Some(ca) = ca_pem {
        cluster.push_str(&format!("    certificate-authority-data: {}\n", b64(ca)));
    }
    let mut user = String::new();
    if let Some(t) = token {
        user.push_str(&format!("    token: {t}\n"));
    }
    if let Some((cert, key)) = client {
        user.push_str(&format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert),
            b64(key)
        ));
    }
    if user.is_empty() {
        user.push_str("    {}\n");
    }
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: c\n  cluster:\n{cluster}contexts:\n- name: test\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n{user}"
    )
}
