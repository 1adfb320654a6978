//! `mb-programs`: the merbridge data path, written with `mb-asm`. Pure functions that return
//! program images (instructions + map and constant relocations) and the maps they use; no
//! I/O. The loader's build script calls [`programs`] at build time, so the shipped binary
//! carries bytecode, not the assembler.
#![forbid(unsafe_code)]

pub mod connect;
pub mod ctx;
pub mod emit;
pub mod sockmap;
pub mod sockopt;
pub mod udp;

use emit::Family;
use mb_asm::{AsmError, Program};

pub use mb_maps::datapath::{Hook, MapDecl, MapKind, CONSTANTS, MAPS};

/// Assembles `hook`'s program.
pub fn build(hook: Hook) -> Result<Program, AsmError> {
    match hook {
        Hook::Connect4 => connect::connect(Family::V4),
        Hook::Connect6 => connect::connect(Family::V6),
        Hook::SockOps => sockmap::sockops(),
        Hook::SkMsg => sockmap::msg_redirect(),
        Hook::GetSockopt => sockopt::getsockopt(),
        Hook::Sendmsg4 => connect::sendmsg(Family::V4),
        Hook::Sendmsg6 => connect::sendmsg(Family::V6),
        Hook::Recvmsg4 => udp::recvmsg(Family::V4),
        Hook::Recvmsg6 => udp::recvmsg(Family::V6),
        Hook::Bind4 => udp::bind4(),
    }
}

/// One program of the data path.
#[derive(Clone, Debug)]
pub struct ProgramDef {
    pub hook: Hook,
    pub program: Program,
}

/// Every program of the data path, assembled.
pub fn programs() -> Result<Vec<ProgramDef>, (Hook, AsmError)> {
    Hook::ALL
        .iter()
        .map(|&hook| {
            build(hook)
                .map(|program| ProgramDef { hook, program })
                .map_err(|e| (hook, e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_assembles_and_uses_only_declared_maps_and_constants() {
        let all = programs().unwrap_or_else(|(hook, e)| panic!("{hook:?}: {e}"));
        assert_eq!(all.len(), Hook::ALL.len());
        for def in &all {
            for name in def.program.map_names() {
                assert!(
                    MAPS.iter().any(|m| m.name == name),
                    "{:?} uses undeclared map {name}",
                    def.hook
                );
            }
            for name in def.program.const_names() {
                assert!(
                    CONSTANTS.iter().any(|(c, _)| *c == name),
                    "{:?} uses undeclared constant {name}",
                    def.hook
                );
            }
            assert!(def.hook.program_name().len() <= 15);
        }
    }
}
