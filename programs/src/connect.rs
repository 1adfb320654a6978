//! `cgroup/connect4` and `cgroup/connect6`: TCP interception and UDP DNS capture.
//!
//! TCP from an application (neither the pod's proxy UID nor its proxy GID) in a meshed pod: loopback destinations are left
//! alone; otherwise the pod's outbound policy decides, and a redirected connect remembers its
//! original destination by socket cookie and goes to `127.0.0.1:<outbound port>` (`::1` or
//! `::ffff:127.0.0.1` for IPv6 sockets). No `bpf_bind` is needed: pair keys are scoped by
//! network namespace.
//!
//! TCP to another meshed pod of this node that is not going to the caller's own sidecar —
//! from that pod's peer sidecar (UID = proxy UID), from a pod without sidecar, from the node,
//! or from an application whose outbound policy excluded it — goes, if the destination pod's
//! inbound policy says so, to the same address on its inbound port: no caller on this node
//! gets around a pod's sidecar. The caller's own pod (the sidecar's last hop to its
//! application) and non-local destinations pass unchanged — decided by the caller's network
//! namespace, so the first connection to its own application never fails.
//!
//! UDP and TCP to port 53 from an application whose pod captures DNS go to the DNS proxy
//! (the proxy's own queries are never captured).

use crate::ctx::{abi, sock_addr};
use crate::emit::*;
use crate::frame::{join, Frame, Slot};
use mb_asm::{AluOp, Asm, AsmError, Helper, JmpOp, Label, Program, Size};
use mb_maps::layout::{
    Counter, OrigDst, PodEntry, SpliceProcKey, ORIG_DNS, ORIG_INBOUND, ORIG_OUTBOUND,
    ORIG_SIDECAR_CALLER, ORIG_SPLICE_APP, POD_DNS_CAPTURE, POD_IN_PORTS_ALL, POD_IN_PORTS_EXCLUDE,
    POD_OUT_CIDRS_ALL, POD_OUT_CIDRS_EXCLUDE, POD_OUT_PORTS_EXCLUDE, POD_OUT_PORTS_INCLUDE,
    POD_SPLICE_APP, POD_SPLICE_APP_DENY, RULE_EXCLUDE, RULE_INBOUND, RULE_INCLUDE,
};

/// The slots of the UDP DNS redirect: all of `sendmsg4`/`sendmsg6`'s stack, part of connect's.
const DNS_REDIRECT_SLOTS: [Slot; 6] = [
    slot::ORIG,
    slot::COOKIE,
    slot::COUNTER_IDX,
    slot::NETNS_KEY,
    slot::CIDR_KEY,
    slot::DST_ADDR,
];

const CONNECT_SLOTS: [Slot; 10] = join(
    DNS_REDIRECT_SLOTS,
    [slot::CALLER, slot::PORT_KEY, slot::SOCKADDR, slot::PROC_KEY],
);

/// The stack of `connect4`/`connect6`.
pub const CONNECT_FRAME: Frame = Frame {
    slots: &CONNECT_SLOTS,
    unions: &[("CIDR_KEY", "DST_ADDR"), ("SOCKADDR", "PROC_KEY")],
};

/// The stack of `sendmsg4`/`sendmsg6`.
pub const SENDMSG_FRAME: Frame = Frame {
    slots: &DNS_REDIRECT_SLOTS,
    unions: &[("CIDR_KEY", "DST_ADDR")],
};

/// `cgroup/connect4` or `cgroup/connect6`.
pub fn connect(family: Family, variant: Variant) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let allow = a.label();
    let bypass = a.label();
    let sidecar = a.label();
    let inbound = a.label();
    let udp = a.label();

    a.mov64_reg(CTX, R1);
    a.ldx(Size::W, R1, CTX, sock_addr::PROTOCOL)
        .jmp_imm(JmpOp::Eq, R1, abi::IPPROTO_UDP, udp)
        .jmp_imm(JmpOp::Ne, R1, abi::IPPROTO_TCP, allow);

    store_user_dst(&mut a, family);
    a.ldx(Size::W, PORT, CTX, sock_addr::USER_PORT);
    // Who is calling: POD = the caller's pod (0: not a meshed pod); CALLER = the ORIG_* bits
    // a redirect records about the caller.
    a.mov64_imm(POD, 0).st_imm(Size::DW, FP, CALLER, 0);
    caller_pod(&mut a, inbound);
    jmp_if_proxy(&mut a, POD, sidecar);

    // Application of a meshed pod: loopback stays local, then the pod's outbound policy;
    // what it does not send to its own sidecar may still enter the destination's.
    jmp_if_loopback(&mut a, DST_ADDR, bypass);
    tcp_dns_redirect(&mut a, family, variant, allow);
    outbound_policy(&mut a, inbound);
    store_orig(&mut a, PORT, family, ORIG_OUTBOUND);
    splice_app_decision(&mut a, variant);
    if !variant.netns_keys {
        bind_to_pod_address(&mut a, family, allow);
    }
    remember_orig(&mut a, allow);
    write_loopback_dst(&mut a, family, sock_addr::USER_IP4, sock_addr::USER_IP6);
    write_port_const(&mut a, sock_addr::USER_PORT, CONST_OUTBOUND_PORT);
    count(&mut a, Counter::RedirectOutbound);
    a.ja(allow);

    a.bind(sidecar)
        .st_imm(Size::DW, FP, CALLER, ORIG_SIDECAR_CALLER as i32);

    // Inbound: a connect to another meshed pod of this node — from its peer's sidecar, from
    // a pod without sidecar or from the node — goes to that pod's inbound port if its policy
    // says so. Its own sidecar's last hop to its application passes.
    a.bind(inbound);
    a.ld_map_fd(R1, MAP_POD_IPS);
    stack_ptr(&mut a, R2, DST_ADDR);
    let not_own = a.label();
    let no_local_dst = a.label();
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, no_local_dst)
        .jmp_imm(JmpOp::Eq, POD, 0, not_own)
        .ldx(Size::W, R1, R0, PodEntry::OFF_POD_ID as i16)
        .ldx(Size::W, R2, POD, PodEntry::OFF_POD_ID as i16)
        .jmp_reg(JmpOp::Eq, R1, R2, bypass)
        .bind(not_own)
        .mov64_reg(POD, R0);
    inbound_policy(&mut a, bypass);
    store_orig(&mut a, PORT, family, ORIG_INBOUND);
    a.ldx(Size::W, R1, FP, ORIG + OrigDst::OFF_FLAGS as i16)
        .ldx(Size::W, R2, FP, CALLER)
        .alu64_reg(AluOp::Or, R1, R2)
        .stx(Size::W, FP, ORIG + OrigDst::OFF_FLAGS as i16, R1);
    remember_orig(&mut a, allow);
    write_port_const(&mut a, sock_addr::USER_PORT, CONST_INBOUND_PORT);
    count(&mut a, Counter::RedirectInbound);
    a.ja(allow);

    // Not a local meshed pod: a bypass only for a meshed pod's application (its policy
    // kept the connect from its sidecar); the sidecar's own upstream calls are routine.
    a.bind(no_local_dst)
        .jmp_imm(JmpOp::Eq, POD, 0, allow)
        .ldx(Size::DW, R1, FP, CALLER)
        .jmp_imm(JmpOp::Ne, R1, 0, allow);
    a.bind(bypass);
    count(&mut a, Counter::Bypassed);
    a.ja(allow);

    a.bind(udp);
    dns_redirect(&mut a, family, allow);

    a.bind(allow).mov64_imm(R0, 1).exit();
    a.finish()
}

/// Whether the leg from the calling application (its pod's entry in POD) to its sidecar is
/// spliced too: sets `ORIG_SPLICE_APP` in the original destination at ORIG (its flags are
/// `ORIG_OUTBOUND` here). Only `--splice sidecars` looks (`all` splices every leg, `none` none).
/// The pod's annotation decides first (`POD_SPLICE_APP` forces, `POD_SPLICE_APP_DENY`
/// forbids); otherwise the agent's verdict on the calling process in `splice_procs`, keyed by
/// (cgroup id, tgid). The netns-keys variant only: the 5.10 variant does not ask the kernel
/// for the caller's pid there, so only the annotation splices application legs.
/// Clobbers r0–r5.
fn splice_app_decision(a: &mut Asm, variant: Variant) {
    let plain = a.label();
    let splice = a.label();
    a.mov64_const(R1, CONST_SPLICE)
        .jmp_imm(JmpOp::Ne, R1, SPLICE_SIDECARS as i32, plain)
        .ldx(Size::W, R2, POD, PodEntry::OFF_FLAGS as i16)
        .jmp_imm(JmpOp::Set, R2, POD_SPLICE_APP as i32, splice)
        .jmp_imm(JmpOp::Set, R2, POD_SPLICE_APP_DENY as i32, plain);
    if variant.netns_keys {
        a.call(Helper::GetCurrentCgroupId).stx(
            Size::DW,
            FP,
            PROC_KEY + SpliceProcKey::OFF_CGROUP_ID as i16,
            R0,
        );
        // The tgid is the upper half; the shift leaves the key's padding zero.
        a.call(Helper::GetCurrentPidTgid)
            .alu64_imm(AluOp::Rsh, R0, 32)
            .stx(Size::DW, FP, PROC_KEY + SpliceProcKey::OFF_TGID as i16, R0);
        jmp_unless_splice_verdict(a, MAP_SPLICE_PROCS, PROC_KEY, plain);
        count(a, Counter::SpliceAppByProcess);
    } else {
        a.ja(plain);
    }
    a.bind(splice).st_imm(
        Size::W,
        FP,
        ORIG + OrigDst::OFF_FLAGS as i16,
        (ORIG_OUTBOUND | ORIG_SPLICE_APP) as i32,
    );
    a.bind(plain);
}

/// Binds the socket to the caller's pod address (pod entry in POD) so that its 4-tuple to the
/// loopback sidecar is unique on the node without a netns cookie in the key. An IPv6 socket
/// calling a v4-mapped destination is bound to the pod's v4-mapped address. Jumps to `failed`
/// (after counting) when the kernel refuses. Clobbers r0–r5.
fn bind_to_pod_address(a: &mut Asm, family: Family, failed: Label) {
    let ok = a.label();
    match family {
        Family::V4 => {
            a.st_imm(Size::H, FP, SOCKADDR, abi::AF_INET)
                .st_imm(Size::H, FP, SOCKADDR + 2, 0)
                .ldx(Size::W, R1, POD, PodEntry::OFF_IPV4 as i16 + 12)
                .stx(Size::W, FP, SOCKADDR + 4, R1)
                .st_imm(Size::DW, FP, SOCKADDR + 8, 0);
            a.mov64_reg(R1, CTX);
            stack_ptr(a, R2, SOCKADDR);
            a.mov64_imm(R3, abi::SOCKADDR_IN_SIZE);
        }
        Family::V6 => {
            let mapped = a.label();
            let copied = a.label();
            a.st_imm(Size::H, FP, SOCKADDR, abi::AF_INET6)
                .st_imm(Size::H, FP, SOCKADDR + 2, 0)
                .st_imm(Size::W, FP, SOCKADDR + 4, 0)
                .st_imm(Size::W, FP, SOCKADDR + 24, 0);
            jmp_if_v4_mapped(a, DST_ADDR, mapped);
            copy_words(a, FP, SOCKADDR + 8, POD, PodEntry::OFF_IPV6 as i16, 4, R1);
            a.ja(copied).bind(mapped);
            copy_words(a, FP, SOCKADDR + 8, POD, PodEntry::OFF_IPV4 as i16, 4, R1);
            a.bind(copied).mov64_reg(R1, CTX);
            stack_ptr(a, R2, SOCKADDR);
            a.mov64_imm(R3, abi::SOCKADDR_IN6_SIZE);
        }
    }
    a.call(Helper::Bind).jmp_imm(JmpOp::Eq, R0, 0, ok);
    count(a, Counter::MapUpdateFailures);
    a.ja(failed).bind(ok);
}

/// TCP to port 53 (port in PORT) from the application of a pod that captures DNS (entry in POD)
/// goes to the DNS proxy, not to the outbound port (istio-iptables does the same); jumps to
/// `done` when redirected (or failed), falls through otherwise. Clobbers r0–r5, FLAGS.
fn tcp_dns_redirect(a: &mut Asm, family: Family, variant: Variant, done: Label) {
    let not_dns = a.label();
    a.jmp32_imm(JmpOp::Ne, PORT, DNS_PORT_53_BE, not_dns).ldx(
        Size::W,
        FLAGS,
        POD,
        PodEntry::OFF_FLAGS as i16,
    );
    jmp_unless_flag(a, FLAGS, POD_DNS_CAPTURE, not_dns);
    store_orig(a, PORT, family, ORIG_DNS);
    if !variant.netns_keys {
        bind_to_pod_address(a, family, done);
    }
    remember_orig(a, done);
    write_loopback_dst(a, family, sock_addr::USER_IP4, sock_addr::USER_IP6);
    write_port_const(a, sock_addr::USER_PORT, CONST_DNS_PORT);
    count(a, Counter::DnsRedirects);
    a.ja(done).bind(not_dns);
}

/// `cgroup/sendmsg4` or `cgroup/sendmsg6`: DNS queries on unconnected UDP sockets.
pub fn sendmsg(family: Family) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let allow = a.label();
    a.mov64_reg(CTX, R1);
    dns_redirect(&mut a, family, allow);
    a.bind(allow).mov64_imm(R0, 1).exit();
    a.finish()
}

/// UDP to port 53 from an application whose pod captures DNS: remember the server, send the
/// query to the DNS proxy on loopback. Ends with a jump to `done` in every case.
fn dns_redirect(a: &mut Asm, family: Family, done: Label) {
    a.ldx(Size::W, PORT, CTX, sock_addr::USER_PORT).jmp32_imm(
        JmpOp::Ne,
        PORT,
        DNS_PORT_53_BE,
        done,
    );
    caller_pod(a, done);
    a.ldx(Size::W, FLAGS, POD, PodEntry::OFF_FLAGS as i16);
    jmp_unless_flag(a, FLAGS, POD_DNS_CAPTURE, done);
    jmp_if_proxy(a, POD, done);
    store_user_dst(a, family);
    store_orig(a, PORT, family, ORIG_DNS);
    remember_orig(a, done);
    write_loopback_dst(a, family, sock_addr::USER_IP4, sock_addr::USER_IP6);
    write_port_const(a, sock_addr::USER_PORT, CONST_DNS_PORT);
    count(a, Counter::DnsRedirects);
    a.ja(done);
}

/// Jumps to `bypass` unless the outbound policy of the pod in POD redirects the destination at
/// `DST_ADDR`, port PORT. The order is the meshes' (Istio's `istio-iptables`): an excluded port
/// never goes; an included port always goes, whatever the address; then excluded prefixes
/// stay out and the included prefixes decide. Clobbers r0–r5, FLAGS.
fn outbound_policy(a: &mut Asm, bypass: Label) {
    let redirect = a.label();
    a.ldx(Size::W, FLAGS, POD, PodEntry::OFF_FLAGS as i16);

    let skip = a.label();
    jmp_unless_flag(a, FLAGS, POD_OUT_PORTS_EXCLUDE, skip);
    lookup_port_rule(a, POD, RULE_EXCLUDE, PORT);
    a.jmp_imm(JmpOp::Ne, R0, 0, bypass).bind(skip);

    let skip = a.label();
    jmp_unless_flag(a, FLAGS, POD_OUT_PORTS_INCLUDE, skip);
    lookup_port_rule(a, POD, RULE_INCLUDE, PORT);
    a.jmp_imm(JmpOp::Ne, R0, 0, redirect).bind(skip);

    let skip = a.label();
    jmp_unless_flag(a, FLAGS, POD_OUT_CIDRS_EXCLUDE, skip);
    lookup_cidr_rule(a, POD, RULE_EXCLUDE);
    a.jmp_imm(JmpOp::Ne, R0, 0, bypass).bind(skip);

    a.jmp_imm(JmpOp::Set, FLAGS, POD_OUT_CIDRS_ALL as i32, redirect);
    lookup_cidr_rule(a, POD, RULE_INCLUDE);
    a.jmp_imm(JmpOp::Eq, R0, 0, bypass);
    a.bind(redirect);
}

/// Jumps to `bypass` unless the inbound policy of the destination pod in POD redirects port PORT.
/// Clobbers r0–r5, FLAGS.
pub(crate) fn inbound_policy(a: &mut Asm, bypass: Label) {
    a.ldx(Size::W, FLAGS, POD, PodEntry::OFF_FLAGS as i16);

    let skip = a.label();
    jmp_unless_flag(a, FLAGS, POD_IN_PORTS_EXCLUDE, skip);
    lookup_port_rule(a, POD, RULE_INBOUND | RULE_EXCLUDE, PORT);
    a.jmp_imm(JmpOp::Ne, R0, 0, bypass).bind(skip);

    let skip = a.label();
    a.jmp_imm(JmpOp::Set, FLAGS, POD_IN_PORTS_ALL as i32, skip);
    lookup_port_rule(a, POD, RULE_INBOUND | RULE_INCLUDE, PORT);
    a.jmp_imm(JmpOp::Eq, R0, 0, bypass).bind(skip);
}
