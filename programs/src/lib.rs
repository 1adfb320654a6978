//! `mb-programs`: the merbridge data path, written with `mb-asm`. Pure functions that return
//! program images (instructions + map and constant relocations) and the maps they use; no
//! I/O. The loader's build script calls [`programs`] at build time, so the shipped binary
//! carries bytecode, not the assembler.
#![forbid(unsafe_code)]

pub mod connect;
pub mod ctx;
pub mod emit;
pub mod sockmap;
pub mod sockopt;
pub mod udp;

use emit::Family;
use mb_asm::{AsmError, Program};
use mb_maps::layout::{CidrRuleKey, Counter, OrigDst, PodEntry, PortRuleKey, SockPairKey};

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
}

impl Hook {
    pub const ALL: [Hook; 10] = [
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
        }
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

    /// Assembles this hook's program.
    pub fn build(self) -> Result<Program, AsmError> {
        match self {
            Hook::Connect4 => connect::connect(Family::V4),
            Hook::Connect6 => connect::connect(Family::V6),
            Hook::SockOps => sockmap::sockops(),
            Hook::SkMsg => sockmap::msg_redirect(),
            Hook::GetSockopt => sockopt::getsockopt(),
            Hook::Sendmsg4 => connect::sendmsg(Family::V4),
            Hook::Sendmsg6 => connect::sendmsg(Family::V6),
            Hook::Recvmsg4 => udp::recvmsg(Family::V4),
            Hook::Recvmsg6 => udp::recvmsg(Family::V6),
            Hook::Bind4 => udp::bind4(),
        }
    }
}

/// One program of the data path.
#[derive(Clone, Debug)]
pub struct ProgramDef {
    pub hook: Hook,
    pub program: Program,
}

/// Every program of the data path, assembled.
pub fn programs() -> Result<Vec<ProgramDef>, (Hook, AsmError)> {
    Hook::ALL
        .iter()
        .map(|&hook| {
            hook.build()
                .map(|program| ProgramDef { hook, program })
                .map_err(|e| (hook, e))
        })
        .collect()
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
    MapDecl {
        name: emit::MAP_NETNS_PODS,
        kind: MapKind::Hash,
        key_size: 8,
        value_size: PodEntry::SIZE as u32,
        max_entries: 16384,
        purpose: "network-namespace cookie -> meshed pod (who is calling)",
    },
    MapDecl {
        name: emit::MAP_POD_IPS,
        kind: MapKind::Hash,
        key_size: 16,
        value_size: PodEntry::SIZE as u32,
        max_entries: 32768,
        purpose: "pod address -> meshed pod on this node (where a sidecar connects)",
    },
    MapDecl {
        name: emit::MAP_PORT_RULES,
        kind: MapKind::LpmTrie,
        key_size: PortRuleKey::SIZE as u32,
        value_size: 4,
        max_entries: 262144,
        purpose: "per-pod include/exclude port rules (ranges as prefixes)",
    },
    MapDecl {
        name: emit::MAP_CIDR_RULES,
        kind: MapKind::LpmTrie,
        key_size: CidrRuleKey::SIZE as u32,
        value_size: 4,
        max_entries: 262144,
        purpose: "per-pod outbound include/exclude CIDRs",
    },
    MapDecl {
        name: emit::MAP_COOKIE_ORIG,
        kind: MapKind::LruHash,
        key_size: 8,
        value_size: OrigDst::SIZE as u32,
        max_entries: 65536,
        purpose: "socket cookie -> original destination, until the connection is established",
    },
    MapDecl {
        name: emit::MAP_PAIR_ORIG,
        kind: MapKind::LruHash,
        key_size: SockPairKey::SIZE as u32,
        value_size: OrigDst::SIZE as u32,
        max_entries: 65536,
        purpose: "connection 4-tuple -> original destination (SO_ORIGINAL_DST)",
    },
    MapDecl {
        name: emit::MAP_SOCK_PAIRS,
        kind: MapKind::SockHash,
        key_size: SockPairKey::SIZE as u32,
        value_size: 4,
        max_entries: 65536,
        purpose: "connection 4-tuple -> socket, for sk_msg redirect",
    },
    MapDecl {
        name: emit::MAP_COUNTERS,
        kind: MapKind::PerCpuArray,
        key_size: 4,
        value_size: 8,
        max_entries: Counter::COUNT,
        purpose: "data-path counters",
    },
];

/// The constants patched into the bytecode at load time.
pub const CONSTANTS: &[(&str, &str)] = &[
    (emit::CONST_OUTBOUND_PORT, "sidecar outbound listener port"),
    (emit::CONST_INBOUND_PORT, "sidecar inbound listener port"),
    (emit::CONST_PROXY_UID, "UID the sidecar runs as"),
    (emit::CONST_DNS_PORT, "sidecar DNS proxy port"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_assembles_and_uses_only_declared_maps_and_constants() {
        let all = programs().unwrap_or_else(|(hook, e)| panic!("{hook:?}: {e}"));
        assert_eq!(all.len(), Hook::ALL.len());
        for def in &all {
            for name in def.program.map_names() {
                assert!(
                    MAPS.iter().any(|m| m.name == name),
                    "{:?} uses undeclared map {name}",
                    def.hook
                );
            }
            for name in def.program.const_names() {
                assert!(
                    CONSTANTS.iter().any(|(c, _)| *c == name),
                    "{:?} uses undeclared constant {name}",
                    def.hook
                );
            }
            assert!(def.hook.program_name().len() <= 15);
        }
    }
}
