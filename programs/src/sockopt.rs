//! `cgroup/getsockopt`: answers the sidecar's `getsockopt(SOL_IP, SO_ORIGINAL_DST)` and
//! `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` from `pair_orig`, with no conntrack. Every
//! other call leaves at the first compare, untouched (no clamping of unrelated `optlen`s).
//!
//! A socket that sk_lookup steered to a sidecar has no entry (nothing was rewritten): its own
//! local address *is* the original destination. It is answered from there when that address
//! belongs to a meshed pod of this node and its port is not the sidecar's own inbound or
//! outbound port — never left to a conntrack lookup that would fail.

use crate::ctx::{abi, sock, sockopt};
use crate::emit::*;
use crate::frame::Frame;
use mb_asm::{AluOp, Asm, AsmError, Helper, JmpOp, Label, Program, Reg, Size};
use mb_maps::layout::{Counter, OrigDst, SockPairKey, ORIG_INBOUND};

/// The caller's socket (`struct bpf_sock *`, from the context).
const SK: Reg = Reg::R7;
/// The option level asked for: `SOL_IP` or `SOL_IPV6`.
const LEVEL: Reg = Reg::R8;
/// A pointer to the [`OrigDst`] that answers (a map value or the `ORIG` slot).
const ORIG_PTR: Reg = Reg::R9;

/// The stack of `getsockopt`.
pub const FRAME: Frame = Frame {
    slots: &[slot::PAIR_KEY, slot::ORIG, slot::COUNTER_IDX],
    unions: &[],
};

pub fn getsockopt(variant: Variant) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let out = a.label();
    let level_ok = a.label();
    let answer_v6 = a.label();
    let answered = a.label();
    let key = PAIR_KEY;
    let local_ip = key + SockPairKey::OFF_LOCAL_IP as i16;
    let remote_ip = key + SockPairKey::OFF_REMOTE_IP as i16;

    a.mov64_reg(CTX, R1);
    a.ldx(Size::W, R1, CTX, sockopt::OPTNAME)
        .jmp_imm(JmpOp::Ne, R1, abi::SO_ORIGINAL_DST, out)
        .ldx(Size::W, LEVEL, CTX, sockopt::LEVEL)
        .jmp_imm(JmpOp::Eq, LEVEL, abi::SOL_IP, level_ok)
        .jmp_imm(JmpOp::Ne, LEVEL, abi::SOL_IPV6, out)
        .bind(level_ok)
        .ldx(Size::DW, SK, CTX, sockopt::SK)
        .jmp_imm(JmpOp::Eq, SK, 0, out);

    // The key of the connection as its active (application) side stored it: the accepted
    // socket's remote end is that side's local end.
    store_addresses(
        &mut a,
        SK,
        (R1, sock::FAMILY),
        out,
        [(local_ip, sock::DST_IP), (remote_ip, sock::SRC_IP)],
    );
    // dst_port: network order in the low 16 bits (older kernels: of a 32-bit field).
    a.ldx(Size::W, R1, SK, sock::DST_PORT)
        .alu64_imm(AluOp::And, R1, 0xffff)
        .stx(Size::H, FP, key + SockPairKey::OFF_LOCAL_PORT as i16, R1)
        .ldx(Size::W, R1, SK, sock::SRC_PORT)
        .to_be(R1, 16)
        .stx(Size::H, FP, key + SockPairKey::OFF_REMOTE_PORT as i16, R1)
        .st_imm(
            Size::W,
            FP,
            key + SockPairKey::OFF_REMOTE_PORT as i16 + 2,
            0,
        );
    scope_pair_key(&mut a, key, variant);

    let steered = a.label();
    let found = a.label();
    a.ld_map_fd(R1, MAP_PAIR_ORIG);
    stack_ptr(&mut a, R2, key);
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, steered)
        .mov64_reg(ORIG_PTR, R0)
        .ja(found);

    // No entry: steered by sk_lookup? Then the socket's own address (the key's remote end)
    // answers, as an OrigDst built at ORIG.
    let missed = a.label();
    a.bind(steered)
        .ldx(Size::W, R1, SK, sock::SRC_PORT)
        .jmp32_const(JmpOp::Eq, R1, CONST_INBOUND_PORT, missed)
        .jmp32_const(JmpOp::Eq, R1, CONST_OUTBOUND_PORT, missed);
    a.ld_map_fd(R1, MAP_POD_IPS);
    stack_ptr(&mut a, R2, remote_ip);
    a.call(Helper::MapLookupElem).jmp_imm(JmpOp::Eq, R0, 0, out);
    copy_words(&mut a, FP, ORIG, FP, remote_ip, 4, R1);
    let mapped = a.label();
    let family_done = a.label();
    a.ldx(Size::H, R1, FP, key + SockPairKey::OFF_REMOTE_PORT as i16)
        .stx(Size::H, FP, ORIG + OrigDst::OFF_PORT as i16, R1)
        .st_imm(
            Size::W,
            FP,
            ORIG + OrigDst::OFF_FLAGS as i16,
            ORIG_INBOUND as i32,
        );
    jmp_if_v4_mapped(&mut a, remote_ip, mapped);
    a.st_imm(
        Size::H,
        FP,
        ORIG + OrigDst::OFF_FAMILY as i16,
        abi::AF_INET6,
    )
    .ja(family_done)
    .bind(mapped)
    .st_imm(Size::H, FP, ORIG + OrigDst::OFF_FAMILY as i16, abi::AF_INET)
    .bind(family_done);
    stack_ptr(&mut a, ORIG_PTR, ORIG);

    a.bind(found)
        .ldx(Size::DW, R2, CTX, sockopt::OPTVAL)
        .ldx(Size::DW, R3, CTX, sockopt::OPTVAL_END)
        .jmp_imm(JmpOp::Eq, LEVEL, abi::SOL_IPV6, answer_v6);

    // struct sockaddr_in: family, port, address, 8 bytes of zero. Only for IPv4 originals.
    a.ldx(Size::H, R1, ORIG_PTR, OrigDst::OFF_FAMILY as i16)
        .jmp_imm(JmpOp::Ne, R1, abi::AF_INET, out);
    write_sockaddr_head(&mut a, abi::SOCKADDR_IN_SIZE, abi::AF_INET, out);
    a.ldx(Size::W, R1, ORIG_PTR, OrigDst::OFF_IP as i16 + 12)
        .stx(Size::W, R2, 4, R1)
        .mov64_imm(R1, 0)
        .stx(Size::DW, R2, 8, R1)
        .mov64_imm(R1, abi::SOCKADDR_IN_SIZE)
        .stx(Size::W, CTX, sockopt::OPTLEN, R1)
        .ja(answered);

    // struct sockaddr_in6: family, port, flowinfo, address (v4-mapped for IPv4), scope id.
    a.bind(answer_v6);
    write_sockaddr_head(&mut a, abi::SOCKADDR_IN6_SIZE, abi::AF_INET6, out);
    a.mov64_imm(R1, 0)
        .stx(Size::W, R2, 4, R1)
        .stx(Size::W, R2, 24, R1);
    copy_words(&mut a, R2, 8, ORIG_PTR, OrigDst::OFF_IP as i16, 4, R1);
    a.mov64_imm(R1, abi::SOCKADDR_IN6_SIZE)
        .stx(Size::W, CTX, sockopt::OPTLEN, R1);

    a.bind(answered)
        .mov64_imm(R1, 0)
        .stx(Size::W, CTX, sockopt::RETVAL, R1);
    count(&mut a, Counter::OrigDstAnswers);
    a.ja(out);
    // Accepted by the sidecar's own port, so redirected, yet no entry: evicted (LRU). The
    // kernel's answer (ENOENT) stands; counted.
    a.bind(missed);
    count(&mut a, Counter::OrigDstMisses);
    a.bind(out).mov64_imm(R0, 1).exit();
    a.finish()
}

/// The start of the answer: jumps to `out` unless `size` bytes fit between r2 (`optval`) and
/// r3 (`optval_end`), then writes the family and the original port. Clobbers r1.
fn write_sockaddr_head(a: &mut Asm, size: i32, family: i32, out: Label) {
    a.mov64_reg(R1, R2)
        .alu64_imm(AluOp::Add, R1, size)
        .jmp_reg(JmpOp::Gt, R1, R3, out)
        .mov64_imm(R1, family)
        .stx(Size::H, R2, 0, R1)
        .ldx(Size::H, R1, ORIG_PTR, OrigDst::OFF_PORT as i16)
        .stx(Size::H, R2, 2, R1);
}
