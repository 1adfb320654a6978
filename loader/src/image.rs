//! [`ProgramImage`]: what the loader needs to turn bytecode into a running program. Plain data
//! (the data path's build script generates these), so loading needs no assembler at run time.

use mb_asm::Program;
use mb_sys::bpf::{AttachType, ProgType};

/// An assembled program plus the metadata the kernel wants at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramImage {
    /// Shown in errors and `bpftool prog`; the kernel keeps the first 15 characters.
    pub name: String,
    pub prog_type: ProgType,
    /// Required by cgroup sock_addr and sockopt programs (and checked again at attach).
    pub expected_attach_type: Option<AttachType>,
    /// "GPL" unlocks GPL-only helpers.
    pub license: String,
    /// Instructions and the map / constant relocations still to fill.
    pub program: Program,
}

impl ProgramImage {
    pub fn new(
        name: &str,
        prog_type: ProgType,
        expected_attach_type: Option<AttachType>,
        program: Program,
    ) -> ProgramImage {
        ProgramImage {
            name: name.to_string(),
            prog_type,
            expected_attach_type,
            license: "GPL".to_string(),
            program,
        }
    }

    /// "connect4 (cgroup_sock_addr, cgroup_inet4_connect)" — for messages.
    pub fn describe(&self) -> String {
        match self.expected_attach_type {
            Some(a) => format!("{} ({}, {a})", self.name, self.prog_type),
            None => format!("{} ({})", self.name, self.prog_type),
        }
    }
}
