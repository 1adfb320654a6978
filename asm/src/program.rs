//! [`Program`]: encoded instructions plus the relocations the loader fills in.

use crate::opcode::*;
use crate::Insn;
use std::fmt;

/// What the loader must write into an instruction before loading.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RelocKind {
    /// `BPF_PSEUDO_MAP_FD` 64-bit load: the map's fd goes into the first slot's `imm`.
    MapFd(String),
    /// `BPF_PSEUDO_MAP_VALUE` 64-bit load: the map's fd goes into the first slot's `imm`; the
    /// value offset is already in the second slot's `imm`.
    MapValue(String),
    /// A named constant (port, UID, …) patched into `imm` (both halves for a 64-bit load).
    Const(String),
}

impl RelocKind {
    pub fn name(&self) -> &str {
        match self {
            RelocKind::MapFd(n) | RelocKind::MapValue(n) | RelocKind::Const(n) => n,
        }
    }

    fn is_map(&self) -> bool {
        matches!(self, RelocKind::MapFd(_) | RelocKind::MapValue(_))
    }
}

/// A relocation at instruction slot `slot`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Relocation {
    pub slot: usize,
    pub kind: RelocKind,
}

/// Why a relocation could not be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelocError {
    /// No relocation of that kind has that name.
    UnknownName { kind: &'static str, name: String },
    /// The value does not fit the instruction's immediate.
    DoesNotFit {
        name: String,
        slot: usize,
        value: i128,
        range: &'static str,
    },
    /// A relocation was left unfilled when the final bytecode was asked for.
    Unresolved { slot: usize, kind: RelocKind },
    /// The relocation points at an instruction that cannot carry it.
    BadSlot { slot: usize, message: String },
}

impl fmt::Display for RelocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelocError::UnknownName { kind, name } => write!(
                f,
                "the program has no {kind} named `{name}` (check the name against the program's relocations)"
            ),
            RelocError::DoesNotFit {
                name,
                slot,
                value,
                range,
            } => write!(
                f,
                "instruction {slot}: value {value} for `{name}` does not fit: it must be in {range}"
            ),
            RelocError::Unresolved { slot, kind } => {
                let what = match kind {
                    RelocKind::MapFd(_) => "map",
                    RelocKind::MapValue(_) => "map value",
                    RelocKind::Const(_) => "constant",
                };
                write!(
                    f,
                    "instruction {slot}: unresolved relocation: {what} `{}` was never given a value",
                    kind.name()
                )
            }
            RelocError::BadSlot { slot, message } => write!(f, "instruction {slot}: {message}"),
        }
    }
}

impl std::error::Error for RelocError {}

/// An assembled program: raw slots and the relocations still to fill.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Program {
    pub insns: Vec<Insn>,
    pub relocations: Vec<Relocation>,
}

impl Program {
    /// Little-endian bytecode, 8 bytes per slot (relocated fields hold their placeholders).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.insns.len() * 8);
        for insn in &self.insns {
            out.extend_from_slice(&insn.to_bytes());
        }
        out
    }

    /// Slots from little-endian bytecode (no relocations). The length must be a multiple of 8.
    pub fn from_bytes(bytes: &[u8]) -> Result<Program, String> {
        let chunks = bytes.chunks_exact(8);
        if !chunks.remainder().is_empty() {
            return Err(format!(
                "bytecode length {} is not a multiple of 8 (one instruction is 8 bytes)",
                bytes.len()
            ));
        }
        let insns = chunks
            .map(|c| Insn::from_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        Ok(Program {
            insns,
            relocations: Vec::new(),
        })
    }

    /// Names of the maps this program refers to, in first-use order, without repeats.
    pub fn map_names(&self) -> Vec<&str> {
        self.names(|k| k.is_map())
    }

    /// Names of the constants this program needs, in first-use order, without repeats.
    pub fn const_names(&self) -> Vec<&str> {
        self.names(|k| matches!(k, RelocKind::Const(_)))
    }

    fn names(&self, keep: impl Fn(&RelocKind) -> bool) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in self.relocations.iter().filter(|r| keep(&r.kind)) {
            if !out.contains(&r.kind.name()) {
                out.push(r.kind.name());
            }
        }
        out
    }

    /// A copy with every map relocation named `name` filled with `fd` (and removed from the
    /// relocation list).
    pub fn relocate_map(&self, name: &str, fd: i32) -> Result<Program, RelocError> {
        let mut out = self.clone();
        let mut found = false;
        for r in self
            .relocations
            .iter()
            .filter(|r| r.kind.is_map() && r.kind.name() == name)
        {
            found = true;
            let insn = out.slot_mut(r.slot)?;
            if insn.code != BPF_LD | BPF_DW | BPF_IMM {
                return Err(RelocError::BadSlot {
                    slot: r.slot,
                    message: format!("map relocation `{name}` is not on a 64-bit load"),
                });
            }
            insn.imm = fd;
        }
        if !found {
            return Err(RelocError::UnknownName {
                kind: "map",
                name: name.into(),
            });
        }
        out.relocations
            .retain(|r| !(r.kind.is_map() && r.kind.name() == name));
        Ok(out)
    }

    /// A copy with every constant relocation named `name` set to `value`.
    ///
    /// Ranges: 64-bit loads take any `i64`/`u64` bit pattern (pass `u64` as `value as i64`);
    /// 32-bit ALU, JMP32 and u8-u32 store immediates take `-2^31 ..= 2^32-1`; 64-bit ALU, JMP
    /// and u64 store immediates are sign-extended by the CPU, so they take `-2^31 ..= 2^31-1`.
    pub fn relocate_const(&self, name: &str, value: i64) -> Result<Program, RelocError> {
        let mut out = self.clone();
        let mut found = false;
        for r in self
            .relocations
            .iter()
            .filter(|r| matches!(&r.kind, RelocKind::Const(n) if n == name))
        {
            found = true;
            let slot = r.slot;
            let code = out.slot_mut(slot)?.code;
            let does_not_fit = |range| RelocError::DoesNotFit {
                name: name.into(),
                slot,
                value: i128::from(value),
                range,
            };
            if code == BPF_LD | BPF_DW | BPF_IMM {
                if slot + 1 >= out.insns.len() {
                    return Err(RelocError::BadSlot {
                        slot,
                        message: "64-bit load is missing its second slot".into(),
                    });
                }
                out.insns[slot].imm = value as u64 as u32 as i32;
                out.insns[slot + 1].imm = ((value as u64) >> 32) as u32 as i32;
                continue;
            }
            // Sign-extended to 64 bits by the CPU: only the i32 range keeps the value.
            let wide =
                matches!(class(code), BPF_ALU64 | BPF_JMP) || code == BPF_ST | BPF_MEM | BPF_DW;
            // ALU and JMP take an immediate in the `BPF_K` form; stores of an immediate always
            // do (their size bits overlap the source bit, so it must not be tested there).
            let has_imm = class(code) == BPF_ST
                || (matches!(class(code), BPF_ALU | BPF_ALU64 | BPF_JMP | BPF_JMP32)
                    && src(code) == BPF_K);
            if !has_imm {
                return Err(RelocError::BadSlot {
                    slot,
                    message: format!(
                        "constant `{name}` is on opcode {code:#04x}, which has no immediate operand"
                    ),
                });
            }
            let imm = if wide {
                i32::try_from(value).map_err(|_| does_not_fit("-2147483648 ..= 2147483647"))?
            } else if (i64::from(i32::MIN)..=i64::from(u32::MAX)).contains(&value) {
                value as u32 as i32
            } else {
                return Err(does_not_fit("-2147483648 ..= 4294967295"));
            };
            out.insns[slot].imm = imm;
        }
        if !found {
            return Err(RelocError::UnknownName {
                kind: "constant",
                name: name.into(),
            });
        }
        out.relocations
            .retain(|r| !matches!(&r.kind, RelocKind::Const(n) if n == name));
        Ok(out)
    }

    /// The final slots, or an error naming the first relocation nobody filled.
    pub fn resolved_insns(&self) -> Result<&[Insn], RelocError> {
        match self.relocations.first() {
            Some(r) => Err(RelocError::Unresolved {
                slot: r.slot,
                kind: r.kind.clone(),
            }),
            None => Ok(&self.insns),
        }
    }

    fn slot_mut(&mut self, slot: usize) -> Result<&mut Insn, RelocError> {
        self.insns.get_mut(slot).ok_or(RelocError::BadSlot {
            slot,
            message: "relocation points past the end of the program".into(),
        })
    }
}
