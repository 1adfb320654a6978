//! The annotation names the parser-robustness checks draw from, shared by
//! `agent/tests/mesh_no_panic.rs` (proptest) and `fuzz/fuzz_targets/annotations_policy.rs`
//! (cargo-fuzz): every mesh's interception annotations, valid or not for the mesh at hand.

pub const NAMES: &[&str] = &[
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "status.sidecar.istio.io/port",
    "sidecar.istio.io/interceptionMode",
    "config.linkerd.io/skip-inbound-ports",
    "config.linkerd.io/skip-outbound-ports",
    "config.linkerd.io/skip-subnets",
    "config.linkerd.io/proxy-uid",
    "config.linkerd.io/admin-port",
    "traffic.kuma.io/exclude-inbound-ports",
    "traffic.kuma.io/exclude-outbound-ips",
    "traffic.kuma.io/exclude-inbound-ips",
    "traffic.kuma.io/transparent-proxy-config",
    "kuma.io/sidecar-uid",
    "kuma.io/transparent-proxying",
    "openservicemesh.io/outbound-ip-range-inclusion-list",
    "openservicemesh.io/inbound-port-exclusion-list",
    "config.linkerd.io/inbound-port",
    "traffic.kuma.io/exclude-outbound-ports",
    "openservicemesh.io/outbound-ip-range-exclusion-list",
];
