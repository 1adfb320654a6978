//! `merbridge pod show IP|ID`: one pod's policy decoded from the maps, field by field.

use super::view::{print_view, Rules};
use crate::cmd::args::PinArgs;
use clap::Args;
use mb_agent::pods::PodMaps;
use mb_maps::layout::PodEntry;
use std::net::IpAddr;
use std::process::ExitCode;

#[derive(Args)]
pub struct PodShowArgs {
    /// One of the pod's addresses, or its id (first column of `pod list`).
    pub pod: String,
    #[command(flatten)]
    pub pin: PinArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PodShowArgs) -> Result<ExitCode, String> {
    let maps = PodMaps::open(&args.pin.pin_dir)?;
    let entry = find_pod(&maps, args.pod.trim())?;
    let mut view = Rules::read(&args.pin.pin_dir)?.view(&entry);
    // The per-process verdicts (the agent's); a data path without those maps has none.
    view.splice = mb_agent::splice::pod_splice(&args.pin.pin_dir, &entry).ok();
    if args.json {
        let json = serde_json::to_string(&view).map_err(|e| format!("pod as JSON: {e}"))?;
        println!("{json}");
    } else {
        print_view(&view);
    }
    Ok(ExitCode::SUCCESS)
}

/// The pod with this address or id.
fn find_pod(maps: &PodMaps, wanted: &str) -> Result<PodEntry, String> {
    let found = if let Ok(ip) = wanted.parse::<IpAddr>() {
        maps.find(ip)?
    } else if let Ok(id) = wanted.parse::<u32>() {
        maps.pods()?.into_iter().find(|p| p.pod_id == id)
    } else {
        return Err(format!(
            "{wanted:?} is neither an address nor a pod id (see `merbridge pod list`)"
        ));
    };
    found.ok_or_else(|| format!("no local pod {wanted} (see `merbridge pod list`)"))
}
