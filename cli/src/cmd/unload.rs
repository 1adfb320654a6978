//! `merbridge unload`: detach and unpin everything of ours.

use super::args::{cgroup_or_root, PinArgs};
use clap::Args;
use mb_loader::datapath::unload_datapath;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct UnloadArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Also detach programs attached without links on this cgroup (default: the root).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

pub fn run(args: UnloadArgs) -> Result<ExitCode, String> {
    let cgroup = cgroup_or_root(&args.cgroup)?;
    let report = unload_datapath(&args.pin.pin_dir, Some(&cgroup)).map_err(|e| e.to_string())?;
    println!(
        "merbridge: unloaded: {} links detached ({} pod inbound links), {} legacy attachments detached, sk_msg {}, {} pins removed",
        report.links_detached + report.inbound_detached,
        report.inbound_detached,
        report.legacy_detached,
        if report.sk_msg_detached { "detached" } else { "not attached" },
        report.pins_removed
    );
    Ok(ExitCode::SUCCESS)
}
