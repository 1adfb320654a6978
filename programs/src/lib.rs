//! `mb-programs`: the merbridge data path, written with `mb-asm`. Pure functions that return
//! program images (instructions + map and constant relocations) and the maps they use; no
//! I/O. The loader's build script calls [`programs`] at build time, so the shipped binary
//! carries bytecode, not the assembler.
#![forbid(unsafe_code)]

pub mod connect;
pub mod ctx;
pub mod emit;
pub mod sklookup;
pub mod sockmap;
pub mod sockopt;
pub mod udp;

use emit::Family;
pub use emit::Variant;
use mb_asm::{AsmError, Program};

pub use mb_maps::datapath::{Hook, MapDecl, MapKind, CONSTANTS, MAPS};

/// Whether `hook`'s program differs between [`Variant`]s.
pub fn has_variants(hook: Hook) -> bool {
    matches!(
        hook,
        Hook::Connect4 | Hook::Connect6 | Hook::SockOps | Hook::SkMsg | Hook::GetSockopt
    )
}

/// Assembles `hook`'s program.
pub fn build(hook: Hook, variant: Variant) -> Result<Program, AsmError> {
    match hook {
        Hook::Connect4 => connect::connect(Family::V4, variant),
        Hook::Connect6 => connect::connect(Family::V6, variant),
        Hook::SockOps => sockmap::sockops(variant),
        Hook::SkMsg => sockmap::msg_redirect(variant),
        Hook::GetSockopt => sockopt::getsockopt(variant),
        Hook::Sendmsg4 => connect::sendmsg(Family::V4),
        Hook::Sendmsg6 => connect::sendmsg(Family::V6),
        Hook::Recvmsg4 => udp::recvmsg(Family::V4),
        Hook::Recvmsg6 => udp::recvmsg(Family::V6),
        Hook::Bind4 => udp::bind4(),
        Hook::SkLookup => sklookup::sk_lookup(),
    }
}

/// One program of the data path.
#[derive(Clone, Debug)]
pub struct ProgramDef {
    pub hook: Hook,
    pub variant: Variant,
    pub program: Program,
}

/// Every program of the data path, assembled: each hook with netns keys, and the hooks that
/// differ also in the bind-source variant.
pub fn programs() -> Result<Vec<ProgramDef>, (Hook, AsmError)> {
    let mut out = Vec::new();
    for hook in Hook::ALL {
        let variants: &[Variant] = if has_variants(hook) {
            &[Variant::NETNS_KEYS, Variant::BIND_SOURCE]
        } else {
            &[Variant::NETNS_KEYS]
        };
        for &variant in variants {
            let program = build(hook, variant).map_err(|e| (hook, e))?;
            out.push(ProgramDef {
                hook,
                variant,
                program,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_assembles_and_uses_only_declared_maps_and_constants() {
        let all = programs().unwrap_or_else(|(hook, e)| panic!("{hook:?}: {e}"));
        assert_eq!(all.len(), Hook::ALL.len() + 5);
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
