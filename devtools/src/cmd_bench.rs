//! `merbridge bench`: direct vs iptables vs merbridge on this machine (root), data path and
//! control plane, with a table, JSON and an SVG chart. See `crate::bench`.

use crate::bench::{self, env::Pinning, env::Topology, report};
use clap::Args;
use mb_testbed::scenarios::Binaries;
use mb_testbed::sidecar::SidecarKind;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct BenchArgs {
    /// Small counts, one round, 1,000 pods for the control plane: well under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Rounds per setup (interleaved; medians are reported). Default 9, 1 with --quick.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG chart (latency distribution, throughput and connection-rate bars) to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Pin client, sidecars and server app to CPUs: `CLIENT,SIDECAR,SERVER`, e.g. `0,1,0`.
    #[arg(long, value_name = "C,S,S")]
    pub pin: Option<String>,
    /// Skip the extra `--splice all` merbridge setup (it runs by default without --quick).
    #[arg(long)]
    pub no_splice_all: bool,
    /// Add a merbridge setup with `--splice none` (what the sockhash gains or costs).
    #[arg(long)]
    pub splice_none: bool,
    /// Only this topology (repeat for several): outbound, same-node, cross-node.
    #[arg(long, value_name = "NAME")]
    pub topology: Vec<String>,
    /// Pods for the control plane (largest N) and for the many-pods setup (default 10,000;
    /// 1,000 with --quick).
    #[arg(long, value_name = "N")]
    pub pods: Option<u32>,
    /// The sidecar in every meshed pod: this project's reference sidecar, or Debian's HAProxy
    /// (`apt-get install haproxy`; started by the bench with its own configuration).
    #[arg(long, value_enum, default_value_t = SidecarKind::Reference)]
    pub sidecar: SidecarKind,
    /// Instead of the comparison: faults injected under a steady load, counted (agent
    /// SIGKILL + restart, in-place reload, two agents, pod netns deleted, bpffs unmounted).
    #[arg(long)]
    pub faults: bool,
    /// With --faults: new connections per second (default 1,000; 200 with --quick).
    #[arg(long, value_name = "N")]
    pub rate: Option<u32>,
    /// With --faults: seconds of load (default 30; 12 with --quick).
    #[arg(long, value_name = "S")]
    pub seconds: Option<u64>,
    /// With --faults: seconds the API server stays down (default 60; 3 with --quick).
    #[arg(long, value_name = "S")]
    pub api_outage_secs: Option<u64>,
}

/// `--faults`: the fault suite's table (and JSON).
fn run_faults(args: &BenchArgs, bins: &Binaries, command: &str) -> Result<ExitCode, String> {
    let plan = bench::faults::FaultPlan {
        rate: args.rate.unwrap_or(if args.quick { 200 } else { 1000 }),
        seconds: args.seconds.unwrap_or(if args.quick { 12 } else { 30 }),
        api_outage_secs: args
            .api_outage_secs
            .unwrap_or(if args.quick { 3 } else { 60 }),
    };
    if plan.rate == 0 || plan.seconds < 6 {
        return Err("--faults needs --rate of at least 1 and --seconds of at least 6".into());
    }
    let started = std::time::Instant::now();
    let report = bench::faults::run(&plan, bins, &|line| {
        eprintln!("{:>6.1}s {line}", started.elapsed().as_secs_f64())
    })?;
    print!("{}", report.table());
    let mut json = report.json();
    json["command"] = command.into();
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{json}\n"))
            .map_err(|e| format!("write the JSON report to {}: {e}", path.display()))?;
    }
    if report.clean() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err("connections failed or bypassed a sidecar during a fault the design absorbs".into())
    }
}

fn parse_pinning(text: &str) -> Result<Pinning, String> {
    let cpus: Vec<usize> = text
        .split(',')
        .map(|c| {
            c.trim().parse::<usize>().map_err(|_| {
                format!("--pin {text:?}: {c:?} is not a CPU number (want CLIENT,SIDECAR,SERVER, e.g. 0,1,0)")
            })
        })
        .collect::<Result<_, _>>()?;
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(c) = cpus.iter().find(|&&c| c >= available) {
        return Err(format!(
            "--pin {text:?}: CPU {c} does not exist here (CPUs 0..{})",
            available - 1
        ));
    }
    match cpus[..] {
        [client, sidecar, server] => Ok(Pinning {
            client: Some(client),
            sidecar: Some(sidecar),
            server: Some(server),
        }),
        _ => Err(format!(
            "--pin {text:?}: give three CPUs, CLIENT,SIDECAR,SERVER (e.g. 0,1,0)"
        )),
    }
}

pub fn run(args: BenchArgs) -> Result<ExitCode, String> {
    let pinning = match &args.pin {
        Some(p) => parse_pinning(p)?,
        None => Pinning::default(),
    };
    if !mb_sys::testing::is_root() {
        return Err(
            "the bench builds network namespaces and cgroups, installs iptables rules \
                    and loads eBPF programs: run it as root"
                .into(),
        );
    }
    let bins = Binaries::find().map_err(|e| {
        format!("{e}\nthe bench runs the test bed's sidecar and workloads: build them with `cargo build --release --workspace`")
    })?;
    let command: Vec<String> = std::env::args().collect();
    let command = command.join(" ");
    if args.faults {
        return run_faults(&args, &bins, &command);
    }
    let topologies = args
        .topology
        .iter()
        .map(|name| {
            Topology::from_name(name).ok_or_else(|| {
                format!("--topology {name:?}: not a topology (outbound, same-node, cross-node)")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if args.pods == Some(0) {
        return Err("--pods 0: give at least one pod".into());
    }
    let mut plan = bench::Plan::new(
        args.quick,
        args.rounds,
        !args.quick && !args.no_splice_all,
        args.splice_none,
        pinning,
        &topologies,
        args.pods,
    );
    plan.sidecar = args.sidecar;
    eprintln!(
        "merbridge bench: {} environments x {} rounds, then the control plane up to {} pods",
        plan.setups.len(),
        plan.rounds,
        plan.control_plane_pods
    );
    let started = std::time::Instant::now();
    let results = bench::run(&plan, &bins, &|line| {
        eprintln!("{:>6.1}s {line}", started.elapsed().as_secs_f64())
    });
    print!("{}", report::table(&results));
    if let Some(path) = &args.json {
        let json = report::to_json(&results, &command);
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| format!("encode the JSON report: {e}"))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("write the JSON report to {}: {e}", path.display()))?;
        println!("JSON: {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::to_svg(&results))
            .map_err(|e| format!("write the SVG chart to {}: {e}", path.display()))?;
        println!("SVG: {}", path.display());
    }
    let problems = results.problems();
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        eprintln!("merbridge bench: {p}");
    }
    Err(format!(
        "{} problem(s) above: a failed setup's figures are not reported",
        problems.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_needs_three_existing_cpus() {
        assert_eq!(
            parse_pinning("0,0,0").unwrap(),
            Pinning {
                client: Some(0),
                sidecar: Some(0),
                server: Some(0)
            }
        );
        assert!(parse_pinning("0,1").unwrap_err().contains("three CPUs"));
        assert!(parse_pinning("0,x,1").unwrap_err().contains("not a CPU"));
        assert!(parse_pinning("0,0,4096")
            .unwrap_err()
            .contains("does not exist"));
    }
}
