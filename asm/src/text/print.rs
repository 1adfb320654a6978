//! Printers: LLVM/objdump syntax and the kernel's verifier/bpftool syntax.
//!
//! LLVM style is what `llvm-objdump --no-print-imm-hex -d` prints (LLVM's own MC tests use
//! this mode, which is why it is our canonical form): immediates and offsets in signed
//! decimal, jump offsets with an explicit sign (`goto +3`), 64-bit loads as `r1 = 42 ll`.
//! Registers of loads and stores print as `r` (objdump without `--mattr=+alu32`); 32-bit
//! ALU, JMP32 and 32-bit atomic fetch forms print as `w`.
//!
//! Extensions where LLVM's text cannot say what the bytes say (documented in `text`):
//! `call pc+N` for a BPF-to-BPF call, `call kfunc(ID)` for a kfunc call, and
//! `r1 = map_fd(N) ll`-style pseudo loads without a symbol.

use crate::op::{AtomicOp, CallTarget, Endian, Op, Size, Source};
use crate::opcode::*;
use crate::program::{Program, RelocKind};
use crate::Helper;
use std::fmt::Write;

/// How an immediate is printed when a relocation names it.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Symbol<'a> {
    None,
    Reloc(&'a RelocKind),
}

fn size_name(size: Size) -> &'static str {
    match size {
        Size::B => "u8",
        Size::H => "u16",
        Size::W => "u32",
        Size::DW => "u64",
    }
}

fn ssize_name(size: Size) -> &'static str {
    match size {
        Size::B => "s8",
        Size::H => "s16",
        Size::W => "s32",
        Size::DW => "s64",
    }
}

/// The name used in the text form of a pseudo 64-bit load.
pub(crate) fn pseudo_name(pseudo: u8) -> Option<&'static str> {
    Some(match pseudo {
        BPF_PSEUDO_MAP_FD => "map_fd",
        BPF_PSEUDO_MAP_VALUE => "map_value",
        BPF_PSEUDO_BTF_ID => "btf_id",
        BPF_PSEUDO_FUNC => "func",
        BPF_PSEUDO_MAP_IDX => "map_idx",
        BPF_PSEUDO_MAP_IDX_VALUE => "map_idx_value",
        _ => return None,
    })
}

/// A number as objdump prints it: decimal, or with `hex` like LLVM's `formatHex` (`0x2a`,
/// `-0x1e`).
fn num(v: i64, hex: bool) -> String {
    match (hex, v < 0) {
        (false, _) => v.to_string(),
        (true, false) => format!("{v:#x}"),
        (true, true) => format!("-{:#x}", v.unsigned_abs()),
    }
}

fn signed_offset(off: i64, hex: bool) -> String {
    if off >= 0 {
        format!("+{}", num(off, hex))
    } else {
        num(off, hex)
    }
}

fn llvm_mem(base: crate::Reg, off: i16, hex: bool) -> String {
    if off >= 0 {
        format!("r{} + {}", base.index(), num(off.into(), hex))
    } else {
        format!("r{} - {}", base.index(), num(-i64::from(off), hex))
    }
}

/// One instruction in LLVM syntax. `target` replaces the numeric jump offset with a label
/// name when given; `symbol` names a relocated immediate.
pub(crate) fn llvm_op(op: &Op, symbol: Symbol<'_>, target: Option<&str>, hex: bool) -> String {
    let n = |v: i64| num(v, hex);
    let rw = |wide: bool| if wide { 'r' } else { 'w' };
    let jump = |off: i64| match target {
        Some(name) => name.to_string(),
        None => signed_offset(off, hex),
    };
    let imm_or_symbol = |imm: i32| match symbol {
        Symbol::Reloc(kind) => kind.name().to_string(),
        Symbol::None => n(imm.into()),
    };
    match *op {
        Op::Alu {
            alu64,
            op,
            dst,
            src,
        } => {
            let c = rw(alu64);
            let rhs = match src {
                Source::Reg(s) => format!("{c}{}", s.index()),
                Source::Imm(imm) => imm_or_symbol(imm),
            };
            format!("{c}{} {} {rhs}", dst.index(), op.symbol())
        }
        Op::Neg { alu64, dst } => {
            let c = rw(alu64);
            format!("{c}{d} = -{c}{d}", d = dst.index())
        }
        Op::MovSx {
            alu64,
            dst,
            src,
            bits,
        } => {
            let c = rw(alu64);
            format!("{c}{} = (s{bits}){c}{}", dst.index(), src.index())
        }
        Op::Endian { kind, dst, bits } => {
            let name = match kind {
                Endian::ToLe => "le",
                Endian::ToBe => "be",
                Endian::Swap => "bswap",
            };
            format!("r{d} = {name}{bits} r{d}", d = dst.index())
        }
        Op::LdImm64 { dst, pseudo, imm } => {
            let lo = imm as u32 as i32;
            let hi = (imm >> 32) as u32 as i32;
            let value = match (symbol, pseudo) {
                (Symbol::Reloc(RelocKind::MapFd(name)), _) => name.clone(),
                (Symbol::Reloc(RelocKind::MapValue(name)), _) => {
                    format!("map_value({name}, {})", n((hi as u32).into()))
                }
                (Symbol::Reloc(RelocKind::Const(name)), _) => format!("const({name})"),
                (Symbol::None, 0) => n(imm as i64),
                (Symbol::None, BPF_PSEUDO_FUNC) if hi == 0 && target.is_some() => {
                    format!("func({})", jump(0))
                }
                (Symbol::None, p) => {
                    let kind = pseudo_name(p).unwrap_or("pseudo");
                    if hi == 0 {
                        format!("{kind}({})", n(lo.into()))
                    } else {
                        format!("{kind}({}, {})", n(lo.into()), n(hi.into()))
                    }
                }
            };
            format!("r{} = {value} ll", dst.index())
        }
        Op::LdAbs { size, imm } => {
            format!("r0 = *({} *)skb[{}]", size_name(size), n(imm.into()))
        }
        Op::LdInd { size, src, imm } => {
            let (ty, r) = (size_name(size), src.index());
            match imm {
                0 => format!("r0 = *({ty} *)skb[r{r}]"),
                1..=i32::MAX => format!("r0 = *({ty} *)skb[r{r} + {}]", n(imm.into())),
                _ => format!("r0 = *({ty} *)skb[r{r} - {}]", n(-i64::from(imm))),
            }
        }
        Op::Ldx {
            size,
            signed,
            dst,
            src,
            off,
        } => {
            let ty = if signed {
                ssize_name(size)
            } else {
                size_name(size)
            };
            format!("r{} = *({ty} *)({})", dst.index(), llvm_mem(src, off, hex))
        }
        Op::St {
            size,
            dst,
            off,
            imm,
        } => format!(
            "*({} *)({}) = {}",
            size_name(size),
            llvm_mem(dst, off, hex),
            imm_or_symbol(imm)
        ),
        Op::Stx {
            size,
            dst,
            off,
            src,
        } => format!(
            "*({} *)({}) = r{}",
            size_name(size),
            llvm_mem(dst, off, hex),
            src.index()
        ),
        Op::Atomic {
            size,
            op,
            dst,
            src,
            off,
        } => {
            let wide = size == Size::DW;
            let c = rw(wide);
            let (s, mem) = (src.index(), llvm_mem(dst, off, hex));
            let ty = if wide { "u64" } else { "u32" };
            match op {
                AtomicOp::Add | AtomicOp::Or | AtomicOp::And | AtomicOp::Xor => {
                    format!("lock *({ty} *)({mem}) {}= r{s}", op.arith_symbol())
                }
                AtomicOp::Xchg if wide => format!("r{s} = xchg_64({mem}, r{s})"),
                AtomicOp::Xchg => format!("w{s} = xchg32_32({mem}, w{s})"),
                AtomicOp::Cmpxchg if wide => format!("r0 = cmpxchg_64({mem}, r0, r{s})"),
                AtomicOp::Cmpxchg => format!("w0 = cmpxchg32_32({mem}, w0, w{s})"),
                _ => format!(
                    "{c}{s} = atomic_fetch_{}(({ty} *)({mem}), {c}{s})",
                    op.arith_name()
                ),
            }
        }
        Op::LoadAcquire {
            size,
            dst,
            src,
            off,
        } => format!(
            "{}{} = load_acquire(({} *)({}))",
            rw(size == Size::DW),
            dst.index(),
            size_name(size),
            llvm_mem(src, off, hex)
        ),
        Op::StoreRelease {
            size,
            dst,
            off,
            src,
        } => format!(
            "store_release(({} *)({}), {}{})",
            size_name(size),
            llvm_mem(dst, off, hex),
            rw(size == Size::DW),
            src.index()
        ),
        Op::AddrSpaceCast {
            dst,
            src,
            dst_as,
            src_as,
        } => format!(
            "r{} = addr_space_cast(r{}, {}, {})",
            dst.index(),
            src.index(),
            n(dst_as.into()),
            n(src_as.into())
        ),
        Op::Jmp {
            jmp32,
            op,
            dst,
            src,
            off,
        } => {
            let c = rw(!jmp32);
            let rhs = match src {
                Source::Reg(s) => format!("{c}{}", s.index()),
                Source::Imm(imm) => imm_or_symbol(imm),
            };
            format!(
                "if {c}{} {} {rhs} goto {}",
                dst.index(),
                op.symbol(),
                jump(i64::from(off))
            )
        }
        Op::Ja { off } => format!("goto {}", jump(i64::from(off))),
        Op::Gotol { imm } => format!("gotol {}", jump(i64::from(imm))),
        Op::MayGoto { off } => format!("may_goto {}", jump(i64::from(off))),
        Op::Call(CallTarget::Helper(id)) => format!("call {}", n(id.into())),
        Op::Call(CallTarget::Local(imm)) => match target {
            Some(name) => format!("call {name}"),
            None => format!("call pc{}", signed_offset(i64::from(imm), hex)),
        },
        Op::Call(CallTarget::Kfunc { btf_id, off }) => {
            if off == 0 {
                format!("call kfunc({})", n(btf_id.into()))
            } else {
                format!("call kfunc({}, {})", n(btf_id.into()), n(off.into()))
            }
        }
        Op::Callx { reg } => format!("callx r{}", reg.index()),
        Op::Exit => "exit".into(),
    }
}

/// One instruction the way the kernel's `print_bpf_insn()` prints it (without the `N: ` index).
pub fn kernel_op(op: &Op) -> String {
    let (first, _) = op.encode();
    let code = first.code;
    let rw = |wide: bool| if wide { 'r' } else { 'w' };
    let mem = |base: crate::Reg, off: i16| format!("r{} {:+}", base.index(), off);
    let body = match *op {
        Op::Alu {
            alu64,
            op,
            dst,
            src,
        } => {
            let c = rw(alu64);
            match src {
                Source::Reg(s) => format!("{c}{} {} {c}{}", dst.index(), op.symbol(), s.index()),
                Source::Imm(imm) => format!("{c}{} {} {imm}", dst.index(), op.symbol()),
            }
        }
        Op::Neg { alu64, dst } => {
            let c = rw(alu64);
            format!("{c}{d} = -{c}{d}", d = dst.index())
        }
        Op::MovSx {
            alu64,
            dst,
            src,
            bits,
        } => {
            let c = rw(alu64);
            format!("{c}{} = (s{bits}){c}{}", dst.index(), src.index())
        }
        Op::Endian { kind, dst, bits } => {
            let name = match kind {
                Endian::ToLe => "le",
                Endian::ToBe => "be",
                Endian::Swap => "bswap",
            };
            format!("r{d} = {name}{bits} r{d}", d = dst.index())
        }
        Op::LdImm64 { dst, imm, .. } => format!("r{} = {imm:#x}", dst.index()),
        Op::LdAbs { size, imm } => format!("r0 = *({} *)skb[{imm}]", size_name(size)),
        Op::LdInd { size, src, imm } => {
            format!("r0 = *({} *)skb[r{} + {imm}]", size_name(size), src.index())
        }
        Op::Ldx {
            size,
            signed,
            dst,
            src,
            off,
        } => {
            let ty = if signed {
                ssize_name(size)
            } else {
                size_name(size)
            };
            format!("r{} = *({ty} *)({})", dst.index(), mem(src, off))
        }
        Op::St {
            size,
            dst,
            off,
            imm,
        } => format!("*({} *)({}) = {imm}", size_name(size), mem(dst, off)),
        Op::Stx {
            size,
            dst,
            off,
            src,
        } => format!(
            "*({} *)({}) = r{}",
            size_name(size),
            mem(dst, off),
            src.index()
        ),
        Op::Atomic {
            size,
            op,
            dst,
            src,
            off,
        } => {
            let suffix = if size == Size::DW { "64" } else { "" };
            let (ty, m, s) = (size_name(size), mem(dst, off), src.index());
            match op {
                AtomicOp::Add | AtomicOp::Or | AtomicOp::And | AtomicOp::Xor => {
                    format!("lock *({ty} *)({m}) {}= r{s}", op.arith_symbol())
                }
                AtomicOp::Xchg => format!("r{s} = atomic{suffix}_xchg(({ty} *)({m}), r{s})"),
                AtomicOp::Cmpxchg => {
                    format!("r0 = atomic{suffix}_cmpxchg(({ty} *)({m}), r0, r{s})")
                }
                _ => format!(
                    "r{s} = atomic{suffix}_fetch_{}(({ty} *)({m}), r{s})",
                    op.arith_name()
                ),
            }
        }
        Op::LoadAcquire {
            size,
            dst,
            src,
            off,
        } => format!(
            "r{} = load_acquire(({} *)({}))",
            dst.index(),
            size_name(size),
            mem(src, off)
        ),
        Op::StoreRelease {
            size,
            dst,
            off,
            src,
        } => format!(
            "store_release(({} *)({}), r{})",
            size_name(size),
            mem(dst, off),
            src.index()
        ),
        Op::AddrSpaceCast {
            dst,
            src,
            dst_as,
            src_as,
        } => format!(
            "r{} = addr_space_cast(r{}, {dst_as}, {src_as})",
            dst.index(),
            src.index()
        ),
        Op::Jmp {
            jmp32,
            op,
            dst,
            src,
            off,
        } => {
            let c = rw(!jmp32);
            match src {
                Source::Reg(s) => format!(
                    "if {c}{} {} {c}{} goto pc{off:+}",
                    dst.index(),
                    op.symbol(),
                    s.index()
                ),
                Source::Imm(imm) => format!(
                    "if {c}{} {} {:#x} goto pc{off:+}",
                    dst.index(),
                    op.symbol(),
                    imm as u32
                ),
            }
        }
        Op::Ja { off } => format!("goto pc{off:+}"),
        Op::Gotol { imm } => format!("gotol pc{imm:+}"),
        Op::MayGoto { off } => format!("may_goto pc{off:+}"),
        Op::Call(CallTarget::Helper(id)) => {
            match u32::try_from(id).ok().and_then(Helper::from_id) {
                Some(h) => format!("call bpf_{}#{id}", h.name()),
                None => format!("call unknown#{id}"),
            }
        }
        Op::Call(CallTarget::Local(imm)) => format!("call pc{imm:+}"),
        Op::Call(CallTarget::Kfunc { btf_id, .. }) => format!("call kernel-function#{btf_id}"),
        Op::Callx { reg } => format!("callx r{}", reg.index()),
        Op::Exit => "exit".into(),
    };
    format!("({code:02x}) {body}")
}

/// Print `program` in LLVM syntax, one instruction per line, numeric jump offsets. The output
/// assembles back (with [`parse`](super::parse)) to the same slots and relocations.
pub fn fmt_llvm(program: &Program) -> Result<String, crate::DecodeError> {
    fmt_llvm_with(program, false, false)
}

/// Like [`fmt_llvm`] with hex immediates and offsets (`r1 += 0x2a`, `goto +0x3`), what
/// `llvm-objdump -d` prints by default since LLVM 16. Parses back the same.
pub fn fmt_llvm_hex(program: &Program) -> Result<String, crate::DecodeError> {
    fmt_llvm_with(program, false, true)
}

/// Like [`fmt_llvm`], but jump targets become labels `L<slot>:` (easier to read and edit).
pub fn fmt_llvm_labeled(program: &Program) -> Result<String, crate::DecodeError> {
    fmt_llvm_with(program, true, false)
}

fn fmt_llvm_with(program: &Program, labels: bool, hex: bool) -> Result<String, crate::DecodeError> {
    let decoded = Op::decode_all(&program.insns)?;
    let mut targets = std::collections::BTreeSet::new();
    if labels {
        // Only instruction starts get labels; a jump into the middle of a 64-bit load keeps
        // its numeric offset.
        let starts: std::collections::HashSet<usize> = decoded.iter().map(|(at, _)| *at).collect();
        for (at, op) in &decoded {
            if let Some(off) = op.branch_offset() {
                let t = *at as i64 + 1 + off;
                if t >= 0 && starts.contains(&(t as usize)) {
                    targets.insert(t as usize);
                }
            }
        }
    }
    let relocations: std::collections::HashMap<usize, &RelocKind> = program
        .relocations
        .iter()
        .rev()
        .map(|r| (r.slot, &r.kind))
        .collect();
    let mut out = String::with_capacity(program.insns.len() * 24);
    for (at, op) in &decoded {
        if targets.contains(at) {
            let _ = writeln!(out, "L{at}:");
        }
        let symbol = match relocations.get(at) {
            Some(kind) => Symbol::Reloc(kind),
            None => Symbol::None,
        };
        let name = op.branch_offset().and_then(|off| {
            let t = *at as i64 + 1 + off;
            (labels && t >= 0 && targets.contains(&(t as usize))).then(|| format!("L{t}"))
        });
        let _ = writeln!(out, "{}", llvm_op(op, symbol, name.as_deref(), hex));
    }
    Ok(out)
}

/// Print `program` like the kernel verifier log: `N: (code) text` per instruction.
pub fn fmt_kernel(program: &Program) -> Result<String, crate::DecodeError> {
    let mut out = String::new();
    for (at, op) in Op::decode_all(&program.insns)? {
        let _ = writeln!(out, "{at}: {}", kernel_op(&op));
    }
    Ok(out)
}

/// One instruction in LLVM syntax (numeric offsets, no symbols).
pub fn llvm_text(op: &Op) -> String {
    llvm_op(op, Symbol::None, None, false)
}
