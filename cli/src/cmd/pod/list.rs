//! `merbridge pod list`: the local pods in the maps, one line each, or (`--json`) each with
//! its whole decoded policy.

use super::view::Rules;
use crate::cmd::args::PinArgs;
use clap::Args;
use mb_agent::pods::{entry_ips, PodMaps};
use std::process::ExitCode;

#[derive(Args)]
pub struct PodListArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Every pod with its decoded policy, as a JSON array (the fields of `pod show`).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PodListArgs) -> Result<ExitCode, String> {
    let maps = PodMaps::open(&args.pin.pin_dir)?;
    let pods = maps.pods()?;
    // Read once, every key checked: a rule map that cannot be read is an error, not 0 rules.
    let rules = Rules::read(&args.pin.pin_dir)?;
    if args.json {
        // The per-process verdicts, as `pod show` gives them (none without those maps).
        let mut splice = mb_agent::splice::PodSpliceReader::open(&args.pin.pin_dir).ok();
        let views: Vec<_> = pods
            .iter()
            .map(|p| {
                let mut view = rules.view(p);
                view.splice = splice.as_mut().map(|r| r.pod(p));
                view
            })
            .collect();
        let json = serde_json::to_string(&views).map_err(|e| format!("pods as JSON: {e}"))?;
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<4} {:<34} {:<20} {:<8} rules",
        "id", "addresses", "netns cookie", "flags"
    );
    for p in pods {
        let ips: Vec<String> = entry_ips(&p).iter().map(|i| i.to_string()).collect();
        let (ports, cidrs) = rules.key_counts(p.pod_id);
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
