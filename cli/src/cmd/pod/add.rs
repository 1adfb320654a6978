//! `merbridge pod add`: a local pod and its interception policy, from annotations and flags.

use crate::cmd::args::PinArgs;
use clap::Args;
use mb_agent::mesh::{
    annotations_from_file, Cidr, CidrSelection, Mesh, PodPolicy, PortRanges, PortSelection,
};
use mb_agent::pin_lock::{write_lock, WRITE_LOCK_TIMEOUT};
use mb_agent::pods::{LocalPod, PodMaps};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct PodAddArgs {
    /// The pod's addresses: IPv4, IPv6, or `IPV4,IPV6`.
    pub ips: String,
    /// The pod's network namespace (e.g. /run/netns/NAME or /proc/PID/ns/net).
    #[arg(long)]
    pub netns: PathBuf,
    #[command(flatten)]
    pub pin: PinArgs,
    /// Mesh whose annotation rules and defaults apply.
    #[arg(long, default_value = "istio")]
    pub mesh: String,
    /// The pod's annotations (a Pod manifest or a bare map, YAML or JSON).
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// Comma-separated ports or ranges (80,8000-8100) never redirected outbound.
    #[arg(long)]
    pub exclude_outbound_ports: Option<String>,
    /// Ports always redirected outbound, whatever the address.
    #[arg(long)]
    pub include_outbound_ports: Option<String>,
    /// Destination prefixes never redirected (10.0.0.0/8,fd00::/8).
    #[arg(long)]
    pub exclude_outbound_ip_ranges: Option<String>,
    /// Destination prefixes redirected: `*` for all (the default), empty for none.
    #[arg(long)]
    pub include_outbound_ip_ranges: Option<String>,
    /// Ports whose inbound connections go to the sidecar: `*` for all (the default).
    #[arg(long)]
    pub include_inbound_ports: Option<String>,
    /// Ports never redirected inbound.
    #[arg(long)]
    pub exclude_inbound_ports: Option<String>,
    /// Send this pod's UDP DNS queries to the sidecar's DNS proxy.
    #[arg(long)]
    pub dns_capture: bool,
    /// Splice this pod's application legs (app <-> its sidecar) too, under `--splice
    /// sidecars`. Event-driven applications only: a blocking recv() on a spliced socket can
    /// fail with EAGAIN (kernel tcp_bpf_recvmsg). Annotation: merbridge.io/splice-app: "true".
    #[arg(long)]
    pub splice_app: bool,
    /// The UID this pod's sidecar runs as (default: from --annotations, else the load's
    /// --proxy-uid).
    #[arg(long)]
    pub proxy_uid: Option<u32>,
    /// A GID whose processes also count as this pod's sidecar (istio-iptables -g).
    #[arg(long)]
    pub proxy_gid: Option<u32>,
    /// Leave inbound connections from outside the pod alone (no sk_lookup link): for setups
    /// that keep iptables for inbound.
    #[arg(long)]
    pub no_inbound_capture: bool,
}

/// Parses a flag's comma-separated ports/ranges.
fn port_ranges(flag: &str, text: &str) -> Result<PortRanges, String> {
    let mut set = PortRanges::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        let parse = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| {
                    format!("--{flag}: {item:?} is not a port (1-65535) or a range like 8000-8100")
                })
        };
        set.insert(parse(lo)?, parse(hi)?);
    }
    Ok(set)
}

fn cidrs(flag: &str, text: &str) -> Result<Vec<Cidr>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            Cidr::parse(item, true)
                .map_err(|e| format!("--{flag}: {item:?} is not an address prefix: {e}"))
        })
        .collect()
}

/// The policy from `--annotations` (if any), then each flag on top of it.
fn policy_from_args(args: &PodAddArgs, mesh: Mesh) -> Result<PodPolicy, String> {
    let mut policy = match &args.annotations {
        Some(path) => {
            let annotations: BTreeMap<String, String> = annotations_from_file(path)?;
            let field = mb_agent::mesh::INTERCEPTION_MODE_ANNOTATION;
            if let Some(mode) = annotations.get(field) {
                if let Some(reason) = mb_agent::mesh::annotations_refusal(mesh, mode) {
                    return Err(format!(
                        "pod {}: annotation {field}={}: {reason} interception is not supported: \
                         the pod is refused and nothing of it is written (keep istio-init for it)",
                        args.ips,
                        mode.trim()
                    ));
                }
            }
            let (policy, warnings) = PodPolicy::from_annotations(mesh, &annotations);
            for w in warnings {
                eprintln!("merbridge: warning: {w} (the rest of the policy applies)");
            }
            policy
        }
        None => PodPolicy::defaults(mesh),
    };
    if let Some(t) = &args.exclude_outbound_ports {
        policy
            .outbound_exclude_ports
            .extend(&port_ranges("exclude-outbound-ports", t)?);
    }
    if let Some(t) = &args.include_outbound_ports {
        policy
            .outbound_include_ports
            .extend(&port_ranges("include-outbound-ports", t)?);
    }
    if let Some(t) = &args.exclude_inbound_ports {
        policy
            .inbound_exclude_ports
            .extend(&port_ranges("exclude-inbound-ports", t)?);
    }
    if let Some(t) = &args.include_inbound_ports {
        policy.inbound_include_ports = if t.trim() == "*" {
            PortSelection::All
        } else {
            PortSelection::Only(port_ranges("include-inbound-ports", t)?)
        };
    }
    if let Some(t) = &args.exclude_outbound_ip_ranges {
        policy
            .outbound_exclude_cidrs
            .extend(cidrs("exclude-outbound-ip-ranges", t)?);
    }
    if let Some(t) = &args.include_outbound_ip_ranges {
        policy.outbound_include_cidrs = if t.trim() == "*" {
            CidrSelection::All
        } else {
            CidrSelection::Only(cidrs("include-outbound-ip-ranges", t)?)
        };
    }
    if args.splice_app {
        policy.splice_app = Some(true);
    }
    // Without annotations or flags the pod takes the load's --proxy-uid (entry value 0) and
    // no GID rule: the mesh's default need not be the one `load` was told.
    match args.proxy_uid {
        Some(uid) => policy.proxy_uid = uid,
        None if args.annotations.is_none() => policy.proxy_uid = 0,
        None => {}
    }
    match args.proxy_gid {
        Some(gid) => policy.proxy_gid = Some(gid),
        None if args.annotations.is_none() => policy.proxy_gid = Some(0),
        None => {}
    }
    Ok(policy)
}

pub fn run(args: PodAddArgs) -> Result<ExitCode, String> {
    let mesh: Mesh = args.mesh.parse()?;
    let ips = pod_addresses(&args.ips)?;
    let policy = policy_from_args(&args, mesh)?;
    let netns_cookie = mb_loader::netns_cookie::netns_cookie(&args.netns).map_err(|e| {
        format!(
            "pod {}: --netns {}: {e} (pass the pod's namespace, e.g. /run/netns/NAME or \
             /proc/PID/ns/net)",
            args.ips,
            args.netns.display()
        )
    })?;
    // Held until the pod is written: the agent and the CNI plugin write the same maps.
    let _write = write_lock(&args.pin.pin_dir, WRITE_LOCK_TIMEOUT)?;
    let maps = PodMaps::open(&args.pin.pin_dir)?;
    let pod = LocalPod {
        ips: ips.clone(),
        netns_cookie,
        policy,
        dns_capture: args.dns_capture,
    };
    let inbound_port = pod.policy.inbound_port;
    let existed = maps.find(ips[0])?.is_some();
    let (pod_id, compiled) = maps.upsert(&pod)?;
    for note in &compiled.unsupported {
        eprintln!("merbridge: warning: {note}");
    }
    if args.no_inbound_capture {
        mb_agent::inbound::detach_pod(&args.pin.pin_dir, pod_id)?;
    } else {
        attach_inbound(&args, &maps, &ips, existed, pod_id, inbound_port)?;
    }
    let shown: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
    println!(
        "merbridge: pod {} (id {pod_id}, netns cookie {netns_cookie}): {} port rules, {} prefix rules",
        shown.join(","),
        compiled.port_rules.len(),
        compiled.cidr_rules.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Attaches the pod's sk_lookup link and adopts its sidecar's listeners; on failure a pod
/// added just now is taken out again, so nothing half-added stays behind.
fn attach_inbound(
    args: &PodAddArgs,
    maps: &PodMaps,
    ips: &[IpAddr],
    existed: bool,
    pod_id: u32,
    inbound_port: u16,
) -> Result<(), String> {
    let inbound =
        match mb_agent::inbound::attach_pod(&args.pin.pin_dir, pod_id, &args.netns, inbound_port) {
            Ok(done) => done,
            Err(e) => {
                let undone = if existed {
                    "its earlier entry is kept"
                } else {
                    match maps.remove(ips[0]) {
                        Ok(_) => "it was not added",
                        Err(_) => "removing its entry failed too: run `merbridge pod del`",
                    }
                };
                return Err(format!("pod {}: inbound capture: {e} ({undone})", args.ips));
            }
        };
    println!(
        "merbridge: pod {}: inbound capture {:?} in {:.2} ms (link {}), {} listener(s) adopted",
        args.ips,
        inbound.outcome,
        inbound.attach_time.as_secs_f64() * 1000.0,
        inbound.link.link_id,
        inbound.adopted
    );
    if !inbound.listeners.any() {
        eprintln!(
            "merbridge: note: pod {}: no sidecar listens on {inbound_port} yet; connections \
             to its captured ports from outside the pod are refused until one does",
            args.ips
        );
    }
    Ok(())
}

/// `IPV4`, `IPV6` or `IPV4,IPV6`: at most one of each family, none loopback, unspecified or
/// multicast.
fn pod_addresses(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut ips = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ip: IpAddr = part
            .parse()
            .map_err(|_| format!("{part:?} is not an IPv4 or IPv6 address"))?;
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            return Err(format!("{ip} cannot be a pod address"));
        }
        if ips.iter().any(|o: &IpAddr| o.is_ipv4() == ip.is_ipv4()) {
            return Err(format!(
                "{text}: give at most one IPv4 and one IPv6 address"
            ));
        }
        ips.push(ip);
    }
    if ips.is_empty() {
        return Err("give the pod's address: IPV4, IPV6 or IPV4,IPV6".into());
    }
    Ok(ips)
}
