//! Shared by the `k8s_deploy*` tests: where `deploy/` is, whether the tools are installed
//! (a missing tool skips the test, except under CI where it fails), and an overlay rendered
//! with `kubectl kustomize` and validated offline with `kubernetes-validate --strict`.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every mesh with an overlay, and the namespace its overlay deploys into.
pub const MESH_NAMESPACES: [(&str, &str); 4] = [
    ("istio", "istio-system"),
    ("linkerd", "linkerd"),
    ("kuma", "kuma-system"),
    ("osm", "osm-system"),
];

/// A fresh scratch directory for rendered overlays (removed by the test).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn tool_available(program: &str, args: &[&str]) -> bool {
    let found = Command::new(program)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        assert!(
            !in_ci,
            "{program} is not installed: CI must install it (see deploy/README.md)"
        );
        eprintln!("skipping: {program} not found");
    }
    found
}

/// Whether `kubectl` and `kubernetes-validate` are both on PATH.
pub fn deploy_tools_available() -> bool {
    tool_available("kubectl", &["version", "--client"])
        && tool_available("kubernetes-validate", &["--version"])
}

/// `kubectl kustomize deploy/overlays/OVERLAY`, asserted to succeed.
pub fn render(overlay: &str) -> String {
    let dir = deploy_dir().join("overlays").join(overlay);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl");
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Renders `overlay`, writes it to `scratch/OVERLAY.yaml` and asserts that
/// `kubernetes-validate --strict` accepts it; returns the rendered YAML.
pub fn render_and_validate(overlay: &str, scratch: &Path) -> String {
    let rendered = render(overlay);
    let file = scratch.join(format!("{overlay}.yaml"));
    std::fs::write(&file, &rendered).unwrap();
    let validate = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        validate.status.success(),
        "{overlay}: kubernetes-validate --strict failed:\n{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );
    rendered
}

/// The non-empty documents of a multi-document YAML text.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// For every mesh: renders and validates overlay `MESH{suffix}` and hands `check` the mesh,
/// its namespace and the rendered documents. Does nothing (the test is skipped) when the
/// tools are missing outside CI.
pub fn check_every_overlay(suffix: &str, mut check: impl FnMut(&str, &str, &[Value])) {
    if !deploy_tools_available() {
        return;
    }
    let scratch = scratch_dir(&format!("mb-deploy{suffix}"));
    for (mesh, namespace) in MESH_NAMESPACES {
        let rendered = render_and_validate(&format!("{mesh}{suffix}"), &scratch);
        check(mesh, namespace, &documents(&rendered));
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The host paths a pod spec mounts.
pub fn host_paths(pod: &Value) -> Vec<&str> {
    pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect()
}
