//! What the agent keeps of a Pod: identity, placement, IPs, annotations, labels and the
//! container facts the mesh rules need. Parsing is lenient: fields the API leaves out or sets
//! to `null` (bookmark shells, injector templates) become empty values, never errors.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Identity of a pod: the UID is the key (names and IPs are reused), the rest is for messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} (uid {})", self.namespace, self.name, self.uid)
    }
}

/// One port a container declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: String,
    pub container_port: u16,
    /// `TCP` (the default), `UDP` or `SCTP`.
    pub protocol: String,
}

/// The facts of one container (or init container) that mesh detection and policy need.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    pub name: String,
    /// `Some("Always")` on an init container makes it a native sidecar.
    pub restart_policy: Option<String>,
    pub ports: Vec<ContainerPort>,
    /// `securityContext.runAsUser` of the container, else of the pod.
    pub run_as_user: Option<u32>,
    /// `securityContext.runAsGroup` of the container, else of the pod.
    pub run_as_group: Option<u32>,
    pub args: Vec<String>,
    /// The container's `env` entries with a literal `value` (`valueFrom` ones are left out:
    /// they need other objects the agent does not read).
    pub env: Vec<(String, String)>,
}

impl ContainerInfo {
    /// A native sidecar: an init container that keeps running beside the app.
    pub fn is_restartable(&self) -> bool {
        self.restart_policy.as_deref() == Some("Always")
    }

    /// The literal value of environment variable `name`, if the container sets one.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A pod as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The object's last-modified version (opaque; compared for equality only).
    pub resource_version: String,
    pub node_name: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`, or empty if not reported yet.
    pub phase: String,
    pub host_network: bool,
    /// `status.podIPs` (dual stack), or `status.podIP` where the server sends only that.
    pub pod_ips: Vec<IpAddr>,
    /// True once `metadata.deletionTimestamp` is set (the pod is shutting down).
    pub terminating: bool,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<ContainerInfo>,
    pub init_containers: Vec<ContainerInfo>,
}

impl PodInfo {
    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// `Succeeded` or `Failed`: the pod's containers will not run again.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase.as_str(), "Succeeded" | "Failed")
    }

    /// Looks a container up by name in `containers`, then in `initContainers`.
    pub fn container(&self, name: &str) -> Option<&ContainerInfo> {
        self.containers
            .iter()
            .chain(self.init_containers.iter())
            .find(|c| c.name == name)
    }

    /// Parses a Pod from its JSON form (as the API sends it).
    pub fn from_json(text: &[u8]) -> Result<PodInfo, String> {
        let raw: RawObject =
            serde_json::from_slice(text).map_err(|e| format!("not a Pod object: {e}"))?;
        Ok(raw.into_pod())
    }

    /// Parses a Pod from a parsed JSON value. A workload (Deployment, DaemonSet, …) yields the
    /// pod of its `spec.template`, so injector output can be used directly.
    pub fn from_value(value: &serde_json::Value) -> Result<PodInfo, String> {
        let pod_value = match value.pointer("/spec/template") {
            Some(template) if value.get("kind").and_then(|k| k.as_str()) != Some("Pod") => template,
            _ => value,
        };
        let raw =
            RawObject::deserialize(pod_value).map_err(|e| format!("not a Pod object: {e}"))?;
        Ok(raw.into_pod())
    }
}

// ---- wire structs: every field optional, since the API may omit or null anything ----

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawObject {
    #[serde(default)]
    pub metadata: Option<RawMeta>,
    #[serde(default)]
    pub spec: Option<RawSpec>,
    /// An object for a Pod, a string (`"Failure"`) for a Status.
    #[serde(default)]
    pub status: Option<RawStatusField>,
    // Fields of a metav1.Status (ERROR events).
    #[serde(default)]
    pub code: Option<serde_json::Number>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Of a list: the token for the next page.
    #[serde(default, rename = "continue")]
    pub continue_token: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawSpec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    host_network: Option<bool>,
    #[serde(default)]
    containers: Option<Vec<RawContainer>>,
    #[serde(default)]
    init_containers: Option<Vec<RawContainer>>,
    #[serde(default)]
    security_context: Option<RawSecurityContext>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct RawContainer {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    restart_policy: Option<String>,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
    #[serde(default)]
    security_context: Option<RawSecurityContext>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<RawEnvVar>>,
}

#[derive(Deserialize, Default, Debug)]
struct RawEnvVar {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct RawPort {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    container_port: Option<i64>,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
struct RawSecurityContext {
    #[serde(default)]
    run_as_user: Option<i64>,
    #[serde(default)]
    run_as_group: Option<i64>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(crate) enum RawStatusField {
    Pod(RawPodStatus),
    /// A Status's `"Failure"`, or a pod status of the wrong shape: ignored.
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawPodStatus {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Option<Vec<RawPodIp>>,
}

#[derive(Deserialize, Default, Debug)]
struct RawPodIp {
    #[serde(default)]
    ip: Option<String>,
}

fn user_id(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

impl RawContainer {
    /// `pod_ids`: the pod-level `runAsUser` and `runAsGroup` (defaults for each container).
    fn into_info(self, pod_ids: (Option<u32>, Option<u32>)) -> ContainerInfo {
        let (pod_user, pod_group) = pod_ids;
        let context = self.security_context.unwrap_or_default();
        ContainerInfo {
            name: self.name.unwrap_or_default(),
            restart_policy: self.restart_policy,
            ports: self
                .ports
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| {
                    Some(ContainerPort {
                        name: p.name.unwrap_or_default(),
                        container_port: u16::try_from(p.container_port?).ok()?,
                        protocol: p.protocol.unwrap_or_else(|| "TCP".to_string()),
                    })
                })
                .collect(),
            run_as_user: user_id(context.run_as_user).or(pod_user),
            run_as_group: user_id(context.run_as_group).or(pod_group),
            args: self.args.unwrap_or_default(),
            env: self
                .env
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| Some((e.name?, e.value?)))
                .collect(),
        }
    }
}

impl RawObject {
    pub(crate) fn resource_version(&self) -> Option<&str> {
        self.metadata.as_ref()?.resource_version.as_deref()
    }

    pub(crate) fn into_pod(self) -> PodInfo {
        let meta = self.metadata.unwrap_or_default();
        let spec = self.spec.unwrap_or_default();
        let status = match self.status {
            Some(RawStatusField::Pod(status)) => status,
            _ => RawPodStatus::default(),
        };
        let pod_context = spec.security_context.unwrap_or_default();
        let pod_ids = (
            user_id(pod_context.run_as_user),
            user_id(pod_context.run_as_group),
        );
        let mut pod_ips: Vec<IpAddr> = status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.ip?.trim().parse().ok())
            .collect();
        if pod_ips.is_empty() {
            if let Some(ip) = status.pod_ip.and_then(|ip| ip.trim().parse().ok()) {
                pod_ips.push(ip);
            }
        }
        let mut unique_ips = Vec::with_capacity(pod_ips.len());
        for ip in pod_ips {
            if !unique_ips.contains(&ip) {
                unique_ips.push(ip);
            }
        }
        let convert = |list: Option<Vec<RawContainer>>| -> Vec<ContainerInfo> {
            list.unwrap_or_default()
                .into_iter()
                .map(|c| c.into_info(pod_ids))
                .collect()
        };
        PodInfo {
            uid: meta.uid.unwrap_or_default(),
            name: meta.name.unwrap_or_default(),
            namespace: meta.namespace.unwrap_or_default(),
            resource_version: meta.resource_version.unwrap_or_default(),
            node_name: spec.node_name.unwrap_or_default(),
            phase: status.phase.unwrap_or_default(),
            host_network: spec.host_network.unwrap_or(false),
            pod_ips: unique_ips,
            terminating: meta.deletion_timestamp.is_some(),
            annotations: meta.annotations.unwrap_or_default(),
            labels: meta.labels.unwrap_or_default(),
            containers: convert(spec.containers),
            init_containers: convert(spec.init_containers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dual_stack_and_native_sidecar() {
        let pod = PodInfo::from_json(
            br#"{"metadata":{"name":"a","namespace":"n","uid":"u1","resourceVersion":"7",
                "annotations":{"x":"y"}},
              "spec":{"nodeName":"node-1","securityContext":{"runAsUser":1000},
                "initContainers":[{"name":"proxy","restartPolicy":"Always",
                  "securityContext":{"runAsUser":1337}}],
                "containers":[{"name":"app","ports":[{"containerPort":8080}]}]},
              "status":{"phase":"Running","podIP":"10.0.0.5",
                "podIPs":[{"ip":"10.0.0.5"},{"ip":"fd00::5"}]}}"#,
        )
        .unwrap();
        assert_eq!(pod.uid, "u1");
        assert_eq!(pod.node_name, "node-1");
        assert_eq!(
            pod.pod_ips,
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(pod.init_containers[0].is_restartable());
        assert_eq!(pod.init_containers[0].run_as_user, Some(1337));
        assert_eq!(
            pod.containers[0].run_as_user,
            Some(1000),
            "pod-level default"
        );
        assert_eq!(pod.containers[0].ports[0].container_port, 8080);
        assert_eq!(pod.containers[0].ports[0].protocol, "TCP");
    }

    #[test]
    fn run_as_group_and_literal_env_values() {
        let pod = PodInfo::from_json(
            br#"{"spec":{"securityContext":{"runAsGroup":2000},
                "containers":[{"name":"istio-proxy",
                  "securityContext":{"runAsUser":0,"runAsGroup":1337},
                  "env":[{"name":"ISTIO_META_DNS_CAPTURE","value":"true"},
                         {"name":"POD_NAME","valueFrom":{"fieldRef":{"fieldPath":"metadata.name"}}},
                         {"name":"EMPTY","value":""}]},
                  {"name":"app"}]}}"#,
        )
        .unwrap();
        let proxy = &pod.containers[0];
        assert_eq!(
            (proxy.run_as_user, proxy.run_as_group),
            (Some(0), Some(1337))
        );
        assert_eq!(proxy.env_value("ISTIO_META_DNS_CAPTURE"), Some("true"));
        assert_eq!(proxy.env_value("POD_NAME"), None, "valueFrom is not read");
        assert_eq!(proxy.env_value("EMPTY"), Some(""));
        assert_eq!(
            pod.containers[1].run_as_group,
            Some(2000),
            "pod-level default"
        );
    }

    #[test]
    fn bookmark_shell_with_nulls_is_not_an_error() {
        let pod = PodInfo::from_json(
            br#"{"kind":"Pod","metadata":{"resourceVersion":"12"},"spec":{"containers":null},"status":{}}"#,
        )
        .unwrap();
        assert_eq!(pod.resource_version, "12");
        assert!(pod.containers.is_empty());
        assert!(pod.pod_ips.is_empty());
    }

    #[test]
    fn pod_ip_fallback_and_terminal_phase() {
        let pod = PodInfo::from_json(
            br#"{"metadata":{"deletionTimestamp":"2024-01-01T00:00:00Z"},
                 "status":{"phase":"Succeeded","podIP":"10.1.2.3"}}"#,
        )
        .unwrap();
        assert_eq!(pod.pod_ips, vec!["10.1.2.3".parse::<IpAddr>().unwrap()]);
        assert!(pod.is_terminal());
        assert!(pod.terminating);
    }
}
