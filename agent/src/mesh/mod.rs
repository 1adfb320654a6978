//! Mesh rules: which pods carry a sidecar of the chosen mesh (classic or native), and the
//! interception policy their annotations ask for, with each mesh's own semantics.

mod file;
mod policy;

pub use file::{annotations_from_file, annotations_from_text};
pub use policy::{
    Cidr, CidrSelection, PodPolicy, PolicyWarning, PortRanges, PortSelection, SPLICE_APP_ANNOTATION,
};

use crate::k8s::PodInfo;
use mb_loader::datapath::MeshConstants;
use std::fmt;
use std::str::FromStr;

/// The service meshes merbridge knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mesh {
    Istio,
    Linkerd,
    Kuma,
    Osm,
}

/// A mesh's fixed numbers (DESIGN.md §3), overridable per pod by annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshDefaults {
    /// Where the sidecar takes outbound connections.
    pub outbound_port: u16,
    /// Where the sidecar takes inbound connections.
    pub inbound_port: u16,
    /// The UID the sidecar runs as: its own connections are never redirected.
    pub proxy_uid: u32,
    /// The sidecar's DNS proxy, if the mesh has one.
    pub dns_port: Option<u16>,
}

/// The DNS proxy port the programs get when the mesh has none (DNS capture stays off then).
pub const FALLBACK_DNS_PORT: u16 = 15053;

impl MeshDefaults {
    /// These numbers as the data path's load-time constants, with `splice_mode`
    /// (`mb_maps::datapath::SPLICE_*`).
    pub fn constants(&self, splice_mode: u32) -> MeshConstants {
        MeshConstants {
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            proxy_uid: self.proxy_uid,
            dns_port: self.dns_port.unwrap_or(FALLBACK_DNS_PORT),
            splice_mode,
        }
    }
}

impl Mesh {
    pub const ALL: [Mesh; 4] = [Mesh::Istio, Mesh::Linkerd, Mesh::Kuma, Mesh::Osm];

    pub fn name(self) -> &'static str {
        match self {
            Mesh::Istio => "istio",
            Mesh::Linkerd => "linkerd",
            Mesh::Kuma => "kuma",
            Mesh::Osm => "osm",
        }
    }

    pub fn defaults(self) -> MeshDefaults {
        match self {
            Mesh::Istio => MeshDefaults {
                outbound_port: 15001,
                inbound_port: 15006,
                proxy_uid: 1337,
                dns_port: Some(15053),
            },
            Mesh::Linkerd => MeshDefaults {
                outbound_port: 4140,
                inbound_port: 4143,
                proxy_uid: 2102,
                dns_port: None,
            },
            // Kuma's sidecar is Envoy on Istio's ports, under its own user.
            Mesh::Kuma => MeshDefaults {
                proxy_uid: 5678,
                ..Mesh::Istio.defaults()
            },
            Mesh::Osm => MeshDefaults {
                outbound_port: 15001,
                inbound_port: 15003,
                proxy_uid: 1500,
                dns_port: None,
            },
        }
    }

    /// Name of the sidecar proxy container the injector adds.
    pub fn proxy_container(self) -> &'static str {
        match self {
            Mesh::Istio => "istio-proxy",
            Mesh::Linkerd => "linkerd-proxy",
            Mesh::Kuma => "kuma-sidecar",
            Mesh::Osm => "envoy",
        }
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mesh {
    type Err = String;
    fn from_str(text: &str) -> Result<Mesh, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "istio" => Ok(Mesh::Istio),
            "linkerd" => Ok(Mesh::Linkerd),
            "kuma" => Ok(Mesh::Kuma),
            "osm" => Ok(Mesh::Osm),
            other => Err(format!(
                "unknown mesh {other:?}: use one of istio, linkerd, kuma, osm"
            )),
        }
    }
}

/// A pod that carries the mesh's sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshedPod {
    pub mesh: Mesh,
    /// The proxy runs as an init container with `restartPolicy: Always`.
    pub native_sidecar: bool,
    /// `securityContext.runAsUser` of the proxy container, if set.
    pub proxy_run_as_user: Option<u32>,
}

fn is_false(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "false" | "0" | "f" | "no" | "n" | "off" | "disabled"
    )
}

/// Whether `pod` carries `mesh`'s sidecar (in `containers`, or as a native sidecar in
/// `initContainers`). `hostNetwork` pods are never meshed (they share the node's IP).
pub fn is_meshed(pod: &PodInfo, mesh: Mesh) -> Option<MeshedPod> {
    if pod.host_network {
        return None;
    }
    let name = mesh.proxy_container();
    let (proxy, native) = match pod.containers.iter().find(|c| c.name == name) {
        Some(c) => (c, false),
        None => (
            pod.init_containers
                .iter()
                .find(|c| c.name == name && c.is_restartable())?,
            true,
        ),
    };
    let meshed = match mesh {
        Mesh::Istio => {
            // As istio-cni: injected (status annotation), not opted out (label wins over the
            // deprecated annotation), and a sidecar, not a gateway (`proxy router`).
            let inject = pod
                .labels
                .get("sidecar.istio.io/inject")
                .or_else(|| pod.annotations.get("sidecar.istio.io/inject"));
            let gateway = proxy
                .args
                .iter()
                .position(|a| a == "proxy")
                .and_then(|i| proxy.args.get(i + 1))
                .is_some_and(|kind| kind != "sidecar");
            pod.annotations.contains_key("sidecar.istio.io/status")
                && !inject.is_some_and(|v| is_false(v))
                && !gateway
        }
        // linkerd-cni's rule: the proxy container is there.
        Mesh::Linkerd => true,
        Mesh::Kuma => {
            pod.annotations
                .get("kuma.io/sidecar-injected")
                .map(|v| v.trim())
                == Some("true")
        }
        Mesh::Osm => pod.labels.contains_key("osm-proxy-uuid"),
    };
    meshed.then_some(MeshedPod {
        mesh,
        native_sidecar: native,
        proxy_run_as_user: proxy.run_as_user,
    })
}

/// What the data path must do for one pod on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterceptedPod {
    pub meshed: MeshedPod,
    pub policy: PodPolicy,
    pub warnings: Vec<PolicyWarning>,
}

/// The full decision for a pod: `None` if its traffic must not be intercepted (not meshed,
/// hostNetwork, finished, or no IP yet), else its policy and any annotation warnings.
/// Why merbridge refuses to intercept this pod at all, if it does (for a metric; the policy
/// parser warns and disables the pod): Istio's `interceptionMode: TPROXY`.
pub fn refusal(pod: &PodInfo, mesh: Mesh) -> Option<&'static str> {
    if mesh != Mesh::Istio {
        return None;
    }
    // The annotation, else what the injector passed istio-init (`-m TPROXY`).
    let from_init = || {
        pod.init_containers
            .iter()
            .filter(|c| c.name == "istio-init" || c.name == "istio-validation")
            .flat_map(|c| c.args.windows(2))
            .find(|w| w[0] == "-m")
            .map(|w| w[1].as_str())
    };
    let mode = match pod.annotations.get(INTERCEPTION_MODE_ANNOTATION) {
        Some(mode) => mode.as_str(),
        None => from_init()?,
    };
    annotations_refusal(mesh, mode)
}

/// Istio's interception mode annotation (REDIRECT, TPROXY or NONE).
pub const INTERCEPTION_MODE_ANNOTATION: &str = "sidecar.istio.io/interceptionMode";

/// Why a pod with interception mode `mode` is not intercepted at all (`Some("tproxy")`), for
/// the agent and `merbridge pod add --annotations`.
pub fn annotations_refusal(mesh: Mesh, mode: &str) -> Option<&'static str> {
    (mesh == Mesh::Istio && mode.trim() == "TPROXY").then_some("tproxy")
}

/// Whether the pod has annotations merbridge warns about and ignores (Istio's
/// `excludeInterfaces`, `kubevirtInterfaces`), for a metric.
pub fn has_ignored_annotations(pod: &PodInfo, mesh: Mesh) -> bool {
    mesh == Mesh::Istio
        && policy::UNSUPPORTED_ISTIO_ANNOTATIONS.iter().any(|a| {
            pod.annotations
                .get(*a)
                .is_some_and(|v| !v.trim().is_empty())
        })
}

pub fn intercepted(pod: &PodInfo, mesh: Mesh) -> Option<InterceptedPod> {
    if pod.is_terminal() || pod.pod_ips.is_empty() {
        return None;
    }
    let meshed = is_meshed(pod, mesh)?;
    // Refused pods (TPROXY) get no entry and no inbound link at all: never half-intercepted.
    if refusal(pod, mesh).is_some() {
        return None;
    }
    let (policy, warnings) = PodPolicy::for_pod(mesh, pod);
    Some(InterceptedPod {
        meshed,
        policy,
        warnings,
    })
}
