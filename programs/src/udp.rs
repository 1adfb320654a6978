//! `cgroup/recvmsg4` and `cgroup/recvmsg6`: a DNS reply from the DNS proxy shows the
//! application the server it asked, not the proxy. And `cgroup/bind4` for Linkerd.

use crate::ctx::sock_addr;
use crate::emit::*;
use crate::frame::Frame;
use mb_asm::{AluOp, Asm, AsmError, Helper, JmpOp, Program, Reg, Size};
use mb_maps::layout::{Counter, OrigDst, ORIG_DNS};

/// The socket's `cookie_orig` entry ([`OrigDst`]).
const ORIG_ENTRY: Reg = Reg::R7;

/// The stack of `recvmsg4`/`recvmsg6`.
pub const RECVMSG_FRAME: Frame = Frame {
    slots: &[slot::COOKIE, slot::COUNTER_IDX, slot::DST_ADDR],
    unions: &[],
};

/// The stack of `bind4`: none.
pub const BIND_FRAME: Frame = Frame {
    slots: &[],
    unions: &[],
};

/// `recvmsg4`/`recvmsg6`: a reply from the DNS proxy shows the address the caller asked.
pub fn recvmsg(family: Family) -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let out = a.label();
    a.mov64_reg(CTX, R1);
    a.ldx(Size::W, R1, CTX, sock_addr::USER_PORT)
        .mov32_const(R2, CONST_DNS_PORT)
        .to_be(R2, 16)
        .jmp32_reg(JmpOp::Ne, R1, R2, out);
    store_user_dst(&mut a, family);
    let from_loopback = a.label();
    jmp_if_loopback(&mut a, DST_ADDR, from_loopback);
    a.ja(out).bind(from_loopback);

    cookie_orig_key(&mut a);
    a.call(Helper::MapLookupElem)
        .jmp_imm(JmpOp::Eq, R0, 0, out)
        .mov64_reg(ORIG_ENTRY, R0)
        .ldx(Size::W, R1, ORIG_ENTRY, OrigDst::OFF_FLAGS as i16)
        .alu64_imm(AluOp::And, R1, ORIG_DNS as i32)
        .jmp_imm(JmpOp::Eq, R1, 0, out);
    match family {
        Family::V4 => {
            a.ldx(Size::W, R1, ORIG_ENTRY, OrigDst::OFF_IP as i16 + 12)
                .stx(Size::W, CTX, sock_addr::USER_IP4, R1);
        }
        Family::V6 => copy_words(
            &mut a,
            CTX,
            sock_addr::USER_IP6,
            ORIG_ENTRY,
            OrigDst::OFF_IP as i16,
            4,
            R1,
        ),
    }
    a.ldx(Size::H, R1, ORIG_ENTRY, OrigDst::OFF_PORT as i16)
        .stx(Size::W, CTX, sock_addr::USER_PORT, R1);
    count(&mut a, Counter::DnsRestores);
    a.bind(out).mov64_imm(R0, 1).exit();
    a.finish()
}

/// Linkerd's proxy binds its outbound listener to `127.0.0.1:<outbound port>`; bind it to
/// `0.0.0.0` so that connections redirected from any local address reach it.
pub fn bind4() -> Result<Program, AsmError> {
    let mut a = Asm::new();
    let out = a.label();
    a.mov64_reg(CTX, R1);
    a.call(Helper::GetCurrentUidGid)
        .jmp32_const(JmpOp::Ne, R0, CONST_PROXY_UID, out)
        .ldx(Size::W, R1, CTX, sock_addr::USER_IP4)
        .jmp32_imm(JmpOp::Ne, R1, LOOPBACK_V4_LE, out)
        .ldx(Size::W, R1, CTX, sock_addr::USER_PORT)
        .mov32_const(R2, CONST_OUTBOUND_PORT)
        .to_be(R2, 16)
        .jmp32_reg(JmpOp::Ne, R1, R2, out)
        .mov32_imm(R1, 0)
        .stx(Size::W, CTX, sock_addr::USER_IP4, R1);
    a.bind(out).mov64_imm(R0, 1).exit();
    a.finish()
}
