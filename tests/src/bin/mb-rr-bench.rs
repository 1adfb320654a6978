//! `mb-rr-bench`: 64-byte request/response latency between two pods on one node, direct,
//! through the client's sidecar only, and through both reference sidecars under the Istio
//! iptables rules. Prints one line per mode and round, then the p50 the sidecars add.
//! `--workload crr` measures connect-request-close instead (rate, p50 and conntrack entries).
//! Needs root. Run: `cargo run --release -p mb-testbed --bin mb-rr-bench -- --count 20000`
#![forbid(unsafe_code)]

use clap::Parser;
use mb_testbed::scenarios::{self, Binaries, APP_UID, BULK_PORT, ECHO_PORT};
use mb_testbed::sidecar::RelayMode;
use mb_testbed::workload::{BulkStats, CrrStats, LatencyStats};
use mb_testbed::{Interception, MeshPorts, Node, Sidecar, SidecarConfig};
use std::net::SocketAddr;

#[derive(Parser)]
#[command(about = "RR latency: direct vs through the reference sidecars (iptables)")]
struct Cli {
    /// Measured exchanges per mode.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Unmeasured exchanges first.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Request and response size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Use IPv6.
    #[arg(long)]
    ipv6: bool,
    /// Sidecar relay mode.
    #[arg(long, value_enum, default_value_t = RelayMode::ReadWrite)]
    relay: RelayMode,
    /// Bytes per bulk transfer.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    bytes: u64,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Workload::Rr)]
    workload: Workload,
    /// Repetitions of each mode (alternating); the median p50 is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    /// Persistent-connection request/response.
    Rr,
    /// Connect, request, response, close (`--count` connections, no warm-up).
    Crr,
    /// One stream of `--bytes` bytes with checksum (reports Mbit/s).
    Bulk,
}

/// One measurement: latency p50 (rr, crr) and a rate (crr: connections/s, bulk: Mbit/s).
struct Measured {
    p50_ns: u64,
    rate: f64,
    line: String,
}

/// `sidecars`: how many of (client, server) get interception and a sidecar.
fn measure(
    mode: &Interception,
    sidecars: usize,
    cli: &Cli,
    bins: &Binaries,
) -> std::io::Result<Measured> {
    let node = Node::new("rrbench")?;
    let mut pods = Vec::new();
    for (i, name) in ["client", "server"].into_iter().enumerate() {
        let mut p = scenarios::start_pod(&node, name, &Interception::None, false, bins)?;
        if let (true, Some(mesh)) = (i < sidecars, mode.mesh()) {
            mode.install_pod(&p.pod)?;
            let config = SidecarConfig {
                relay: cli.relay,
                ..SidecarConfig::for_mesh(mesh)
            };
            p.sidecar = Some(Sidecar::start_binary(
                &bins.sidecar,
                &p.pod,
                config,
                mesh.proxy_uid,
            )?);
        }
        pods.push(p);
    }
    if cli.workload == Workload::Bulk {
        let to = SocketAddr::new(pods[1].ip(cli.ipv6), BULK_PORT);
        let args = [
            "bulk".into(),
            format!("--to={to}"),
            format!("--bytes={}", cli.bytes),
        ];
        let line = scenarios::run_client(&pods[0].pod, bins, APP_UID, &args)?;
        let stats = BulkStats::parse(&line)?;
        return Ok(Measured {
            p50_ns: 0,
            rate: stats.mbit_per_second(),
            line,
        });
    }
    let to = SocketAddr::new(pods[1].ip(cli.ipv6), ECHO_PORT);
    let mut args = vec![
        format!("--to={to}"),
        format!("--size={}", cli.size),
        format!("--count={}", cli.count),
    ];
    if cli.workload == Workload::Rr {
        args.insert(0, "rr".into());
        args.push(format!("--warmup={}", cli.warmup));
        let line = scenarios::run_client(&pods[0].pod, bins, APP_UID, &args)?;
        let stats = LatencyStats::parse(&line)?;
        return Ok(Measured {
            p50_ns: stats.p50_ns,
            rate: 0.0,
            line,
        });
    }
    args.insert(0, "crr".into());
    let before = pods[0].pod.conntrack_count()?;
    let line = scenarios::run_client(&pods[0].pod, bins, APP_UID, &args)?;
    let conntrack = pods[0].pod.conntrack_count()?.saturating_sub(before);
    let stats = CrrStats::parse(&line)?;
    Ok(Measured {
        p50_ns: stats.latency.p50_ns,
        rate: stats.per_second(),
        line: format!("{line} client_pod_conntrack_entries={conntrack}"),
    })
}

fn main() {
    let cli = Cli::parse();
    let bins = match Binaries::find() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mb-rr-bench: {e}");
            std::process::exit(1);
        }
    };
    let istio = Interception::Iptables(MeshPorts::istio());
    let modes = [
        ("direct", Interception::None, 0),
        ("iptables+client-sidecar", istio.clone(), 1),
        ("iptables+both-sidecars", istio, 2),
    ];
    let mut p50s = vec![Vec::new(); modes.len()];
    let mut rates = vec![Vec::new(); modes.len()];
    for round in 0..cli.rounds.max(1) {
        for (i, (name, mode, sidecars)) in modes.iter().enumerate() {
            match measure(mode, *sidecars, &cli, &bins) {
                Ok(m) => {
                    println!("round={round} mode={name} {}", m.line);
                    p50s[i].push(m.p50_ns);
                    rates[i].push(m.rate);
                }
                Err(e) => {
                    eprintln!("mb-rr-bench: {name}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let median = |v: &mut Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let median_rate = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    if cli.workload != Workload::Rr {
        println!(
            "rates ({}) direct={:.0} one_sidecar={:.0} both_sidecars={:.0}",
            if cli.workload == Workload::Bulk {
                "Mbit/s"
            } else {
                "connections/s"
            },
            median_rate(&mut rates[0]),
            median_rate(&mut rates[1]),
            median_rate(&mut rates[2])
        );
        if cli.workload == Workload::Bulk {
            return;
        }
    }
    let direct = median(&mut p50s[0]);
    let one = median(&mut p50s[1]);
    let both = median(&mut p50s[2]);
    let us = |ns: u64| ns as f64 / 1e3;
    println!(
        "summary size={} ipv6={} relay={:?} direct_p50_us={:.1} one_sidecar_p50_us={:.1} both_sidecars_p50_us={:.1} added_by_one_sidecar_us={:.1} added_by_both_us={:.1}",
        cli.size,
        cli.ipv6,
        cli.relay,
        us(direct),
        us(one),
        us(both),
        us(one) - us(direct),
        us(both) - us(direct)
    );
}
