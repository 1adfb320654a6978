//! The data path's map keys and values: the one source of truth for every layout shared by the
//! programs (which address fields by the `OFF_*` constants) and the agent (which encodes and
//! decodes them with `to_bytes` / `from_bytes`).
//!
//! Conventions:
//! - Addresses are 16 bytes in network order; IPv4 is stored v4-mapped (`::ffff:a.b.c.d`), so
//!   one key shape serves both families.
//! - Ports inside keys and original destinations are in network order (as the kernel's
//!   contexts give them); ports in policy rules are in network order too, so that an LPM prefix
//!   over a port range works bit by bit.
//! - Every field sits at an offset aligned to its size: the programs build keys on the BPF
//!   stack, where the verifier refuses misaligned accesses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as the maps store it: 16 bytes, IPv4 v4-mapped.
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`addr_bytes`]: v4-mapped addresses come back as IPv4.
pub fn addr_from_bytes(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The third 32-bit word of a v4-mapped address, as a little-endian BPF register holds it
/// after a 4-byte load (bytes `00 00 ff ff`).
pub const V4_MAPPED_WORD2_LE: u32 = 0xffff_0000;

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

fn take<const N: usize>(buf: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[off..off + N]);
    out
}

/// Key of `pair_orig_dst` and of the sockhash `sock_pairs`: one TCP connection seen from the
/// socket that owns the entry (`local` = its own address).
///
/// `netns` scopes pairs that involve a loopback address (`127.0.0.0/8`, `::1`), which every pod
/// has: two pods' `127.0.0.1:x → 127.0.0.1:15001` would otherwise collide. Pairs between two
/// non-loopback addresses are unique node-wide, so their `netns` is 0 — that lets a sidecar's
/// socket find its peer in another pod's namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPairKey {
    pub netns: u64,
    pub local_ip: [u8; 16],
    pub remote_ip: [u8; 16],
    /// Network order.
    pub local_port: u16,
    /// Network order.
    pub remote_port: u16,
}

impl SockPairKey {
    pub const SIZE: usize = 48;
    pub const OFF_NETNS: usize = 0;
    pub const OFF_LOCAL_IP: usize = 8;
    pub const OFF_REMOTE_IP: usize = 24;
    pub const OFF_LOCAL_PORT: usize = 40;
    pub const OFF_REMOTE_PORT: usize = 42;
    // 44..48: padding, always zero.

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, Self::OFF_NETNS, &self.netns.to_ne_bytes());
        put(&mut b, Self::OFF_LOCAL_IP, &self.local_ip);
        put(&mut b, Self::OFF_REMOTE_IP, &self.remote_ip);
        put(&mut b, Self::OFF_LOCAL_PORT, &self.local_port.to_ne_bytes());
        put(
            &mut b,
            Self::OFF_REMOTE_PORT,
            &self.remote_port.to_ne_bytes(),
        );
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        SockPairKey {
            netns: u64::from_ne_bytes(take(b, Self::OFF_NETNS)),
            local_ip: take(b, Self::OFF_LOCAL_IP),
            remote_ip: take(b, Self::OFF_REMOTE_IP),
            local_port: u16::from_ne_bytes(take(b, Self::OFF_LOCAL_PORT)),
            remote_port: u16::from_ne_bytes(take(b, Self::OFF_REMOTE_PORT)),
        }
    }
}

/// Value of `cookie_orig_dst` (by socket cookie) and `pair_orig_dst` (by [`SockPairKey`]):
/// where the application meant to connect before we rewrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDst {
    pub ip: [u8; 16],
    /// Network order.
    pub port: u16,
    /// `AF_INET` (2) or `AF_INET6` (10): the family of the socket that connected.
    pub family: u16,
    /// `ORIG_*` bits.
    pub flags: u32,
}

impl OrigDst {
    pub const SIZE: usize = 24;
    pub const OFF_IP: usize = 0;
    pub const OFF_PORT: usize = 16;
    pub const OFF_FAMILY: usize = 18;
    pub const OFF_FLAGS: usize = 20;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, Self::OFF_IP, &self.ip);
        put(&mut b, Self::OFF_PORT, &self.port.to_ne_bytes());
        put(&mut b, Self::OFF_FAMILY, &self.family.to_ne_bytes());
        put(&mut b, Self::OFF_FLAGS, &self.flags.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        OrigDst {
            ip: take(b, Self::OFF_IP),
            port: u16::from_ne_bytes(take(b, Self::OFF_PORT)),
            family: u16::from_ne_bytes(take(b, Self::OFF_FAMILY)),
            flags: u32::from_ne_bytes(take(b, Self::OFF_FLAGS)),
        }
    }

    /// The original destination as a socket address.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(addr_from_bytes(self.ip), u16::from_be(self.port))
    }
}

/// `OrigDst.flags`: the connection was redirected outbound (application → its sidecar).
pub const ORIG_OUTBOUND: u32 = 1 << 0;
/// `OrigDst.flags`: the connection was redirected inbound (to a local pod's sidecar).
pub const ORIG_INBOUND: u32 = 1 << 1;
/// `OrigDst.flags`: a UDP DNS query sent to the DNS proxy.
pub const ORIG_DNS: u32 = 1 << 2;
/// `OrigDst.flags`: the connect was made by a sidecar (with `ORIG_INBOUND`: both ends of the
/// connection are sidecars, the one kind `--splice sidecars` moves socket to socket).
pub const ORIG_SIDECAR_CALLER: u32 = 1 << 3;
/// `OrigDst.flags`: the calling application's pod asked for its own sockets to be spliced
/// too ([`POD_SPLICE_APP`]).
pub const ORIG_SPLICE_APP: u32 = 1 << 4;

/// Value of `netns_pods` (key: network-namespace cookie, u64) and of `pod_ips` (key: one of the
/// pod's addresses, 16 bytes): a meshed pod on this node and its policy switches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodEntry {
    /// Small id the agent assigns; policy rules are keyed by it.
    pub pod_id: u32,
    /// `POD_*` bits.
    pub flags: u32,
    /// The pod's network-namespace cookie (0 when unknown).
    pub netns: u64,
    /// The pod's IPv4 address (v4-mapped), all zero when it has none.
    pub ipv4: [u8; 16],
    /// The pod's IPv6 address, all zero when it has none.
    pub ipv6: [u8; 16],
    /// The UID its sidecar runs as; 0 = the load's `proxy_uid` constant.
    pub proxy_uid: u32,
    /// A GID whose processes also count as the sidecar (istio-iptables `-g`); 0 = none.
    pub proxy_gid: u32,
}

impl PodEntry {
    pub const SIZE: usize = 56;
    pub const OFF_POD_ID: usize = 0;
    pub const OFF_FLAGS: usize = 4;
    pub const OFF_NETNS: usize = 8;
    pub const OFF_IPV4: usize = 16;
    pub const OFF_IPV6: usize = 32;
    pub const OFF_PROXY_UID: usize = 48;
    pub const OFF_PROXY_GID: usize = 52;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, Self::OFF_POD_ID, &self.pod_id.to_ne_bytes());
        put(&mut b, Self::OFF_FLAGS, &self.flags.to_ne_bytes());
        put(&mut b, Self::OFF_NETNS, &self.netns.to_ne_bytes());
        put(&mut b, Self::OFF_IPV4, &self.ipv4);
        put(&mut b, Self::OFF_IPV6, &self.ipv6);
        put(&mut b, Self::OFF_PROXY_UID, &self.proxy_uid.to_ne_bytes());
        put(&mut b, Self::OFF_PROXY_GID, &self.proxy_gid.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        PodEntry {
            pod_id: u32::from_ne_bytes(take(b, Self::OFF_POD_ID)),
            flags: u32::from_ne_bytes(take(b, Self::OFF_FLAGS)),
            netns: u64::from_ne_bytes(take(b, Self::OFF_NETNS)),
            ipv4: take(b, Self::OFF_IPV4),
            ipv6: take(b, Self::OFF_IPV6),
            proxy_uid: u32::from_ne_bytes(take(b, Self::OFF_PROXY_UID)),
            proxy_gid: u32::from_ne_bytes(take(b, Self::OFF_PROXY_GID)),
        }
    }
}

/// `PodEntry.flags`: the pod has outbound include-port rules: traffic to those ports is
/// redirected whatever its destination address (Istio's `includeOutboundPorts`).
pub const POD_OUT_PORTS_INCLUDE: u32 = 1 << 0;
/// `PodEntry.flags`: the pod has outbound exclude-port rules (else the lookup is skipped).
pub const POD_OUT_PORTS_EXCLUDE: u32 = 1 << 1;
/// `PodEntry.flags`: redirect outbound traffic to every address (no include-CIDR lookup).
pub const POD_OUT_CIDRS_ALL: u32 = 1 << 2;
/// `PodEntry.flags`: the pod has outbound exclude-CIDR rules.
pub const POD_OUT_CIDRS_EXCLUDE: u32 = 1 << 3;
/// `PodEntry.flags`: redirect inbound traffic on every port (no include-port lookup).
pub const POD_IN_PORTS_ALL: u32 = 1 << 4;
/// `PodEntry.flags`: the pod has inbound exclude-port rules.
pub const POD_IN_PORTS_EXCLUDE: u32 = 1 << 5;
/// `PodEntry.flags`: UDP port 53 goes to the sidecar's DNS proxy.
pub const POD_DNS_CAPTURE: u32 = 1 << 6;
/// `PodEntry.flags`: under `--splice sidecars`, the pod's application legs (app ↔ its own
/// sidecar, both directions) are spliced too, as `--splice all` does for every pod. Only for
/// event-driven applications: a socket in a sockhash can answer a blocking `recv()` with
/// `EAGAIN` (kernel `tcp_bpf_recvmsg`).
pub const POD_SPLICE_APP: u32 = 1 << 7;

/// `PodEntry.flags`: the pod has inbound exclude-source rules (Kuma's
/// `traffic.kuma.io/exclude-inbound-ips`): `cidr_rules` under scope
/// `(pod, RULE_INBOUND | RULE_EXCLUDE)` keyed by the caller's address.
pub const POD_IN_CIDRS_EXCLUDE: u32 = 1 << 8;
/// `PodEntry.flags`: never splice the pod's application legs, whatever the agent's
/// per-process verdicts say (annotation `merbridge.io/splice-app: "false"`).
pub const POD_SPLICE_APP_DENY: u32 = 1 << 9;

/// Key of `splice_procs`: one process, as `connect4`/`connect6` see their caller —
/// `bpf_get_current_cgroup_id()` and the upper half of `bpf_get_current_pid_tgid()`. The
/// cgroup id guards against a reused pid: a new process with an old pid in another cgroup
/// misses the entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpliceProcKey {
    /// The cgroup v2 id of the process's cgroup (the inode number of its directory).
    pub cgroup_id: u64,
    /// The process id (thread-group id) in the host's pid namespace.
    pub tgid: u32,
}

impl SpliceProcKey {
    pub const SIZE: usize = 16;
    pub const OFF_CGROUP_ID: usize = 0;
    pub const OFF_TGID: usize = 8;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, Self::OFF_CGROUP_ID, &self.cgroup_id.to_ne_bytes());
        put(&mut b, Self::OFF_TGID, &self.tgid.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        SpliceProcKey {
            cgroup_id: u64::from_ne_bytes(take(b, Self::OFF_CGROUP_ID)),
            tgid: u32::from_ne_bytes(take(b, Self::OFF_TGID)),
        }
    }
}

/// Key of `splice_ports`: a listening port of a meshed pod's application, for the passive
/// side (the sidecar's connection to its application has no process context to look at).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SplicePortKey {
    pub pod_id: u32,
    /// Network byte order.
    pub port: u16,
}

impl SplicePortKey {
    pub const SIZE: usize = 8;
    pub const OFF_POD_ID: usize = 0;
    pub const OFF_PORT: usize = 4;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, Self::OFF_POD_ID, &self.pod_id.to_ne_bytes());
        put(&mut b, Self::OFF_PORT, &self.port.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        SplicePortKey {
            pod_id: u32::from_ne_bytes(take(b, Self::OFF_POD_ID)),
            port: u16::from_ne_bytes(take(b, Self::OFF_PORT)),
        }
    }
}

/// Value of `splice_procs` and `splice_ports`: the agent's verdict on a process (or on the
/// process listening on a port) and why. The data path reads only `verdict`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SpliceVerdict {
    /// [`SPLICE_VERDICT_YES`] splices the application leg; anything else does not.
    pub verdict: u32,
    /// Why, as the agent's reason code (`mb_agent::splice::Reason`), for `pod show` and
    /// `/metrics`; the data path never reads it.
    pub reason: u32,
}

impl SpliceVerdict {
    pub const SIZE: usize = 8;
    pub const OFF_VERDICT: usize = 0;
    pub const OFF_REASON: usize = 4;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, Self::OFF_VERDICT, &self.verdict.to_ne_bytes());
        put(&mut b, Self::OFF_REASON, &self.reason.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        SpliceVerdict {
            verdict: u32::from_ne_bytes(take(b, Self::OFF_VERDICT)),
            reason: u32::from_ne_bytes(take(b, Self::OFF_REASON)),
        }
    }
}

/// `SpliceVerdict.verdict`: the process is event-driven, splice its application legs.
pub const SPLICE_VERDICT_YES: u32 = 1;
/// `SpliceVerdict.verdict`: the process was seen with a blocking TCP socket (sticky).
pub const SPLICE_VERDICT_NO: u32 = 2;

/// Rule kinds, the low two bits of a rule key's `scope` (`pod_id << 2 | rule`).
pub const RULE_INCLUDE: u32 = 0;
pub const RULE_EXCLUDE: u32 = 1;
/// Direction bit of a rule's scope. Port rules: inbound include/exclude ports. CIDR rules:
/// with `RULE_EXCLUDE`, the inbound exclude-source prefixes ([`POD_IN_CIDRS_EXCLUDE`]).
pub const RULE_INBOUND: u32 = 2;

/// The `scope` word of a rule key.
pub const fn rule_scope(pod_id: u32, rule: u32) -> u32 {
    (pod_id << 2) | (rule & 3)
}

/// Bits of a rule key that precede the address or port: `scope` is matched exactly.
pub const RULE_SCOPE_BITS: u32 = 32;

/// Key of the LPM trie `port_rules`: `(pod, direction, include/exclude)` + a port prefix, so a
/// port range costs at most 30 entries and a lookup stays O(1) in the number of rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRuleKey {
    /// LPM prefix length in bits over `scope` + `port`: 32 + (0..=16).
    pub prefixlen: u32,
    pub scope: u32,
    /// Network order.
    pub port: u16,
}

impl PortRuleKey {
    pub const SIZE: usize = 12;
    pub const OFF_PREFIXLEN: usize = 0;
    pub const OFF_SCOPE: usize = 4;
    pub const OFF_PORT: usize = 8;
    /// A lookup key has the full length.
    pub const FULL_PREFIX: u32 = RULE_SCOPE_BITS + 16;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, Self::OFF_PREFIXLEN, &self.prefixlen.to_ne_bytes());
        put(&mut b, Self::OFF_SCOPE, &self.scope.to_ne_bytes());
        put(&mut b, Self::OFF_PORT, &self.port.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        PortRuleKey {
            prefixlen: u32::from_ne_bytes(take(b, Self::OFF_PREFIXLEN)),
            scope: u32::from_ne_bytes(take(b, Self::OFF_SCOPE)),
            port: u16::from_ne_bytes(take(b, Self::OFF_PORT)),
        }
    }

    /// The fewest prefixes that cover the inclusive port range `first..=last` exactly.
    pub fn cover_range(scope: u32, first: u16, last: u16) -> Vec<PortRuleKey> {
        let mut out = Vec::new();
        let (mut lo, hi) = (first as u32, last as u32);
        while lo <= hi {
            // The largest aligned block starting at `lo` that stays within `hi`.
            let mut size = if lo == 0 {
                1 << 16
            } else {
                1u32 << lo.trailing_zeros()
            };
            while lo + size - 1 > hi {
                size >>= 1;
            }
            out.push(PortRuleKey {
                prefixlen: RULE_SCOPE_BITS + 16 - size.trailing_zeros(),
                scope,
                port: (lo as u16).to_be(),
            });
            lo += size;
        }
        out
    }
}

/// Key of the LPM trie `cidr_rules`: `(pod, include/exclude)` + an address prefix. IPv4
/// prefixes are stored v4-mapped (prefix length + 96).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CidrRuleKey {
    /// LPM prefix length in bits over `scope` + `addr`: 32 + (0..=128).
    pub prefixlen: u32,
    pub scope: u32,
    pub addr: [u8; 16],
}

impl CidrRuleKey {
    pub const SIZE: usize = 24;
    pub const OFF_PREFIXLEN: usize = 0;
    pub const OFF_SCOPE: usize = 4;
    pub const OFF_ADDR: usize = 8;
    pub const FULL_PREFIX: u32 = RULE_SCOPE_BITS + 128;

    /// The key for `ip/len`, host bits masked (Istio accepts `10.0.0.1/8` and means `10/8`).
    pub fn new(scope: u32, ip: IpAddr, len: u8) -> CidrRuleKey {
        let (addr, bits) = match ip {
            IpAddr::V4(v4) => {
                let len = len.min(32);
                let masked = u32::from(v4) & mask32(len);
                (
                    Ipv4Addr::from(masked).to_ipv6_mapped().octets(),
                    96 + len as u32,
                )
            }
            IpAddr::V6(v6) => {
                let len = len.min(128);
                let masked = u128::from(v6) & mask128(len);
                (Ipv6Addr::from(masked).octets(), len as u32)
            }
        };
        CidrRuleKey {
            prefixlen: RULE_SCOPE_BITS + bits,
            scope,
            addr,
        }
    }

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, Self::OFF_PREFIXLEN, &self.prefixlen.to_ne_bytes());
        put(&mut b, Self::OFF_SCOPE, &self.scope.to_ne_bytes());
        put(&mut b, Self::OFF_ADDR, &self.addr);
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        CidrRuleKey {
            prefixlen: u32::from_ne_bytes(take(b, Self::OFF_PREFIXLEN)),
            scope: u32::from_ne_bytes(take(b, Self::OFF_SCOPE)),
            addr: take(b, Self::OFF_ADDR),
        }
    }
}

fn mask32(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

fn mask128(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - len as u32)
    }
}

/// Key of the sockhash `inbound_listeners`: a pod's sidecar inbound listener, one per socket
/// family. Keyed per pod, never shared: `bpf_sk_assign` accepts a listener of another network
/// namespace and the SYN is then silently lost (DESIGN.md §7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub pod_id: u32,
    /// `AF_INET` (2) or `AF_INET6` (10): the listening socket's family.
    pub family: u32,
}

impl ListenerKey {
    pub const SIZE: usize = 8;
    pub const OFF_POD_ID: usize = 0;
    pub const OFF_FAMILY: usize = 4;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put(&mut b, Self::OFF_POD_ID, &self.pod_id.to_ne_bytes());
        put(&mut b, Self::OFF_FAMILY, &self.family.to_ne_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        ListenerKey {
            pod_id: u32::from_ne_bytes(take(b, Self::OFF_POD_ID)),
            family: u32::from_ne_bytes(take(b, Self::OFF_FAMILY)),
        }
    }
}

mb_sys::coded_enum! {
    /// Slots of the per-CPU `counters` array (u64 each).
    pub enum Counter {
        RedirectOutbound = 0 => "redirected_outbound":
            "application connects sent to their sidecar's outbound port",
        RedirectInbound = 1 => "redirected_inbound":
            "sidecar connects to another local pod sent to that pod's inbound port",
        Bypassed = 2 => "bypassed":
            "meshed pods' connects left alone by policy (excluded port/CIDR, loopback, own app)",
        SockhashInserts = 3 => "sockhash_inserts":
            "sockets put into the sockhash",
        SplicedMessages = 4 => "spliced_messages":
            "messages moved socket to socket by sk_msg",
        SplicedBytes = 5 => "spliced_bytes":
            "bytes moved socket to socket by sk_msg",
        OrigDstAnswers = 6 => "orig_dst_answers":
            "SO_ORIGINAL_DST answers given from the map",
        MapUpdateFailures = 7 => "map_update_failures":
            "map updates that failed (full map or out of memory)",
        DnsRedirects = 8 => "dns_redirects":
            "UDP DNS queries sent to the DNS proxy",
        DnsRestores = 9 => "dns_restores":
            "DNS replies whose source was restored",
        InboundSteered = 10 => "inbound_steered":
            "inbound connections from outside the pod steered to its sidecar by sk_lookup",
        InboundRefused = 11 => "inbound_refused":
            "inbound connections refused (RST) because the pod's sidecar had no listener",
        ListenerInserts = 12 => "listener_inserts":
            "sidecar inbound listeners put into inbound_listeners by sock_ops",
        /// Asked on a socket accepted by the sidecar's own port with no entry (evicted from the
        /// LRU `pair_orig`): the sidecar gets ENOENT.
        OrigDstMisses = 13 => "orig_dst_misses":
            "SO_ORIGINAL_DST questions with no entry",
        /// Because the agent found the calling process event-driven (`splice_procs`).
        SpliceAppByProcess = 14 => "splice_app_by_process":
            "application connects whose leg to the sidecar is spliced",
        /// Because the agent found the listening process event-driven (`splice_ports`).
        SpliceAppByPort = 15 => "splice_app_by_port":
            "sidecar-to-application sockets spliced",
        /// By any writer (user space: the agent, `merbridge pod`, `merbridge cni`). A writer
        /// whose last seen value differs knows that another one changed the pods since, and
        /// re-reads the pod ids before it allocates one.
        PodMapChanges = 16 => "pod_map_changes":
            "pods added to or removed from the pod maps",
    }
}

impl Counter {
    pub const COUNT: u32 = Self::ALL.len() as u32;
    /// Entries of the counters map: headroom, so that the counters of a newer version fit a
    /// map an older one pinned (a counter past a smaller pinned map is simply not counted).
    pub const CAPACITY: u32 = 64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_v4_mapped() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let b = addr_bytes(v4);
        assert_eq!(&b[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&b[12..], &[10, 1, 2, 3]);
        assert_eq!(addr_from_bytes(b), v4);
        // The word a BPF program stores at offset 8 of a v4-mapped address.
        assert_eq!(
            u32::from_le_bytes(b[8..12].try_into().unwrap()),
            V4_MAPPED_WORD2_LE
        );
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(addr_from_bytes(addr_bytes(v6)), v6);
    }

    #[test]
    fn encodings_round_trip_and_put_fields_where_the_offsets_say() {
        let key = SockPairKey {
            netns: 0x0102_0304_0506_0708,
            local_ip: [1; 16],
            remote_ip: [2; 16],
            local_port: 15001u16.to_be(),
            remote_port: 0xbeef,
        };
        let b = key.to_bytes();
        assert_eq!(SockPairKey::from_bytes(&b), key);
        assert_eq!(&b[40..42], &15001u16.to_be_bytes());
        assert_eq!(&b[44..], &[0; 4]);

        let orig = OrigDst {
            ip: addr_bytes("10.0.0.9".parse().unwrap()),
            port: 8080u16.to_be(),
            family: 2,
            flags: ORIG_OUTBOUND,
        };
        assert_eq!(OrigDst::from_bytes(&orig.to_bytes()), orig);
        assert_eq!(orig.socket_addr(), "10.0.0.9:8080".parse().unwrap());

        let pod = PodEntry {
            pod_id: 7,
            flags: POD_OUT_PORTS_INCLUDE | POD_DNS_CAPTURE,
            netns: 42,
            ipv4: addr_bytes("10.0.0.9".parse().unwrap()),
            ipv6: addr_bytes("fd00::9".parse().unwrap()),
            proxy_uid: 1337,
            proxy_gid: 0x0a0b_0c0d,
        };
        let b = pod.to_bytes();
        assert_eq!(PodEntry::from_bytes(&b), pod);
        assert_eq!(&b[48..52], &1337u32.to_ne_bytes());
        assert_eq!(&b[52..56], &0x0a0b_0c0du32.to_ne_bytes());

        let listener = ListenerKey {
            pod_id: 0x0102_0304,
            family: 10,
        };
        let b = listener.to_bytes();
        assert_eq!(ListenerKey::from_bytes(&b), listener);
        assert_eq!(&b[..4], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(&b[4..], &10u32.to_ne_bytes());

        let proc_key = SpliceProcKey {
            cgroup_id: 0x0102_0304_0506_0708,
            tgid: 4242,
        };
        let b = proc_key.to_bytes();
        assert_eq!(SpliceProcKey::from_bytes(&b), proc_key);
        assert_eq!(&b[..8], &0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(&b[8..12], &4242u32.to_ne_bytes());
        assert_eq!(
            &b[12..],
            &[0; 4],
            "padding must be zero: the kernel hashes it"
        );

        let port_key = SplicePortKey {
            pod_id: 7,
            port: 8080u16.to_be(),
        };
        let b = port_key.to_bytes();
        assert_eq!(SplicePortKey::from_bytes(&b), port_key);
        assert_eq!(&b[4..6], &8080u16.to_be_bytes());
        assert_eq!(&b[6..], &[0; 2]);

        let verdict = SpliceVerdict {
            verdict: SPLICE_VERDICT_YES,
            reason: 3,
        };
        let b = verdict.to_bytes();
        assert_eq!(SpliceVerdict::from_bytes(&b), verdict);
        assert_eq!(&b[..4], &SPLICE_VERDICT_YES.to_ne_bytes());
    }

    #[test]
    fn pod_flags_are_distinct_bits_and_counters_are_numbered_in_order() {
        let flags = [
            POD_OUT_PORTS_INCLUDE,
            POD_OUT_PORTS_EXCLUDE,
            POD_OUT_CIDRS_ALL,
            POD_OUT_CIDRS_EXCLUDE,
            POD_IN_PORTS_ALL,
            POD_IN_PORTS_EXCLUDE,
            POD_DNS_CAPTURE,
            POD_SPLICE_APP,
            POD_IN_CIDRS_EXCLUDE,
            POD_SPLICE_APP_DENY,
        ];
        let all = flags.iter().fold(0u32, |acc, f| {
            assert_eq!(f.count_ones(), 1);
            assert_eq!(acc & f, 0, "flag {f:#x} reused");
            acc | f
        });
        assert_eq!(all.count_ones() as usize, flags.len());
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
    }

    #[test]
    fn port_ranges_become_minimal_prefix_covers() {
        let scope = rule_scope(3, RULE_EXCLUDE);
        let all = PortRuleKey::cover_range(scope, 0, 65535);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].prefixlen, 32);
        let one = PortRuleKey::cover_range(scope, 80, 80);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].prefixlen, 48);
        assert_eq!(one[0].port, 80u16.to_be());
        // Every port of a range is covered exactly once, and no port outside it.
        for (first, last) in [
            (1u16, 65535u16),
            (4000, 5000),
            (1, 1),
            (65535, 65535),
            (3, 17),
        ] {
            let keys = PortRuleKey::cover_range(scope, first, last);
            assert!(keys.len() <= 30, "{first}-{last}: {} prefixes", keys.len());
            for port in [
                0u32, 1, 2, 3, 16, 17, 18, 3999, 4000, 5000, 5001, 65534, 65535,
            ] {
                let hits = keys
                    .iter()
                    .filter(|k| {
                        let bits = k.prefixlen - 32;
                        let shift = 16 - bits;
                        let base = u16::from_be(k.port) as u32;
                        bits == 0 || (port >> shift) == (base >> shift)
                    })
                    .count();
                let inside = port >= first as u32 && port <= last as u32;
                assert_eq!(hits, inside as usize, "{first}-{last} port {port}");
            }
        }
    }

    #[test]
    fn cidr_keys_mask_host_bits() {
        let k = CidrRuleKey::new(rule_scope(1, RULE_INCLUDE), "10.1.2.3".parse().unwrap(), 8);
        assert_eq!(k.prefixlen, 32 + 96 + 8);
        assert_eq!(&k.addr[12..], &[10, 0, 0, 0]);
        let k6 = CidrRuleKey::new(0, "fd00:1:2::5".parse().unwrap(), 32);
        assert_eq!(k6.prefixlen, 32 + 32);
        assert_eq!(
            Ipv6Addr::from(k6.addr),
            "fd00:1::".parse::<Ipv6Addr>().unwrap()
        );
        let any = CidrRuleKey::new(0, "0.0.0.0".parse().unwrap(), 0);
        assert_eq!(any.prefixlen, 32 + 96);
        assert_eq!(CidrRuleKey::from_bytes(&k.to_bytes()), k);
    }
}
