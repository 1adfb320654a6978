//! `merbridge`: the command line and node agent.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod cmd_asm;
mod cmd_bench;
mod cmd_datapath;
mod cmd_demo;
mod cmd_probe;
mod cmd_run;

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
    /// Load the data path and attach it to a cgroup; it stays attached through its pins.
    Load(cmd_datapath::LoadArgs),
    /// Detach and unpin everything of ours.
    Unload(cmd_datapath::UnloadArgs),
    /// Manage local pods and their interception policy in the pinned maps.
    Pod {
        #[command(subcommand)]
        command: cmd_datapath::PodCommand,
    },
    /// What is attached where, map fill levels, local pods, counters.
    Status(cmd_datapath::StatusArgs),
    /// The embedded bytecode, disassembled.
    Dump(cmd_datapath::DumpArgs),
    /// A two-pod mesh on this machine: iptables, then merbridge, side by side (root).
    Demo(cmd_demo::DemoArgs),
    /// Direct vs iptables vs merbridge, data path and control plane, measured (root).
    Bench(cmd_bench::BenchArgs),
    /// The node agent: watch this node's pods in Kubernetes, keep the maps in sync (root).
    Run(cmd_run::RunArgs),
}

fn main() -> ExitCode {
    mb_sys::signal::default_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Asm(args) => cmd_asm::run_asm(args),
        Command::Disasm(args) => cmd_asm::run_disasm(args),
        Command::Probe(args) => cmd_probe::run(args),
        Command::Load(args) => cmd_datapath::run_load(args),
        Command::Unload(args) => cmd_datapath::run_unload(args),
        Command::Pod { command } => cmd_datapath::run_pod(command),
        Command::Status(args) => cmd_datapath::run_status(args),
        Command::Dump(args) => cmd_datapath::run_dump(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::Bench(args) => cmd_bench::run(args),
        Command::Run(args) => cmd_run::run(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("merbridge: {message}");
            ExitCode::FAILURE
        }
    }
}
