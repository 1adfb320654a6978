//! `merbridge`: the command line and node agent, the one binary of the DaemonSet image.
//! `demo`, `bench`, `asm` and `disasm` are developer tools in a separate binary
//! (`merbridge-dev`, crate mb-devtools) that this one starts, so the image carries no test bed
//! and no assembler (its programs are bytecode already).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::process::ExitCode;

mod cmd;
mod cmd_cni;
mod cmd_dev;
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
    /// Assemble eBPF text (LLVM syntax) into bytecode (runs `merbridge-dev asm`).
    #[command(disable_help_flag = true)]
    Asm {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Disassemble eBPF bytecode into text (runs `merbridge-dev disasm`).
    #[command(disable_help_flag = true)]
    Disasm {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Report what this kernel supports and what merbridge can do on it.
    Probe(cmd_probe::ProbeArgs),
    /// Load the data path and attach it to a cgroup; it stays attached through its pins.
    Load(cmd::load::LoadArgs),
    /// Detach and unpin everything of ours.
    Unload(cmd::unload::UnloadArgs),
    /// Manage local pods and their interception policy in the pinned maps.
    Pod {
        #[command(subcommand)]
        command: cmd::pod::PodCommand,
    },
    /// What is attached where, map fill levels, local pods, counters.
    Status(cmd::status::StatusArgs),
    /// The embedded bytecode, disassembled.
    Dump(cmd::dump::DumpArgs),
    /// A two-pod mesh on this machine: iptables, then merbridge, side by side (root;
    /// runs `merbridge-dev demo`).
    #[command(disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Direct vs iptables vs merbridge, data path and control plane, measured (root; runs
    /// `merbridge-dev bench`).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The chained CNI plugin (run by the container runtime; also as `merbridge-cni`), and
    /// its install step.
    Cni {
        #[command(subcommand)]
        command: Option<cmd_cni::CniCommand>,
    },
    /// Init-container check: fail unless this pod's outbound connect is redirected.
    Validate(cmd_cni::ValidateArgs),
    /// The node agent: watch this node's pods in Kubernetes, keep the maps in sync (root).
    Run(cmd_run::RunArgs),
}

fn main() -> ExitCode {
    mb_sys::signal::default_sigpipe();
    // Installed in the CNI bin dir as `merbridge-cni`, the binary is the plugin.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if invoked_as == mb_agent::cni::config::PLUGIN_TYPE {
        return cmd_cni::run_plugin_mode();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Asm { args } => cmd_dev::run("asm", args),
        Command::Disasm { args } => cmd_dev::run("disasm", args),
        Command::Probe(args) => cmd_probe::run(args),
        Command::Load(args) => cmd::load::run(args),
        Command::Unload(args) => cmd::unload::run(args),
        Command::Pod { command } => cmd::pod::run(command),
        Command::Status(args) => cmd::status::run(args),
        Command::Dump(args) => cmd::dump::run(args),
        Command::Demo { args } => cmd_dev::run("demo", args),
        Command::Bench { args } => cmd_dev::run("bench", args),
        Command::Run(args) => cmd_run::run(args),
        Command::Cni { command: None } => return cmd_cni::run_plugin_mode(),
        Command::Cni {
            command: Some(command),
        } => cmd_cni::run(command),
        Command::Validate(args) => cmd_cni::run_validate(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("merbridge: {message}");
            ExitCode::FAILURE
        }
    }
}
