//! `merbridge-dev`: the developer tools, kept out of the production `merbridge` binary
//! because they link the test bed (and need its sidecar, workload tools and iptables).
//! `merbridge demo`, `bench`, `asm` and `disasm` start this binary.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod cmd_asm;
mod cmd_bench;
mod cmd_cni_bench;
mod cmd_demo;
mod interrupt;

#[derive(Parser)]
#[command(
    name = "merbridge",
    bin_name = "merbridge",
    version,
    about = "merbridge's developer tools: the eBPF assembler, the demo and the bench"
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
    /// A two-pod mesh on this machine: iptables, then merbridge, side by side (root).
    Demo(cmd_demo::DemoArgs),
    /// Direct vs iptables vs merbridge, data path and control plane, measured (root).
    Bench(cmd_bench::BenchArgs),
    /// `merbridge cni` ADD latency against its budgets (root).
    CniBench(cmd_cni_bench::CniBenchArgs),
    /// Removes what a stopped demo or bench left (started by them when interrupted).
    #[command(hide = true)]
    CleanAfter {
        /// The stopped process.
        pid: u32,
    },
}

fn main() -> ExitCode {
    mb_sys::signal::default_sigpipe();
    let command = Cli::parse().command;
    if matches!(
        command,
        Command::Demo(_) | Command::Bench(_) | Command::CniBench(_)
    ) {
        interrupt::remove_test_bed_when_stopped();
    }
    let result = match command {
        Command::Asm(args) => cmd_asm::run_asm(args),
        Command::Disasm(args) => cmd_asm::run_disasm(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::Bench(args) => cmd_bench::run(args),
        Command::CniBench(args) => cmd_cni_bench::run(args),
        Command::CleanAfter { pid } => interrupt::clean_after(pid),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("merbridge: {message}");
            ExitCode::FAILURE
        }
    }
}
