//! `merbridge demo`: a two-pod mesh on this machine, no cluster — first through Istio's
//! iptables rules, then through merbridge — with what the sidecars saw, the counters and a
//! side-by-side comparison. Everything lives in a private cgroup, network namespaces and a
//! private bpffs, and is removed at the end.

use crate::bench::env::{add_real_pod, Datapath};
use clap::Args;
use mb_agent::pods::PodMaps;
use mb_loader::datapath::PinLayout;
use mb_maps::datapath::{MAP_COUNTERS, SPLICE_ALL, SPLICE_SIDECARS};
use mb_maps::layout::Counter;
use mb_maps::PerCpuArray;
use mb_testbed::scenarios::{
    run_client, start_app, Binaries, APP_UID, BULK_PORT, ECHO_PORT, WHOAMI_PORT,
};
use mb_testbed::sidecar::Record;
use mb_testbed::workload::{parse_kv, BulkStats, CrrStats, LatencyStats};
use mb_testbed::{Interception, MeshPorts, Node, Pod, PodSpec, Sidecar, SidecarConfig, Spawned};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct DemoArgs {
    /// Fewer round trips and bytes (a few seconds).
    #[arg(long)]
    pub quick: bool,
    /// Also splice the application legs (see `merbridge load --splice`).
    #[arg(long)]
    pub splice_all: bool,
}

/// The interception under test in one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Direct,
    Iptables,
    Merbridge,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::Iptables => "iptables",
            Setup::Merbridge => "merbridge",
        }
    }
}

/// What one setup measured.
#[derive(Debug)]
struct Measured {
    rr: LatencyStats,
    crr: CrrStats,
    bulk: BulkStats,
    conntrack: u64,
    records: Vec<(String, Record)>,
    counters: Vec<(Counter, u64)>,
}

fn io<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

fn run_setup(setup: Setup, bins: &Binaries, args: &DemoArgs) -> Result<Measured, String> {
    let mesh = MeshPorts::istio();
    let node = Node::new(&format!("demo-{}", setup.name())).map_err(io("create node"))?;
    let datapath = if setup == Setup::Merbridge {
        let splice = if args.splice_all {
            SPLICE_ALL
        } else {
            SPLICE_SIDECARS
        };
        Some(Datapath::load(node.cgroup_path(), splice)?)
    } else {
        None
    };
    let client = node
        .add_pod(PodSpec::named("productpage"))
        .map_err(io("create pod"))?;
    let server = node
        .add_pod(PodSpec::named("reviews"))
        .map_err(io("create pod"))?;
    let mut sidecars: Vec<(&str, Sidecar)> = Vec::new();
    if setup != Setup::Direct {
        for (name, pod) in [("productpage", &client), ("reviews", &server)] {
            match &datapath {
                Some(d) => add_real_pod(&PodMaps::open(d.pin_dir())?, pod)?,
                None => Interception::Iptables(mesh.clone())
                    .install_pod(pod)
                    .map_err(io("install iptables rules"))?,
            }
            let sidecar = Sidecar::start_binary(
                &bins.sidecar,
                pod,
                SidecarConfig::for_mesh(&mesh),
                mesh.proxy_uid,
            )
            .map_err(io("start sidecar"))?;
            sidecars.push((name, sidecar));
        }
    }
    let _app: Spawned = start_app(&server, bins).map_err(io("start app"))?;
    let conntrack_before = client.conntrack_count().unwrap_or(0);

    let server_ip = server.ipv4();
    let whoami = run_client(
        &client,
        bins,
        APP_UID,
        &["whoami".into(), format!("--to={server_ip}:{WHOAMI_PORT}")],
    )
    .map_err(io("whoami"))?;
    let _ = parse_kv(&whoami);
    let (count, crr, bytes) = if args.quick {
        (2_000, 200, 16 << 20)
    } else {
        (20_000, 2_000, 256 << 20)
    };
    let rr = client_line(
        &client,
        bins,
        &[
            "rr",
            &format!("--to={server_ip}:{ECHO_PORT}"),
            &format!("--count={count}"),
            "--warmup=200",
        ],
    )?;
    let crr_line = client_line(
        &client,
        bins,
        &[
            "crr",
            &format!("--to={server_ip}:{ECHO_PORT}"),
            &format!("--count={crr}"),
        ],
    )?;
    let bulk = client_line(
        &client,
        bins,
        &[
            "bulk",
            &format!("--to={server_ip}:{BULK_PORT}"),
            &format!("--bytes={bytes}"),
        ],
    )?;
    let conntrack = client
        .conntrack_count()
        .unwrap_or(0)
        .saturating_sub(conntrack_before);
    std::thread::sleep(Duration::from_millis(100));
    let records = sidecars
        .iter()
        .flat_map(|(name, s)| {
            s.records()
                .into_iter()
                .take(1)
                .map(move |r| (name.to_string(), r))
        })
        .collect();
    let counters = match &datapath {
        Some(d) => read_counters(d.pin_dir())?,
        None => Vec::new(),
    };
    drop(sidecars);
    drop((client, server));
    drop(datapath);
    Ok(Measured {
        rr: LatencyStats::parse(&rr).map_err(io("rr output"))?,
        crr: CrrStats::parse(&crr_line).map_err(io("crr output"))?,
        bulk: BulkStats::parse(&bulk).map_err(io("bulk output"))?,
        conntrack,
        records,
        counters,
    })
}

fn client_line(pod: &Pod, bins: &Binaries, args: &[&str]) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_client(pod, bins, APP_UID, &args).map_err(|e| format!("{}: {e}", args[0]))
}

fn read_counters(pin_dir: &std::path::Path) -> Result<Vec<(Counter, u64)>, String> {
    let map: PerCpuArray<u64> =
        PerCpuArray::open_pinned(&PinLayout::new(pin_dir).map(MAP_COUNTERS))
            .map_err(io("counters"))?;
    Counter::ALL
        .iter()
        .map(|&c| {
            map.get_sum(c as u32)
                .map(|v| (c, v.unwrap_or(0)))
                .map_err(io("counters"))
        })
        .collect()
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

pub fn run(args: DemoArgs) -> Result<ExitCode, String> {
    if !mb_sys::testing::is_root() {
        return Err(
            "the demo builds network namespaces and cgroups and loads eBPF programs: run it as root"
                .into(),
        );
    }
    let bins = Binaries::find().map_err(|e| {
        format!("{e}\nthe demo runs the test bed's sidecar and workloads: build them with `cargo build --release --workspace`")
    })?;
    println!("merbridge demo: two pods (productpage -> reviews) on one node, Istio ports, the reference sidecar in each.");
    println!("Each setup gets its own private cgroup and network namespaces; nothing else on this machine is touched.\n");
    let mut results = Vec::new();
    for setup in [Setup::Direct, Setup::Iptables, Setup::Merbridge] {
        println!("== {} ==", setup.name());
        let m = run_setup(setup, &bins, &args)?;
        for (pod, r) in &m.records {
            println!(
                "  {pod:<12} sidecar {} listener: original destination {}, from {}",
                r.listener,
                r.original_dst
                    .map_or("?".into(), |a: SocketAddr| a.to_string()),
                r.peer
            );
        }
        if !m.counters.is_empty() {
            let shown: Vec<String> = m
                .counters
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(c, v)| format!("{}={v}", c.name()))
                .collect();
            println!("  counters: {}", shown.join(" "));
        }
        println!(
            "  rr p50 {} us, p99 {} us; {:.0} connections/s; bulk {:.0} Mbit/s; {} conntrack entries",
            us(m.rr.p50_ns),
            us(m.rr.p99_ns),
            m.crr.per_second(),
            m.bulk.mbit_per_second(),
            m.conntrack
        );
        results.push((setup, m));
    }
    let get = |s: Setup| &results.iter().find(|(x, _)| *x == s).expect("ran").1;
    let (d, i, m) = (
        get(Setup::Direct),
        get(Setup::Iptables),
        get(Setup::Merbridge),
    );
    let tax = |x: &Measured| x.rr.p50_ns.saturating_sub(d.rr.p50_ns);
    println!(
        "\n{:<28} {:>10} {:>10} {:>10} {:>20}",
        "", "direct", "iptables", "merbridge", "merbridge/iptables"
    );
    let row = |name: &str, a: f64, b: f64, c: f64| {
        println!(
            "{name:<28} {a:>10.1} {b:>10.1} {c:>10.1} {:>20.2}",
            if b > 0.0 { c / b } else { 0.0 }
        );
    };
    row(
        "RR p50 (us)",
        d.rr.p50_ns as f64 / 1e3,
        i.rr.p50_ns as f64 / 1e3,
        m.rr.p50_ns as f64 / 1e3,
    );
    row(
        "RR p99 (us)",
        d.rr.p99_ns as f64 / 1e3,
        i.rr.p99_ns as f64 / 1e3,
        m.rr.p99_ns as f64 / 1e3,
    );
    row(
        "mesh tax at p50 (us)",
        0.0,
        tax(i) as f64 / 1e3,
        tax(m) as f64 / 1e3,
    );
    row(
        "connect+request+close /s",
        d.crr.per_second(),
        i.crr.per_second(),
        m.crr.per_second(),
    );
    row(
        "bulk (Mbit/s)",
        d.bulk.mbit_per_second(),
        i.bulk.mbit_per_second(),
        m.bulk.mbit_per_second(),
    );
    row(
        "conntrack entries",
        d.conntrack as f64,
        i.conntrack as f64,
        m.conntrack as f64,
    );
    println!("\nOne run on a shared machine: ratios are indicative; `merbridge bench` interleaves rounds for figures.");
    Ok(ExitCode::SUCCESS)
}
