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

/// What tells the two text syntaxes apart. LLVM/objdump names relocated immediates
/// (`symbol`) and jump targets (`target`) and prints numbers in decimal or hex; the kernel's
/// `print_bpf_insn()` has none of that (decimal, `pc+N` jumps).
#[derive(Copy, Clone)]
struct Syntax<'a> {
    kernel: bool,
    symbol: Symbol<'a>,
    target: Option<&'a str>,
    hex: bool,
}

impl Syntax<'_> {
    const KERNEL: Syntax<'static> = Syntax {
        kernel: true,
        symbol: Symbol::None,
        target: None,
        hex: false,
    };

    fn num(&self, v: i64) -> String {
        num(v, self.hex)
    }

    /// `+N`/`-N` as a signed offset.
    fn offset(&self, off: i64) -> String {
        signed_offset(off, self.hex)
    }

    /// An ALU or store immediate, or the symbol a relocation gives it.
    fn imm(&self, imm: i32) -> String {
        match self.symbol {
            Symbol::Reloc(kind) => kind.name().to_string(),
            Symbol::None => self.num(imm.into()),
        }
    }

    /// A jump's destination: a label, `+N` (LLVM) or `pc+N` (kernel).
    fn jump(&self, off: i64) -> String {
        match (self.kernel, self.target) {
            (true, _) => format!("pc{}", self.offset(off)),
            (false, Some(name)) => name.to_string(),
            (false, None) => self.offset(off),
        }
    }

    /// A memory operand: `r1 + 8` / `r1 - 8` (LLVM), `r1 +8` (kernel).
    fn mem(&self, base: crate::Reg, off: i16) -> String {
        match (self.kernel, off >= 0) {
            (true, _) => format!("r{} {off:+}", base.index()),
            (false, true) => format!("r{} + {}", base.index(), self.num(off.into())),
            (false, false) => format!("r{} - {}", base.index(), self.num(-i64::from(off))),
        }
    }

    /// The register letter of a sized access: `w` for 32 bits in LLVM, always `r` in the
    /// kernel's text.
    fn sized(&self, wide: bool) -> char {
        if wide || self.kernel {
            'r'
        } else {
            'w'
        }
    }
}

/// One instruction in LLVM syntax. `target` replaces the numeric jump offset with a label
/// name when given; `symbol` names a relocated immediate.
pub(crate) fn llvm_op(op: &Op, symbol: Symbol<'_>, target: Option<&str>, hex: bool) -> String {
    let syntax = Syntax {
        kernel: false,
        symbol,
        target,
        hex,
    };
    op_text(op, syntax)
}

/// One instruction the way the kernel's `print_bpf_insn()` prints it (without the `N: ` index).
pub fn kernel_op(op: &Op) -> String {
    let (first, _) = op.encode();
    format!("({:02x}) {}", first.code, op_text(op, Syntax::KERNEL))
}

/// One instruction in `syntax`: the forms both syntaxes share are written once, the rest
/// branch on `syntax.kernel`.
fn op_text(op: &Op, syntax: Syntax<'_>) -> String {
    let rw = |wide: bool| if wide { 'r' } else { 'w' };
    let (n, mem) = (|v: i64| syntax.num(v), |b, off| syntax.mem(b, off));
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
                Source::Imm(imm) => syntax.imm(imm),
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
        Op::LdImm64 { dst, imm, .. } if syntax.kernel => format!("r{} = {imm:#x}", dst.index()),
        Op::LdImm64 { dst, pseudo, imm } => {
            let lo = imm as u32 as i32;
            let hi = (imm >> 32) as u32 as i32;
            let value = match (syntax.symbol, pseudo) {
                (Symbol::Reloc(RelocKind::MapFd(name)), _) => name.clone(),
                (Symbol::Reloc(RelocKind::MapValue(name)), _) => {
                    format!("map_value({name}, {})", n((hi as u32).into()))
                }
                (Symbol::Reloc(RelocKind::Const(name)), _) => format!("const({name})"),
                (Symbol::None, 0) => n(imm as i64),
                (Symbol::None, BPF_PSEUDO_FUNC) if hi == 0 && syntax.target.is_some() => {
                    format!("func({})", syntax.jump(0))
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
                _ if syntax.kernel => format!("r0 = *({ty} *)skb[r{r} + {imm}]"),
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
            format!("r{} = *({ty} *)({})", dst.index(), mem(src, off))
        }
        Op::St {
            size,
            dst,
            off,
            imm,
        } => format!(
            "*({} *)({}) = {}",
            size_name(size),
            mem(dst, off),
            syntax.imm(imm)
        ),
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
            let wide = size == Size::DW;
            let (ty, m, s) = (size_name(size), mem(dst, off), src.index());
            match op {
                AtomicOp::Add | AtomicOp::Or | AtomicOp::And | AtomicOp::Xor => {
                    format!("lock *({ty} *)({m}) {}= r{s}", op.arith_symbol())
                }
                _ if syntax.kernel => {
                    let suffix = if wide { "64" } else { "" };
                    match op {
                        AtomicOp::Xchg => {
                            format!("r{s} = atomic{suffix}_xchg(({ty} *)({m}), r{s})")
                        }
                        AtomicOp::Cmpxchg => {
                            format!("r0 = atomic{suffix}_cmpxchg(({ty} *)({m}), r0, r{s})")
                        }
                        _ => format!(
                            "r{s} = atomic{suffix}_fetch_{}(({ty} *)({m}), r{s})",
                            op.arith_name()
                        ),
                    }
                }
                AtomicOp::Xchg if wide => format!("r{s} = xchg_64({m}, r{s})"),
                AtomicOp::Xchg => format!("w{s} = xchg32_32({m}, w{s})"),
                AtomicOp::Cmpxchg if wide => format!("r0 = cmpxchg_64({m}, r0, r{s})"),
                AtomicOp::Cmpxchg => format!("w0 = cmpxchg32_32({m}, w0, w{s})"),
                _ => {
                    let c = rw(wide);
                    format!(
                        "{c}{s} = atomic_fetch_{}(({ty} *)({m}), {c}{s})",
                        op.arith_name()
                    )
                }
            }
        }
        Op::LoadAcquire {
            size,
            dst,
            src,
            off,
        } => format!(
            "{}{} = load_acquire(({} *)({}))",
            syntax.sized(size == Size::DW),
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
            "store_release(({} *)({}), {}{})",
            size_name(size),
            mem(dst, off),
            syntax.sized(size == Size::DW),
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
                Source::Imm(imm) if syntax.kernel => format!("{:#x}", imm as u32),
                Source::Imm(imm) => syntax.imm(imm),
            };
            format!(
                "if {c}{} {} {rhs} goto {}",
                dst.index(),
                op.symbol(),
                syntax.jump(i64::from(off))
            )
        }
        Op::Ja { off } => format!("goto {}", syntax.jump(i64::from(off))),
        Op::Gotol { imm } => format!("gotol {}", syntax.jump(i64::from(imm))),
        Op::MayGoto { off } => format!("may_goto {}", syntax.jump(i64::from(off))),
        Op::Call(CallTarget::Helper(id)) if syntax.kernel => {
            match u32::try_from(id).ok().and_then(Helper::from_id) {
                Some(h) => format!("call bpf_{}#{id}", h.name()),
                None => format!("call unknown#{id}"),
            }
        }
        Op::Call(CallTarget::Helper(id)) => format!("call {}", n(id.into())),
        Op::Call(CallTarget::Local(imm)) => match syntax.target {
            Some(name) => format!("call {name}"),
            None => format!("call pc{}", syntax.offset(i64::from(imm))),
        },
        Op::Call(CallTarget::Kfunc { btf_id, .. }) if syntax.kernel => {
            format!("call kernel-function#{btf_id}")
        }
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
