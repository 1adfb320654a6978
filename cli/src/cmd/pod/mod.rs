//! `merbridge pod add/del/list/show`: local pods and their interception policy in the pinned maps.

mod add;
mod list;
mod show;
mod view;

use crate::cmd::args::PinArgs;
use clap::{Args, Subcommand};
use mb_agent::pods::PodMaps;
use std::net::IpAddr;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum PodCommand {
    /// Add (or update) a local pod and its interception policy.
    Add(Box<add::PodAddArgs>),
    /// Remove a local pod by one of its addresses.
    Del(PodDelArgs),
    /// List the local pods in the maps.
    List(list::PodListArgs),
    /// One pod's policy as the data path holds it: ports, ranges, prefixes, switches.
    Show(show::PodShowArgs),
}

#[derive(Args)]
pub struct PodDelArgs {
    /// One of the pod's addresses.
    pub ip: IpAddr,
    #[command(flatten)]
    pub pin: PinArgs,
}

pub fn run(command: PodCommand) -> Result<ExitCode, String> {
    match command {
        PodCommand::Add(args) => add::run(*args),
        PodCommand::Del(args) => del(args),
        PodCommand::List(args) => list::run(args),
        PodCommand::Show(args) => show::run(args),
    }
}

fn del(args: PodDelArgs) -> Result<ExitCode, String> {
    let _write =
        mb_agent::pin_lock::write_lock(&args.pin.pin_dir, mb_agent::pin_lock::WRITE_LOCK_TIMEOUT)?;
    let maps = PodMaps::open(&args.pin.pin_dir)?;
    let Some(entry) = maps.find(args.ip)? else {
        return Err(format!("no local pod has address {}", args.ip));
    };
    // Inbound capture first: a pod without entry must not keep refusing connections.
    mb_agent::inbound::detach_pod(&args.pin.pin_dir, entry.pod_id)?;
    maps.remove_entry(&entry)?;
    println!("merbridge: pod {} removed", args.ip);
    Ok(ExitCode::SUCCESS)
}
