//! The data path's shape, shared by the programs (which refer to maps and constants by these
//! names), the loader (which creates, pins and patches them) and the agent (which fills them):
//! hooks, maps with their sizes, and load-time constants.

use crate::layout::{
    CidrRuleKey, Counter, ListenerKey, OrigDst, PodEntry, PortRuleKey, SockPairKey, SplicePortKey,
    SpliceProcKey, SpliceVerdict,
};
use crate::Pod;
use mb_sys::bpf::{AttachType, MapType, ProgType, F_NO_PREALLOC};

// The map names the programs refer to; [`MAPS`] declares their shapes.
pub const MAP_NETNS_PODS: &str = "netns_pods";
pub const MAP_POD_IPS: &str = "pod_ips";
pub const MAP_PORT_RULES: &str = "port_rules";
pub const MAP_CIDR_RULES: &str = "cidr_rules";
pub const MAP_COOKIE_ORIG: &str = "cookie_orig";
pub const MAP_PAIR_ORIG: &str = "pair_orig";
pub const MAP_SOCK_PAIRS: &str = "sock_pairs";
pub const MAP_COUNTERS: &str = "counters";
pub const MAP_INBOUND_LISTENERS: &str = "inbound_listeners";
pub const MAP_SPLICE_PROCS: &str = "splice_procs";
pub const MAP_SPLICE_PORTS: &str = "splice_ports";

// The constants the loader patches in (see [`CONSTANTS`]).
pub const CONST_OUTBOUND_PORT: &str = "outbound_port";
pub const CONST_INBOUND_PORT: &str = "inbound_port";
pub const CONST_PROXY_UID: &str = "proxy_uid";
pub const CONST_DNS_PORT: &str = "dns_port";
/// Which redirected connections sk_msg splices: [`SPLICE_NONE`], [`SPLICE_SIDECARS`] or
/// [`SPLICE_ALL`].
pub const CONST_SPLICE: &str = "splice_mode";
pub const SPLICE_NONE: u32 = 0;
/// Only connections between two sidecars (both ends event-driven proxies).
pub const SPLICE_SIDECARS: u32 = 1;
/// Also the legs between applications and their sidecars (faster; see `mb-programs`'
/// `sockmap` for the blocking-`recv()` hazard).
pub const SPLICE_ALL: u32 = 2;

/// Where a program hooks in. The loader derives the program type, expected attach type and
/// attach target from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    Connect4,
    Connect6,
    SockOps,
    SkMsg,
    GetSockopt,
    Sendmsg4,
    Sendmsg6,
    Recvmsg4,
    Recvmsg6,
    Bind4,
    /// sk_lookup, attached per meshed pod's network namespace (not to the cgroup).
    SkLookup,
}

impl Hook {
    pub const ALL: [Hook; 11] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::SockOps,
        Hook::SkMsg,
        Hook::GetSockopt,
        Hook::Sendmsg4,
        Hook::Sendmsg6,
        Hook::Recvmsg4,
        Hook::Recvmsg6,
        Hook::Bind4,
        Hook::SkLookup,
    ];

    /// The program's name in the kernel (at most 15 bytes) and in pins.
    pub fn program_name(self) -> &'static str {
        match self {
            Hook::Connect4 => "mb_connect4",
            Hook::Connect6 => "mb_connect6",
            Hook::SockOps => "mb_sockops",
            Hook::SkMsg => "mb_msg_redir",
            Hook::GetSockopt => "mb_getsockopt",
            Hook::Sendmsg4 => "mb_sendmsg4",
            Hook::Sendmsg6 => "mb_sendmsg6",
            Hook::Recvmsg4 => "mb_recvmsg4",
            Hook::Recvmsg6 => "mb_recvmsg6",
            Hook::Bind4 => "mb_bind4",
            Hook::SkLookup => "mb_sk_lookup",
        }
    }

    /// What the program is for, one line.
    pub fn purpose(self) -> &'static str {
        match self {
            Hook::Connect4 => "IPv4 TCP redirect to the sidecar, UDP DNS capture",
            Hook::Connect6 => "IPv6 TCP redirect to the sidecar, UDP DNS capture",
            Hook::SockOps => "puts both ends of redirected local connections in the sockhash",
            Hook::SkMsg => "moves each message straight into the peer socket",
            Hook::GetSockopt => "answers SO_ORIGINAL_DST without conntrack",
            Hook::Sendmsg4 => "IPv4 DNS capture on unconnected UDP",
            Hook::Sendmsg6 => "IPv6 DNS capture on unconnected UDP",
            Hook::Recvmsg4 => "IPv4 DNS reply source restore",
            Hook::Recvmsg6 => "IPv6 DNS reply source restore",
            Hook::Bind4 => "Linkerd outbound listener on all addresses",
            Hook::SkLookup => "inbound from outside the pod to its sidecar (per pod netns)",
        }
    }

    /// The kernel program type.
    pub fn prog_type(self) -> ProgType {
        match self {
            Hook::SockOps => ProgType::SOCK_OPS,
            Hook::SkMsg => ProgType::SK_MSG,
            Hook::GetSockopt => ProgType::CGROUP_SOCKOPT,
            Hook::SkLookup => ProgType::SK_LOOKUP,
            _ => ProgType::CGROUP_SOCK_ADDR,
        }
    }

    /// Where it attaches: a cgroup hook, or (sk_msg) the sockhash.
    pub fn attach_type(self) -> AttachType {
        match self {
            Hook::Connect4 => AttachType::CGROUP_INET4_CONNECT,
            Hook::Connect6 => AttachType::CGROUP_INET6_CONNECT,
            Hook::SockOps => AttachType::CGROUP_SOCK_OPS,
            Hook::SkMsg => AttachType::SK_MSG_VERDICT,
            Hook::GetSockopt => AttachType::CGROUP_GETSOCKOPT,
            Hook::Sendmsg4 => AttachType::CGROUP_UDP4_SENDMSG,
            Hook::Sendmsg6 => AttachType::CGROUP_UDP6_SENDMSG,
            Hook::Recvmsg4 => AttachType::CGROUP_UDP4_RECVMSG,
            Hook::Recvmsg6 => AttachType::CGROUP_UDP6_RECVMSG,
            Hook::Bind4 => AttachType::CGROUP_INET4_BIND,
            Hook::SkLookup => AttachType::SK_LOOKUP,
        }
    }

    /// The `expected_attach_type` PROG_LOAD wants (sock_ops takes none).
    pub fn expected_attach_type(self) -> Option<AttachType> {
        match self {
            Hook::SockOps => None,
            other => Some(other.attach_type()),
        }
    }

    /// Every hook but sk_msg (the sockhash) and sk_lookup (each pod's netns) attaches to
    /// the node's cgroup.
    pub fn attaches_to_cgroup(self) -> bool {
        !matches!(self, Hook::SkMsg | Hook::SkLookup)
    }

    pub fn is_ipv6(self) -> bool {
        matches!(self, Hook::Connect6 | Hook::Sendmsg6 | Hook::Recvmsg6)
    }

    pub fn is_dns(self) -> bool {
        matches!(
            self,
            Hook::Sendmsg4 | Hook::Sendmsg6 | Hook::Recvmsg4 | Hook::Recvmsg6
        )
    }
}

/// The kinds of map the data path uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapKind {
    Hash,
    LruHash,
    LpmTrie,
    SockHash,
    PerCpuArray,
}

impl MapKind {
    pub fn map_type(self) -> MapType {
        match self {
            MapKind::Hash => MapType::HASH,
            MapKind::LruHash => MapType::LRU_HASH,
            MapKind::LpmTrie => MapType::LPM_TRIE,
            MapKind::SockHash => MapType::SOCKHASH,
            MapKind::PerCpuArray => MapType::PERCPU_ARRAY,
        }
    }

    /// MAP_CREATE flags: LPM tries must not be preallocated; the pod hashes need not be
    /// (the agent fills them, no program runs in NMI context), which keeps `load` fast.
    pub fn flags(self) -> u32 {
        match self {
            MapKind::LpmTrie | MapKind::Hash => F_NO_PREALLOC,
            _ => 0,
        }
    }
}

/// A map the programs refer to by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapDecl {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub purpose: &'static str,
}

/// Every map of the data path. Sizes are defaults; the loader may scale the connection maps.
pub const MAPS: &[MapDecl] = &[
    MapDecl::new::<u64, PodEntry>(MAP_NETNS_PODS, MapKind::Hash, 16384)
        .purpose("network-namespace cookie -> meshed pod (who is calling)"),
    MapDecl::new::<[u8; 16], PodEntry>(MAP_POD_IPS, MapKind::Hash, 32768)
        .purpose("pod address -> meshed pod on this node (where a sidecar connects)"),
    MapDecl::new::<PortRuleKey, u32>(MAP_PORT_RULES, MapKind::LpmTrie, 262144)
        .purpose("per-pod include/exclude port rules (ranges as prefixes)"),
    MapDecl::new::<CidrRuleKey, u32>(MAP_CIDR_RULES, MapKind::LpmTrie, 262144)
        .purpose("per-pod outbound include/exclude CIDRs, inbound exclude sources"),
    MapDecl::new::<u64, OrigDst>(MAP_COOKIE_ORIG, MapKind::LruHash, 65536)
        .purpose("socket cookie -> original destination, until the connection is established"),
    MapDecl::new::<SockPairKey, OrigDst>(MAP_PAIR_ORIG, MapKind::LruHash, 65536)
        .purpose("connection 4-tuple -> original destination (SO_ORIGINAL_DST)"),
    MapDecl::new::<SockPairKey, u32>(MAP_SOCK_PAIRS, MapKind::SockHash, 65536)
        .purpose("connection 4-tuple -> socket, for sk_msg redirect"),
    MapDecl::new::<ListenerKey, u64>(MAP_INBOUND_LISTENERS, MapKind::SockHash, 32768)
        .purpose("(pod, family) -> its sidecar's inbound listener, for sk_lookup"),
    MapDecl::new::<SpliceProcKey, SpliceVerdict>(MAP_SPLICE_PROCS, MapKind::Hash, 65536)
        .purpose("(cgroup, process) -> the agent's splice verdict on a meshed application"),
    MapDecl::new::<SplicePortKey, SpliceVerdict>(MAP_SPLICE_PORTS, MapKind::Hash, 65536)
        .purpose("(pod, listening port) -> the verdict on the application listening there"),
    MapDecl::new::<u32, u64>(MAP_COUNTERS, MapKind::PerCpuArray, Counter::CAPACITY)
        .purpose("data-path counters"),
];

impl MapDecl {
    /// Map `name` of `kind` with keys of type `K` and values of type `V` (sizes from [`Pod`]).
    pub const fn new<K: Pod, V: Pod>(
        name: &'static str,
        kind: MapKind,
        max_entries: u32,
    ) -> MapDecl {
        MapDecl {
            name,
            kind,
            key_size: K::SIZE as u32,
            value_size: V::SIZE as u32,
            max_entries,
            purpose: "",
        }
    }

    /// The declaration with its purpose, as `merbridge status` shows it.
    pub const fn purpose(self, purpose: &'static str) -> MapDecl {
        MapDecl { purpose, ..self }
    }

    /// The declaration as a [`crate::MapSpec`] with `max_entries` entries.
    pub fn spec_with(&self, max_entries: u32) -> crate::MapSpec {
        let mut spec = crate::MapSpec::new(
            self.name,
            self.kind.map_type(),
            self.key_size as usize,
            self.value_size as usize,
            max_entries,
        );
        spec.flags = self.kind.flags();
        spec
    }

    pub fn spec(&self) -> crate::MapSpec {
        self.spec_with(self.max_entries)
    }

    /// The declaration of map `name`.
    pub fn find(name: &str) -> Option<&'static MapDecl> {
        MAPS.iter().find(|m| m.name == name)
    }
}

/// The constants patched into the bytecode at load time.
pub const CONSTANTS: &[(&str, &str)] = &[
    (CONST_OUTBOUND_PORT, "sidecar outbound listener port"),
    (CONST_INBOUND_PORT, "sidecar inbound listener port"),
    (CONST_PROXY_UID, "UID the sidecar runs as"),
    (CONST_DNS_PORT, "sidecar DNS proxy port"),
    (
        CONST_SPLICE,
        "which connections sk_msg splices (0 none, 1 sidecars, 2 all)",
    ),
];
