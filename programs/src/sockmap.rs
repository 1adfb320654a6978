//! `sockops` and `sk_msg`: both ends of every redirected local connection go into the sockhash
//! `sock_pairs`, and each `sendmsg()` payload then moves straight into the peer socket's
//! receive queue, skipping the loopback TCP/IP stack.
//!
//! What is spliced is the load's choice (`splice_mode`): every redirected connection, only
//! sidecar-to-sidecar ones (the default), or none. Application sockets are spared by default
//! because a socket in a sockhash answers a *blocking* `recv()` with `EAGAIN` whenever its
//! wait queue is woken without data (`tcp_bpf_recvmsg`, up to at least Linux 6.18): an
//! application that blocks in `recv()` after a large upload fails. Sidecars (Envoy) are
//! event-driven and simply wait again.
//!
//! A socket is inserted only when its peer will be in the map too (DESIGN.md "Known hazards":
//! a socket in a sockhash whose peer is missing can see spurious `EAGAIN` on blocking reads):
//! - active side: its connect was redirected (`cookie_orig` has its cookie) — the original
//!   destination moves to `pair_orig` under the connection's 4-tuple — or it is the sidecar's
//!   passthrough socket from `127.0.0.6` / `::6`;
//! - passive side: the active side's entry exists in `pair_orig` (the active side's
//!   ESTABLISHED callback runs first: its ACK is what completes the passive side), or the peer
//!   is the passthrough address.
//!
//! Redirected connections always end on a sidecar port (outbound, inbound or DNS), so the
//! `cookie_orig` and `pair_orig` lookups are made only there: a connection to any other port
//! (the passthrough leg, traffic the mesh does not intercept) costs no map operation here.
//!
//! Sidecar inbound listeners: `listen()` on the inbound port fires `TCP_LISTEN_CB`, and the
//! listener goes into `inbound_listeners` under its pod's id (from the netns cookie, so only
//! in the netns-keys variant: 5.10's sock_ops has no `bpf_get_netns_cookie`; there the agent
//! adopts listeners from user space). A restarted sidecar's new listener replaces the old
//! one with no agent action; a closed listener leaves the map by itself.
//!
//! Under `--splice sidecars` application legs are inserted too where they are known to be
//! safe: the pod's annotation (`POD_SPLICE_APP`, or `POD_SPLICE_APP_DENY` to forbid), else the
//! agent's per-process verdicts — the caller's process for an application's connect
//! (`ORIG_SPLICE_APP`, set by connect4/6 from `splice_procs`), the listening process for a
//! sidecar's connection to its application (`splice_ports`, looked up here). A `pair_orig` entry is deleted when the passive end of its connection closes.

use crate::ctx::{abi, sk_msg, sock_ops, IpField};
use crate::emit::*;
use crate::frame::Frame;
use mb_asm::{AluOp, Asm, AsmError, Helper, JmpOp, Program, Reg, Size};
use mb_maps::layout::{
    Counter, OrigDst, PodEntry, SockPairKey, SplicePortKey, ORIG_SIDECAR_CALLER, ORIG_SPLICE_APP,
    POD_SPLICE_APP, POD_SPLICE_APP_DENY,
};

/// The sock_ops callback (`op`) being handled.
const SOCK_OP: Reg = Reg::R9;
/// sk_msg: the message's size in bytes, for the spliced-bytes counter.
const MSG_SIZE: Reg = Reg::R7;

const LOCAL_IP: i16 = SockPairKey::OFF_LOCAL_IP as i16;
const REMOTE_IP: i16 = SockPairKey::OFF_REMOTE_IP as i16;
const LOCAL_PORT: i16 = SockPairKey::OFF_LOCAL_PORT as i16;
const REMOTE_PORT: i16 = SockPairKey::OFF_REMOTE_PORT as i16;

/// The stack of `sockops`.
pub const SOCKOPS_FRAME: Frame = Frame {
    slots: &[
        slot::PAIR_KEY,
        slot::PEER_KEY,
        slot::COOKIE,
        slot::LISTENER_KEY,
        slot::COUNTER_IDX,
        slot::NETNS_KEY,
        slot::SPLICE_PORT_KEY,
    ],
    unions: &[
        ("COOKIE", "LISTENER_KEY"),
        ("COOKIE", "SPLICE_PORT_KEY"),
        ("LISTENER_KEY", "SPLICE_PORT_KEY"),
    ],
};

/// The stack of `sk_msg`.
pub const SK_MSG_FRAME: Frame = Frame {
    slots: &[slot::PAIR_KEY, slot::COUNTER_IDX],
    unions: &[],
};

/// Context fields holding a connection's addresses and ports (sock_ops and sk_msg agree on
/// their meaning, not their offsets).
struct TupleFields {
    family: i16,
    local_ip: IpField,
    remote_ip: IpField,
    local_port: i16,
    remote_port: i16,
}

const SOCK_OPS_FIELDS: TupleFields = TupleFields {
    family: sock_ops::FAMILY,
    local_ip: sock_ops::LOCAL_IP,
    remote_ip: sock_ops::REMOTE_IP,
    local_port: sock_ops::LOCAL_PORT,
    remote_port: sock_ops::REMOTE_PORT,
};

const SK_MSG_FIELDS: TupleFields = TupleFields {
    family: sk_msg::FAMILY,
    local_ip: sk_msg::LOCAL_IP,
    remote_ip: sk_msg::REMOTE_IP,
    local_port: sk_msg::LOCAL_PORT,
    remote_port: sk_msg::REMOTE_PORT,
};

/// Builds the pair key at `fp + key` from the context in CTX. With `reversed`, the key is the
/// peer's view (local and remote swapped). Jumps to `other` for families other than IPv4/IPv6.
/// Clobbers r0–r5.
fn build_pair_key(
    a: &mut Asm,
    f: &TupleFields,
    key: i16,
    reversed: bool,
    other: mb_asm::Label,
    variant: Variant,
) {
    let (me_ip, peer_ip, me_port, peer_port) = if reversed {
        (REMOTE_IP, LOCAL_IP, REMOTE_PORT, LOCAL_PORT)
    } else {
        (LOCAL_IP, REMOTE_IP, LOCAL_PORT, REMOTE_PORT)
    };
    store_addresses(
        a,
        CTX,
        (R1, f.family),
        other,
        [(key + me_ip, f.local_ip), (key + peer_ip, f.remote_ip)],
    );
    // local_port is host order; remote_port is network order in the upper half.
    a.ldx(Size::W, R1, CTX, f.local_port)
        .to_be(R1, 16)
        .stx(Size::H, FP, key + me_port, R1)
        .ldx(Size::W, R1, CTX, f.remote_port)
        .alu64_imm(AluOp::Rsh, R1, 16)
        .stx(Size::H, FP, key + peer_port, R1)
        .st_imm(Size::W, FP, key + REMOTE_PORT + 2, 0);
    scope_pair_key(a, key, variant);
}

/// `sockops`, attached to the node's cgroup.
pub fn sockops(variant: Variant) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let out = a.label();
    let established = a.label();
    let passive = a.label();
    let insert = a.label();
    let no_orig = a.label();
    let decide = a.label();
    let failed = a.label();

    let state = a.label();
    a.mov64_reg(CTX, R1);
    a.ldx(Size::W, SOCK_OP, CTX, sock_ops::OP)
        .jmp_imm(
            JmpOp::Eq,
            SOCK_OP,
            abi::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
            established,
        )
        .jmp_imm(JmpOp::Eq, SOCK_OP, abi::BPF_SOCK_OPS_STATE_CB, state);
    let listen = a.label();
    if variant.netns_keys {
        a.jmp_imm(JmpOp::Eq, SOCK_OP, abi::BPF_SOCK_OPS_TCP_LISTEN_CB, listen);
    }
    a.jmp_imm(
        JmpOp::Ne,
        SOCK_OP,
        abi::BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        out,
    )
    .bind(established);
    build_pair_key(&mut a, &SOCK_OPS_FIELDS, PAIR_KEY, false, out, variant);
    a.jmp_imm(
        JmpOp::Eq,
        SOCK_OP,
        abi::BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        passive,
    );

    // Active side: move the original destination from the cookie to the 4-tuple. FLAGS keeps
    // its flags: they tell whose socket this is (ORIG_SIDECAR_CALLER: a sidecar's). Only a
    // connect that was redirected has an entry, and connect4/6 sent every one of those to a
    // sidecar port: any other remote port skips the cookie and its lookup (the sidecar's
    // passthrough leg, and every connection of the node that is not intercepted).
    a.ldx(Size::W, R1, CTX, sock_ops::REMOTE_PORT)
        .alu64_imm(AluOp::Rsh, R1, 16)
        .to_be(R1, 16);
    jmp_unless_sidecar_port(&mut a, R1, no_orig);
    cookie_orig_key(&mut a);
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, no_orig)
        .ldx(Size::W, FLAGS, R0, OrigDst::OFF_FLAGS as i16)
        .mov64_reg(R3, R0);
    a.ld_map_fd(R1, MAP_PAIR_ORIG);
    stack_ptr(&mut a, R2, PAIR_KEY);
    a.mov64_imm(R4, abi::BPF_ANY)
        .call(Helper::MapUpdateElem)
        .jmp_imm(JmpOp::Ne, R0, 0, failed);
    a.ld_map_fd(R1, MAP_COOKIE_ORIG);
    stack_ptr(&mut a, R2, COOKIE);
    a.call(Helper::MapDeleteElem).ja(decide);
    // The sidecar's passthrough connection to its own application: an application socket
    // is at one end, the pod's address at the other (the remote end here).
    let passthrough_active = a.label();
    let passthrough_passive = a.label();
    a.bind(no_orig).mov64_imm(FLAGS, 0);
    jmp_if_passthrough(&mut a, PAIR_KEY + LOCAL_IP, passthrough_active);
    a.ja(out);
    a.bind(passthrough_active);
    pod_splice_app_flag(&mut a, PAIR_KEY + REMOTE_IP, PAIR_KEY + REMOTE_PORT, decide);

    // Passive side: only when the active side is in the map, which needs a connection
    // accepted on a sidecar port (local_port is host order).
    a.bind(passive).mov64_imm(FLAGS, 0);
    jmp_if_passthrough(&mut a, PAIR_KEY + REMOTE_IP, passthrough_passive);
    a.ldx(Size::W, R1, CTX, sock_ops::LOCAL_PORT);
    jmp_unless_sidecar_port(&mut a, R1, out);
    reverse_pair_key(&mut a, PAIR_KEY, PEER_KEY);
    a.ld_map_fd(R1, MAP_PAIR_ORIG);
    stack_ptr(&mut a, R2, PEER_KEY);
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, out)
        .ldx(Size::W, FLAGS, R0, OrigDst::OFF_FLAGS as i16);
    // Tell us when this socket closes: the entry goes then, so a later connection reusing
    // the 4-tuple cannot find it. The passive end (the sidecar's accepted socket) closes
    // only after the sidecar asked for the original destination; the active end may close
    // first (an orphan is done as soon as its FIN is acked, maybe before the accept).
    a.mov64_reg(R1, CTX)
        .mov64_imm(R2, abi::BPF_SOCK_OPS_STATE_CB_FLAG)
        .call(Helper::SockOpsCbFlagsSet);

    a.ja(decide).bind(passthrough_passive);
    pod_splice_app_flag(&mut a, PAIR_KEY + LOCAL_IP, PAIR_KEY + LOCAL_PORT, decide);

    // Which connections to splice: all, only sidecar-to-sidecar (and the application legs of
    // pods that asked for it), or none.
    a.bind(decide)
        .mov64_const(R1, CONST_SPLICE)
        .jmp_imm(JmpOp::Eq, R1, SPLICE_ALL as i32, insert)
        .jmp_imm(JmpOp::Ne, R1, SPLICE_SIDECARS as i32, out)
        .jmp_imm(
            JmpOp::Set,
            FLAGS,
            (ORIG_SIDECAR_CALLER | ORIG_SPLICE_APP) as i32,
            insert,
        )
        .ja(out);

    a.bind(insert).mov64_reg(R1, CTX);
    a.ld_map_fd(R2, MAP_SOCK_PAIRS);
    stack_ptr(&mut a, R3, PAIR_KEY);
    a.mov64_imm(R4, abi::BPF_ANY)
        .call(Helper::SockHashUpdate)
        .jmp_imm(JmpOp::Ne, R0, 0, failed);
    count(&mut a, Counter::SockhashInserts);
    a.ja(out);

    // The passive end of a redirected connection closed: forget its original destination
    // (kept under the active end's 4-tuple).
    a.bind(state)
        .ldx(Size::W, R1, CTX, sock_ops::ARGS + 4)
        .jmp_imm(JmpOp::Ne, R1, abi::BPF_TCP_CLOSE, out);
    build_pair_key(&mut a, &SOCK_OPS_FIELDS, PAIR_KEY, false, out, variant);
    reverse_pair_key(&mut a, PAIR_KEY, PEER_KEY);
    a.ld_map_fd(R1, MAP_PAIR_ORIG);
    stack_ptr(&mut a, R2, PEER_KEY);
    a.call(Helper::MapDeleteElem).ja(out);

    if variant.netns_keys {
        // A listener on the inbound port in a meshed pod: the pod's sk_lookup steers to it.
        a.bind(listen)
            .ldx(Size::W, R1, CTX, sock_ops::LOCAL_PORT)
            .jmp32_const(JmpOp::Ne, R1, CONST_INBOUND_PORT, out);
        caller_pod(&mut a, out);
        store_listener_key(&mut a, Word::Ctx(sock_ops::FAMILY));
        a.mov64_reg(R1, CTX);
        a.ld_map_fd(R2, MAP_INBOUND_LISTENERS);
        stack_ptr(&mut a, R3, LISTENER_KEY);
        a.mov64_imm(R4, abi::BPF_ANY)
            .call(Helper::SockHashUpdate)
            .jmp_imm(JmpOp::Ne, R0, 0, failed);
        count(&mut a, Counter::ListenerInserts);
        a.ja(out);
    } else {
        a.bind(listen);
    }

    a.bind(failed);
    count(&mut a, Counter::MapUpdateFailures);
    a.bind(out).mov64_imm(R0, 1).exit();
    a.finish()
}

/// Sets FLAGS to `ORIG_SPLICE_APP` if the application leg of a sidecar's passthrough
/// connection is to be spliced, else leaves it; then jumps to `next`. The application's end
/// is the pod address at `fp + addr`, port (network order) at `fp + port`. The pod's
/// annotation decides first (`POD_SPLICE_APP` forces, `POD_SPLICE_APP_DENY` forbids), then the
/// agent's verdict on the process listening on that port (`splice_ports`; this socket has no
/// process context of its own). Only `--splice sidecars` looks, so the lookups are skipped in
/// the other modes. Clobbers r0–r5.
fn pod_splice_app_flag(a: &mut Asm, addr: i16, port: i16, next: mb_asm::Label) {
    let splice = a.label();
    a.mov64_const(R1, CONST_SPLICE)
        .jmp_imm(JmpOp::Ne, R1, SPLICE_SIDECARS as i32, next);
    a.ld_map_fd(R1, MAP_POD_IPS);
    stack_ptr(a, R2, addr);
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, next)
        .ldx(Size::W, R1, R0, PodEntry::OFF_FLAGS as i16)
        .jmp_imm(JmpOp::Set, R1, POD_SPLICE_APP as i32, splice)
        .jmp_imm(JmpOp::Set, R1, POD_SPLICE_APP_DENY as i32, next)
        .ldx(Size::W, R1, R0, PodEntry::OFF_POD_ID as i16)
        .stx(
            Size::W,
            FP,
            SPLICE_PORT_KEY + SplicePortKey::OFF_POD_ID as i16,
            R1,
        )
        // A 16-bit load zero-extends: the word store writes the port and zeroes the padding.
        .ldx(Size::H, R1, FP, port)
        .stx(
            Size::W,
            FP,
            SPLICE_PORT_KEY + SplicePortKey::OFF_PORT as i16,
            R1,
        );
    jmp_unless_splice_verdict(a, MAP_SPLICE_PORTS, SPLICE_PORT_KEY, next);
    count(a, Counter::SpliceAppByPort);
    a.bind(splice)
        .mov64_imm(FLAGS, ORIG_SPLICE_APP as i32)
        .ja(next);
}

/// Jumps to `other` unless the host-order port in `port` is one that connect4/6 redirect to:
/// the sidecar's outbound, inbound or DNS port. Only connections to those ports can have an
/// original destination in `cookie_orig` or `pair_orig`.
fn jmp_unless_sidecar_port(a: &mut Asm, port: Reg, other: mb_asm::Label) {
    let sidecar_port = a.label();
    a.jmp32_const(JmpOp::Eq, port, CONST_OUTBOUND_PORT, sidecar_port)
        .jmp32_const(JmpOp::Eq, port, CONST_INBOUND_PORT, sidecar_port)
        .jmp32_const(JmpOp::Ne, port, CONST_DNS_PORT, other)
        .bind(sidecar_port);
}

/// Writes at `fp + to` the pair key at `fp + from` seen from the other end. Clobbers r1.
fn reverse_pair_key(a: &mut Asm, from: i16, to: i16) {
    a.ldx(Size::DW, R1, FP, from).stx(Size::DW, FP, to, R1);
    for (src, dst) in [(LOCAL_IP, REMOTE_IP), (REMOTE_IP, LOCAL_IP)] {
        a.ldx(Size::DW, R1, FP, from + src)
            .stx(Size::DW, FP, to + dst, R1)
            .ldx(Size::DW, R1, FP, from + src + 8)
            .stx(Size::DW, FP, to + dst + 8, R1);
    }
    a.ldx(Size::H, R1, FP, from + LOCAL_PORT)
        .stx(Size::H, FP, to + REMOTE_PORT, R1)
        .ldx(Size::H, R1, FP, from + REMOTE_PORT)
        .stx(Size::H, FP, to + LOCAL_PORT, R1)
        .st_imm(Size::W, FP, to + REMOTE_PORT + 2, 0);
}

/// `sk_msg`, attached to the sockhash: redirect each message to the peer socket.
pub fn msg_redirect(variant: Variant) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let out = a.label();
    a.mov64_reg(CTX, R1);
    build_pair_key(&mut a, &SK_MSG_FIELDS, PAIR_KEY, true, out, variant);
    a.ldx(Size::W, MSG_SIZE, CTX, sk_msg::SIZE);
    a.mov64_reg(R1, CTX);
    a.ld_map_fd(R2, MAP_SOCK_PAIRS);
    stack_ptr(&mut a, R3, PAIR_KEY);
    a.mov64_imm(R4, abi::BPF_F_INGRESS)
        .call(Helper::MsgRedirectHash)
        .jmp_imm(JmpOp::Ne, R0, abi::SK_PASS, out);
    count(&mut a, Counter::SplicedMessages);
    count_by(&mut a, Counter::SplicedBytes, MSG_SIZE);
    // SK_PASS whatever happened: a message with no peer in the map takes the normal path.
    a.bind(out).mov64_imm(R0, abi::SK_PASS).exit();
    a.finish()
}
