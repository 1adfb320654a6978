//! `merbridge`: the command line and node agent.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd_asm;
mod cmd_probe;

#[derive(Parser)]
#[command(
    name = "merbridge",
    version,
    about = "eBPF traffic interception for service meshes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Assemble eBPF text (LLVM syntax) into bytecode.
    Asm(cmd_asm::AsmArgs),
    /// Disassemble eBPF bytecode into text.
    Disasm(cmd_asm::DisasmArgs),
    /// Report what this kernel supports and what merbridge can do on it.
    Probe(cmd_probe::ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Asm(args) => cmd_asm::run_asm(args),
        Command::Disasm(args) => cmd_asm::run_disasm(args),
        Command::Probe(args) => cmd_probe::run(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("merbridge: {message}");
            ExitCode::FAILURE
        }
    }
}
