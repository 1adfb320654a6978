//! `merbridge dump`: the embedded bytecode, disassembled, or with `--stats` each program's
//! size and the verifier's processed-instruction count.

use clap::Args;
use mb_asm::text::{fmt_kernel, fmt_llvm};
use mb_loader::datapath::{embedded, MeshConstants};
use mb_maps::datapath::{Hook, MAPS, SPLICE_SIDECARS};
use mb_maps::Map;
use std::process::ExitCode;

#[derive(Args)]
pub struct DumpArgs {
    /// One program (e.g. mb_connect4 or connect4); all when omitted.
    pub program: Option<String>,
    /// Print in the kernel verifier's / bpftool's syntax instead of LLVM's.
    #[arg(long)]
    pub kernel: bool,
    /// Per program: instruction count and the verifier's processed-instruction count (loads
    /// each program into the kernel, attaches nothing; needs root).
    #[arg(long)]
    pub stats: bool,
}

pub fn run(args: DumpArgs) -> Result<ExitCode, String> {
    let hooks = selected_hooks(args.program.as_deref())?;
    if args.stats {
        return dump_stats(&hooks);
    }
    for hook in hooks {
        let program = embedded(hook).program();
        println!("; {} — {}", hook.program_name(), hook.purpose());
        let text = if args.kernel {
            fmt_kernel(&program)
        } else {
            fmt_llvm(&program)
        }
        .map_err(|e| format!("{}: {e}", hook.program_name()))?;
        print!("{text}");
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// The program named (with or without its `mb_` prefix), or all of them.
fn selected_hooks(name: Option<&str>) -> Result<Vec<Hook>, String> {
    let Some(name) = name else {
        return Ok(Hook::ALL.to_vec());
    };
    let wanted = name.trim_start_matches("mb_");
    let found: Vec<Hook> = Hook::ALL
        .into_iter()
        .filter(|h| h.program_name().trim_start_matches("mb_") == wanted)
        .collect();
    if found.is_empty() {
        let names: Vec<&str> = Hook::ALL.iter().map(|h| h.program_name()).collect();
        return Err(format!(
            "no program named {name:?}: choose one of {}",
            names.join(", ")
        ));
    }
    Ok(found)
}

fn dump_stats(hooks: &[Hook]) -> Result<ExitCode, String> {
    let maps = scratch_maps()?;
    println!("{:<14} {:>6} {:>10}", "program", "insns", "processed");
    for &hook in hooks {
        let insns = relocated_bytecode(hook, &maps)?;
        let processed = verifier_processed(hook, &insns)?;
        println!(
            "{:<14} {:>6} {:>10}",
            hook.program_name(),
            insns.len(),
            processed
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Small real maps of every declared shape, for the programs' relocations (needs root).
fn scratch_maps() -> Result<Vec<(&'static str, Map)>, String> {
    MAPS.iter()
        .map(|d| {
            Map::create(&d.spec_with(d.max_entries.min(64)))
                .map(|m| (d.name, m))
                .map_err(|e| format!("creating a scratch map {}: {e} (needs root)", d.name))
        })
        .collect()
}

/// `hook`'s program with the scratch maps and Istio's numbers filled in, as bytecode.
fn relocated_bytecode(hook: Hook, maps: &[(&str, Map)]) -> Result<Vec<[u8; 8]>, String> {
    use std::os::fd::{AsFd, AsRawFd};
    let consts = MeshConstants {
        outbound_port: 15001,
        inbound_port: 15006,
        proxy_uid: 1337,
        dns_port: 15053,
        splice_mode: SPLICE_SIDECARS,
    }
    .relocations();
    let mut program = embedded(hook).program();
    for (name, map) in maps {
        if program.map_names().contains(name) {
            program = program
                .relocate_map(name, map.raw().as_fd().as_raw_fd())
                .map_err(|e| e.to_string())?;
        }
    }
    for (name, value) in consts {
        if program.const_names().contains(&name) {
            program = program
                .relocate_const(name, value)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(program.insns.iter().map(|i| i.to_bytes()).collect())
}

/// Loads the program (attaching nothing) and reads the verifier's "processed N insns".
fn verifier_processed(hook: Hook, insns: &[[u8; 8]]) -> Result<String, String> {
    use mb_sys::bpf::{prog_load, ProgLoad, VerifierLog};
    let mut log = VerifierLog::new(1 << 20, 1);
    prog_load(
        &ProgLoad {
            prog_type: hook.prog_type(),
            expected_attach_type: hook.expected_attach_type(),
            insns,
            license: "GPL",
            name: hook.program_name(),
            prog_flags: 0,
        },
        Some(&mut log),
    )
    .map_err(|e| format!("{}: {e}\n{}", hook.program_name(), log.text()))?;
    let text = log.text();
    Ok(text
        .split("processed ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_string())
}
