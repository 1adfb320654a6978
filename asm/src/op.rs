//! Typed instructions: [`Op`] is one decoded instruction (one slot, or two for the 64-bit
//! immediate load), with an exact encoder ([`Op::encode`]) and a strict decoder ([`Op::decode`]).
//!
//! The decoder accepts only canonical encodings (unused fields zero), so that
//! `encode(decode(bytes)) == bytes` for every slot sequence it accepts.

use crate::opcode::*;
use crate::{Insn, Reg};
use std::fmt;

/// Access size of a load or store.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    /// 1 byte (`BPF_B`, `u8`).
    B,
    /// 2 bytes (`BPF_H`, `u16`).
    H,
    /// 4 bytes (`BPF_W`, `u32`).
    W,
    /// 8 bytes (`BPF_DW`, `u64`).
    DW,
}

impl Size {
    pub const ALL: [Size; 4] = [Size::B, Size::H, Size::W, Size::DW];

    /// The `BPF_SIZE` bits.
    pub const fn code(self) -> u8 {
        match self {
            Size::B => BPF_B,
            Size::H => BPF_H,
            Size::W => BPF_W,
            Size::DW => BPF_DW,
        }
    }

    pub const fn from_code(code: u8) -> Size {
        match code & 0x18 {
            BPF_B => Size::B,
            BPF_H => Size::H,
            BPF_W => Size::W,
            _ => Size::DW,
        }
    }

    /// Width in bits.
    pub const fn bits(self) -> u32 {
        match self {
            Size::B => 8,
            Size::H => 16,
            Size::W => 32,
            Size::DW => 64,
        }
    }
}

/// Two-operand ALU operation (`dst op= src`). `SDiv`/`SMod` are the ISA v4 signed forms
/// (`BPF_DIV`/`BPF_MOD` with `off = 1`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AluOp {
    Add,
    Sub,
    Mul,
    Div,
    SDiv,
    Or,
    And,
    Lsh,
    Rsh,
    Mod,
    SMod,
    Xor,
    Mov,
    Arsh,
}

impl AluOp {
    pub const ALL: [AluOp; 14] = [
        AluOp::Add,
        AluOp::Sub,
        AluOp::Mul,
        AluOp::Div,
        AluOp::SDiv,
        AluOp::Or,
        AluOp::And,
        AluOp::Lsh,
        AluOp::Rsh,
        AluOp::Mod,
        AluOp::SMod,
        AluOp::Xor,
        AluOp::Mov,
        AluOp::Arsh,
    ];

    /// The `BPF_OP` bits and the `off` field this operation is encoded with.
    pub const fn code_and_off(self) -> (u8, i16) {
        match self {
            AluOp::Add => (BPF_ADD, 0),
            AluOp::Sub => (BPF_SUB, 0),
            AluOp::Mul => (BPF_MUL, 0),
            AluOp::Div => (BPF_DIV, 0),
            AluOp::SDiv => (BPF_DIV, 1),
            AluOp::Or => (BPF_OR, 0),
            AluOp::And => (BPF_AND, 0),
            AluOp::Lsh => (BPF_LSH, 0),
            AluOp::Rsh => (BPF_RSH, 0),
            AluOp::Mod => (BPF_MOD, 0),
            AluOp::SMod => (BPF_MOD, 1),
            AluOp::Xor => (BPF_XOR, 0),
            AluOp::Mov => (BPF_MOV, 0),
            AluOp::Arsh => (BPF_ARSH, 0),
        }
    }

    /// The operator as both LLVM and the kernel print it (`+=`, `s>>=`, `s/=`, `=`).
    pub const fn symbol(self) -> &'static str {
        match self {
            AluOp::Add => "+=",
            AluOp::Sub => "-=",
            AluOp::Mul => "*=",
            AluOp::Div => "/=",
            AluOp::SDiv => "s/=",
            AluOp::Or => "|=",
            AluOp::And => "&=",
            AluOp::Lsh => "<<=",
            AluOp::Rsh => ">>=",
            AluOp::Mod => "%=",
            AluOp::SMod => "s%=",
            AluOp::Xor => "^=",
            AluOp::Mov => "=",
            AluOp::Arsh => "s>>=",
        }
    }
}

/// Conditional jump comparison.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum JmpOp {
    Eq,
    Gt,
    Ge,
    Set,
    Ne,
    Sgt,
    Sge,
    Lt,
    Le,
    Slt,
    Sle,
}

impl JmpOp {
    pub const ALL: [JmpOp; 11] = [
        JmpOp::Eq,
        JmpOp::Gt,
        JmpOp::Ge,
        JmpOp::Set,
        JmpOp::Ne,
        JmpOp::Sgt,
        JmpOp::Sge,
        JmpOp::Lt,
        JmpOp::Le,
        JmpOp::Slt,
        JmpOp::Sle,
    ];

    /// The `BPF_OP` bits.
    pub const fn code(self) -> u8 {
        match self {
            JmpOp::Eq => BPF_JEQ,
            JmpOp::Gt => BPF_JGT,
            JmpOp::Ge => BPF_JGE,
            JmpOp::Set => BPF_JSET,
            JmpOp::Ne => BPF_JNE,
            JmpOp::Sgt => BPF_JSGT,
            JmpOp::Sge => BPF_JSGE,
            JmpOp::Lt => BPF_JLT,
            JmpOp::Le => BPF_JLE,
            JmpOp::Slt => BPF_JSLT,
            JmpOp::Sle => BPF_JSLE,
        }
    }

    pub fn from_code(op: u8) -> Option<JmpOp> {
        JmpOp::ALL.into_iter().find(|j| j.code() == op)
    }

    /// The comparison as LLVM and the kernel print it (`==`, `s<=`, `&`).
    pub const fn symbol(self) -> &'static str {
        match self {
            JmpOp::Eq => "==",
            JmpOp::Gt => ">",
            JmpOp::Ge => ">=",
            JmpOp::Set => "&",
            JmpOp::Ne => "!=",
            JmpOp::Sgt => "s>",
            JmpOp::Sge => "s>=",
            JmpOp::Lt => "<",
            JmpOp::Le => "<=",
            JmpOp::Slt => "s<",
            JmpOp::Sle => "s<=",
        }
    }
}

/// Atomic memory operation (`BPF_STX | BPF_ATOMIC`, operation in `imm`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum AtomicOp {
    Add,
    Or,
    And,
    Xor,
    FetchAdd,
    FetchOr,
    FetchAnd,
    FetchXor,
    /// Exchange: `src = xchg(mem, src)`.
    Xchg,
    /// Compare and exchange: `r0 = cmpxchg(mem, r0, src)`.
    Cmpxchg,
}

impl AtomicOp {
    pub const ALL: [AtomicOp; 10] = [
        AtomicOp::Add,
        AtomicOp::Or,
        AtomicOp::And,
        AtomicOp::Xor,
        AtomicOp::FetchAdd,
        AtomicOp::FetchOr,
        AtomicOp::FetchAnd,
        AtomicOp::FetchXor,
        AtomicOp::Xchg,
        AtomicOp::Cmpxchg,
    ];

    /// The `imm` value.
    pub const fn imm(self) -> i32 {
        match self {
            AtomicOp::Add => BPF_ADD as i32,
            AtomicOp::Or => BPF_OR as i32,
            AtomicOp::And => BPF_AND as i32,
            AtomicOp::Xor => BPF_XOR as i32,
            AtomicOp::FetchAdd => BPF_ADD as i32 | BPF_FETCH,
            AtomicOp::FetchOr => BPF_OR as i32 | BPF_FETCH,
            AtomicOp::FetchAnd => BPF_AND as i32 | BPF_FETCH,
            AtomicOp::FetchXor => BPF_XOR as i32 | BPF_FETCH,
            AtomicOp::Xchg => BPF_XCHG,
            AtomicOp::Cmpxchg => BPF_CMPXCHG,
        }
    }

    pub fn from_imm(imm: i32) -> Option<AtomicOp> {
        AtomicOp::ALL.into_iter().find(|a| a.imm() == imm)
    }

    /// Whether the old memory value is written back into a register.
    pub const fn fetches(self) -> bool {
        self.imm() & BPF_FETCH != 0
    }

    /// `add`, `or`, `and`, `xor` for the arithmetic forms.
    pub const fn arith_name(self) -> &'static str {
        match self {
            AtomicOp::Add | AtomicOp::FetchAdd => "add",
            AtomicOp::Or | AtomicOp::FetchOr => "or",
            AtomicOp::And | AtomicOp::FetchAnd => "and",
            AtomicOp::Xor | AtomicOp::FetchXor => "xor",
            AtomicOp::Xchg => "xchg",
            AtomicOp::Cmpxchg => "cmpxchg",
        }
    }

    /// `+`, `|`, `&`, `^` for the `lock *(..) op= src` form.
    pub const fn arith_symbol(self) -> &'static str {
        match self {
            AtomicOp::Add | AtomicOp::FetchAdd => "+",
            AtomicOp::Or | AtomicOp::FetchOr => "|",
            AtomicOp::And | AtomicOp::FetchAnd => "&",
            AtomicOp::Xor | AtomicOp::FetchXor => "^",
            AtomicOp::Xchg | AtomicOp::Cmpxchg => "",
        }
    }
}

/// Byte-order conversion (`BPF_END`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endian {
    /// `le16/32/64`: to little endian (`BPF_ALU | BPF_END | BPF_TO_LE`).
    ToLe,
    /// `be16/32/64`: to big endian (`BPF_ALU | BPF_END | BPF_TO_BE`).
    ToBe,
    /// `bswap16/32/64`: unconditional swap (ISA v4, `BPF_ALU64 | BPF_END`).
    Swap,
}

/// Second operand of ALU and jump instructions: a register (`BPF_X`) or the immediate (`BPF_K`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Reg(Reg),
    Imm(i32),
}

/// What a `call` instruction calls.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallTarget {
    /// A kernel helper by id (`src = 0`).
    Helper(i32),
    /// A BPF-to-BPF call, `imm` = target − (this + 1) (`src = BPF_PSEUDO_CALL`).
    Local(i32),
    /// A kernel function by BTF id; `off` selects the BTF object (`src = BPF_PSEUDO_KFUNC_CALL`).
    Kfunc { btf_id: i32, off: i16 },
}

/// One decoded instruction.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `dst op= src` in 64-bit (`alu64`) or 32-bit width.
    Alu {
        alu64: bool,
        op: AluOp,
        dst: Reg,
        src: Source,
    },
    /// `dst = -dst`.
    Neg {
        alu64: bool,
        dst: Reg,
    },
    /// `dst = (sN)src`, sign-extending move (ISA v4); `bits` is 8, 16 or 32 (32 only for alu64).
    MovSx {
        alu64: bool,
        dst: Reg,
        src: Reg,
        bits: u8,
    },
    /// Byte swap of the low `bits` (16, 32, 64) of `dst`.
    Endian {
        kind: Endian,
        dst: Reg,
        bits: u8,
    },
    /// 64-bit immediate load (two slots); `pseudo` is the source field (`BPF_PSEUDO_*`, 0 = plain).
    LdImm64 {
        dst: Reg,
        pseudo: u8,
        imm: u64,
    },
    /// Legacy packet load `r0 = *(size *)skb[imm]`.
    LdAbs {
        size: Size,
        imm: i32,
    },
    /// Legacy packet load `r0 = *(size *)skb[src + imm]`.
    LdInd {
        size: Size,
        src: Reg,
        imm: i32,
    },
    /// `dst = *(size *)(src + off)`; `signed` is the sign-extending `BPF_MEMSX` load.
    Ldx {
        size: Size,
        signed: bool,
        dst: Reg,
        src: Reg,
        off: i16,
    },
    /// `*(size *)(dst + off) = imm`.
    St {
        size: Size,
        dst: Reg,
        off: i16,
        imm: i32,
    },
    /// `*(size *)(dst + off) = src`.
    Stx {
        size: Size,
        dst: Reg,
        off: i16,
        src: Reg,
    },
    /// Atomic operation on `*(size *)(dst + off)` with `src`; size is `W` or `DW`.
    Atomic {
        size: Size,
        op: AtomicOp,
        dst: Reg,
        src: Reg,
        off: i16,
    },
    /// `dst = load_acquire((size *)(src + off))` (`BPF_ATOMIC` with `imm = BPF_LOAD_ACQ`, 6.15+).
    LoadAcquire {
        size: Size,
        dst: Reg,
        src: Reg,
        off: i16,
    },
    /// `store_release((size *)(dst + off), src)` (`imm = BPF_STORE_REL`, 6.15+).
    StoreRelease {
        size: Size,
        dst: Reg,
        off: i16,
        src: Reg,
    },
    /// `dst = addr_space_cast(src, dst_as, src_as)` (arena pointers, `BPF_MOV` with `off = 1`,
    /// `imm = dst_as << 16 | src_as`).
    AddrSpaceCast {
        dst: Reg,
        src: Reg,
        dst_as: u16,
        src_as: u16,
    },
    /// Conditional jump, 64-bit (`jmp32 == false`) or 32-bit compare.
    Jmp {
        jmp32: bool,
        op: JmpOp,
        dst: Reg,
        src: Source,
        off: i16,
    },
    /// `goto off`.
    Ja {
        off: i16,
    },
    /// `gotol imm` (32-bit offset, ISA v4).
    Gotol {
        imm: i32,
    },
    /// `may_goto off` (`BPF_JCOND`).
    MayGoto {
        off: i16,
    },
    Call(CallTarget),
    /// Indirect call through a register (LLVM encodes the register in `imm`).
    Callx {
        reg: Reg,
    },
    Exit,
}

/// Why a slot sequence does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Slot index.
    pub slot: usize,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instruction {}: {}", self.slot, self.message)
    }
}

impl std::error::Error for DecodeError {}

fn r(n: u8) -> Reg {
    Reg::new(n).expect("register checked by caller")
}

fn alu_class(alu64: bool) -> u8 {
    if alu64 {
        BPF_ALU64
    } else {
        BPF_ALU
    }
}

fn jmp_class(jmp32: bool) -> u8 {
    if jmp32 {
        BPF_JMP32
    } else {
        BPF_JMP
    }
}

impl Op {
    /// Number of 8-byte slots (2 for the 64-bit immediate load, else 1).
    pub const fn width(&self) -> usize {
        match self {
            Op::LdImm64 { .. } => 2,
            _ => 1,
        }
    }

    /// Encode into one slot, or two for [`Op::LdImm64`].
    ///
    /// Operand values are taken as given (a `MovSx` with `bits = 7` encodes `off = 7`); use
    /// [`Op::validate`] or the builder for checked construction.
    pub fn encode(&self) -> (Insn, Option<Insn>) {
        let one = |code: u8, dst: Reg, src: u8, off: i16, imm: i32| {
            (Insn::new(code, dst.index(), src, off, imm), None)
        };
        // Every BPF_ATOMIC instruction: the operation is in imm.
        let atomic = |size: Size, dst: Reg, src: Reg, off: i16, imm: i32| {
            one(
                BPF_STX | BPF_ATOMIC | size.code(),
                dst,
                src.index(),
                off,
                imm,
            )
        };
        let z = Reg::R0;
        match *self {
            Op::Alu {
                alu64,
                op,
                dst,
                src,
            } => {
                let (code, off) = op.code_and_off();
                match src {
                    Source::Reg(s) => one(alu_class(alu64) | code | BPF_X, dst, s.index(), off, 0),
                    Source::Imm(imm) => one(alu_class(alu64) | code | BPF_K, dst, 0, off, imm),
                }
            }
            Op::Neg { alu64, dst } => one(alu_class(alu64) | BPF_NEG, dst, 0, 0, 0),
            Op::MovSx {
                alu64,
                dst,
                src,
                bits,
            } => one(
                alu_class(alu64) | BPF_MOV | BPF_X,
                dst,
                src.index(),
                i16::from(bits),
                0,
            ),
            Op::Endian { kind, dst, bits } => {
                let code = match kind {
                    Endian::ToLe => BPF_ALU | BPF_END | BPF_TO_LE,
                    Endian::ToBe => BPF_ALU | BPF_END | BPF_TO_BE,
                    Endian::Swap => BPF_ALU64 | BPF_END | BPF_TO_LE,
                };
                one(code, dst, 0, 0, i32::from(bits))
            }
            Op::LdImm64 { dst, pseudo, imm } => (
                Insn::new(
                    BPF_LD | BPF_DW | BPF_IMM,
                    dst.index(),
                    pseudo,
                    0,
                    imm as u32 as i32,
                ),
                Some(Insn::new(0, 0, 0, 0, (imm >> 32) as u32 as i32)),
            ),
            Op::LdAbs { size, imm } => one(BPF_LD | BPF_ABS | size.code(), z, 0, 0, imm),
            Op::LdInd { size, src, imm } => {
                one(BPF_LD | BPF_IND | size.code(), z, src.index(), 0, imm)
            }
            Op::Ldx {
                size,
                signed,
                dst,
                src,
                off,
            } => {
                let mode = if signed { BPF_MEMSX } else { BPF_MEM };
                one(BPF_LDX | mode | size.code(), dst, src.index(), off, 0)
            }
            Op::St {
                size,
                dst,
                off,
                imm,
            } => one(BPF_ST | BPF_MEM | size.code(), dst, 0, off, imm),
            Op::Stx {
                size,
                dst,
                off,
                src,
            } => one(BPF_STX | BPF_MEM | size.code(), dst, src.index(), off, 0),
            Op::Atomic {
                size,
                op,
                dst,
                src,
                off,
            } => atomic(size, dst, src, off, op.imm()),
            Op::LoadAcquire {
                size,
                dst,
                src,
                off,
            } => atomic(size, dst, src, off, BPF_LOAD_ACQ),
            Op::StoreRelease {
                size,
                dst,
                off,
                src,
            } => atomic(size, dst, src, off, BPF_STORE_REL),
            Op::AddrSpaceCast {
                dst,
                src,
                dst_as,
                src_as,
            } => one(
                BPF_ALU64 | BPF_MOV | BPF_X,
                dst,
                src.index(),
                1,
                ((u32::from(dst_as) << 16) | u32::from(src_as)) as i32,
            ),
            Op::Jmp {
                jmp32,
                op,
                dst,
                src,
                off,
            } => match src {
                Source::Reg(s) => one(jmp_class(jmp32) | op.code() | BPF_X, dst, s.index(), off, 0),
                Source::Imm(imm) => one(jmp_class(jmp32) | op.code() | BPF_K, dst, 0, off, imm),
            },
            Op::Ja { off } => one(BPF_JMP | BPF_JA, z, 0, off, 0),
            Op::Gotol { imm } => one(BPF_JMP32 | BPF_JA, z, 0, 0, imm),
            Op::MayGoto { off } => one(BPF_JMP | BPF_JCOND, z, 0, off, 0),
            Op::Call(target) => match target {
                CallTarget::Helper(id) => one(BPF_JMP | BPF_CALL, z, 0, 0, id),
                CallTarget::Local(imm) => one(BPF_JMP | BPF_CALL, z, BPF_PSEUDO_CALL, 0, imm),
                CallTarget::Kfunc { btf_id, off } => {
                    one(BPF_JMP | BPF_CALL, z, BPF_PSEUDO_KFUNC_CALL, off, btf_id)
                }
            },
            Op::Callx { reg } => one(BPF_JMP | BPF_CALL | BPF_X, z, 0, 0, i32::from(reg.index())),
            Op::Exit => one(BPF_JMP | BPF_EXIT, z, 0, 0, 0),
        }
    }

    /// Append the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<Insn>) {
        let (first, second) = self.encode();
        out.push(first);
        if let Some(second) = second {
            out.push(second);
        }
    }

    /// Check the operand values the type system does not (movsx width, byte-swap width, atomic
    /// size). Returns a message saying what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Op::MovSx { alu64, bits, .. } => {
                let ok = matches!(bits, 8 | 16) || (alu64 && bits == 32);
                if !ok {
                    return Err(format!(
                        "sign-extending move from {bits} bits is not an instruction \
                         (use 8 or 16{})",
                        if alu64 {
                            " or 32"
                        } else {
                            " for 32-bit registers"
                        }
                    ));
                }
            }
            Op::Endian { bits, .. } if !matches!(bits, 16 | 32 | 64) => {
                return Err(format!("byte swap of {bits} bits: use 16, 32 or 64"));
            }
            Op::Atomic { size, .. } if !matches!(size, Size::W | Size::DW) => {
                return Err("atomic operations work on u32 or u64 only".into());
            }
            Op::LdAbs { size, .. } | Op::LdInd { size, .. } if size == Size::DW => {
                return Err("legacy packet loads read u8, u16 or u32 only".into());
            }
            Op::Ldx {
                size: Size::DW,
                signed: true,
                ..
            } => return Err("sign-extending loads read s8, s16 or s32 only".into()),
            _ => {}
        }
        Ok(())
    }

    /// Decode the instruction starting at `slots[at]`. Only canonical encodings are accepted.
    pub fn decode(slots: &[Insn], at: usize) -> Result<Op, DecodeError> {
        let err = |message: String| DecodeError { slot: at, message };
        let Some(&insn) = slots.get(at) else {
            return Err(err("past the end of the program".into()));
        };
        let code = insn.code;
        if insn.dst > 10 {
            return Err(err(format!(
                "destination register r{} does not exist",
                insn.dst
            )));
        }
        let dst = r(insn.dst);
        let src_reg = || {
            Reg::new(insn.src)
                .ok_or_else(|| err(format!("source register r{} does not exist", insn.src)))
        };
        let unused = |what: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(err(format!(
                    "opcode {code:#04x}: {what} must be zero (bytes {})",
                    hex_bytes(&insn.to_bytes())
                )))
            }
        };
        // The operand of ALU and jump instructions: `src_reg` (BPF_X) or `imm` (BPF_K); the
        // other field must be zero.
        let source = || {
            if src(code) == BPF_X {
                unused("immediate", insn.imm == 0)?;
                Ok(Source::Reg(src_reg()?))
            } else {
                unused("source field", insn.src == 0)?;
                Ok(Source::Imm(insn.imm))
            }
        };
        match class(code) {
            BPF_ALU | BPF_ALU64 => {
                let alu64 = class(code) == BPF_ALU64;
                let opc = op(code);
                let by_reg = src(code) == BPF_X;
                match opc {
                    BPF_NEG => {
                        unused("source field, offset and immediate", {
                            !by_reg && insn.src == 0 && insn.off == 0 && insn.imm == 0
                        })?;
                        Ok(Op::Neg { alu64, dst })
                    }
                    BPF_END => {
                        unused("source field and offset", insn.src == 0 && insn.off == 0)?;
                        let kind = match (alu64, by_reg) {
                            (false, false) => Endian::ToLe,
                            (false, true) => Endian::ToBe,
                            (true, false) => Endian::Swap,
                            (true, true) => {
                                return Err(err(format!("opcode {code:#04x} is not defined")))
                            }
                        };
                        let bits = match insn.imm {
                            16 => 16,
                            32 => 32,
                            64 => 64,
                            other => {
                                return Err(err(format!(
                                    "byte swap width {other} is not 16, 32 or 64"
                                )))
                            }
                        };
                        Ok(Op::Endian { kind, dst, bits })
                    }
                    0xe0 | 0xf0 => Err(err(format!("opcode {code:#04x} is not defined"))),
                    _ => {
                        let op = match (opc, insn.off) {
                            (BPF_MOV, 8 | 16 | 32) if by_reg => {
                                let bits = insn.off as u8;
                                if !alu64 && bits == 32 {
                                    return Err(err(
                                        "32-bit sign-extending move from 32 bits is not defined"
                                            .into(),
                                    ));
                                }
                                unused("immediate", insn.imm == 0)?;
                                return Ok(Op::MovSx {
                                    alu64,
                                    dst,
                                    src: src_reg()?,
                                    bits,
                                });
                            }
                            (BPF_MOV, 1) if by_reg && alu64 => {
                                return Ok(Op::AddrSpaceCast {
                                    dst,
                                    src: src_reg()?,
                                    dst_as: (insn.imm as u32 >> 16) as u16,
                                    src_as: insn.imm as u32 as u16,
                                });
                            }
                            (BPF_DIV, 1) => AluOp::SDiv,
                            (BPF_MOD, 1) => AluOp::SMod,
                            (_, 0) => match opc {
                                BPF_ADD => AluOp::Add,
                                BPF_SUB => AluOp::Sub,
                                BPF_MUL => AluOp::Mul,
                                BPF_DIV => AluOp::Div,
                                BPF_OR => AluOp::Or,
                                BPF_AND => AluOp::And,
                                BPF_LSH => AluOp::Lsh,
                                BPF_RSH => AluOp::Rsh,
                                BPF_MOD => AluOp::Mod,
                                BPF_XOR => AluOp::Xor,
                                BPF_MOV => AluOp::Mov,
                                _ => AluOp::Arsh,
                            },
                            (_, off) => {
                                return Err(err(format!(
                                    "opcode {code:#04x} with offset {off} is not defined"
                                )))
                            }
                        };
                        let src = source()?;
                        Ok(Op::Alu {
                            alu64,
                            op,
                            dst,
                            src,
                        })
                    }
                }
            }
            BPF_LD => {
                let size = Size::from_code(code);
                match mode(code) {
                    BPF_IMM if size == Size::DW => {
                        unused("offset", insn.off == 0)?;
                        if insn.src > BPF_PSEUDO_MAP_IDX_VALUE {
                            return Err(err(format!(
                                "64-bit load with unknown pseudo source {}",
                                insn.src
                            )));
                        }
                        let Some(&next) = slots.get(at + 1) else {
                            return Err(err(
                                "64-bit immediate load is missing its second slot".into()
                            ));
                        };
                        if next.code != 0 || next.dst != 0 || next.src != 0 || next.off != 0 {
                            return Err(err(
                                "second slot of a 64-bit immediate load must have only imm set"
                                    .into(),
                            ));
                        }
                        let imm = u64::from(insn.imm as u32) | (u64::from(next.imm as u32) << 32);
                        Ok(Op::LdImm64 {
                            dst,
                            pseudo: insn.src,
                            imm,
                        })
                    }
                    BPF_ABS if size != Size::DW => {
                        unused("registers and offset", {
                            insn.dst == 0 && insn.src == 0 && insn.off == 0
                        })?;
                        Ok(Op::LdAbs {
                            size,
                            imm: insn.imm,
                        })
                    }
                    BPF_IND if size != Size::DW => {
                        unused("destination and offset", insn.dst == 0 && insn.off == 0)?;
                        Ok(Op::LdInd {
                            size,
                            src: src_reg()?,
                            imm: insn.imm,
                        })
                    }
                    _ => Err(err(format!("opcode {code:#04x} is not defined"))),
                }
            }
            BPF_LDX => {
                let size = Size::from_code(code);
                let signed = match mode(code) {
                    BPF_MEM => false,
                    BPF_MEMSX if size != Size::DW => true,
                    _ => return Err(err(format!("opcode {code:#04x} is not defined"))),
                };
                unused("immediate", insn.imm == 0)?;
                Ok(Op::Ldx {
                    size,
                    signed,
                    dst,
                    src: src_reg()?,
                    off: insn.off,
                })
            }
            BPF_ST => {
                if mode(code) != BPF_MEM {
                    return Err(err(format!("opcode {code:#04x} is not defined")));
                }
                unused("source field", insn.src == 0)?;
                Ok(Op::St {
                    size: Size::from_code(code),
                    dst,
                    off: insn.off,
                    imm: insn.imm,
                })
            }
            BPF_STX => {
                let size = Size::from_code(code);
                match mode(code) {
                    BPF_MEM => {
                        unused("immediate", insn.imm == 0)?;
                        Ok(Op::Stx {
                            size,
                            dst,
                            off: insn.off,
                            src: src_reg()?,
                        })
                    }
                    BPF_ATOMIC if insn.imm == BPF_LOAD_ACQ => Ok(Op::LoadAcquire {
                        size,
                        dst,
                        src: src_reg()?,
                        off: insn.off,
                    }),
                    BPF_ATOMIC if insn.imm == BPF_STORE_REL => Ok(Op::StoreRelease {
                        size,
                        dst,
                        off: insn.off,
                        src: src_reg()?,
                    }),
                    BPF_ATOMIC if matches!(size, Size::W | Size::DW) => {
                        let op = AtomicOp::from_imm(insn.imm).ok_or_else(|| {
                            err(format!("atomic operation {:#x} is not defined", insn.imm))
                        })?;
                        Ok(Op::Atomic {
                            size,
                            op,
                            dst,
                            src: src_reg()?,
                            off: insn.off,
                        })
                    }
                    _ => Err(err(format!("opcode {code:#04x} is not defined"))),
                }
            }
            _ => {
                // BPF_JMP, BPF_JMP32
                let jmp32 = class(code) == BPF_JMP32;
                let by_reg = src(code) == BPF_X;
                match (op(code), jmp32, by_reg) {
                    (BPF_JA, false, false) => {
                        unused("registers and immediate", {
                            insn.dst == 0 && insn.src == 0 && insn.imm == 0
                        })?;
                        Ok(Op::Ja { off: insn.off })
                    }
                    (BPF_JA, true, false) => {
                        unused("registers and offset", {
                            insn.dst == 0 && insn.src == 0 && insn.off == 0
                        })?;
                        Ok(Op::Gotol { imm: insn.imm })
                    }
                    (BPF_JCOND, false, false) => {
                        unused("registers and immediate", {
                            insn.dst == 0 && insn.src == 0 && insn.imm == 0
                        })?;
                        Ok(Op::MayGoto { off: insn.off })
                    }
                    (BPF_CALL, false, false) => {
                        unused("destination", insn.dst == 0)?;
                        let target = match insn.src {
                            0 => {
                                unused("offset", insn.off == 0)?;
                                CallTarget::Helper(insn.imm)
                            }
                            BPF_PSEUDO_CALL => {
                                unused("offset", insn.off == 0)?;
                                CallTarget::Local(insn.imm)
                            }
                            BPF_PSEUDO_KFUNC_CALL => CallTarget::Kfunc {
                                btf_id: insn.imm,
                                off: insn.off,
                            },
                            other => {
                                return Err(err(format!("call with unknown pseudo source {other}")))
                            }
                        };
                        Ok(Op::Call(target))
                    }
                    (BPF_CALL, false, true) => {
                        unused("registers and offset", {
                            insn.dst == 0 && insn.src == 0 && insn.off == 0
                        })?;
                        let reg =
                            u8::try_from(insn.imm)
                                .ok()
                                .and_then(Reg::new)
                                .ok_or_else(|| {
                                    err(format!("callx register {} does not exist", insn.imm))
                                })?;
                        Ok(Op::Callx { reg })
                    }
                    (BPF_EXIT, false, false) => {
                        unused("registers, offset and immediate", {
                            insn.dst == 0 && insn.src == 0 && insn.off == 0 && insn.imm == 0
                        })?;
                        Ok(Op::Exit)
                    }
                    (opc, _, _) => {
                        let Some(jop) = JmpOp::from_code(opc) else {
                            return Err(err(format!("opcode {code:#04x} is not defined")));
                        };
                        let src = source()?;
                        Ok(Op::Jmp {
                            jmp32,
                            op: jop,
                            dst,
                            src,
                            off: insn.off,
                        })
                    }
                }
            }
        }
    }

    /// Decode a whole slot sequence into `(slot index, instruction)` pairs.
    pub fn decode_all(slots: &[Insn]) -> Result<Vec<(usize, Op)>, DecodeError> {
        let mut out = Vec::with_capacity(slots.len());
        let mut at = 0;
        while at < slots.len() {
            let op = Op::decode(slots, at)?;
            out.push((at, op));
            at += op.width();
        }
        Ok(out)
    }

    /// The register this instruction writes, if any (used for the "write to r10" check).
    pub fn written_register(&self) -> Option<Reg> {
        match *self {
            Op::Alu { dst, .. }
            | Op::Neg { dst, .. }
            | Op::MovSx { dst, .. }
            | Op::Endian { dst, .. }
            | Op::LdImm64 { dst, .. }
            | Op::Ldx { dst, .. }
            | Op::LoadAcquire { dst, .. }
            | Op::AddrSpaceCast { dst, .. } => Some(dst),
            Op::LdAbs { .. } | Op::LdInd { .. } => Some(Reg::R0),
            Op::Atomic { op, src, .. } => match op {
                AtomicOp::Cmpxchg => Some(Reg::R0),
                op if op.fetches() => Some(src),
                _ => None,
            },
            _ => None,
        }
    }

    /// Relative jump target in slots from the next slot (`target = this + 1 + offset`), for
    /// instructions that jump or call within the program.
    pub fn branch_offset(&self) -> Option<i64> {
        match *self {
            Op::Jmp { off, .. } | Op::Ja { off } | Op::MayGoto { off } => Some(i64::from(off)),
            Op::Gotol { imm } | Op::Call(CallTarget::Local(imm)) => Some(i64::from(imm)),
            Op::LdImm64 {
                pseudo: BPF_PSEUDO_FUNC,
                imm,
                ..
            } => Some(i64::from(imm as u32 as i32)),
            _ => None,
        }
    }
}

/// `aa bb cc` lowercase hex.
pub fn hex_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}
