//! `sk_lookup`: inbound connections from outside a meshed pod (another node, the node's own
//! namespace, host-network pods, an ingress) go to the pod's sidecar inbound listener, with
//! nothing rewritten: the accepted socket's local address is the original destination.
//!
//! Attached once per meshed pod's network namespace (a netns bpf_link). The program cannot
//! tell which namespace it runs in (sk_lookup has no netns cookie, and `ingress_ifindex` is
//! missing on 5.10), so the pod comes from the SYN's destination address (`pod_ips`).
//!
//! A SYN is steered when all of these hold, else the kernel's normal lookup runs:
//! - TCP, IPv4 or IPv6;
//! - neither end is a loopback address, and the caller is not the sidecar's passthrough
//!   (`127.0.0.6`, `::6`) nor the pod's own address (in-pod callers are connect4's job);
//! - the destination is a meshed pod's address and its port is not the sidecar's own
//!   inbound or outbound port;
//! - the pod's inbound policy captures the port (include/exclude ports, `*`) and the
//!   caller's address is not an excluded source (Kuma's `exclude-inbound-ips`).
//!
//! The listener comes from `inbound_listeners[(pod id, family)]` (an IPv4 SYN also tries the
//! pod's IPv6 listener, which may be dual-stack). No listener, or one `bpf_sk_assign`
//! refuses: **SK_DROP**, an immediate RST as REDIRECT to a closed port gives — the connection
//! never reaches the application around its sidecar. Counted as `inbound_refused`.

use crate::connect::inbound_policy;
use crate::ctx::{abi, sk_lookup};
use crate::emit::*;
use crate::frame::{Frame, Slot};
use mb_asm::{Asm, AsmError, Helper, JmpOp, Program, Reg, Size};
use mb_maps::layout::{
    Counter, ListenerKey, PodEntry, POD_IN_CIDRS_EXCLUDE, RULE_EXCLUDE, RULE_INBOUND,
};

/// The SYN's address family, until the policy reuses r8 as [`FLAGS`].
const FAMILY: Reg = Reg::R8;
/// The listener socket found (a reference, released on every path), reusing r8.
const LISTENER: Reg = Reg::R8;
/// What `bpf_sk_assign` returned, reusing r9 after [`PORT`].
const ASSIGN_RET: Reg = Reg::R9;

/// The caller's address, 16 bytes v4-mapped (the pair-key area, unused here).
const REMOTE_ADDR: i16 = PAIR_KEY;

/// The stack of `sk_lookup`.
pub const FRAME: Frame = Frame {
    slots: &[
        Slot::new("REMOTE_ADDR", REMOTE_ADDR, 16),
        slot::LISTENER_KEY,
        slot::COUNTER_IDX,
        slot::CIDR_KEY,
        slot::DST_ADDR,
        slot::PORT_KEY,
    ],
    unions: &[("CIDR_KEY", "DST_ADDR")],
};

/// `sk_lookup`, attached to each meshed pod's network namespace.
pub fn sk_lookup() -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let pass = a.label();
    let refuse = a.label();
    let assign = a.label();

    a.mov64_reg(CTX, R1);
    a.ldx(Size::W, R1, CTX, sk_lookup::PROTOCOL)
        .jmp_imm(JmpOp::Ne, R1, abi::IPPROTO_TCP, pass);
    store_addresses(
        &mut a,
        CTX,
        (FAMILY, sk_lookup::FAMILY),
        pass,
        [
            (DST_ADDR, sk_lookup::LOCAL_IP),
            (REMOTE_ADDR, sk_lookup::REMOTE_IP),
        ],
    );

    // Loopback and the sidecar's passthrough are in-pod traffic: never steered.
    jmp_if_loopback(&mut a, REMOTE_ADDR, pass);
    jmp_if_passthrough(&mut a, REMOTE_ADDR, pass);
    jmp_if_loopback(&mut a, DST_ADDR, pass);

    // The sidecar's own listeners are reached as they are.
    a.ldx(Size::W, PORT, CTX, sk_lookup::LOCAL_PORT)
        .jmp32_const(JmpOp::Eq, PORT, CONST_INBOUND_PORT, pass)
        .jmp32_const(JmpOp::Eq, PORT, CONST_OUTBOUND_PORT, pass)
        .to_be(PORT, 16);

    a.ld_map_fd(R1, MAP_POD_IPS);
    stack_ptr(&mut a, R2, DST_ADDR);
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, pass)
        .mov64_reg(POD, R0);
    // The pod calling its own address: connect4 decided that one already.
    jmp_if_same_addr(&mut a, REMOTE_ADDR, POD, PodEntry::OFF_IPV4 as i16, pass);
    jmp_if_same_addr(&mut a, REMOTE_ADDR, POD, PodEntry::OFF_IPV6 as i16, pass);

    // FAMILY (r8) becomes FLAGS in the policy; keep it on the stack in the listener key.
    store_listener_key(&mut a, Word::Reg(FAMILY));
    inbound_policy(&mut a, pass);
    // Excluded callers (Kuma's exclude-inbound-ips): the CIDR key's address is DST_ADDR.
    let sources_ok = a.label();
    jmp_unless_flag(&mut a, FLAGS, POD_IN_CIDRS_EXCLUDE, sources_ok);
    copy_words(&mut a, FP, DST_ADDR, FP, REMOTE_ADDR, 4, R1);
    lookup_cidr_rule(&mut a, POD, RULE_INBOUND | RULE_EXCLUDE);
    a.jmp_imm(JmpOp::Ne, R0, 0, pass).bind(sources_ok);

    // The pod's listener: its own family first; an IPv4 SYN may also go to a dual-stack
    // IPv6 listener.
    lookup_listener(&mut a);
    a.jmp_imm(JmpOp::Ne, R0, 0, assign)
        .ldx(
            Size::W,
            R1,
            FP,
            LISTENER_KEY + ListenerKey::OFF_FAMILY as i16,
        )
        .jmp_imm(JmpOp::Ne, R1, abi::AF_INET, refuse)
        .st_imm(
            Size::W,
            FP,
            LISTENER_KEY + ListenerKey::OFF_FAMILY as i16,
            abi::AF_INET6,
        );
    lookup_listener(&mut a);
    a.jmp_imm(JmpOp::Eq, R0, 0, refuse);

    // LISTENER = the listener (a reference: released on every path).
    a.bind(assign)
        .mov64_reg(LISTENER, R0)
        .mov64_reg(R1, CTX)
        .mov64_reg(R2, LISTENER)
        .mov64_imm(R3, 0)
        .call(Helper::SkAssign)
        .mov64_reg(ASSIGN_RET, R0)
        .mov64_reg(R1, LISTENER)
        .call(Helper::SkRelease)
        .jmp_imm(JmpOp::Ne, ASSIGN_RET, 0, refuse);
    count(&mut a, Counter::InboundSteered);
    a.ja(pass);

    a.bind(refuse);
    count(&mut a, Counter::InboundRefused);
    a.mov64_imm(R0, abi::SK_DROP).exit();

    a.bind(pass).mov64_imm(R0, abi::SK_PASS).exit();
    a.finish()
}

/// `r0 = inbound_listeners[LISTENER_KEY]` (a socket reference or NULL). Clobbers r0–r5.
fn lookup_listener(a: &mut Asm) {
    a.ld_map_fd(R1, MAP_INBOUND_LISTENERS);
    stack_ptr(a, R2, LISTENER_KEY);
    a.call(Helper::MapLookupElem);
}

/// Jumps to `yes` if the 16 bytes at `fp + off` equal the 16 bytes at `entry + field`.
/// Clobbers r1, r2.
fn jmp_if_same_addr(a: &mut Asm, off: i16, entry: Reg, field: i16, yes: mb_asm::Label) {
    let no = a.label();
    for i in 0..2 {
        a.ldx(Size::DW, R1, FP, off + 8 * i)
            .ldx(Size::DW, R2, entry, field + 8 * i)
            .jmp_reg(JmpOp::Ne, R1, R2, no);
    }
    a.ja(yes).bind(no);
}
