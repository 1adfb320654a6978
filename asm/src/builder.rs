//! The [`Asm`] builder: typed instructions, labels, relocations, checks on [`Asm::finish`].

use crate::check;
use crate::error::AsmError;
use crate::helper::Helper;
use crate::op::{AluOp, AtomicOp, CallTarget, Endian, JmpOp, Op, Size, Source};
use crate::opcode::*;
use crate::program::{Program, RelocKind, Relocation};
use crate::{Insn, Reg};

/// A jump target. Create with [`Asm::label`], place with [`Asm::bind`]; jumps may refer to it
/// before or after it is bound.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Label(usize);

impl Label {
    /// The label's number (as shown in error messages).
    pub fn index(self) -> usize {
        self.0
    }
}

#[derive(Copy, Clone, Debug)]
enum FixupField {
    /// `off` of a jump (16 bits).
    Off,
    /// `imm` of `gotol`, a local call or a function-pointer load (32 bits).
    Imm,
}

#[derive(Copy, Clone, Debug)]
struct Fixup {
    slot: usize,
    label: Label,
    field: FixupField,
}

/// Builds a program instruction by instruction. Methods are named after the kernel's
/// `BPF_*` instruction macros where one exists and return `&mut Self` for chaining.
///
/// Problems with operands are remembered and reported by [`Asm::finish`], which never panics.
#[derive(Clone, Default, Debug)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<Fixup>,
    relocations: Vec<Relocation>,
    errors: Vec<AsmError>,
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '.')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    /// Number of slots emitted so far (a 64-bit load counts 2). This is the index the next
    /// instruction will get.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Bind `label` to the next instruction emitted. Binding a label twice is an error
    /// reported by [`Asm::finish`].
    pub fn bind(&mut self, label: Label) -> &mut Self {
        let here = self.insns.len();
        match self.labels.get_mut(label.0) {
            Some(slot @ None) => *slot = Some(here),
            Some(Some(first)) => {
                let first = *first;
                self.errors.push(AsmError::LabelBoundTwice {
                    label: label.0,
                    first,
                    second: here,
                });
            }
            None => self.errors.push(AsmError::InvalidOperand {
                insn: here,
                message: format!("label #{} belongs to another builder", label.0),
            }),
        }
        self
    }

    /// A new label bound to the next instruction (for backward jumps).
    pub fn here(&mut self) -> Label {
        let label = self.label();
        self.bind(label);
        label
    }

    /// Emit any instruction. Operands are checked with [`Op::validate`].
    pub fn op(&mut self, op: Op) -> &mut Self {
        if let Err(message) = op.validate() {
            self.errors.push(AsmError::InvalidOperand {
                insn: self.insns.len(),
                message,
            });
        }
        op.encode_into(&mut self.insns);
        self
    }

    /// Emit a raw slot as is (no checks until [`Asm::finish`]).
    pub fn raw(&mut self, insn: Insn) -> &mut Self {
        self.insns.push(insn);
        self
    }

    fn jump_to(&mut self, op: Op, label: Label, field: FixupField) -> &mut Self {
        self.fixups.push(Fixup {
            slot: self.insns.len(),
            label,
            field,
        });
        self.op(op)
    }

    fn reloc(&mut self, op: Op, kind: RelocKind) -> &mut Self {
        if !is_identifier(kind.name()) {
            self.errors.push(AsmError::BadRelocationName {
                insn: self.insns.len(),
                name: kind.name().to_string(),
            });
        }
        self.relocations.push(Relocation {
            slot: self.insns.len(),
            kind,
        });
        self.op(op)
    }

    // ---- ALU ----

    /// `BPF_ALU64_IMM(op, dst, imm)`: `dst op= imm` (imm sign-extended to 64 bits).
    pub fn alu64_imm(&mut self, op: AluOp, dst: Reg, imm: i32) -> &mut Self {
        self.op(Op::Alu {
            alu64: true,
            op,
            dst,
            src: Source::Imm(imm),
        })
    }
    /// `BPF_ALU64_REG(op, dst, src)`: `dst op= src`.
    pub fn alu64_reg(&mut self, op: AluOp, dst: Reg, src: Reg) -> &mut Self {
        self.op(Op::Alu {
            alu64: true,
            op,
            dst,
            src: Source::Reg(src),
        })
    }
    /// `BPF_ALU32_IMM(op, dst, imm)`: `wdst op= imm` (upper 32 bits cleared).
    pub fn alu32_imm(&mut self, op: AluOp, dst: Reg, imm: i32) -> &mut Self {
        self.op(Op::Alu {
            alu64: false,
            op,
            dst,
            src: Source::Imm(imm),
        })
    }
    /// `BPF_ALU32_REG(op, dst, src)`: `wdst op= wsrc`.
    pub fn alu32_reg(&mut self, op: AluOp, dst: Reg, src: Reg) -> &mut Self {
        self.op(Op::Alu {
            alu64: false,
            op,
            dst,
            src: Source::Reg(src),
        })
    }
    /// `BPF_MOV64_IMM(dst, imm)`.
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.alu64_imm(AluOp::Mov, dst, imm)
    }
    /// `BPF_MOV64_REG(dst, src)`.
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.alu64_reg(AluOp::Mov, dst, src)
    }
    /// `BPF_MOV32_IMM(dst, imm)`.
    pub fn mov32_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.alu32_imm(AluOp::Mov, dst, imm)
    }
    /// `BPF_MOV32_REG(dst, src)`.
    pub fn mov32_reg(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.alu32_reg(AluOp::Mov, dst, src)
    }
    /// `dst = -dst` (64-bit).
    pub fn neg64(&mut self, dst: Reg) -> &mut Self {
        self.op(Op::Neg { alu64: true, dst })
    }
    /// `wdst = -wdst` (32-bit).
    pub fn neg32(&mut self, dst: Reg) -> &mut Self {
        self.op(Op::Neg { alu64: false, dst })
    }
    /// `dst = (s<bits>)src`, 64-bit sign-extending move (`bits` 8, 16 or 32; ISA v4).
    pub fn movsx64(&mut self, dst: Reg, src: Reg, bits: u8) -> &mut Self {
        self.op(Op::MovSx {
            alu64: true,
            dst,
            src,
            bits,
        })
    }
    /// `wdst = (s<bits>)wsrc`, 32-bit sign-extending move (`bits` 8 or 16; ISA v4).
    pub fn movsx32(&mut self, dst: Reg, src: Reg, bits: u8) -> &mut Self {
        self.op(Op::MovSx {
            alu64: false,
            dst,
            src,
            bits,
        })
    }
    /// `dst s/= imm` (64-bit signed division, ISA v4).
    pub fn sdiv64_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.alu64_imm(AluOp::SDiv, dst, imm)
    }
    /// `dst s%= imm` (64-bit signed modulo, ISA v4).
    pub fn smod64_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.alu64_imm(AluOp::SMod, dst, imm)
    }
    /// `BPF_ENDIAN(kind, dst, bits)`: byte swap of the low `bits` (16, 32 or 64).
    pub fn endian(&mut self, kind: Endian, dst: Reg, bits: u8) -> &mut Self {
        self.op(Op::Endian { kind, dst, bits })
    }
    /// `dst = be<bits> dst` (host to network order on little-endian hosts).
    pub fn to_be(&mut self, dst: Reg, bits: u8) -> &mut Self {
        self.endian(Endian::ToBe, dst, bits)
    }
    /// `dst = le<bits> dst`.
    pub fn to_le(&mut self, dst: Reg, bits: u8) -> &mut Self {
        self.endian(Endian::ToLe, dst, bits)
    }
    /// `dst = bswap<bits> dst` (ISA v4).
    pub fn bswap(&mut self, dst: Reg, bits: u8) -> &mut Self {
        self.endian(Endian::Swap, dst, bits)
    }

    // ---- memory ----

    /// `BPF_LDX_MEM(size, dst, src, off)`: `dst = *(size *)(src + off)`.
    pub fn ldx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.op(Op::Ldx {
            size,
            signed: false,
            dst,
            src,
            off,
        })
    }
    /// `BPF_LDX_MEMSX(size, dst, src, off)`: sign-extending load (ISA v4; B, H or W).
    pub fn ldx_sx(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.op(Op::Ldx {
            size,
            signed: true,
            dst,
            src,
            off,
        })
    }
    /// `BPF_STX_MEM(size, dst, src, off)`: `*(size *)(dst + off) = src`.
    pub fn stx(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.op(Op::Stx {
            size,
            dst,
            off,
            src,
        })
    }
    /// `BPF_ST_MEM(size, dst, off, imm)`: `*(size *)(dst + off) = imm`.
    pub fn st_imm(&mut self, size: Size, dst: Reg, off: i16, imm: i32) -> &mut Self {
        self.op(Op::St {
            size,
            dst,
            off,
            imm,
        })
    }
    /// `BPF_ATOMIC_OP(size, op, dst, src, off)` on `*(size *)(dst + off)` (size W or DW).
    pub fn atomic(&mut self, op: AtomicOp, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.op(Op::Atomic {
            size,
            op,
            dst,
            src,
            off,
        })
    }
    /// `lock *(size *)(dst + off) += src`.
    pub fn atomic_add(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.atomic(AtomicOp::Add, size, dst, off, src)
    }
    /// `BPF_LD_ABS(size, imm)`: legacy `r0 = *(size *)skb[imm]`.
    pub fn ld_abs(&mut self, size: Size, imm: i32) -> &mut Self {
        self.op(Op::LdAbs { size, imm })
    }
    /// `BPF_LD_IND(size, src, imm)`: legacy `r0 = *(size *)skb[src + imm]`.
    pub fn ld_ind(&mut self, size: Size, src: Reg, imm: i32) -> &mut Self {
        self.op(Op::LdInd { size, src, imm })
    }

    // ---- 64-bit immediates and relocations ----

    /// `BPF_LD_IMM64(dst, imm)`: two slots.
    pub fn ld_imm64(&mut self, dst: Reg, imm: u64) -> &mut Self {
        self.op(Op::LdImm64 {
            dst,
            pseudo: 0,
            imm,
        })
    }
    /// A 64-bit load with an explicit pseudo source (`BPF_PSEUDO_*`) and raw value.
    pub fn ld_pseudo(&mut self, dst: Reg, pseudo: u8, imm: u64) -> &mut Self {
        self.op(Op::LdImm64 { dst, pseudo, imm })
    }
    /// `BPF_LD_MAP_FD(dst, 0)` with a map relocation: the loader writes the fd of map `name`.
    pub fn ld_map_fd(&mut self, dst: Reg, name: &str) -> &mut Self {
        let op = Op::LdImm64 {
            dst,
            pseudo: BPF_PSEUDO_MAP_FD,
            imm: 0,
        };
        self.reloc(op, RelocKind::MapFd(name.into()))
    }
    /// `BPF_LD_MAP_VALUE(dst, 0, offset)`: pointer to byte `offset` of the value of array map
    /// `name` (its fd is filled in by the loader).
    pub fn ld_map_value(&mut self, dst: Reg, name: &str, offset: u32) -> &mut Self {
        let op = Op::LdImm64 {
            dst,
            pseudo: BPF_PSEUDO_MAP_VALUE,
            imm: u64::from(offset) << 32,
        };
        self.reloc(op, RelocKind::MapValue(name.into()))
    }
    /// `dst = <name>` as a 64-bit load whose value the loader fills in.
    pub fn ld_imm64_const(&mut self, dst: Reg, name: &str) -> &mut Self {
        let op = Op::LdImm64 {
            dst,
            pseudo: 0,
            imm: 0,
        };
        self.reloc(op, RelocKind::Const(name.into()))
    }
    /// `dst = <name>` (64-bit mov, value sign-extended from 32 bits) filled in by the loader.
    pub fn mov64_const(&mut self, dst: Reg, name: &str) -> &mut Self {
        let op = Op::Alu {
            alu64: true,
            op: AluOp::Mov,
            dst,
            src: Source::Imm(0),
        };
        self.reloc(op, RelocKind::Const(name.into()))
    }
    /// `wdst = <name>` (32-bit mov) filled in by the loader.
    pub fn mov32_const(&mut self, dst: Reg, name: &str) -> &mut Self {
        let op = Op::Alu {
            alu64: false,
            op: AluOp::Mov,
            dst,
            src: Source::Imm(0),
        };
        self.reloc(op, RelocKind::Const(name.into()))
    }
    /// `dst = &subprogram` (`BPF_PSEUDO_FUNC` load of a label's address, for callbacks).
    pub fn ld_func(&mut self, dst: Reg, target: Label) -> &mut Self {
        let op = Op::LdImm64 {
            dst,
            pseudo: BPF_PSEUDO_FUNC,
            imm: 0,
        };
        self.jump_to(op, target, FixupField::Imm)
    }

    // ---- jumps ----

    /// `BPF_JMP_IMM(op, dst, imm, target)`: `if dst op imm goto target` (64-bit compare).
    pub fn jmp_imm(&mut self, op: JmpOp, dst: Reg, imm: i32, target: Label) -> &mut Self {
        let op = Op::Jmp {
            jmp32: false,
            op,
            dst,
            src: Source::Imm(imm),
            off: 0,
        };
        self.jump_to(op, target, FixupField::Off)
    }
    /// `BPF_JMP_REG(op, dst, src, target)`.
    pub fn jmp_reg(&mut self, op: JmpOp, dst: Reg, src: Reg, target: Label) -> &mut Self {
        let op = Op::Jmp {
            jmp32: false,
            op,
            dst,
            src: Source::Reg(src),
            off: 0,
        };
        self.jump_to(op, target, FixupField::Off)
    }
    /// `BPF_JMP32_IMM(op, dst, imm, target)`: 32-bit compare (kernel 5.1+).
    pub fn jmp32_imm(&mut self, op: JmpOp, dst: Reg, imm: i32, target: Label) -> &mut Self {
        let op = Op::Jmp {
            jmp32: true,
            op,
            dst,
            src: Source::Imm(imm),
            off: 0,
        };
        self.jump_to(op, target, FixupField::Off)
    }
    /// `BPF_JMP32_REG(op, dst, src, target)`.
    pub fn jmp32_reg(&mut self, op: JmpOp, dst: Reg, src: Reg, target: Label) -> &mut Self {
        let op = Op::Jmp {
            jmp32: true,
            op,
            dst,
            src: Source::Reg(src),
            off: 0,
        };
        self.jump_to(op, target, FixupField::Off)
    }
    /// `if dst op <name> goto target` with the 64-bit compare's immediate filled in by the loader.
    pub fn jmp_const(&mut self, op: JmpOp, dst: Reg, name: &str, target: Label) -> &mut Self {
        self.fixups.push(Fixup {
            slot: self.insns.len(),
            label: target,
            field: FixupField::Off,
        });
        let op = Op::Jmp {
            jmp32: false,
            op,
            dst,
            src: Source::Imm(0),
            off: 0,
        };
        self.reloc(op, RelocKind::Const(name.into()))
    }
    /// `if wdst op <name> goto target` (32-bit compare) filled in by the loader.
    pub fn jmp32_const(&mut self, op: JmpOp, dst: Reg, name: &str, target: Label) -> &mut Self {
        self.fixups.push(Fixup {
            slot: self.insns.len(),
            label: target,
            field: FixupField::Off,
        });
        let op = Op::Jmp {
            jmp32: true,
            op,
            dst,
            src: Source::Imm(0),
            off: 0,
        };
        self.reloc(op, RelocKind::Const(name.into()))
    }
    /// `if dst op value goto target` comparing the full 64-bit `dst` with the *unsigned* 32-bit
    /// `value`. A jump immediate is sign-extended, so values above `i32::MAX` are first moved
    /// into `scratch` with a 32-bit mov (which zero-extends) and compared as registers; the
    /// caller names `scratch` so that no register is clobbered behind its back.
    pub fn jmp_imm_u32(
        &mut self,
        op: JmpOp,
        dst: Reg,
        value: u32,
        scratch: Reg,
        target: Label,
    ) -> &mut Self {
        match i32::try_from(value) {
            Ok(imm) => self.jmp_imm(op, dst, imm, target),
            Err(_) => self
                .mov32_imm(scratch, value as i32)
                .jmp_reg(op, dst, scratch, target),
        }
    }
    /// `BPF_JMP_A(target)`: `goto target` (16-bit offset).
    pub fn ja(&mut self, target: Label) -> &mut Self {
        self.jump_to(Op::Ja { off: 0 }, target, FixupField::Off)
    }
    /// `gotol target` (32-bit offset, ISA v4).
    pub fn gotol(&mut self, target: Label) -> &mut Self {
        self.jump_to(Op::Gotol { imm: 0 }, target, FixupField::Imm)
    }
    /// `may_goto target` (kernel 6.9+).
    pub fn may_goto(&mut self, target: Label) -> &mut Self {
        self.jump_to(Op::MayGoto { off: 0 }, target, FixupField::Off)
    }

    // ---- calls ----

    /// `BPF_EMIT_CALL(helper)`: `call <helper id>`.
    pub fn call(&mut self, helper: Helper) -> &mut Self {
        self.op(Op::Call(CallTarget::Helper(helper.id() as i32)))
    }
    /// Call a helper by raw id (for helpers newer than this crate).
    pub fn call_helper_id(&mut self, id: i32) -> &mut Self {
        self.op(Op::Call(CallTarget::Helper(id)))
    }
    /// `BPF_CALL_REL(target)`: BPF-to-BPF call of the subprogram at `target`.
    pub fn call_local(&mut self, target: Label) -> &mut Self {
        self.jump_to(Op::Call(CallTarget::Local(0)), target, FixupField::Imm)
    }
    /// Call a kernel function by BTF id (`off` selects the module BTF; 0 = vmlinux).
    pub fn call_kfunc(&mut self, btf_id: i32, off: i16) -> &mut Self {
        self.op(Op::Call(CallTarget::Kfunc { btf_id, off }))
    }
    /// `callx reg` (indirect call; not accepted by the kernel verifier today).
    pub fn callx(&mut self, reg: Reg) -> &mut Self {
        self.op(Op::Callx { reg })
    }
    /// `BPF_EXIT_INSN()`.
    pub fn exit(&mut self) -> &mut Self {
        self.op(Op::Exit)
    }

    /// Resolve labels and run every check: operands, labels (unbound, bound twice), jump
    /// ranges (16-bit; 32-bit for `gotol` and calls), relocation names, write to r10, jump
    /// outside the program or into the second half of a 64-bit load, fall-through at the end.
    pub fn finish(mut self) -> Result<Program, AsmError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        for fixup in &self.fixups {
            let target = self.labels.get(fixup.label.0).copied().flatten().ok_or(
                AsmError::UnboundLabel {
                    insn: fixup.slot,
                    label: fixup.label.0,
                },
            )?;
            let offset = target as i64 - fixup.slot as i64 - 1;
            let insn = &mut self.insns[fixup.slot];
            match fixup.field {
                FixupField::Off => {
                    insn.off = i16::try_from(offset).map_err(|_| AsmError::JumpOutOfRange {
                        insn: fixup.slot,
                        offset,
                        bits: 16,
                    })?;
                }
                FixupField::Imm => {
                    insn.imm = i32::try_from(offset).map_err(|_| AsmError::JumpOutOfRange {
                        insn: fixup.slot,
                        offset,
                        bits: 32,
                    })?;
                }
            }
        }
        if let Some(issue) = check::check(&self.insns).into_iter().next() {
            return Err(AsmError::Structure(issue));
        }
        Ok(Program {
            insns: self.insns,
            relocations: self.relocations,
        })
    }
}
