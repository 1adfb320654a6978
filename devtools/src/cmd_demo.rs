//! `merbridge demo`: a two-pod mesh on this machine, no cluster — first through Istio's
//! iptables rules, then through merbridge — with what the sidecars saw, the counters and a
//! side-by-side comparison. Everything lives in a private cgroup, network namespaces and a
//! private bpffs, and is removed at the end.

use crate::bench::env::{Pinning, Setup, Topology};
use crate::bench::setup::{conntrack_entries, read_counters, MeshSetup, PodNames};
use clap::Args;
use mb_maps::layout::Counter;
use mb_testbed::scenarios::{
    run_client, start_app, Binaries, APP_UID, BULK_PORT, ECHO_PORT, WHOAMI_PORT,
};
use mb_testbed::sidecar::Record;
use mb_testbed::workload::{parse_kv, BulkStats, CrrStats, LatencyStats};
use mb_testbed::{Pod, Spawned};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

#[derive(Args)]
pub struct DemoArgs {
    /// Fewer round trips and bytes (a few seconds).
    #[arg(long)]
    pub quick: bool,
    /// Also splice the application legs (see `merbridge load --splice`).
    #[arg(long)]
    pub splice_all: bool,
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
    /// What the sidecars and counters saw, or why this setup did not intercept.
    interception: Result<String, String>,
}

fn io<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// The who-am-I server's view of one connection from the client app: it must have been
/// dialed at its own address, from the client (direct) or from its sidecar's passthrough
/// address 127.0.0.6 (meshed: the connection went through the sidecars).
fn check_whoami(line: &str, setup: Setup, client: &Pod, target: SocketAddr) -> Result<(), String> {
    let fields = parse_kv(line);
    let addr = |key: &str| -> Result<SocketAddr, String> {
        fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("who-am-I printed no {key}= address: {line:?}"))
    };
    let (peer, local) = (addr("peer")?, addr("local")?);
    if local != target {
        return Err(format!(
            "who-am-I: the server saw itself dialed at {local}, not {target}"
        ));
    }
    let expected: IpAddr = if setup == Setup::Direct {
        client.ipv4().into()
    } else {
        Ipv4Addr::new(127, 0, 0, 6).into()
    };
    if peer.ip() != expected {
        return Err(format!(
            "who-am-I: the server saw the connection come from {peer}, expected {expected} ({})",
            if setup == Setup::Direct {
                "the client pod"
            } else {
                "its sidecar's passthrough address: the connection did not go through the sidecars"
            }
        ));
    }
    Ok(())
}

fn run_setup(setup: Setup, bins: &Binaries, args: &DemoArgs) -> Result<Measured, String> {
    let names = PodNames {
        client: "productpage",
        server: "reviews",
    };
    let mesh = MeshSetup::build(
        Topology::SameNode,
        setup,
        names,
        &[WHOAMI_PORT, ECHO_PORT, BULK_PORT],
        bins,
        Pinning::default(),
        0,
    )?;
    let (client, server) = (&mesh.client_pod, &mesh.server_pod);
    let _app: Spawned = start_app(server, bins).map_err(io("start app"))?;
    let before = mesh.checkpoint()?;
    let conntrack_before = conntrack_entries(client)?;

    let server_ip = server.ipv4();
    let whoami_target = SocketAddr::new(server_ip.into(), WHOAMI_PORT);
    let whoami = run_client(
        client,
        bins,
        APP_UID,
        &["whoami".into(), format!("--to={whoami_target}")],
    )
    .map_err(io("whoami"))?;
    check_whoami(&whoami, setup, client, whoami_target)?;
    let (count, crr, bytes) = if args.quick {
        (2_000, 200, 16 << 20)
    } else {
        (20_000, 2_000, 256 << 20)
    };
    let rr = client_line(
        client,
        bins,
        &[
            "rr",
            &format!("--to={server_ip}:{ECHO_PORT}"),
            &format!("--count={count}"),
            "--warmup=200",
        ],
    )?;
    let crr_line = client_line(
        client,
        bins,
        &[
            "crr",
            &format!("--to={server_ip}:{ECHO_PORT}"),
            &format!("--count={crr}"),
        ],
    )?;
    let bulk = client_line(
        client,
        bins,
        &[
            "bulk",
            &format!("--to={server_ip}:{BULK_PORT}"),
            &format!("--bytes={bytes}"),
        ],
    )?;
    let conntrack = conntrack_entries(client)?.saturating_sub(conntrack_before);
    // who-am-I, rr, crr's connections and bulk.
    let connections = 3 + crr;
    let targets = [
        whoami_target,
        SocketAddr::new(server_ip.into(), ECHO_PORT),
        SocketAddr::new(server_ip.into(), BULK_PORT),
    ];
    let interception = mesh.verify(&before, &targets, connections);
    let records = mesh
        .sidecars
        .iter()
        .flat_map(|(name, s)| {
            s.records()
                .into_iter()
                .take(1)
                .map(move |r| (name.to_string(), r))
        })
        .collect();
    let counters = match &mesh.datapath {
        Some(d) => read_counters(d.pin_dir())?,
        None => Vec::new(),
    };
    Ok(Measured {
        rr: LatencyStats::parse(&rr).map_err(io("rr output"))?,
        crr: CrrStats::parse(&crr_line).map_err(io("crr output"))?,
        bulk: BulkStats::parse(&bulk).map_err(io("bulk output"))?,
        conntrack,
        records,
        counters,
        interception,
    })
}

fn client_line(pod: &Pod, bins: &Binaries, args: &[&str]) -> Result<String, String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_client(pod, bins, APP_UID, &args).map_err(|e| format!("{}: {e}", args[0]))
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
    let merbridge = if args.splice_all {
        Setup::MerbridgeSpliceAll
    } else {
        Setup::Merbridge
    };
    let mut results = Vec::new();
    for setup in [Setup::Direct, Setup::Iptables, merbridge] {
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
        match &m.interception {
            Ok(seen) => println!("  checked: {seen}"),
            Err(e) => println!("  FAILED: {e}"),
        }
        results.push((setup, m));
    }
    let get = |s: Setup| &results.iter().find(|(x, _)| *x == s).expect("ran").1;
    let (d, i, m) = (get(Setup::Direct), get(Setup::Iptables), get(merbridge));
    let tax = |x: &Measured| x.rr.p50_ns.saturating_sub(d.rr.p50_ns) as f64 / 1e3;
    println!(
        "\n{:<28} {:>10} {:>10} {:>10} {:>20}",
        "", "direct", "iptables", "merbridge", "merbridge/iptables"
    );
    // A setup that did not intercept shows FAILED, never a figure.
    let row = |name: &str, value: &dyn Fn(&Measured) -> f64| {
        let cell = |x: &Measured| match x.interception {
            Ok(_) => format!("{:.1}", value(x)),
            Err(_) => "FAILED".to_owned(),
        };
        let ratio = match (&i.interception, &m.interception) {
            (Ok(_), Ok(_)) if value(i) > 0.0 => format!("{:.2}", value(m) / value(i)),
            _ => "-".to_owned(),
        };
        println!(
            "{name:<28} {:>10} {:>10} {:>10} {ratio:>20}",
            cell(d),
            cell(i),
            cell(m)
        );
    };
    row("RR p50 (us)", &|x| x.rr.p50_ns as f64 / 1e3);
    row("RR p99 (us)", &|x| x.rr.p99_ns as f64 / 1e3);
    row("mesh tax at p50 (us)", &tax);
    row("connect+request+close /s", &|x| x.crr.per_second());
    row("bulk (Mbit/s)", &|x| x.bulk.mbit_per_second());
    row("conntrack entries", &|x| x.conntrack as f64);
    println!("\nOne run on a shared machine: ratios are indicative; `merbridge bench` interleaves rounds for figures.");
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(setup, x)| {
            x.interception
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", setup.name()))
        })
        .collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(format!(
            "setups that did not intercept: {}",
            failed.join("; ")
        ))
    }
}
