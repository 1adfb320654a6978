//! `deploy/overlays/<mesh>-cni`: each renders with `kubectl kustomize`, validates offline with
//! `kubernetes-validate --strict`, and carries the merbridge-cni install step (container,
//! host mounts, mesh flag on both containers). The mesh-side files next to each overlay
//! (Istio operator values, Linkerd and Kuma values, Kuma ContainerPatch) parse and set the
//! knobs deploy/README.md cites. Tools as in k8s_deploy: skipped without them, except in CI.

mod deploy_support;

use deploy_support::{check_every_overlay, deploy_dir, documents, host_paths};
use serde_json::Value;

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

#[test]
fn every_cni_overlay_renders_validates_and_installs_the_plugin() {
    check_every_overlay("-cni", |mesh, namespace, docs| {
        let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
        assert_eq!(ds["metadata"]["namespace"], namespace);
        let pod = &ds["spec"]["template"]["spec"];
        let agent = &pod["containers"][0];
        assert!(strings(&agent["args"]).contains(&format!("--mesh={mesh}").as_str()));
        let install = &pod["containers"][1];
        assert_eq!(install["name"], "install-cni");
        let args = strings(&install["args"]);
        assert_eq!(&args[..2], ["cni", "install"]);
        for needed in [
            format!("--mesh={mesh}"),
            "--conf-dir=/host/etc/cni/net.d".into(),
            "--host-conf-dir=/etc/cni/net.d".into(),
            "--bin-dir=/host/opt/cni/bin".into(),
            "--write-kubeconfig".into(),
            "--pin-dir=/sys/fs/bpf/merbridge".into(),
        ] {
            assert!(
                args.contains(&needed.as_str()),
                "{mesh}: {needed} in {args:?}"
            );
        }
        assert!(
            args.iter().any(|a| a.starts_with("--watch-secs=")),
            "{args:?}"
        );
        assert_eq!(install["securityContext"]["privileged"], false);
        let host_paths = host_paths(pod);
        for p in ["/etc/cni/net.d", "/opt/cni/bin", "/sys/fs/bpf"] {
            assert!(host_paths.contains(&p), "{mesh}: hostPath {p}");
        }
        // The plugin reads pods with the agent's account: get on pods.
        let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
        assert!(strings(&role["rules"][0]["verbs"]).contains(&"get"));
    });
}

#[test]
fn mesh_side_files_set_the_cited_knobs() {
    let read = |rel: &str| -> Value {
        let text = std::fs::read_to_string(deploy_dir().join(rel)).unwrap();
        documents(&text).remove(0)
    };
    let istio = read("overlays/istio-cni/istio-operator.yaml");
    assert_eq!(istio["kind"], "IstioOperator");
    assert_eq!(istio["spec"]["components"]["cni"]["enabled"], false);
    assert_eq!(istio["spec"]["values"]["istio_cni"]["enabled"], true);
    // Newer injection templates read pilot.cni.enabled instead of istio_cni.enabled.
    assert_eq!(istio["spec"]["values"]["pilot"]["cni"]["enabled"], true);
    let webhook = &istio["spec"]["values"]["sidecarInjectorWebhook"];
    assert_eq!(
        strings(&webhook["defaultTemplates"]),
        ["sidecar", "merbridge"]
    );
    let template: Value =
        serde_norway::from_str(webhook["templates"]["merbridge"].as_str().unwrap()).unwrap();
    let inits = template["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits[0]["name"], "istio-validation");
    assert_eq!(inits[0]["$patch"], "delete");
    assert_eq!(strings(&inits[1]["args"]), ["validate", "--mesh=istio"]);
    assert_ne!(inits[1]["securityContext"]["runAsUser"], 1337);

    let linkerd = read("overlays/linkerd-cni/linkerd-values.yaml");
    assert_eq!(linkerd["cniEnabled"], true);

    let kuma = read("overlays/kuma-cni/kuma-values.yaml");
    assert_eq!(kuma["cni"]["enabled"], false);
    assert_eq!(
        kuma["controlPlane"]["envVars"]["KUMA_RUNTIME_KUBERNETES_INJECTOR_CNI_ENABLED"],
        "true"
    );
    let patch = read("overlays/kuma-cni/container-patch.yaml");
    assert_eq!(patch["kind"], "ContainerPatch");
    let ops = patch["spec"]["initPatch"].as_array().unwrap();
    let value = |path: &str| -> Value {
        let op = ops.iter().find(|o| o["path"] == path).unwrap();
        serde_json::from_str(op["value"].as_str().unwrap()).unwrap()
    };
    assert_eq!(value("/command"), serde_json::json!(["/usr/bin/merbridge"]));
    assert_eq!(
        value("/args"),
        serde_json::json!(["validate", "--mesh=kuma"])
    );
    assert_ne!(value("/securityContext/runAsUser"), 5678);
}
