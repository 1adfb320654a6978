//! `merbridge pod list`: the local pods in the maps, one line each.

use crate::cmd::args::PinArgs;
use clap::Args;
use mb_agent::pods::{entry_ips, PodMaps};
use std::process::ExitCode;

#[derive(Args)]
pub struct PodListArgs {
    #[command(flatten)]
    pub pin: PinArgs,
}

pub fn run(args: PodListArgs) -> Result<ExitCode, String> {
    let maps = PodMaps::open(&args.pin.pin_dir)?;
    let pods = maps.pods()?;
    println!(
        "{:<4} {:<34} {:<20} {:<8} rules",
        "id", "addresses", "netns cookie", "flags"
    );
    for p in pods {
        let ips: Vec<String> = entry_ips(&p).iter().map(|i| i.to_string()).collect();
        let (ports, cidrs) = maps.rule_counts(p.pod_id);
        println!(
            "{:<4} {:<34} {:<20} {:#06x}   {ports} port, {cidrs} cidr",
            p.pod_id,
            ips.join(","),
            p.netns,
            p.flags
        );
    }
    Ok(ExitCode::SUCCESS)
}
