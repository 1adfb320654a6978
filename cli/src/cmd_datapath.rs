//! `merbridge load`, `unload`, `status`, `dump` and `pod add/del/list`: the data path in
//! standalone mode, no Kubernetes needed.

use clap::{Args, Subcommand};
use mb_agent::mesh::{
    annotations_from_file, Cidr, CidrSelection, Mesh, PodPolicy, PortRanges, PortSelection,
};
use mb_agent::pods::{entry_ips, LocalPod, PodMaps};
use mb_asm::text::{fmt_kernel, fmt_llvm};
use mb_loader::attach::AttachMode;
use mb_loader::datapath::{
    embedded, hook_status, load_datapath, unload_datapath, LoadOptions, MeshConstants, PinLayout,
};
use mb_maps::datapath::{Hook, MAPS, MAP_COUNTERS, SPLICE_ALL, SPLICE_NONE, SPLICE_SIDECARS};
use mb_maps::layout::Counter;
use mb_maps::{Map, PerCpuArray};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where pins go unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/merbridge";

#[derive(Args, Clone, Debug)]
pub struct PinArgs {
    /// Directory on a bpf filesystem for our maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

impl PinArgs {
    /// Mounts bpffs at /sys/fs/bpf when the default is used and nothing is mounted there
    /// (many hosts leave it unmounted).
    fn prepare(&self) -> Result<(), String> {
        if self.pin_dir == Path::new(DEFAULT_PIN_DIR) {
            mb_sys::bpffs::ensure_bpffs(Path::new(mb_sys::bpffs::DEFAULT_BPFFS))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The mesh and its numbers, each overridable.
#[derive(Args, Clone, Debug)]
pub struct MeshArgs {
    /// istio, linkerd, kuma or osm: sets the ports and proxy UID below.
    #[arg(long, default_value = "istio")]
    pub mesh: String,
    /// Sidecar outbound port (default: the mesh's).
    #[arg(long)]
    pub outbound_port: Option<u16>,
    /// Sidecar inbound port (default: the mesh's).
    #[arg(long)]
    pub inbound_port: Option<u16>,
    /// UID the sidecar runs as (default: the mesh's).
    #[arg(long)]
    pub proxy_uid: Option<u32>,
    /// Sidecar DNS proxy port (default: the mesh's; 15053 where it has none).
    #[arg(long)]
    pub dns_port: Option<u16>,
    /// Which redirected connections skip the loopback TCP stack: `sidecars` (sidecar to
    /// sidecar), `all` (also application to sidecar: fastest, but applications that block in
    /// recv() can see spurious EAGAIN on kernels up to at least 6.18), or `none`.
    #[arg(long, default_value = "sidecars")]
    pub splice: String,
}

impl MeshArgs {
    pub fn mesh(&self) -> Result<Mesh, String> {
        self.mesh.parse()
    }

    pub fn constants(&self) -> Result<MeshConstants, String> {
        let d = self.mesh()?.defaults();
        let c = MeshConstants {
            outbound_port: self.outbound_port.unwrap_or(d.outbound_port),
            inbound_port: self.inbound_port.unwrap_or(d.inbound_port),
            proxy_uid: self.proxy_uid.unwrap_or(d.proxy_uid),
            dns_port: self.dns_port.or(d.dns_port).unwrap_or(15053),
            splice_mode: match self.splice.as_str() {
                "none" => SPLICE_NONE,
                "sidecars" => SPLICE_SIDECARS,
                "all" => SPLICE_ALL,
                other => {
                    return Err(format!(
                        "--splice {other:?}: use sidecars (the default), all or none"
                    ))
                }
            },
        };
        if c.outbound_port == 0 || c.inbound_port == 0 || c.dns_port == 0 {
            return Err("ports must be between 1 and 65535".into());
        }
        if c.outbound_port == c.inbound_port {
            return Err(format!(
                "outbound and inbound port are both {}: the sidecar needs two listeners",
                c.outbound_port
            ));
        }
        Ok(c)
    }
}

#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub mesh: MeshArgs,
    /// The cgroup (v2) whose processes are intercepted: the node's root cgroup by default.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[command(flatten)]
    pub pin: PinArgs,
    /// Intercept IPv6 too (connect6).
    #[arg(long)]
    pub ipv6: bool,
    /// Send pods' UDP DNS queries to the sidecar's DNS proxy (pods opt in with `pod add --dns-capture`).
    #[arg(long)]
    pub dns_capture: bool,
    /// Attach cgroup programs with PROG_ATTACH even where bpf_link exists.
    #[arg(long)]
    pub legacy_attach: bool,
    /// How connections stay unique across pods: `netns` (netns cookie in the keys, 6.1+),
    /// `bind` (bind redirected sockets to the pod address, any kernel), or `auto` (probe).
    #[arg(long, default_value = "auto")]
    pub keys: String,
}

fn cgroup_or_root(cgroup: &Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match cgroup {
        Some(p) => p.clone(),
        None => mb_sys::cgroup::cgroup2_root().map_err(|e| e.to_string())?,
    };
    if !mb_sys::cgroup::is_cgroup2(&path) {
        return Err(format!(
            "{} is not a cgroup v2 directory: pass --cgroup with a path under the cgroup2 \
             mount (cgroup v1 cannot carry these programs)",
            path.display()
        ));
    }
    Ok(path)
}

pub fn run_load(args: LoadArgs) -> Result<ExitCode, String> {
    let constants = args.mesh.constants()?;
    let mesh = args.mesh.mesh()?;
    let cgroup = cgroup_or_root(&args.cgroup)?;
    args.pin.prepare()?;
    let opts = LoadOptions {
        cgroup: cgroup.clone(),
        pin_dir: args.pin.pin_dir.clone(),
        constants,
        ipv6: args.ipv6,
        dns_capture: args.dns_capture,
        bind4: mesh == Mesh::Linkerd,
        mode: if args.legacy_attach {
            AttachMode::LegacyOnly
        } else {
            AttachMode::Auto
        },
        netns_keys: match args.keys.as_str() {
            "auto" => None,
            "netns" => Some(true),
            "bind" => Some(false),
            other => return Err(format!("--keys {other:?}: use auto, netns or bind")),
        },
    };
    let report = load_datapath(&opts).map_err(|e| e.to_string())?;
    println!(
        "merbridge: {} data path attached to {} in {:.1} ms (pins in {})",
        mesh,
        cgroup.display(),
        report.elapsed.as_secs_f64() * 1000.0,
        opts.pin_dir.display()
    );
    for h in &report.hooks {
        println!(
            "  {:<14} id {:<6} {:>4} insns  via {}{}",
            h.hook.program_name(),
            h.prog_id,
            h.insns,
            h.via,
            if h.replaced { " (replaced)" } else { "" }
        );
    }
    if !report.netns_keys {
        println!(
            "  note: connection keys without netns cookies (this kernel's sock_ops, sk_msg or \
             getsockopt lack bpf_get_netns_cookie, Linux 6.1); redirected sockets are bound to \
             their pod's address instead"
        );
    }
    if !report.maps_reused.is_empty() {
        println!("  re-used pinned maps: {}", report.maps_reused.join(", "));
    }
    if report.hooks.iter().any(|h| h.via == "prog_attach") {
        println!(
            "  note: attached without bpf_link (PROG_ATTACH, ALLOW_MULTI); \
             `merbridge unload --cgroup {}` detaches them",
            cgroup.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct UnloadArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Also detach programs attached without links on this cgroup (default: the root).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

pub fn run_unload(args: UnloadArgs) -> Result<ExitCode, String> {
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

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn counters(pin_dir: &Path) -> Result<Vec<(Counter, u64)>, String> {
    let layout = PinLayout::new(pin_dir);
    let map: PerCpuArray<u64> = PerCpuArray::open_pinned(&layout.map(MAP_COUNTERS))
        .map_err(|e| format!("counters: {e}"))?;
    Counter::ALL
        .iter()
        .map(|&c| {
            map.get_sum(c as u32)
                .map(|v| (c, v.unwrap_or(0)))
                .map_err(|e| format!("counters: {e}"))
        })
        .collect()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn run_status(args: StatusArgs) -> Result<ExitCode, String> {
    let pin_dir = &args.pin.pin_dir;
    if !pin_dir.exists() {
        return Err(format!(
            "nothing loaded: {} does not exist (run `merbridge load`, or pass the --pin-dir it used)",
            pin_dir.display()
        ));
    }
    let layout = PinLayout::new(pin_dir);
    let hooks = hook_status(pin_dir);
    let mut fills = Vec::new();
    for decl in MAPS {
        let entries = Map::open_pinned_any(&layout.map(decl.name))
            .ok()
            .map(|m| m.raw_keys().filter(Result::is_ok).count());
        fills.push((decl, entries));
    }
    let counters = counters(pin_dir).unwrap_or_default();
    let pods = PodMaps::open(pin_dir)
        .and_then(|m| m.pods())
        .unwrap_or_default();
    let inbound = mb_agent::inbound::list(pin_dir).unwrap_or_default();
    let inbound_rows: Vec<(String, u32, u32, u32, Option<mb_agent::inbound::Listeners>)> = inbound
        .iter()
        .map(|(id, l)| {
            let listeners = id.and_then(|id| mb_agent::inbound::listeners(pin_dir, id).ok());
            (l.name.clone(), l.link_id, l.prog_id, l.netns_ino, listeners)
        })
        .collect();
    if args.json {
        let hooks_json: Vec<String> = hooks
            .iter()
            .map(|h| {
                format!(
                    "{{\"program\":{},\"attach_type\":{},\"link_id\":{},\"prog_id\":{},\"pinned_prog\":{}}}",
                    json_str(h.hook.program_name()),
                    json_str(&h.hook.attach_type().to_string()),
                    h.link.as_ref().map_or("null".into(), |l| l.id.to_string()),
                    h.link.as_ref().map_or("null".into(), |l| l.prog_id.to_string()),
                    h.pinned_prog
                )
            })
            .collect();
        let maps_json: Vec<String> = fills
            .iter()
            .map(|(d, n)| {
                format!(
                    "{{\"name\":{},\"entries\":{},\"max_entries\":{}}}",
                    json_str(d.name),
                    n.map_or("null".into(), |n| n.to_string()),
                    d.max_entries
                )
            })
            .collect();
        let counters_json: Vec<String> = counters
            .iter()
            .map(|(c, v)| format!("{}:{v}", json_str(c.name())))
            .collect();
        let inbound_json: Vec<String> = inbound_rows
            .iter()
            .map(|(name, link, prog, ino, l)| {
                format!(
                    "{{\"pod\":{},\"link_id\":{link},\"prog_id\":{prog},\"netns_ino\":{ino},\"listener_ipv4\":{},\"listener_ipv6\":{}}}",
                    json_str(name),
                    l.is_some_and(|l| l.ipv4),
                    l.is_some_and(|l| l.ipv6)
                )
            })
            .collect();
        println!(
            "{{\"pin_dir\":{},\"attached\":[{}],\"inbound\":[{}],\"maps\":[{}],\"pods\":{},\"counters\":{{{}}}}}",
            json_str(&pin_dir.display().to_string()),
            hooks_json.join(","),
            inbound_json.join(","),
            maps_json.join(","),
            pods.len(),
            counters_json.join(",")
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("pin directory: {}", pin_dir.display());
    println!("attached:");
    if hooks.is_empty() {
        println!("  nothing");
    }
    for h in &hooks {
        match &h.link {
            Some(l) => println!(
                "  {:<14} {:<22} link {:<5} prog {}",
                h.hook.program_name(),
                h.hook.attach_type().to_string(),
                l.id,
                l.prog_id
            ),
            None => println!(
                "  {:<14} {:<22} {}",
                h.hook.program_name(),
                h.hook.attach_type().to_string(),
                if h.hook == Hook::SkMsg {
                    "on the sockhash"
                } else if h.hook == Hook::SkLookup {
                    "pinned, attached per pod (inbound)"
                } else {
                    "without link"
                }
            ),
        }
    }
    println!("inbound (sk_lookup per pod netns): {}", inbound_rows.len());
    for (name, link, prog, ino, l) in &inbound_rows {
        let listener = match l {
            Some(l) if l.any() => format!(
                "listener{}{}",
                if l.ipv4 { " ipv4" } else { "" },
                if l.ipv6 { " ipv6" } else { "" }
            ),
            Some(_) => "no listener (refusing)".into(),
            None => "unknown".into(),
        };
        let ns = if *ino == 0 {
            "netns gone".to_string()
        } else {
            format!("netns {ino}")
        };
        println!("  {name:<14} link {link:<5} prog {prog:<5} {ns:<18} {listener}");
    }
    println!("maps:");
    for (d, n) in &fills {
        match n {
            Some(n) => println!(
                "  {:<12} {:>7} / {:<7} {}",
                d.name, n, d.max_entries, d.purpose
            ),
            None => println!("  {:<12} missing", d.name),
        }
    }
    println!("local pods: {}", pods.len());
    println!("counters:");
    for (c, v) in &counters {
        println!("  {:<20} {v}", c.name());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct DumpArgs {
    /// One program (e.g. mb_connect4 or connect4); all when omitted.
    pub program: Option<String>,
    /// Print in the kernel verifier's / bpftool's syntax instead of LLVM's.
    #[arg(long)]
    pub kernel: bool,
    /// Per program: instruction count and the verifier's processed-instruction count (loads
    /// each program into the kernel, attaches nothing; needs root).
    #[arg(long)]
    pub stats: bool,
}

pub fn run_dump(args: DumpArgs) -> Result<ExitCode, String> {
    let hooks: Vec<Hook> = match &args.program {
        None => Hook::ALL.to_vec(),
        Some(name) => {
            let wanted = name.trim_start_matches("mb_");
            let found: Vec<Hook> = Hook::ALL
                .into_iter()
                .filter(|h| h.program_name().trim_start_matches("mb_") == wanted)
                .collect();
            if found.is_empty() {
                let names: Vec<&str> = Hook::ALL.iter().map(|h| h.program_name()).collect();
                return Err(format!(
                    "no program named {name:?}: choose one of {}",
                    names.join(", ")
                ));
            }
            found
        }
    };
    if args.stats {
        return dump_stats(&hooks);
    }
    for hook in hooks {
        let program = embedded(hook).program();
        println!("; {} — {}", hook.program_name(), hook.purpose());
        let text = if args.kernel {
            fmt_kernel(&program)
        } else {
            fmt_llvm(&program)
        }
        .map_err(|e| format!("{}: {e}", hook.program_name()))?;
        print!("{text}");
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

fn dump_stats(hooks: &[Hook]) -> Result<ExitCode, String> {
    use mb_sys::bpf::{prog_load, ProgLoad, VerifierLog};
    use std::os::fd::{AsFd, AsRawFd};
    let maps: Vec<(&str, Map)> = MAPS
        .iter()
        .map(|d| {
            Map::create(&d.spec_with(d.max_entries.min(64)))
                .map(|m| (d.name, m))
                .map_err(|e| format!("creating a scratch map {}: {e} (needs root)", d.name))
        })
        .collect::<Result<_, _>>()?;
    let consts = MeshConstants {
        outbound_port: 15001,
        inbound_port: 15006,
        proxy_uid: 1337,
        dns_port: 15053,
        splice_mode: SPLICE_SIDECARS,
    }
    .relocations();
    println!("{:<14} {:>6} {:>10}", "program", "insns", "processed");
    for &hook in hooks {
        let mut program = embedded(hook).program();
        for (name, map) in &maps {
            if program.map_names().contains(name) {
                program = program
                    .relocate_map(name, map.raw().as_fd().as_raw_fd())
                    .map_err(|e| e.to_string())?;
            }
        }
        for (name, value) in consts {
            if program.const_names().contains(&name) {
                program = program
                    .relocate_const(name, value)
                    .map_err(|e| e.to_string())?;
            }
        }
        let insns: Vec<[u8; 8]> = program.insns.iter().map(|i| i.to_bytes()).collect();
        let mut log = VerifierLog::new(1 << 20, 1);
        prog_load(
            &ProgLoad {
                prog_type: hook.prog_type(),
                expected_attach_type: hook.expected_attach_type(),
                insns: &insns,
                license: "GPL",
                name: hook.program_name(),
                prog_flags: 0,
            },
            Some(&mut log),
        )
        .map_err(|e| format!("{}: {e}\n{}", hook.program_name(), log.text()))?;
        let text = log.text();
        let processed = text
            .split("processed ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?");
        println!(
            "{:<14} {:>6} {:>10}",
            hook.program_name(),
            insns.len(),
            processed
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum PodCommand {
    /// Add (or update) a local pod and its interception policy.
    Add(Box<PodAddArgs>),
    /// Remove a local pod by one of its addresses.
    Del(PodDelArgs),
    /// List the local pods in the maps.
    List(PodListArgs),
}

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

#[derive(Args)]
pub struct PodDelArgs {
    /// One of the pod's addresses.
    pub ip: IpAddr,
    #[command(flatten)]
    pub pin: PinArgs,
}

#[derive(Args)]
pub struct PodListArgs {
    #[command(flatten)]
    pub pin: PinArgs,
}

pub fn run_pod(command: PodCommand) -> Result<ExitCode, String> {
    match command {
        PodCommand::Add(args) => pod_add(*args),
        PodCommand::Del(args) => {
            let maps = PodMaps::open(&args.pin.pin_dir)?;
            let Some(entry) = maps.find(args.ip)? else {
                return Err(format!("no local pod has address {}", args.ip));
            };
            // Inbound capture first: a pod without entry must not keep refusing connections.
            mb_agent::inbound::detach_pod(&args.pin.pin_dir, entry.pod_id)?;
            maps.remove_entry(&entry)?;
            println!("merbridge: pod {} removed", args.ip);
            Ok(ExitCode::SUCCESS)
        }
        PodCommand::List(args) => {
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
    }
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
        policy.splice_app = true;
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

fn pod_add(args: PodAddArgs) -> Result<ExitCode, String> {
    let mesh: Mesh = args.mesh.parse()?;
    let mut ips = Vec::new();
    for part in args.ips.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ip: IpAddr = part
            .parse()
            .map_err(|_| format!("{part:?} is not an IPv4 or IPv6 address"))?;
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            return Err(format!("{ip} cannot be a pod address"));
        }
        if ips.iter().any(|o: &IpAddr| o.is_ipv4() == ip.is_ipv4()) {
            return Err(format!(
                "{}: give at most one IPv4 and one IPv6 address",
                args.ips
            ));
        }
        ips.push(ip);
    }
    if ips.is_empty() {
        return Err("give the pod's address: IPV4, IPV6 or IPV4,IPV6".into());
    }
    let policy = policy_from_args(&args, mesh)?;
    let netns_cookie = mb_loader::netns_cookie::netns_cookie(&args.netns).map_err(|e| {
        format!("{e} (pass the pod's namespace, e.g. /run/netns/NAME or /proc/PID/ns/net)")
    })?;
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
        let inbound = match mb_agent::inbound::attach_pod(
            &args.pin.pin_dir,
            pod_id,
            &args.netns,
            inbound_port,
        ) {
            Ok(done) => done,
            Err(e) => {
                // A pod added now goes again: nothing half-added stays behind.
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
