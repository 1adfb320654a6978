//! Errors of [`Asm::finish`](crate::Asm::finish).

use crate::check::Issue;
use std::fmt;

/// Why a built program was rejected. Every variant names the instruction (slot index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsmError {
    /// A jump or call refers to a label that was never bound.
    UnboundLabel { insn: usize, label: usize },
    /// A label was bound twice.
    LabelBoundTwice {
        label: usize,
        first: usize,
        second: usize,
    },
    /// The jump distance does not fit the offset field (16-bit, or 32-bit for `gotol`/calls).
    JumpOutOfRange { insn: usize, offset: i64, bits: u32 },
    /// An operand value that no instruction encodes (e.g. `movsx` from 7 bits).
    InvalidOperand { insn: usize, message: String },
    /// A relocation name that cannot be resolved (empty or not an identifier).
    BadRelocationName { insn: usize, name: String },
    /// A whole-program structural problem.
    Structure(Issue),
}

impl AsmError {
    /// The slot index the error is about.
    pub fn insn(&self) -> usize {
        match self {
            AsmError::UnboundLabel { insn, .. }
            | AsmError::JumpOutOfRange { insn, .. }
            | AsmError::InvalidOperand { insn, .. }
            | AsmError::BadRelocationName { insn, .. } => *insn,
            AsmError::LabelBoundTwice { second, .. } => *second,
            AsmError::Structure(issue) => issue.insn(),
        }
    }
}

impl fmt::Display for AsmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsmError::UnboundLabel { insn, label } => write!(
                f,
                "instruction {insn}: jumps to label #{label}, which is never bound (call `bind` on it)"
            ),
            AsmError::LabelBoundTwice {
                label,
                first,
                second,
            } => write!(
                f,
                "instruction {second}: label #{label} bound a second time (first bound at instruction {first})"
            ),
            AsmError::JumpOutOfRange { insn, offset, bits } => write!(
                f,
                "instruction {insn}: jump offset {offset} does not fit in a signed {bits}-bit field{}",
                if *bits == 16 { " (use `gotol` for long jumps)" } else { "" }
            ),
            AsmError::InvalidOperand { insn, message } => write!(f, "instruction {insn}: {message}"),
            AsmError::BadRelocationName { insn, name } => write!(
                f,
                "instruction {insn}: relocation name `{name}` is not an identifier (letters, digits, `_`, `.`; not starting with a digit)"
            ),
            AsmError::Structure(issue) => issue.fmt(f),
        }
    }
}

impl std::error::Error for AsmError {}
