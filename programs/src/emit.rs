//! Building blocks shared by the programs: the stack layout, counters, address handling,
//! policy lookups. Every block documents the registers it clobbers; all programs keep the
//! context in [`CTX`] (r6, callee-saved, so helper calls never clobber it).
//!
//! Callee-saved registers are named by role ([`CTX`], [`POD`], [`FLAGS`], [`PORT`]); a
//! program that gives r7–r9 another role names it locally (e.g. `SK` in getsockopt). The
//! stack areas are [`Slot`]s; each program lists the ones it uses in one [`Frame`] table.

use crate::ctx::{abi, IpField};
use mb_asm::{AluOp, Asm, Helper, JmpOp, Label, Reg, Size};
use mb_maps::layout::{
    rule_scope, CidrRuleKey, Counter, ListenerKey, OrigDst, PodEntry, PortRuleKey, SockPairKey,
    V4_MAPPED_WORD2_LE,
};

pub const R0: Reg = Reg::R0;
pub const R1: Reg = Reg::R1;
pub const R2: Reg = Reg::R2;
pub const R3: Reg = Reg::R3;
pub const R4: Reg = Reg::R4;
pub const FP: Reg = Reg::FP;

// Callee-saved registers by role (helper calls keep r6–r9).
/// The program's context (`r6`), in every program.
pub const CTX: Reg = Reg::R6;
/// A pod entry (`netns_pods` or `pod_ips` value): the caller's, or the destination's pod
/// (`r7`), in connect, sendmsg, sockops (listen) and sk_lookup.
pub const POD: Reg = Reg::R7;
/// Flags: the pod's policy flags (`PodEntry::flags`), or in sockops the original
/// destination's `ORIG_*` bits (`r8`).
pub const FLAGS: Reg = Reg::R8;
/// The destination port in network order (`r9`), in connect, sendmsg and sk_lookup.
pub const PORT: Reg = Reg::R9;

// Stack areas (offsets from the frame pointer), shared by the programs' building blocks.
// Each program lists the ones it uses, and their unions, in its `Frame` table; the sizes are
// in [`slot`].
/// A [`SockPairKey`] (48 bytes).
pub const PAIR_KEY: i16 = -48;
/// An [`OrigDst`] (24 bytes).
pub const ORIG: i16 = -72;
/// A socket cookie (u64).
pub const COOKIE: i16 = -80;
/// A [`ListenerKey`] (8 bytes): the cookie's area, in a different callback.
pub const LISTENER_KEY: i16 = COOKIE;
/// A counter index (u32).
pub const COUNTER_IDX: i16 = -88;
/// A network-namespace cookie (u64), the key of `netns_pods`.
pub const NETNS_KEY: i16 = -96;
/// A [`CidrRuleKey`] (24 bytes).
pub const CIDR_KEY: i16 = -120;
/// The destination address, 16 bytes v4-mapped: it doubles as the CIDR key's address and as
/// the key of `pod_ips`.
pub const DST_ADDR: i16 = CIDR_KEY + CidrRuleKey::OFF_ADDR as i16;
/// A [`PortRuleKey`] (12 bytes, 16 reserved).
pub const PORT_KEY: i16 = -136;
/// connect programs only: the `ORIG_*` bits a redirect records about its caller (u64). In
/// the pair key's area, which connect programs do not use.
pub const CALLER: i16 = -8;
/// connect programs only: the socket address `bpf_bind` takes (a `sockaddr_in6` at most).
/// In the peer key's area, which connect programs do not use.
pub const SOCKADDR: i16 = -184;
/// A second [`SockPairKey`], for the peer's view of a connection.
pub const PEER_KEY: i16 = -184;
/// connect programs only: a `SpliceProcKey` (16 bytes), the caller's (cgroup, tgid). In the
/// socket address's area: `bpf_bind` comes after the splice decision.
pub const PROC_KEY: i16 = SOCKADDR;
/// sockops only: a `SplicePortKey` (8 bytes), (pod, application port). In the cookie's area:
/// the cookie is done with when the passthrough legs are decided.
pub const SPLICE_PORT_KEY: i16 = COOKIE;

/// The stack areas above as [`Slot`]s (name, offset, size), for the programs' `Frame` tables.
pub mod slot {
    use super::*;
    use crate::frame::Slot;
    use mb_maps::layout::{ListenerKey, SplicePortKey, SpliceProcKey};

    /// `struct sockaddr_in6`, the larger of the two addresses `bpf_bind` takes.
    const SOCKADDR_IN6_SIZE: usize = 28;

    pub const PAIR_KEY: Slot = Slot::new("PAIR_KEY", super::PAIR_KEY, SockPairKey::SIZE);
    pub const ORIG: Slot = Slot::new("ORIG", super::ORIG, OrigDst::SIZE);
    pub const COOKIE: Slot = Slot::new("COOKIE", super::COOKIE, 8);
    pub const LISTENER_KEY: Slot =
        Slot::new("LISTENER_KEY", super::LISTENER_KEY, ListenerKey::SIZE);
    pub const COUNTER_IDX: Slot = Slot::new("COUNTER_IDX", super::COUNTER_IDX, 4);
    pub const NETNS_KEY: Slot = Slot::new("NETNS_KEY", super::NETNS_KEY, 8);
    pub const CIDR_KEY: Slot = Slot::new("CIDR_KEY", super::CIDR_KEY, CidrRuleKey::SIZE);
    pub const DST_ADDR: Slot = Slot::new("DST_ADDR", super::DST_ADDR, 16);
    pub const PORT_KEY: Slot = Slot::new("PORT_KEY", super::PORT_KEY, PortRuleKey::SIZE);
    pub const CALLER: Slot = Slot::new("CALLER", super::CALLER, 8);
    pub const SOCKADDR: Slot = Slot::new("SOCKADDR", super::SOCKADDR, SOCKADDR_IN6_SIZE);
    pub const PEER_KEY: Slot = Slot::new("PEER_KEY", super::PEER_KEY, SockPairKey::SIZE);
    pub const PROC_KEY: Slot = Slot::new("PROC_KEY", super::PROC_KEY, SpliceProcKey::SIZE);
    pub const SPLICE_PORT_KEY: Slot = Slot::new(
        "SPLICE_PORT_KEY",
        super::SPLICE_PORT_KEY,
        SplicePortKey::SIZE,
    );
}

pub use mb_maps::datapath::*;

/// `127.0.0.1` as a little-endian register holds it after a 4-byte load of network-order bytes.
pub const LOOPBACK_V4_LE: i32 = 0x0100_007f;
/// `127.0.0.6`, the sidecar's inbound passthrough source.
pub const PASSTHROUGH_V4_LE: i32 = 0x0600_007f;
/// The last word of `::1` and of `::6`.
pub const LOOPBACK_V6_WORD3_LE: i32 = 0x0100_0000;
pub const PASSTHROUGH_V6_WORD3_LE: i32 = 0x0600_0000;
/// Port 53 in network order, as a 16-bit load puts it in a little-endian register.
pub const DNS_PORT_53_BE: i32 = 0x3500;

/// `dst = fp + off`.
pub fn stack_ptr(a: &mut Asm, dst: Reg, off: i16) {
    a.mov64_reg(dst, FP).alu64_imm(AluOp::Add, dst, off as i32);
}

/// Adds 1 to a per-CPU counter. Clobbers r0–r5.
pub fn count(a: &mut Asm, counter: Counter) {
    count_impl(a, counter, None);
}

/// Adds the value of `amount` (a callee-saved register) to a counter.
/// Clobbers r0–r5.
pub fn count_by(a: &mut Asm, counter: Counter, amount: Reg) {
    count_impl(a, counter, Some(amount));
}

fn count_impl(a: &mut Asm, counter: Counter, amount: Option<Reg>) {
    let skip = a.label();
    a.st_imm(Size::W, FP, COUNTER_IDX, counter as i32);
    a.ld_map_fd(R1, MAP_COUNTERS);
    stack_ptr(a, R2, COUNTER_IDX);
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, skip);
    match amount {
        Some(reg) => a.mov64_reg(R1, reg),
        None => a.mov64_imm(R1, 1),
    };
    a.atomic_add(Size::DW, R0, 0, R1).bind(skip);
}

/// Jumps to `target` unless bit `flag` is set in the register `flags`. Clobbers r1.
pub fn jmp_unless_flag(a: &mut Asm, flags: Reg, flag: u32, target: Label) {
    a.mov64_reg(R1, flags)
        .alu64_imm(AluOp::And, R1, flag as i32)
        .jmp_imm(JmpOp::Eq, R1, 0, target);
}

/// Stores the IPv4 address in `src` (as a 4-byte load of network-order bytes leaves it)
/// v4-mapped at `fp + off`.
pub fn store_v4_mapped(a: &mut Asm, off: i16, src: Reg) {
    a.st_imm(Size::DW, FP, off, 0)
        .st_imm(Size::W, FP, off + 8, V4_MAPPED_WORD2_LE as i32)
        .stx(Size::W, FP, off + 12, src);
}

/// Copies `words` 32-bit words from `src + src_off` to `dst + dst_off` through `tmp`.
pub fn copy_words(
    a: &mut Asm,
    dst: Reg,
    dst_off: i16,
    src: Reg,
    src_off: i16,
    words: i16,
    tmp: Reg,
) {
    for i in 0..words {
        a.ldx(Size::W, tmp, src, src_off + 4 * i)
            .stx(Size::W, dst, dst_off + 4 * i, tmp);
    }
}

/// Reads a connection's address family (the 32-bit field at `base + family_off`) into
/// `family` and jumps to `other` unless it is IPv4 or IPv6; then stores each address
/// `(slot, field)` of `ends`, read from `base + field`, as 16 bytes at `fp + slot` (IPv4
/// v4-mapped), in that order. Clobbers r1.
pub fn store_addresses(
    a: &mut Asm,
    base: Reg,
    (family, family_off): (Reg, i16),
    other: Label,
    ends: [(i16, IpField); 2],
) {
    let v6 = a.label();
    let done = a.label();
    a.ldx(Size::W, family, base, family_off)
        .jmp_imm(JmpOp::Eq, family, abi::AF_INET6, v6)
        .jmp_imm(JmpOp::Ne, family, abi::AF_INET, other);
    for (slot, field) in ends {
        a.ldx(Size::W, R1, base, field.v4);
        store_v4_mapped(a, slot, R1);
    }
    a.ja(done).bind(v6);
    for (slot, field) in ends {
        copy_words(a, FP, slot, base, field.v6, 4, R1);
    }
    a.bind(done);
}

/// Where a 32-bit value comes from: a register holding it, or a field of the context in CTX
/// (loaded through r1).
pub enum Word {
    Reg(Reg),
    Ctx(i16),
}

/// Stores the inbound listener key at `fp + LISTENER_KEY` (the key sock_ops inserts a
/// sidecar's listener under and sk_lookup finds it by): the pod id of the pod entry in POD
/// and the address family. Clobbers r1.
pub fn store_listener_key(a: &mut Asm, family: Word) {
    let key = |off: usize| LISTENER_KEY + off as i16;
    a.ldx(Size::W, R1, POD, PodEntry::OFF_POD_ID as i16).stx(
        Size::W,
        FP,
        key(ListenerKey::OFF_POD_ID),
        R1,
    );
    let family = match family {
        Word::Reg(reg) => reg,
        Word::Ctx(off) => {
            a.ldx(Size::W, R1, CTX, off);
            R1
        }
    };
    a.stx(Size::W, FP, key(ListenerKey::OFF_FAMILY), family);
}

/// Looks up the splice verdict map `map` at `fp + key` and jumps to `other` unless the agent
/// said `SPLICE_VERDICT_YES` there (no entry, or a blocking verdict). Clobbers r0–r5.
pub fn jmp_unless_splice_verdict(a: &mut Asm, map: &str, key: i16, other: Label) {
    a.ld_map_fd(R1, map);
    stack_ptr(a, R2, key);
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, other)
        .ldx(
            Size::W,
            R1,
            R0,
            mb_maps::layout::SpliceVerdict::OFF_VERDICT as i16,
        )
        .jmp_imm(
            JmpOp::Ne,
            R1,
            mb_maps::layout::SPLICE_VERDICT_YES as i32,
            other,
        );
}

/// Stores a `sock_addr` program's destination (`user_ip4`/`user_ip6`) at `fp + DST_ADDR`,
/// IPv4 as v4-mapped IPv6.
pub fn store_user_dst(a: &mut Asm, family: Family) {
    use crate::ctx::sock_addr;
    store_ctx_addr(
        a,
        family,
        DST_ADDR,
        sock_addr::USER_IP4,
        sock_addr::USER_IP6,
    );
}

/// Stores a context address at `fp + off` as 16 bytes: the v4 field v4-mapped for IPv4,
/// the v6 field as is otherwise. Clobbers r1.
pub fn store_ctx_addr(a: &mut Asm, family: Family, off: i16, v4_field: i16, v6_field: i16) {
    match family {
        Family::V4 => {
            a.ldx(Size::W, R1, CTX, v4_field);
            store_v4_mapped(a, off, R1);
        }
        Family::V6 => copy_words(a, FP, off, CTX, v6_field, 4, R1),
    }
}

/// Jumps to `yes` if the 16-byte address at `fp + off` is a loopback address
/// (`127.0.0.0/8` v4-mapped, or `::1`). Clobbers r1.
pub fn jmp_if_loopback(a: &mut Asm, off: i16, yes: Label) {
    jmp_if_address(
        a,
        off,
        yes,
        |a, yes| {
            a.ldx(Size::B, R1, FP, off + 12)
                .jmp_imm(JmpOp::Eq, R1, 127, yes);
        },
        LOOPBACK_V6_WORD3_LE,
    );
}

/// Jumps to `yes` if the 16-byte address at `fp + off` is the passthrough source
/// (`127.0.0.6` v4-mapped, or `::6`). Clobbers r1.
pub fn jmp_if_passthrough(a: &mut Asm, off: i16, yes: Label) {
    jmp_if_address(
        a,
        off,
        yes,
        |a, yes| {
            a.ldx(Size::W, R1, FP, off + 12)
                .jmp32_imm(JmpOp::Eq, R1, PASSTHROUGH_V4_LE, yes);
        },
        PASSTHROUGH_V6_WORD3_LE,
    );
}

/// The shared shape of the two tests above: words 0 and 1 zero, then either v4-mapped (word 2
/// `ffff`) and `v4_test` on the IPv4 part, or word 2 zero and word 3 equal to `v6_word3`.
fn jmp_if_address(
    a: &mut Asm,
    off: i16,
    yes: Label,
    v4_test: impl FnOnce(&mut Asm, Label),
    v6_word3: i32,
) {
    let no = a.label();
    let not_v4 = a.label();
    load_word2_if_zero_prefix(a, off, no);
    a.jmp32_imm(JmpOp::Ne, R1, V4_MAPPED_WORD2_LE as i32, not_v4);
    v4_test(a, yes);
    a.ja(no)
        .bind(not_v4)
        .jmp32_imm(JmpOp::Ne, R1, 0, no)
        .ldx(Size::W, R1, FP, off + 12)
        .jmp32_imm(JmpOp::Eq, R1, v6_word3, yes)
        .bind(no);
}

/// Jumps to `yes` if the 16-byte address at `fp + off` is v4-mapped. Clobbers r1.
pub fn jmp_if_v4_mapped(a: &mut Asm, off: i16, yes: Label) {
    let no = a.label();
    load_word2_if_zero_prefix(a, off, no);
    a.jmp32_imm(JmpOp::Eq, R1, V4_MAPPED_WORD2_LE as i32, yes)
        .bind(no);
}

/// Jumps to `no` unless words 0 and 1 of the 16-byte address at `fp + off` are zero (what
/// v4-mapped, loopback and passthrough addresses share), then loads word 2 into r1.
fn load_word2_if_zero_prefix(a: &mut Asm, off: i16, no: Label) {
    a.ldx(Size::W, R1, FP, off)
        .jmp32_imm(JmpOp::Ne, R1, 0, no)
        .ldx(Size::W, R1, FP, off + 4)
        .jmp32_imm(JmpOp::Ne, R1, 0, no)
        .ldx(Size::W, R1, FP, off + 8);
}

/// The calling socket's pod: `POD = netns_pods[netns cookie]`, or a jump to `not_meshed`.
/// Clobbers r0–r5.
pub fn caller_pod(a: &mut Asm, not_meshed: Label) {
    a.mov64_reg(R1, CTX).call(Helper::GetNetnsCookie);
    a.stx(Size::DW, FP, NETNS_KEY, R0);
    a.ld_map_fd(R1, MAP_NETNS_PODS);
    stack_ptr(a, R2, NETNS_KEY);
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, not_meshed)
        .mov64_reg(POD, R0);
}

/// Jumps to `yes` if the current task is the sidecar of the pod whose entry `pod` points to:
/// its UID is the pod's `proxy_uid` (0 there: the load's `proxy_uid` constant), or its GID
/// is the pod's non-zero `proxy_gid`. Clobbers r0–r5.
pub fn jmp_if_proxy(a: &mut Asm, pod: Reg, yes: Label) {
    let have_uid = a.label();
    let no = a.label();
    a.call(Helper::GetCurrentUidGid)
        .ldx(Size::W, R1, pod, PodEntry::OFF_PROXY_UID as i16)
        .jmp_imm(JmpOp::Ne, R1, 0, have_uid)
        .mov32_const(R1, CONST_PROXY_UID)
        .bind(have_uid)
        .jmp32_reg(JmpOp::Eq, R0, R1, yes)
        .ldx(Size::W, R1, pod, PodEntry::OFF_PROXY_GID as i16)
        .jmp_imm(JmpOp::Eq, R1, 0, no)
        .alu64_imm(AluOp::Rsh, R0, 32)
        .jmp32_reg(JmpOp::Eq, R0, R1, yes)
        .bind(no);
}

/// `r0 = port_rules[(pod, rule), port]` (LPM, so ranges match) for the pod whose entry `pod`
/// points to and the network-order port in `port`. Clobbers r0–r5.
pub fn lookup_port_rule(a: &mut Asm, pod: Reg, rule: u32, port: Reg) {
    a.st_imm(Size::W, FP, PORT_KEY, PortRuleKey::FULL_PREFIX as i32);
    a.ldx(Size::W, R1, pod, PodEntry::OFF_POD_ID as i16)
        .alu64_imm(AluOp::Lsh, R1, 2)
        .alu64_imm(AluOp::Or, R1, rule_scope(0, rule) as i32)
        .stx(Size::W, FP, PORT_KEY + PortRuleKey::OFF_SCOPE as i16, R1)
        .stx(Size::H, FP, PORT_KEY + PortRuleKey::OFF_PORT as i16, port)
        .st_imm(Size::H, FP, PORT_KEY + PortRuleKey::OFF_PORT as i16 + 2, 0);
    a.ld_map_fd(R1, MAP_PORT_RULES);
    stack_ptr(a, R2, PORT_KEY);
    a.call(Helper::MapLookupElem);
}

/// `r0 = cidr_rules[(pod, rule), DST_ADDR]`. Clobbers r0–r5.
pub fn lookup_cidr_rule(a: &mut Asm, pod: Reg, rule: u32) {
    a.st_imm(Size::W, FP, CIDR_KEY, CidrRuleKey::FULL_PREFIX as i32);
    a.ldx(Size::W, R1, pod, PodEntry::OFF_POD_ID as i16)
        .alu64_imm(AluOp::Lsh, R1, 2)
        .alu64_imm(AluOp::Or, R1, rule_scope(0, rule) as i32)
        .stx(Size::W, FP, CIDR_KEY + CidrRuleKey::OFF_SCOPE as i16, R1);
    a.ld_map_fd(R1, MAP_CIDR_RULES);
    stack_ptr(a, R2, CIDR_KEY);
    a.call(Helper::MapLookupElem);
}

/// Builds an [`OrigDst`] at `ORIG` from `DST_ADDR`, the network-order port in `port` and
/// the given family and flags. Clobbers r1.
pub fn store_orig(a: &mut Asm, port: Reg, family: Family, flags: u32) {
    a.ldx(Size::DW, R1, FP, DST_ADDR)
        .stx(Size::DW, FP, ORIG, R1)
        .ldx(Size::DW, R1, FP, DST_ADDR + 8)
        .stx(Size::DW, FP, ORIG + 8, R1)
        .stx(Size::H, FP, ORIG + OrigDst::OFF_PORT as i16, port)
        .st_imm(Size::H, FP, ORIG + OrigDst::OFF_FAMILY as i16, family.af())
        .st_imm(Size::W, FP, ORIG + OrigDst::OFF_FLAGS as i16, flags as i32);
}

/// Stores the socket's cookie at `fp + COOKIE` and loads r1 = `cookie_orig`, r2 = `&COOKIE`:
/// ready for a lookup or an update. Clobbers r0–r5.
pub fn cookie_orig_key(a: &mut Asm) {
    a.mov64_reg(R1, CTX).call(Helper::GetSocketCookie);
    a.stx(Size::DW, FP, COOKIE, R0);
    a.ld_map_fd(R1, MAP_COOKIE_ORIG);
    stack_ptr(a, R2, COOKIE);
}

/// `cookie_orig[socket cookie] = ORIG`; jumps to `failed` (after counting) when the update
/// fails. Clobbers r0–r5.
pub fn remember_orig(a: &mut Asm, failed: Label) {
    let ok = a.label();
    cookie_orig_key(a);
    stack_ptr(a, R3, ORIG);
    a.mov64_imm(R4, abi::BPF_ANY)
        .call(Helper::MapUpdateElem)
        .jmp_imm(JmpOp::Eq, R0, 0, ok);
    count(a, Counter::MapUpdateFailures);
    a.ja(failed).bind(ok);
}

/// Writes a loopback destination into a sock_addr context: `127.0.0.1` for IPv4 sockets; for
/// IPv6 sockets `::ffff:127.0.0.1` when the original destination (at `DST_ADDR`) was
/// v4-mapped, else `::1`. Clobbers r1.
pub fn write_loopback_dst(a: &mut Asm, family: Family, v4_field: i16, v6_field: i16) {
    match family {
        Family::V4 => {
            a.mov32_imm(R1, LOOPBACK_V4_LE)
                .stx(Size::W, CTX, v4_field, R1);
        }
        Family::V6 => {
            let mapped = a.label();
            let done = a.label();
            jmp_if_v4_mapped(a, DST_ADDR, mapped);
            a.mov32_imm(R1, 0)
                .stx(Size::W, CTX, v6_field, R1)
                .stx(Size::W, CTX, v6_field + 4, R1)
                .stx(Size::W, CTX, v6_field + 8, R1)
                .mov32_imm(R1, LOOPBACK_V6_WORD3_LE)
                .stx(Size::W, CTX, v6_field + 12, R1)
                .ja(done)
                .bind(mapped)
                .mov32_imm(R1, 0)
                .stx(Size::W, CTX, v6_field, R1)
                .stx(Size::W, CTX, v6_field + 4, R1)
                .mov32_imm(R1, V4_MAPPED_WORD2_LE as i32)
                .stx(Size::W, CTX, v6_field + 8, R1)
                .mov32_imm(R1, LOOPBACK_V4_LE)
                .stx(Size::W, CTX, v6_field + 12, R1)
                .bind(done);
        }
    }
}

/// Writes the named port constant, in network order, to the context field at `field`.
/// Clobbers r1.
pub fn write_port_const(a: &mut Asm, field: i16, name: &str) {
    a.mov32_const(R1, name)
        .to_be(R1, 16)
        .stx(Size::W, CTX, field, R1);
}

/// How the programs keep connection keys unique across pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Pair keys involving loopback carry the network-namespace cookie (needs
    /// `bpf_get_netns_cookie` in sock_ops, sk_msg and getsockopt: 6.1 and newer). Without it
    /// connect binds each redirected application socket to its pod's address instead (the
    /// original's way; one `bind` per redirected connect).
    pub netns_keys: bool,
}

impl Variant {
    pub const NETNS_KEYS: Variant = Variant { netns_keys: true };
    pub const BIND_SOURCE: Variant = Variant { netns_keys: false };
}

/// Sets the `netns` of the pair key at `fp + key`: the caller's network-namespace cookie if
/// either address is loopback, else 0 (see [`SockPairKey`]); always 0 without netns keys.
/// Clobbers r0–r5.
pub fn scope_pair_key(a: &mut Asm, key: i16, variant: Variant) {
    if !variant.netns_keys {
        a.st_imm(Size::DW, FP, key + SockPairKey::OFF_NETNS as i16, 0);
        return;
    }
    let scoped = a.label();
    let done = a.label();
    jmp_if_loopback(a, key + SockPairKey::OFF_LOCAL_IP as i16, scoped);
    jmp_if_loopback(a, key + SockPairKey::OFF_REMOTE_IP as i16, scoped);
    a.st_imm(Size::DW, FP, key + SockPairKey::OFF_NETNS as i16, 0)
        .ja(done)
        .bind(scoped)
        .mov64_reg(R1, CTX)
        .call(Helper::GetNetnsCookie)
        .stx(Size::DW, FP, key + SockPairKey::OFF_NETNS as i16, R0)
        .bind(done);
}

/// The socket family a sock_addr program serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn af(self) -> i32 {
        match self {
            Family::V4 => abi::AF_INET,
            Family::V6 => abi::AF_INET6,
        }
    }
}
