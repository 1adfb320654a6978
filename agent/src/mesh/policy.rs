//! A pod's interception policy and the annotation parser, per mesh:
//!
//! - Istio `traffic.sidecar.istio.io/*`: `*` = all, an empty include list = nothing, an absent
//!   include annotation = all; CIDRs with host bits are masked; IPv4 and IPv6 mixed; ports
//!   trimmed; the status port (`status.sidecar.istio.io/port`, default 15020, `0` = none) and
//!   Istio's own ports are never redirected inbound; `interceptionMode: NONE` = nothing.
//! - Linkerd `config.linkerd.io/skip-*`: ports and inclusive ranges `a-b`; an annotation
//!   replaces the default skip list `4567,4568`; the proxy's admin and control ports are
//!   never redirected inbound; `proxy-uid`, `inbound-port`, `outbound-port` overrides.
//! - Kuma `traffic.kuma.io/exclude-*` (ports without ranges; IPs or CIDRs), the
//!   consolidated `traffic.kuma.io/transparent-proxy-config`, `kuma.io/sidecar-uid` and the
//!   `kuma.io/transparent-proxying-*` ports.
//! - OSM `openservicemesh.io/*-exclusion-list` / `outbound-ip-range-inclusion-list`.
//!
//! A malformed element is a [`PolicyWarning`] naming the annotation and the element; the
//! rest of the annotation and all other annotations still apply.

use super::Mesh;
use crate::k8s::PodInfo;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// A set of ports as sorted, merged inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PortRanges(Vec<(u16, u16)>);

impl PortRanges {
    pub fn new() -> PortRanges {
        PortRanges(Vec::new())
    }

    pub fn from_ports(ports: &[u16]) -> PortRanges {
        let mut set = PortRanges::new();
        for &port in ports {
            set.insert(port, port);
        }
        set
    }

    /// Adds the inclusive range `low..=high` (swapped if reversed).
    pub fn insert(&mut self, low: u16, high: u16) {
        let (low, high) = if low <= high {
            (low, high)
        } else {
            (high, low)
        };
        self.0.push((low, high));
        self.0.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(self.0.len());
        for &(lo, hi) in &self.0 {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.0 = merged;
    }

    pub fn extend(&mut self, other: &PortRanges) {
        for &(lo, hi) in &other.0 {
            self.insert(lo, hi);
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0
            .binary_search_by(|&(lo, hi)| {
                if hi < port {
                    std::cmp::Ordering::Less
                } else if lo > port {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The merged ranges, ascending.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// Number of ports in the set.
    pub fn port_count(&self) -> u32 {
        self.0
            .iter()
            .map(|&(lo, hi)| u32::from(hi) - u32::from(lo) + 1)
            .sum()
    }

    /// Every port, ascending (a range of 60,000 ports yields 60,000 items: the maps store
    /// ranges as prefixes, `mb_maps::layout::PortRuleKey::cover_range`).
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.0.iter().flat_map(|&(lo, hi)| lo..=hi)
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Include-list of ports: all, or only these (an empty set = none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSelection {
    All,
    Only(PortRanges),
}

impl PortSelection {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortSelection::All => true,
            PortSelection::Only(set) => set.contains(port),
        }
    }
}

/// An IP prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// A prefix; host bits of `address` are cleared. `None` if `prefix_len` is too long.
    pub fn new(address: IpAddr, prefix_len: u8) -> Option<Cidr> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return None;
        }
        let network = match address {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = if prefix_len == 0 {
                    0
                } else {
                    u32::MAX << (32 - prefix_len)
                };
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = if prefix_len == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix_len)
                };
                IpAddr::V6((bits & mask).into())
            }
        };
        Some(Cidr {
            network,
            prefix_len,
        })
    }

    /// Parses `a.b.c.d/n` or `x::y/n`; a bare address (a host route) only if `allow_bare`.
    pub fn parse(text: &str, allow_bare: bool) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| "not an IPv4 or IPv6 address".to_string())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("prefix length {p} is longer than {max}"))?,
            Some(p) => return Err(format!("prefix length {p:?} is not a number")),
            None if allow_bare => max,
            None => return Err("a CIDR needs a /prefix-length".to_string()),
        };
        Cidr::new(address, prefix_len).ok_or_else(|| "bad prefix length".to_string())
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `address` is inside; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Cidr::new(address, self.prefix_len).map(|c| c.network) == Some(self.network)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Include-list of destination prefixes: all, or only these (an empty list = none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrSelection {
    All,
    Only(Vec<Cidr>),
}

impl CidrSelection {
    pub fn contains(&self, address: IpAddr) -> bool {
        match self {
            CidrSelection::All => true,
            CidrSelection::Only(list) => list.iter().any(|c| c.contains(address)),
        }
    }
}

/// One element of one annotation that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyWarning {
    pub annotation: String,
    pub element: String,
    pub problem: String,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Annotation names have no spaces; other fields (a container's env) say what they are.
        let kind = if self.annotation.contains(' ') {
            ""
        } else {
            "annotation "
        };
        write!(
            f,
            "{kind}{}: ignored {:?}: {}",
            self.annotation, self.element, self.problem
        )
    }
}

/// Everything the data path needs to decide, for one pod, which connections go to its
/// sidecar. The decision rules are [`redirects_outbound`](PodPolicy::redirects_outbound) and
/// [`redirects_inbound`](PodPolicy::redirects_inbound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicy {
    pub mesh: Mesh,
    /// Connections made by this UID (the sidecar) are never redirected as outbound.
    pub proxy_uid: u32,
    /// The pod's own DNS-capture switch (Istio `ISTIO_META_DNS_CAPTURE` in
    /// `proxy.istio.io/config`, Kuma `kuma.io/builtin-dns`); None = the agent's default.
    pub dns_capture: Option<bool>,
    /// Processes of this GID count as the sidecar too (istio-iptables `-g`, which defaults
    /// to the proxy UID); None = no GID rule (Linkerd, Kuma, OSM).
    pub proxy_gid: Option<u32>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub dns_port: Option<u16>,
    /// The sidecar's status/health port (Istio), never redirected inbound.
    pub status_port: Option<u16>,
    /// Redirected whatever the destination IP (Istio `includeOutboundPorts`).
    pub outbound_include_ports: PortRanges,
    pub outbound_exclude_ports: PortRanges,
    pub outbound_include_cidrs: CidrSelection,
    pub outbound_exclude_cidrs: Vec<Cidr>,
    pub inbound_include_ports: PortSelection,
    /// Includes the mesh's own ports and the status port.
    pub inbound_exclude_ports: PortRanges,
    /// Inbound connections from these sources are not redirected (Kuma `exclude-inbound-ips`).
    pub inbound_exclude_sources: Vec<Cidr>,
    /// Splice the application's own connections to and from its sidecar socket to socket
    /// (annotation [`SPLICE_APP_ANNOTATION`]): `Some(true)` forces it, `Some(false)` forbids
    /// it, `None` leaves it to the agent's per-process verdicts (agent/src/splice).
    pub splice_app: Option<bool>,
}

/// `"true"` on a pod: its application is event-driven, splice its legs to and from the
/// sidecar as well (under `merbridge load --splice sidecars`, the default); `"false"`: never,
/// whatever the agent finds about its processes. Any mesh.
pub const SPLICE_APP_ANNOTATION: &str = "merbridge.io/splice-app";

/// Istio annotations the data path cannot honour (it does not look at interfaces): warned
/// about and counted (`merbridge_pods_ignored_annotations`).
pub const UNSUPPORTED_ISTIO_ANNOTATIONS: [&str; 2] = [
    "traffic.sidecar.istio.io/excludeInterfaces",
    "traffic.sidecar.istio.io/kubevirtInterfaces",
];

/// Istio's own ports: admin, outbound, inbound, HBONE, status, health, Prometheus.
const ISTIO_OWN_PORTS: &[u16] = &[15000, 15001, 15006, 15008, 15020, 15021, 15090];
/// Kuma's admin, outbound, inbound and (Merbridge's list) 15010.
const KUMA_OWN_PORTS: &[u16] = &[9901, 15001, 15006, 15010];
/// OSM's admin, outbound, inbound, Prometheus, and probe proxy ports.
const OSM_OWN_PORTS: &[u16] = &[
    15000, 15001, 15003, 15010, 15050, 15128, 15901, 15902, 15903, 15904,
];
const LINKERD_DEFAULT_SKIP: &[u16] = &[4567, 4568];
const LINKERD_CONTROL_PORT: u16 = 4190;
const LINKERD_ADMIN_PORT: u16 = 4191;

#[derive(Clone, Copy, PartialEq, Eq)]
enum PortSyntax {
    /// Single ports only.
    Plain,
    /// Single ports and inclusive ranges `a-b` (Linkerd).
    Ranges,
}

/// Collects warnings while parsing one pod's annotations.
struct Parser<'a> {
    annotations: &'a BTreeMap<String, String>,
    warnings: Vec<PolicyWarning>,
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty())
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a port number".into());
    }
    text.parse::<u16>()
        .map_err(|_| "port number above 65535".to_string())
}

impl<'a> Parser<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.annotations.get(name).map(String::as_str)
    }

    /// Annotation `name` parsed as YAML; `None` if absent, or (with a warning) not YAML.
    fn yaml(&mut self, name: &str) -> Option<serde_norway::Value> {
        let text = self.get(name)?;
        match serde_norway::from_str(text) {
            Ok(value) => Some(value),
            Err(e) => {
                let first_line = text.lines().next().unwrap_or("");
                self.warn(name, first_line, format!("not YAML: {e}"));
                None
            }
        }
    }

    fn warn(&mut self, annotation: &str, element: &str, problem: impl Into<String>) {
        self.warnings.push(PolicyWarning {
            annotation: annotation.to_string(),
            element: element.chars().take(200).collect(),
            problem: problem.into(),
        });
    }

    /// The elements of list annotation `name` that `parse` accepts (the others become
    /// warnings), and whether `*` was given (a warning unless `star_ok`); `None` if absent.
    fn elements<T, E: Into<String>>(
        &mut self,
        name: &str,
        star_ok: bool,
        mut parse: impl FnMut(&str) -> Result<T, E>,
    ) -> Option<(bool, Vec<T>)> {
        let value = self.get(name)?;
        let (mut all, mut parsed) = (false, Vec::new());
        for element in split_list(value) {
            if element == "*" {
                if star_ok {
                    all = true;
                } else {
                    self.warn(name, element, "'*' is only allowed in an include list");
                }
                continue;
            }
            match parse(element) {
                Ok(item) => parsed.push(item),
                Err(problem) => self.warn(name, element, problem),
            }
        }
        Some((all, parsed))
    }

    /// A port list; `Some(All)` if `*` is allowed and present; `None` if absent.
    fn ports(&mut self, name: &str, syntax: PortSyntax, star_ok: bool) -> Option<PortSelection> {
        let (all, ranges) = self.elements(name, star_ok, |element| {
            match (syntax, element.split_once('-')) {
                (PortSyntax::Ranges, Some((lo, hi))) => {
                    match (parse_port(lo.trim()), parse_port(hi.trim())) {
                        (Ok(lo), Ok(hi)) if lo <= hi => Ok((lo, hi)),
                        (Ok(_), Ok(_)) => Err("range end is below its start".to_string()),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    }
                }
                _ => match parse_port(element) {
                    Ok(0) if syntax == PortSyntax::Plain => Err("port 0 is not a port".into()),
                    Ok(port) => Ok((port, port)),
                    Err(e) if syntax == PortSyntax::Plain && element.contains('-') => {
                        Err(format!("{e}: port ranges are not supported by this mesh"))
                    }
                    Err(e) => Err(e),
                },
            }
        })?;
        let mut set = PortRanges::new();
        for (lo, hi) in ranges {
            set.insert(lo, hi);
        }
        Some(if all {
            PortSelection::All
        } else {
            PortSelection::Only(set)
        })
    }

    fn port_set(&mut self, name: &str, syntax: PortSyntax) -> Option<PortRanges> {
        match self.ports(name, syntax, false)? {
            PortSelection::Only(set) => Some(set),
            PortSelection::All => Some(PortRanges::new()),
        }
    }

    fn cidrs(&mut self, name: &str, allow_bare: bool, star_ok: bool) -> Option<CidrSelection> {
        let (all, parsed) = self.elements(name, star_ok, |e| Cidr::parse(e, allow_bare))?;
        let mut list = Vec::new();
        for cidr in parsed {
            if !list.contains(&cidr) {
                list.push(cidr);
            }
        }
        Some(if all {
            CidrSelection::All
        } else {
            CidrSelection::Only(list)
        })
    }

    fn cidr_list(&mut self, name: &str, allow_bare: bool) -> Vec<Cidr> {
        match self.cidrs(name, allow_bare, false) {
            Some(CidrSelection::Only(list)) => list,
            _ => Vec::new(),
        }
    }

    fn single_port(&mut self, name: &str) -> Option<u16> {
        let value = self.get(name)?.trim();
        match parse_port(value) {
            Ok(0) => {
                self.warn(name, value, "port 0 is not a port");
                None
            }
            Ok(port) => Some(port),
            Err(problem) => {
                self.warn(name, value, problem);
                None
            }
        }
    }

    fn uid(&mut self, name: &str) -> Option<u32> {
        let value = self.get(name)?.trim();
        match value.parse::<u32>() {
            Ok(uid) if value.bytes().all(|b| b.is_ascii_digit()) => Some(uid),
            _ => {
                self.warn(name, value, "not a numeric user ID");
                None
            }
        }
    }
}

impl PodPolicy {
    /// The mesh's defaults: everything redirected except the mesh's own ports.
    pub fn defaults(mesh: Mesh) -> PodPolicy {
        let d = mesh.defaults();
        let (own, status_port): (&[u16], Option<u16>) = match mesh {
            Mesh::Istio => (ISTIO_OWN_PORTS, Some(15020)),
            Mesh::Linkerd => (&[], None),
            Mesh::Kuma => (KUMA_OWN_PORTS, None),
            Mesh::Osm => (OSM_OWN_PORTS, None),
        };
        let mut inbound_exclude_ports = PortRanges::from_ports(own);
        inbound_exclude_ports.insert(d.inbound_port, d.inbound_port);
        inbound_exclude_ports.insert(d.outbound_port, d.outbound_port);
        let mut outbound_exclude_ports = PortRanges::new();
        if mesh == Mesh::Linkerd {
            inbound_exclude_ports.insert(LINKERD_CONTROL_PORT, LINKERD_CONTROL_PORT);
            inbound_exclude_ports.insert(LINKERD_ADMIN_PORT, LINKERD_ADMIN_PORT);
            for &p in LINKERD_DEFAULT_SKIP {
                inbound_exclude_ports.insert(p, p);
                outbound_exclude_ports.insert(p, p);
            }
        }
        PodPolicy {
            mesh,
            proxy_uid: d.proxy_uid,
            proxy_gid: None,
            dns_capture: None,
            outbound_port: d.outbound_port,
            inbound_port: d.inbound_port,
            dns_port: d.dns_port,
            status_port,
            outbound_include_ports: PortRanges::new(),
            outbound_exclude_ports,
            outbound_include_cidrs: CidrSelection::All,
            outbound_exclude_cidrs: Vec::new(),
            inbound_include_ports: PortSelection::All,
            inbound_exclude_ports,
            inbound_exclude_sources: Vec::new(),
            splice_app: None,
        }
    }

    /// The policy the annotations ask for (the `merbridge pod add --annotations` path).
    pub fn from_annotations(
        mesh: Mesh,
        annotations: &BTreeMap<String, String>,
    ) -> (PodPolicy, Vec<PolicyWarning>) {
        let (policy, warnings, _) = parse(mesh, annotations);
        (policy, warnings)
    }

    /// The policy for a pod: its annotations, then what the injector left in the init
    /// container's arguments (mesh-wide defaults are only there), then the proxy
    /// container's `runAsUser` for the proxy UID. Istio only: the GID from istio-init's `-g`,
    /// else the proxy container's `runAsGroup`, and `ISTIO_META_DNS_CAPTURE` from the proxy
    /// container's environment when `proxy.istio.io/config` does not say.
    pub fn for_pod(mesh: Mesh, pod: &PodInfo) -> (PodPolicy, Vec<PolicyWarning>) {
        let mut annotations = pod.annotations.clone();
        let (init_uid, init_gid) = merge_init_args(mesh, pod, &mut annotations);
        let (mut policy, mut warnings, uid_from_annotation) = parse(mesh, &annotations);
        let proxy = pod.container(mesh.proxy_container());
        if !uid_from_annotation {
            let from_container = proxy.and_then(|c| c.run_as_user).filter(|&uid| uid != 0);
            if let Some(uid) = init_uid.or(from_container) {
                policy.proxy_uid = uid;
            }
        }
        if mesh == Mesh::Istio {
            // Group 0 would make every root process the sidecar: never taken as the GID.
            let from_container = proxy.and_then(|c| c.run_as_group).filter(|&gid| gid != 0);
            if let Some(gid) = init_gid.or(from_container) {
                policy.proxy_gid = Some(gid);
            }
            if let (None, Some(value)) = (
                policy.dns_capture,
                proxy.and_then(|c| c.env_value(ISTIO_DNS_CAPTURE_ENV)),
            ) {
                match value.trim().to_ascii_lowercase().as_str() {
                    "true" => policy.dns_capture = Some(true),
                    "false" => policy.dns_capture = Some(false),
                    _ => warnings.push(PolicyWarning {
                        annotation: format!(
                            "env {ISTIO_DNS_CAPTURE_ENV} of container {}",
                            mesh.proxy_container()
                        ),
                        element: value.to_owned(),
                        problem: "expected \"true\" or \"false\"".into(),
                    }),
                }
            }
        }
        (policy, warnings)
    }

    /// Whether an application's connection to `destination:port` goes to the sidecar.
    /// Order: excluded port → no; included port → yes (whatever the IP); excluded prefix →
    /// no; then the include prefixes decide.
    pub fn redirects_outbound(&self, destination: IpAddr, port: u16) -> bool {
        if self.outbound_exclude_ports.contains(port) {
            return false;
        }
        if self.outbound_include_ports.contains(port) {
            return true;
        }
        if self
            .outbound_exclude_cidrs
            .iter()
            .any(|c| c.contains(destination))
        {
            return false;
        }
        self.outbound_include_cidrs.contains(destination)
    }

    /// Whether a connection from `source` (if known) to this pod's `port` goes to its
    /// sidecar's inbound port.
    pub fn redirects_inbound(&self, source: Option<IpAddr>, port: u16) -> bool {
        if self.inbound_exclude_ports.contains(port) {
            return false;
        }
        if let Some(source) = source {
            if self
                .inbound_exclude_sources
                .iter()
                .any(|c| c.contains(source))
            {
                return false;
            }
        }
        self.inbound_include_ports.contains(port)
    }

    /// True if nothing at all is redirected (e.g. Istio `interceptionMode: NONE`).
    pub fn intercepts_nothing(&self) -> bool {
        let no_outbound = self.outbound_include_ports.is_empty()
            && self.outbound_include_cidrs == CidrSelection::Only(Vec::new());
        let no_inbound = self.inbound_include_ports == PortSelection::Only(PortRanges::new());
        no_outbound && no_inbound
    }

    fn disable(&mut self) {
        self.disable_outbound();
        self.disable_inbound();
    }

    fn disable_outbound(&mut self) {
        self.outbound_include_ports = PortRanges::new();
        self.outbound_include_cidrs = CidrSelection::Only(Vec::new());
    }

    fn disable_inbound(&mut self) {
        self.inbound_include_ports = PortSelection::Only(PortRanges::new());
    }

    fn exclude_inbound(&mut self, port: u16) {
        self.inbound_exclude_ports.insert(port, port);
    }
}

/// Parses; the third value says whether an annotation set the proxy UID.
fn parse(
    mesh: Mesh,
    annotations: &BTreeMap<String, String>,
) -> (PodPolicy, Vec<PolicyWarning>, bool) {
    let mut p = Parser {
        annotations,
        warnings: Vec::new(),
    };
    let mut policy = PodPolicy::defaults(mesh);
    let mut uid_set = false;
    match mesh {
        Mesh::Istio => {
            const T: &str = "traffic.sidecar.istio.io/";
            if let Some(sel) = p.cidrs(&format!("{T}includeOutboundIPRanges"), false, true) {
                policy.outbound_include_cidrs = sel;
            }
            policy.outbound_exclude_cidrs =
                p.cidr_list(&format!("{T}excludeOutboundIPRanges"), false);
            if let Some(sel) = p.ports(&format!("{T}includeInboundPorts"), PortSyntax::Plain, true)
            {
                policy.inbound_include_ports = sel;
            }
            if let Some(set) = p.port_set(&format!("{T}excludeInboundPorts"), PortSyntax::Plain) {
                policy.inbound_exclude_ports.extend(&set);
            }
            if let Some(set) = p.port_set(&format!("{T}includeOutboundPorts"), PortSyntax::Plain) {
                policy.outbound_include_ports = set;
            }
            if let Some(set) = p.port_set(&format!("{T}excludeOutboundPorts"), PortSyntax::Plain) {
                policy.outbound_exclude_ports = set;
            }
            let status_name = "status.sidecar.istio.io/port";
            if let Some(value) = p.get(status_name) {
                let value = value.trim();
                match parse_port(value) {
                    Ok(0) => policy.status_port = None,
                    Ok(port) => policy.status_port = Some(port),
                    Err(problem) => p.warn(status_name, value, problem),
                }
            }
            if let Some(port) = policy.status_port {
                policy.exclude_inbound(port);
            }
            istio_dns_capture(&mut p, &mut policy);
            for name in UNSUPPORTED_ISTIO_ANNOTATIONS {
                if let Some(value) = p.get(name).map(str::trim).filter(|v| !v.is_empty()) {
                    p.warn(
                        name,
                        value,
                        "not supported by merbridge: connections on these interfaces are \
                         intercepted like any other",
                    );
                }
            }
            let mode_name = "sidecar.istio.io/interceptionMode";
            if let Some(mode) = p.get(mode_name) {
                match mode.trim() {
                    "NONE" => policy.disable(),
                    "REDIRECT" => {}
                    "TPROXY" => {
                        // Envoy then runs as uid 0 and connects to the app from the caller's
                        // own address: its last hop looks like a caller from outside, which
                        // the data path would steer back to it (a loop). Refused, not guessed.
                        policy.disable();
                        p.warn(
                            mode_name,
                            "TPROXY",
                            "TPROXY mode is not supported by merbridge: the pod is not \
                             intercepted at all (keep istio-init for it, or use REDIRECT)",
                        );
                    }
                    other => p.warn(mode_name, other, "expected REDIRECT, TPROXY or NONE"),
                }
            }
        }
        Mesh::Linkerd => {
            const C: &str = "config.linkerd.io/";
            if let Some(port) = p.single_port(&format!("{C}inbound-port")) {
                policy.inbound_port = port;
            }
            if let Some(port) = p.single_port(&format!("{C}outbound-port")) {
                policy.outbound_port = port;
            }
            let control = p
                .single_port(&format!("{C}control-port"))
                .unwrap_or(LINKERD_CONTROL_PORT);
            let admin = p
                .single_port(&format!("{C}admin-port"))
                .unwrap_or(LINKERD_ADMIN_PORT);
            // The annotation replaces the default skip list; the proxy's ports stay skipped.
            let inbound_skip = p
                .port_set(&format!("{C}skip-inbound-ports"), PortSyntax::Ranges)
                .unwrap_or_else(|| PortRanges::from_ports(LINKERD_DEFAULT_SKIP));
            let mut inbound = PortRanges::from_ports(&[
                control,
                admin,
                policy.inbound_port,
                policy.outbound_port,
            ]);
            inbound.extend(&inbound_skip);
            policy.inbound_exclude_ports = inbound;
            policy.outbound_exclude_ports = p
                .port_set(&format!("{C}skip-outbound-ports"), PortSyntax::Ranges)
                .unwrap_or_else(|| PortRanges::from_ports(LINKERD_DEFAULT_SKIP));
            policy.outbound_exclude_cidrs = p.cidr_list(&format!("{C}skip-subnets"), true);
            if let Some(uid) = p.uid(&format!("{C}proxy-uid")) {
                policy.proxy_uid = uid;
                uid_set = true;
            }
        }
        Mesh::Kuma => {
            kuma_proxy_config(&mut p, &mut policy, &mut uid_set);
            let dns_name = "kuma.io/builtin-dns";
            if let Some(value) = p.get(dns_name) {
                match value.trim() {
                    "enabled" | "true" => policy.dns_capture = Some(true),
                    "disabled" | "false" => policy.dns_capture = Some(false),
                    other => p.warn(dns_name, other, "expected enabled or disabled"),
                }
            }
            const T: &str = "traffic.kuma.io/";
            if let Some(set) = p.port_set(&format!("{T}exclude-inbound-ports"), PortSyntax::Plain) {
                policy.inbound_exclude_ports.extend(&set);
            }
            if let Some(set) = p.port_set(&format!("{T}exclude-outbound-ports"), PortSyntax::Plain)
            {
                policy.outbound_exclude_ports.extend(&set);
            }
            for cidr in p.cidr_list(&format!("{T}exclude-outbound-ips"), true) {
                if !policy.outbound_exclude_cidrs.contains(&cidr) {
                    policy.outbound_exclude_cidrs.push(cidr);
                }
            }
            for cidr in p.cidr_list(&format!("{T}exclude-inbound-ips"), true) {
                if !policy.inbound_exclude_sources.contains(&cidr) {
                    policy.inbound_exclude_sources.push(cidr);
                }
            }
            if !uid_set {
                if let Some(uid) = p.uid("kuma.io/sidecar-uid") {
                    policy.proxy_uid = uid;
                    uid_set = true;
                }
            }
            if let Some(port) = p.single_port("kuma.io/transparent-proxying-inbound-port") {
                policy.inbound_port = port;
            }
            if let Some(port) = p.single_port("kuma.io/transparent-proxying-outbound-port") {
                policy.outbound_port = port;
            }
            for name in [
                "kuma.io/envoy-admin-port",
                "kuma.io/virtual-probes-port",
                "kuma.io/application-probe-proxy-port",
            ] {
                if let Some(port) = p.single_port(name) {
                    policy.exclude_inbound(port);
                }
            }
            let (inbound, outbound) = (policy.inbound_port, policy.outbound_port);
            policy.exclude_inbound(inbound);
            policy.exclude_inbound(outbound);
            let name = "kuma.io/transparent-proxying";
            if let Some(value) = p.get(name) {
                match value.trim() {
                    "enabled" => {}
                    "disabled" => policy.disable(),
                    other => p.warn(name, other, "expected enabled or disabled"),
                }
            }
        }
        Mesh::Osm => {
            const O: &str = "openservicemesh.io/";
            if let Some(set) = p.port_set(
                &format!("{O}inbound-port-exclusion-list"),
                PortSyntax::Plain,
            ) {
                policy.inbound_exclude_ports.extend(&set);
            }
            if let Some(set) = p.port_set(
                &format!("{O}outbound-port-exclusion-list"),
                PortSyntax::Plain,
            ) {
                policy.outbound_exclude_ports = set;
            }
            policy.outbound_exclude_cidrs =
                p.cidr_list(&format!("{O}outbound-ip-range-exclusion-list"), false);
            // OSM: an empty inclusion list means "all", unlike Istio.
            let include = p.cidr_list(&format!("{O}outbound-ip-range-inclusion-list"), false);
            if !include.is_empty() {
                policy.outbound_include_cidrs = CidrSelection::Only(include);
            }
        }
    }
    if let Some(value) = p.get(SPLICE_APP_ANNOTATION) {
        match value.trim() {
            "true" => policy.splice_app = Some(true),
            "false" => policy.splice_app = Some(false),
            other => p.warn(SPLICE_APP_ANNOTATION, other, "expected true or false"),
        }
    }
    (policy, p.warnings, uid_set)
}

/// Istio's per-pod DNS capture switch, as the proxy's environment variable or a key of
/// `proxyMetadata`.
const ISTIO_DNS_CAPTURE_ENV: &str = "ISTIO_META_DNS_CAPTURE";

/// Istio's per-pod DNS capture: `proxyMetadata.ISTIO_META_DNS_CAPTURE` in the
/// `proxy.istio.io/config` annotation (YAML). ([`PodPolicy::for_pod`] also reads the proxy
/// container's environment.)
fn istio_dns_capture(p: &mut Parser<'_>, policy: &mut PodPolicy) {
    let name = "proxy.istio.io/config";
    let Some(config) = p.yaml(name) else { return };
    let Some(value) = config
        .get("proxyMetadata")
        .and_then(|m| m.get(ISTIO_DNS_CAPTURE_ENV))
    else {
        return;
    };
    let text = value
        .as_str()
        .map(str::to_owned)
        .or_else(|| value.as_bool().map(|b| b.to_string()))
        .unwrap_or_default();
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => policy.dns_capture = Some(true),
        "false" => policy.dns_capture = Some(false),
        _ => p.warn(
            name,
            &format!("ISTIO_META_DNS_CAPTURE: {}", text.trim()),
            "expected \"true\" or \"false\"",
        ),
    }
}

/// Kuma's consolidated `traffic.kuma.io/transparent-proxy-config` (YAML), when present.
fn kuma_proxy_config(p: &mut Parser<'_>, policy: &mut PodPolicy, uid_set: &mut bool) {
    let name = "traffic.kuma.io/transparent-proxy-config";
    let Some(config) = p.yaml(name) else { return };
    let as_u64 = |v: &serde_norway::Value| -> Option<u64> {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
    };
    if let Some(user) = config.get("kumaDPUser") {
        match as_u64(user).and_then(|u| u32::try_from(u).ok()) {
            Some(uid) => {
                policy.proxy_uid = uid;
                *uid_set = true;
            }
            None => p.warn(
                name,
                &format!("kumaDPUser: {}", yaml_text(user)),
                "not a numeric user ID",
            ),
        }
    }
    let port_number = |v: &serde_norway::Value| {
        as_u64(v)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|&n| n > 0)
    };
    let redirect = config.get("redirect");
    let section = |key: &str| redirect.and_then(|r| r.get(key));
    let ports_of = |p: &mut Parser<'_>, value: Option<&serde_norway::Value>, what: &str| {
        let mut set = PortRanges::new();
        if let Some(list) = value.and_then(|v| v.as_sequence()) {
            for item in list {
                match port_number(item) {
                    Some(port) => set.insert(port, port),
                    None => p.warn(
                        name,
                        &format!("{what}: {}", yaml_text(item)),
                        "not a port number",
                    ),
                }
            }
        }
        set
    };
    // `redirect.inbound` and `redirect.outbound` have the same shape.
    let direction = |p: &mut Parser<'_>, key: &str| {
        let s = section(key)?;
        let what = format!("redirect.{key}.excludePorts");
        Some(KumaDirection {
            exclude_ports: ports_of(p, s.get("excludePorts"), &what),
            port: s.get("port").and_then(port_number),
            disabled: s.get("enabled").and_then(|v| v.as_bool()) == Some(false),
            exclude_ips: kuma_ips(p, name, s.get("excludePortsForIPs")),
        })
    };
    if let Some(inbound) = direction(p, "inbound") {
        policy.inbound_exclude_ports.extend(&inbound.exclude_ports);
        policy.inbound_port = inbound.port.unwrap_or(policy.inbound_port);
        if inbound.disabled {
            policy.disable_inbound();
        }
        policy.inbound_exclude_sources.extend(inbound.exclude_ips);
    }
    if let Some(outbound) = direction(p, "outbound") {
        policy
            .outbound_exclude_ports
            .extend(&outbound.exclude_ports);
        policy.outbound_port = outbound.port.unwrap_or(policy.outbound_port);
        if outbound.disabled {
            policy.disable_outbound();
        }
        policy.outbound_exclude_cidrs.extend(outbound.exclude_ips);
    }
    if let Some(dns) = section("dns") {
        if dns.get("enabled").and_then(|v| v.as_bool()) == Some(false) {
            policy.dns_port = None;
        } else if let Some(port) = dns.get("port").and_then(port_number) {
            policy.dns_port = Some(port);
        }
    }
}

/// What one of Kuma's `redirect.inbound` / `redirect.outbound` sections says.
struct KumaDirection {
    exclude_ports: PortRanges,
    port: Option<u16>,
    disabled: bool,
    exclude_ips: Vec<Cidr>,
}

fn kuma_ips(p: &mut Parser<'_>, name: &str, value: Option<&serde_norway::Value>) -> Vec<Cidr> {
    let mut out = Vec::new();
    for item in value.and_then(|v| v.as_sequence()).into_iter().flatten() {
        let text = item.as_str().unwrap_or("");
        match Cidr::parse(text.trim(), true) {
            Ok(cidr) => out.push(cidr),
            Err(problem) => p.warn(name, &yaml_text(item), problem),
        }
    }
    out
}

fn yaml_text(value: &serde_norway::Value) -> String {
    serde_norway::to_string(value)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Fills absent annotations from the injector's init-container arguments (where mesh-wide
/// defaults end up); returns the proxy UID and (istio-iptables `-g`) GID found there.
fn merge_init_args(
    mesh: Mesh,
    pod: &PodInfo,
    annotations: &mut BTreeMap<String, String>,
) -> (Option<u32>, Option<u32>) {
    let (init_names, flags): (&[&str], &[(&str, &str)]) = match mesh {
        Mesh::Istio => (
            &["istio-init", "istio-validation"],
            &[
                ("-i", "traffic.sidecar.istio.io/includeOutboundIPRanges"),
                ("-x", "traffic.sidecar.istio.io/excludeOutboundIPRanges"),
                ("-b", "traffic.sidecar.istio.io/includeInboundPorts"),
                ("-d", "traffic.sidecar.istio.io/excludeInboundPorts"),
                ("-q", "traffic.sidecar.istio.io/includeOutboundPorts"),
                ("-o", "traffic.sidecar.istio.io/excludeOutboundPorts"),
                ("-m", "sidecar.istio.io/interceptionMode"),
            ],
        ),
        Mesh::Linkerd => (
            &["linkerd-init"],
            &[
                (
                    "--inbound-ports-to-ignore",
                    "config.linkerd.io/skip-inbound-ports",
                ),
                (
                    "--outbound-ports-to-ignore",
                    "config.linkerd.io/skip-outbound-ports",
                ),
                ("--subnets-to-ignore", "config.linkerd.io/skip-subnets"),
                ("--incoming-proxy-port", "config.linkerd.io/inbound-port"),
                ("--outgoing-proxy-port", "config.linkerd.io/outbound-port"),
            ],
        ),
        Mesh::Kuma | Mesh::Osm => return (None, None),
    };
    let uid_flags: &[&str] = match mesh {
        Mesh::Istio => &["-u", "--proxy-uid"],
        _ => &["--proxy-uid"],
    };
    let gid_flags: &[&str] = match mesh {
        Mesh::Istio => &["-g", "--proxy-gid"],
        _ => &[],
    };
    let Some(init) = pod
        .init_containers
        .iter()
        .find(|c| init_names.contains(&c.name.as_str()))
    else {
        return (None, None);
    };
    let (mut uid, mut gid) = (None, None);
    let args = &init.args;
    for (i, arg) in args.iter().enumerate() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg.as_str(), None),
        };
        let Some(value) = inline.or_else(|| args.get(i + 1).map(String::as_str)) else {
            continue;
        };
        if uid_flags.contains(&flag) {
            uid = value.trim().parse().ok();
        }
        if gid_flags.contains(&flag) {
            gid = value.trim().parse().ok();
        }
        if let Some((_, annotation)) = flags.iter().find(|(f, _)| *f == flag) {
            if !annotations.contains_key(*annotation) {
                annotations.insert(annotation.to_string(), value.to_string());
            }
        }
    }
    (uid, gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_merge() {
        let mut set = PortRanges::new();
        set.insert(8102, 8100);
        set.insert(8103, 8103);
        set.insert(22, 22);
        set.insert(21, 21);
        assert_eq!(set.ranges(), &[(21, 22), (8100, 8103)]);
        assert_eq!(set.to_string(), "21-22,8100-8103");
        assert!(set.contains(8101) && !set.contains(8104) && !set.contains(20));
    }

    #[test]
    fn cidr_parse_masks_and_matches() {
        let c = Cidr::parse("10.96.0.2/24", false).unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/24");
        assert!(c.contains("10.96.0.200".parse().unwrap()));
        assert!(c.contains("::ffff:10.96.0.9".parse().unwrap()));
        assert!(!c.contains("10.96.1.1".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let v6 = Cidr::parse("fe80::1234/10", false).unwrap();
        assert_eq!(v6.to_string(), "fe80::/10");
        assert!(Cidr::parse("10.0.0.1", false).is_err());
        assert_eq!(Cidr::parse("10.0.0.1", true).unwrap().prefix_len(), 32);
        assert!(Cidr::parse("10.0.0.0/33", false).is_err());
        assert!(Cidr::parse("10.0.0.0/+8", false).is_err());
        assert!(Cidr::parse("0.0.0.0/0", false)
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
    }
}
