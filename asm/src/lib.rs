//! `mb-asm`: the eBPF instruction set as the kernel's instruction-set document defines it
//! (`Documentation/bpf/standardization/instruction-set.rst`, ISA v1–v4), with no LLVM.
//!
//! * [`Insn`] is one raw 8-byte slot exactly as the kernel reads it (`struct bpf_insn`).
//! * [`Op`] is a decoded instruction with an exact encoder and a strict decoder.
//! * [`Asm`] builds programs with typed registers, labels, helpers by name and relocations
//!   for maps and named constants; [`Asm::finish`] checks the whole program.
//! * [`Program`] holds the slots and relocations; the loader fills them with
//!   [`Program::relocate_map`] / [`Program::relocate_const`].
//! * [`text`] parses LLVM's BPF assembly (what `llvm-mc -triple bpfel` accepts) and prints it
//!   the way `llvm-objdump --no-print-imm-hex -d` does (or with hex immediates, objdump's
//!   default); it also prints and parses the kernel verifier's / `bpftool prog dump xlated`
//!   form, so dumps diff against a verifier log and a verifier log reassembles.
//!
//! Encodings are checked against LLVM's own MC test vectors, the UAPI header, and the running
//! kernel (programs are loaded and run with `BPF_PROG_TEST_RUN` in `tests/kernel_exec.rs`).
//!
//! ```
//! use mb_asm::{Asm, Helper, JmpOp, Reg, Size};
//!
//! let mut asm = Asm::new();
//! let done = asm.label();
//! asm.mov64_reg(Reg::R2, Reg::FP)
//!     .alu64_imm(mb_asm::AluOp::Add, Reg::R2, -4)
//!     .st_imm(Size::W, Reg::FP, -4, 0)
//!     .ld_map_fd(Reg::R1, "settings")
//!     .call(Helper::MapLookupElem)
//!     .jmp_imm(JmpOp::Eq, Reg::R0, 0, done)
//!     .ldx(Size::W, Reg::R0, Reg::R0, 0)
//!     .bind(done)
//!     .exit();
//! let program = asm.finish().unwrap();
//! assert_eq!(program.insns.len(), 9); // the map load takes two slots
//! let loaded = program.relocate_map("settings", 7).unwrap();
//! assert_eq!(loaded.insns[3].imm, 7);
//! assert_eq!(
//!     mb_asm::text::fmt_llvm(&program).unwrap().lines().nth(3),
//!     Some("r1 = settings ll")
//! );
//! ```
#![forbid(unsafe_code)]

pub mod builder;
pub mod check;
pub mod error;
pub mod helper;
pub mod op;
pub mod opcode;
pub mod program;
pub mod reg;
pub mod text;

pub use builder::{Asm, Label};
pub use error::AsmError;
pub use helper::Helper;
pub use op::{AluOp, AtomicOp, CallTarget, DecodeError, Endian, JmpOp, Op, Size, Source};
pub use program::{Program, RelocError, RelocKind, Relocation};
pub use reg::Reg;
pub use text::{parse, ParseError};

impl Program {
    /// LLVM syntax, one instruction per line (see [`text::fmt_llvm`]).
    pub fn fmt_llvm(&self) -> Result<String, DecodeError> {
        text::fmt_llvm(self)
    }

    /// The kernel verifier's syntax, `N: (code) text` per line (see [`text::fmt_kernel`]).
    pub fn fmt_kernel(&self) -> Result<String, DecodeError> {
        text::fmt_kernel(self)
    }
}

/// LLVM syntax (what `llvm-objdump --no-print-imm-hex -d` prints).
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&text::llvm_text(self))
    }
}

/// One raw instruction slot, `struct bpf_insn` of `linux/bpf.h`:
/// `code` (opcode byte), `dst_reg:4`, `src_reg:4`, `off` (s16), `imm` (s32).
/// A 64-bit immediate load occupies two slots; the second has `code == 0`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// Little-endian encoding (bpfel): register nibbles are `src << 4 | dst`.
    pub const fn to_bytes(&self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [
            self.code,
            (self.src << 4) | (self.dst & 0x0f),
            off[0],
            off[1],
            imm[0],
            imm[1],
            imm[2],
            imm[3],
        ]
    }

    pub const fn from_bytes(b: [u8; 8]) -> Self {
        Insn {
            code: b[0],
            dst: b[1] & 0x0f,
            src: b[1] >> 4,
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}
