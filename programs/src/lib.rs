//! `mb-programs`: the merbridge data path, written with `mb-asm`. Pure functions that return
//! program images (instructions + map and constant relocations) and the maps they use; no
//! I/O. The loader's build script calls [`programs`] at build time, so the shipped binary
//! carries bytecode, not the assembler.
#![forbid(unsafe_code)]

pub mod connect;
pub mod ctx;
pub mod emit;
pub mod frame;
pub mod sklookup;
pub mod sockmap;
pub mod sockopt;
pub mod udp;

use emit::Family;
pub use emit::Variant;
use frame::Frame;
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

/// `hook`'s stack layout: the one table of the slots its program uses (all variants).
pub fn frame(hook: Hook) -> Frame {
    match hook {
        Hook::Connect4 | Hook::Connect6 => connect::CONNECT_FRAME,
        Hook::SockOps => sockmap::SOCKOPS_FRAME,
        Hook::SkMsg => sockmap::SK_MSG_FRAME,
        Hook::GetSockopt => sockopt::FRAME,
        Hook::Sendmsg4 | Hook::Sendmsg6 => connect::SENDMSG_FRAME,
        Hook::Recvmsg4 | Hook::Recvmsg6 => udp::RECVMSG_FRAME,
        Hook::Bind4 => udp::BIND_FRAME,
        Hook::SkLookup => sklookup::FRAME,
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

    /// Stack accesses of a program: `(offset, length)` of each load/store through the frame
    /// pointer, and `(offset, 1)` for each pointer into the stack (`rX = fp; rX += off`, the
    /// keys and values handed to helpers).
    fn stack_accesses(program: &mb_asm::Program) -> Vec<(i16, i16)> {
        const FP: u8 = 10;
        let insns = &program.insns;
        let mut out = Vec::new();
        for (i, insn) in insns.iter().enumerate() {
            let len = match insn.code & 0x18 {
                0x00 => 4,
                0x08 => 2,
                0x10 => 1,
                _ => 8,
            };
            match insn.code & 0x07 {
                0x01 if insn.src == FP => out.push((insn.off, len)),
                0x02 | 0x03 if insn.dst == FP => out.push((insn.off, len)),
                // mov64 rX, fp: the next instruction must add the slot's offset.
                0x07 if insn.code == 0xbf && insn.src == FP => match insns.get(i + 1) {
                    Some(add) if add.code == 0x07 && add.dst == insn.dst => {
                        out.push((add.imm as i16, 1))
                    }
                    _ => out.push((0, 1)),
                },
                _ => {}
            }
        }
        out
    }

    #[test]
    fn every_frame_table_is_sound() {
        for hook in Hook::ALL {
            frame(hook)
                .check()
                .unwrap_or_else(|e| panic!("{hook:?}: {e}"));
        }
    }

    /// The tables are the truth: every stack byte a program touches lies in a slot of its
    /// table, and every slot of the table is touched (by one of the hook's variants).
    #[test]
    fn every_stack_access_lies_in_a_declared_slot_and_every_slot_is_used() {
        let all = programs().unwrap_or_else(|(hook, e)| panic!("{hook:?}: {e}"));
        let mut problems = Vec::new();
        for hook in Hook::ALL {
            let table = frame(hook);
            let mut used = std::collections::BTreeSet::new();
            for def in all.iter().filter(|d| d.hook == hook) {
                for (off, len) in stack_accesses(&def.program) {
                    if table.slot_holding(off, len).is_none() {
                        problems.push(format!(
                            "{hook:?} {:?}: fp{off:+} ({len} bytes) is in no declared slot",
                            def.variant
                        ));
                    }
                    // Every slot holding the bytes is used (the slots of a union share them).
                    for s in table.slots.iter().filter(|s| s.holds(off, len)) {
                        used.insert(s.name);
                    }
                }
            }
            for s in table.slots.iter().filter(|s| !used.contains(s.name)) {
                problems.push(format!(
                    "{hook:?}: slot {} is declared but never used",
                    s.name
                ));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

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
