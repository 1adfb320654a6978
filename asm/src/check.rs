//! Whole-program structural checks, shared by the builder (errors) and the text assembler
//! (warnings unless `--strict`).

use crate::op::{DecodeError, Op};
use crate::{Insn, Reg};
use std::fmt;

/// A structural problem at slot `insn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Issue {
    /// The program has no instructions.
    Empty,
    /// The slots do not decode.
    Invalid(DecodeError),
    /// A jump or call lands outside the program.
    JumpOutside { insn: usize, target: i64 },
    /// A jump lands on the second slot of a 64-bit immediate load.
    JumpIntoLdImm64 { insn: usize, target: usize },
    /// The instruction writes the read-only frame pointer r10.
    WriteToFramePointer { insn: usize },
    /// The last instruction is neither `exit` nor an unconditional jump.
    FallThrough { insn: usize },
}

impl Issue {
    /// The slot the issue is about (0 for an empty program).
    pub fn insn(&self) -> usize {
        match self {
            Issue::Empty => 0,
            Issue::Invalid(e) => e.slot,
            Issue::JumpOutside { insn, .. }
            | Issue::JumpIntoLdImm64 { insn, .. }
            | Issue::WriteToFramePointer { insn }
            | Issue::FallThrough { insn } => *insn,
        }
    }

    /// The message without the instruction number.
    pub fn message(&self) -> String {
        match self {
            Issue::Empty => "the program is empty: it needs at least `exit`".into(),
            Issue::Invalid(e) => e.message.clone(),
            Issue::JumpOutside { target, .. } => format!(
                "jump target {target} is outside the program (a label bound after the last \
                 instruction, or a wrong offset)"
            ),
            Issue::JumpIntoLdImm64 { target, .. } => {
                format!("jump target {target} is the second half of a 64-bit immediate load")
            }
            Issue::WriteToFramePointer { .. } => {
                "writes r10, the read-only frame pointer; use another register".into()
            }
            Issue::FallThrough { .. } => {
                "the last instruction falls through past the end of the program: end with \
                 `exit` or an unconditional jump"
                    .into()
            }
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instruction {}: {}", self.insn(), self.message())
    }
}

/// Every structural issue of `slots`, in slot order. Undecodable slots stop the check.
pub fn check(slots: &[Insn]) -> Vec<Issue> {
    if slots.is_empty() {
        return vec![Issue::Empty];
    }
    let decoded = match Op::decode_all(slots) {
        Ok(d) => d,
        Err(e) => return vec![Issue::Invalid(e)],
    };
    let mut second_halves = vec![false; slots.len()];
    for (at, op) in &decoded {
        if op.width() == 2 {
            second_halves[at + 1] = true;
        }
    }
    let mut issues = Vec::new();
    for &(at, op) in &decoded {
        if let Some(offset) = op.branch_offset() {
            let target = at as i64 + 1 + offset;
            if target < 0 || target >= slots.len() as i64 {
                issues.push(Issue::JumpOutside { insn: at, target });
            } else if second_halves[target as usize] {
                issues.push(Issue::JumpIntoLdImm64 {
                    insn: at,
                    target: target as usize,
                });
            }
        }
        if op.written_register() == Some(Reg::FP) {
            issues.push(Issue::WriteToFramePointer { insn: at });
        }
    }
    if let Some(&(at, last)) = decoded.last() {
        if !matches!(last, Op::Exit | Op::Ja { .. } | Op::Gotol { .. }) {
            issues.push(Issue::FallThrough { insn: at });
        }
    }
    issues
}
