//! `mb-workload`: servers and clients for pods (see `mb_testbed::workload`). Clients print one
//! `key=value` line; errors go to stderr with exit status 1.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use mb_testbed::workload;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

#[derive(Parser)]
#[command(version, about = "Workloads for test-bed pods")]
struct Cli {
    /// Clients wait for readiness when a blocking read says EAGAIN early, as event-driven
    /// apps do (needed with `merbridge load --splice all`; see `workload::wait_on_eagain`).
    #[arg(long, global = true)]
    wait_on_eagain: bool,
    /// Event-driven clients and servers, as Go, Envoy or Node: every TCP socket non-blocking
    /// from its creation, EAGAIN = wait for readiness (see `workload::event_driven`).
    #[arg(long, global = true)]
    event_driven: bool,
    /// Before the command: hold a non-blocking listening socket this many milliseconds, so
    /// that merbridge's per-process classifier sees an event-driven process before its first
    /// connection, as it would a long-running one (`workload::settle`).
    #[arg(long, global = true, default_value_t = 0)]
    settle_ms: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run servers on all addresses; prints `ready` once all listen.
    Serve {
        /// Echo server port (request/response and connect-request-close).
        #[arg(long)]
        echo: Option<u16>,
        /// Bulk sink port (answers count and checksum).
        #[arg(long)]
        bulk: Option<u16>,
        /// Who-am-I port (answers the addresses it saw); repeat for several.
        #[arg(long)]
        whoami: Vec<u16>,
        /// DNS-like responder port (UDP, and TCP on the same port).
        #[arg(long)]
        dns: Option<u16>,
        /// A record the DNS responder answers with.
        #[arg(long, default_value = "10.96.0.53")]
        dns_answer: Ipv4Addr,
    },
    /// Persistent-connection ping-pong with latency percentiles.
    Rr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        #[arg(long, default_value_t = 1_000)]
        warmup: u64,
        /// Also print `bucket le_ns=… count=…` lines (1-2-5 buckets) before the summary line.
        #[arg(long)]
        histogram: bool,
        /// Persistent connections used at once (`--count` is split among them); the
        /// summary line then also has `connections=`, `elapsed_ns=` and `per_sec=`.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Also print every measured round trip: `samples ns=<n>,<n>,…` before the summary.
        #[arg(long)]
        samples: bool,
    },
    /// Connect-request-close rate.
    Crr {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 1_000)]
        count: u64,
    },
    /// Bulk stream with end-to-end checksum.
    Bulk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 64 * 1024 * 1024)]
        bytes: u64,
    },
    /// Ask a who-am-I server what it saw.
    Whoami {
        #[arg(long)]
        to: SocketAddr,
        /// Source address to bind before connecting (port 0 = any).
        #[arg(long)]
        from: Option<std::net::IpAddr>,
    },
    /// COUNT non-blocking connects to a who-am-I server at once, then every answer read and
    /// classified (right server, wrong one, closed, error).
    Storm {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 20)]
        timeout_secs: u64,
    },
    /// A steady load for fault tests: RATE new who-am-I connections per second plus
    /// RR_CONNECTIONS long-lived echo round-trippers, for SECS; one summary line.
    Load {
        #[arg(long)]
        whoami: SocketAddr,
        #[arg(long)]
        echo: SocketAddr,
        /// The peer address the server must see (its sidecar's); others count as bypassed.
        #[arg(long)]
        expect_peer: Option<std::net::IpAddr>,
        #[arg(long, default_value_t = 200)]
        rate: u32,
        #[arg(long, default_value_t = 8)]
        rr_connections: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Connect, send TEXT, close at once without reading (a fire-and-forget client).
    Send {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        text: String,
    },
    /// One DNS query.
    Dns {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "svc.cluster.local")]
        name: String,
        /// DNS over TCP instead of UDP (prints `from=-`: a TCP peer says nothing here).
        #[arg(long)]
        tcp: bool,
    },
}

fn run(cli: Cli) -> std::io::Result<()> {
    workload::wait_on_eagain(cli.wait_on_eagain);
    workload::event_driven(cli.event_driven);
    let _settled = match cli.settle_ms {
        0 => None,
        ms => Some(workload::settle(ms)?),
    };
    match cli.command {
        Cmd::Serve {
            echo,
            bulk,
            whoami,
            dns,
            dns_answer,
        } => {
            let mut threads = Vec::new();
            if let Some(p) = echo {
                let l = workload::listen_any(p)?;
                threads.push(std::thread::spawn(move || workload::serve_echo(l)));
            }
            if let Some(p) = bulk {
                let l = workload::listen_any(p)?;
                threads.push(std::thread::spawn(move || workload::serve_bulk(l)));
            }
            for p in whoami {
                let l = workload::listen_any(p)?;
                threads.push(std::thread::spawn(move || workload::serve_whoami(l)));
            }
            if let Some(p) = dns {
                let s = UdpSocket::bind(("::", p)).or_else(|_| UdpSocket::bind(("0.0.0.0", p)))?;
                threads.push(std::thread::spawn(move || {
                    workload::serve_dns(s, dns_answer)
                }));
                let l = workload::listen_any(p)?;
                threads.push(std::thread::spawn(move || {
                    workload::serve_dns_tcp(l, dns_answer)
                }));
            }
            if threads.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "serve needs at least one of --echo, --bulk, --whoami, --dns",
                ));
            }
            println!("ready");
            for t in threads {
                let _ = t.join();
            }
        }
        Cmd::Rr {
            to,
            size,
            count,
            warmup,
            histogram,
            connections,
            samples: print_samples,
        } => {
            let (mut samples, elapsed_ns) = if connections > 1 {
                let par = workload::rr_parallel(to, size, count, warmup, connections)?;
                (par.samples, Some(par.elapsed_ns))
            } else {
                (workload::rr_samples(to, size, count, warmup)?, None)
            };
            if histogram {
                for (le, n) in workload::histogram(&samples) {
                    println!("bucket le_ns={le} count={n}");
                }
            }
            if print_samples {
                let list: Vec<String> = samples.iter().map(u64::to_string).collect();
                println!("samples ns={}", list.join(","));
            }
            let stats = workload::LatencyStats::from_samples(&mut samples);
            match elapsed_ns {
                Some(ns) => println!(
                    "{stats} connections={connections} elapsed_ns={ns} per_sec={:.0}",
                    stats.count as f64 / (ns.max(1) as f64 / 1e9)
                ),
                None => println!("{stats}"),
            }
        }
        Cmd::Crr { to, size, count } => println!("{}", workload::crr_client(to, size, count)?),
        Cmd::Bulk { to, bytes } => println!("{}", workload::bulk_client(to, bytes)?),
        Cmd::Whoami { to, from } => {
            let (peer, local) = workload::whoami_from(to, from)?;
            println!("whoami peer={peer} local={local}");
        }
        Cmd::Storm {
            to,
            count,
            timeout_secs,
        } => println!(
            "{}",
            workload::storm_client(to, count, std::time::Duration::from_secs(timeout_secs))?
        ),
        Cmd::Load {
            whoami,
            echo,
            expect_peer,
            rate,
            rr_connections,
            secs,
        } => println!(
            "{}",
            workload::steady_load(
                whoami,
                echo,
                expect_peer,
                rate,
                rr_connections,
                std::time::Duration::from_secs(secs)
            )
        ),
        Cmd::Send { to, text } => {
            let local = workload::send_and_close(to, text.as_bytes())?;
            println!("sent bytes={} local={local}", text.len());
        }
        Cmd::Dns { to, name, tcp } => {
            if tcp {
                let a = workload::dns_query_tcp(to, &name)?;
                println!("dns answer={a} from=-");
            } else {
                let (a, from) = workload::dns_query(to, &name)?;
                println!("dns answer={a} from={from}");
            }
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("mb-workload: {e}");
        std::process::exit(1);
    }
}
