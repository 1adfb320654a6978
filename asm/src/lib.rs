//! `mb-asm`: the eBPF instruction set as the kernel's instruction-set document defines it.
//!
//! [`Insn`] is one raw 8-byte instruction slot exactly as the kernel reads it
//! (`struct bpf_insn`). Everything else in this crate (builder, text, printer) is built on it.
#![forbid(unsafe_code)]

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
