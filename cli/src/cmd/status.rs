//! `merbridge status`: what is attached where, map fill levels, local pods and counters,
//! as text or (`--json`) as one JSON object. A map that exists but cannot be read is an
//! error, never a zero.

use super::args::PinArgs;
use clap::Args;
use mb_agent::pods::PodMaps;
use mb_loader::datapath::{hook_status, read_counters, HookStatus, PinLayout};
use mb_maps::datapath::{Hook, MapDecl, MAPS};
use mb_maps::layout::Counter;
use mb_maps::Map;
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::path::Path;
use std::process::ExitCode;

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Everything `status` reports, in the order of its JSON fields.
#[derive(serde::Serialize)]
struct StatusReport {
    pin_dir: String,
    attached: Vec<AttachedHook>,
    /// Each meshed pod's sk_lookup link (inbound capture from outside the pod).
    inbound: Vec<InboundLinkStatus>,
    maps: Vec<MapFill>,
    /// Local pods in the maps.
    pods: usize,
    counters: Counters,
    #[serde(skip)]
    hooks: Vec<HookStatus>,
}

#[derive(serde::Serialize)]
struct AttachedHook {
    program: &'static str,
    attach_type: String,
    link_id: Option<u32>,
    prog_id: Option<u32>,
    pinned_prog: bool,
}

#[derive(serde::Serialize)]
struct InboundLinkStatus {
    pod: String,
    link_id: u32,
    prog_id: u32,
    /// 0 when the pod's network namespace is gone.
    netns_ino: u32,
    /// `None` (null) when the listener map could not say.
    listener_ipv4: Option<bool>,
    listener_ipv6: Option<bool>,
}

#[derive(serde::Serialize)]
struct MapFill {
    name: &'static str,
    /// `None` when the map is not pinned (reported as missing).
    entries: Option<usize>,
    max_entries: u32,
    #[serde(skip)]
    purpose: &'static str,
}

/// The counters by name, in the data path's order (a JSON object).
struct Counters(Vec<(Counter, u64)>);

impl Serialize for Counters {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (c, v) in &self.0 {
            map.serialize_entry(c.name(), v)?;
        }
        map.end()
    }
}

pub fn run(args: StatusArgs) -> Result<ExitCode, String> {
    let report = collect(&args.pin.pin_dir)?;
    if args.json {
        let json = serde_json::to_string(&report).map_err(|e| format!("status as JSON: {e}"))?;
        println!("{json}");
    } else {
        print_text(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads everything from the kernel; any map that cannot be read fails the whole report.
fn collect(pin_dir: &Path) -> Result<StatusReport, String> {
    if !pin_dir.exists() {
        return Err(format!(
            "nothing loaded: {} does not exist (run `merbridge load`, or pass the --pin-dir it used)",
            pin_dir.display()
        ));
    }
    let hooks = hook_status(pin_dir);
    let maps = MAPS
        .iter()
        .map(|decl| map_fill(pin_dir, decl))
        .collect::<Result<_, _>>()?;
    let pods = PodMaps::open(pin_dir)
        .and_then(|m| m.pods())
        .map_err(|e| format!("local pods: {e}"))?
        .len();
    Ok(StatusReport {
        pin_dir: pin_dir.display().to_string(),
        attached: hooks.iter().map(attached_hook).collect(),
        inbound: inbound_links(pin_dir)?,
        maps,
        pods,
        counters: Counters(counters(pin_dir)?),
        hooks,
    })
}

fn attached_hook(h: &HookStatus) -> AttachedHook {
    AttachedHook {
        program: h.hook.program_name(),
        attach_type: h.hook.attach_type().to_string(),
        link_id: h.link.as_ref().map(|l| l.id),
        prog_id: h.link.as_ref().map(|l| l.prog_id),
        pinned_prog: h.pinned_prog,
    }
}

/// The per-pod sk_lookup links and whether each pod's sidecar listener is in place.
fn inbound_links(pin_dir: &Path) -> Result<Vec<InboundLinkStatus>, String> {
    let links = mb_agent::inbound::list(pin_dir).map_err(|e| format!("inbound links: {e}"))?;
    Ok(links
        .into_iter()
        .map(|(pod_id, link)| {
            let listeners = pod_id.and_then(|id| mb_agent::inbound::listeners(pin_dir, id).ok());
            InboundLinkStatus {
                pod: link.name.clone(),
                link_id: link.link_id,
                prog_id: link.prog_id,
                netns_ino: link.netns_ino,
                listener_ipv4: listeners.map(|l| l.ipv4),
                listener_ipv6: listeners.map(|l| l.ipv6),
            }
        })
        .collect())
}

/// A map's entry count, by walking its keys; `None` when it is not pinned at all.
fn map_fill(pin_dir: &Path, decl: &'static MapDecl) -> Result<MapFill, String> {
    let path = PinLayout::new(pin_dir).map(decl.name);
    let entries = if path.exists() {
        let map = Map::open_pinned_any(&path).map_err(|e| format!("map {}: {e}", decl.name))?;
        let mut count = 0;
        for key in map.raw_keys() {
            key.map_err(|e| format!("map {}: reading its keys: {e}", decl.name))?;
            count += 1;
        }
        Some(count)
    } else {
        None
    };
    Ok(MapFill {
        name: decl.name,
        entries,
        max_entries: decl.max_entries,
        purpose: decl.purpose,
    })
}

/// Every counter, summed over the CPUs.
fn counters(pin_dir: &Path) -> Result<Vec<(Counter, u64)>, String> {
    read_counters(pin_dir).map_err(|e| format!("counters: {e}"))
}

fn print_text(report: &StatusReport) {
    println!("pin directory: {}", report.pin_dir);
    println!("attached:");
    if report.hooks.is_empty() {
        println!("  nothing");
    }
    for h in &report.hooks {
        print_hook(h);
    }
    println!(
        "inbound (sk_lookup per pod netns): {}",
        report.inbound.len()
    );
    for l in &report.inbound {
        print_inbound_link(l);
    }
    println!("maps:");
    for m in &report.maps {
        match m.entries {
            Some(n) => println!(
                "  {:<12} {:>7} / {:<7} {}",
                m.name, n, m.max_entries, m.purpose
            ),
            None => println!("  {:<12} missing", m.name),
        }
    }
    println!("local pods: {}", report.pods);
    println!("counters:");
    for (c, v) in &report.counters.0 {
        println!("  {:<22} {v:>12}  {}", c.name(), c.about());
    }
}

fn print_hook(h: &HookStatus) {
    let program = h.hook.program_name();
    let attach_type = h.hook.attach_type().to_string();
    match &h.link {
        Some(l) => println!(
            "  {program:<14} {attach_type:<22} link {:<5} prog {}",
            l.id, l.prog_id
        ),
        None => println!(
            "  {program:<14} {attach_type:<22} {}",
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

fn print_inbound_link(l: &InboundLinkStatus) {
    let listener = match (l.listener_ipv4, l.listener_ipv6) {
        (Some(false), Some(false)) => "no listener (refusing)".to_string(),
        (Some(v4), Some(v6)) => format!(
            "listener{}{}",
            if v4 { " ipv4" } else { "" },
            if v6 { " ipv6" } else { "" }
        ),
        _ => "unknown".to_string(),
    };
    let netns = if l.netns_ino == 0 {
        "netns gone".to_string()
    } else {
        format!("netns {}", l.netns_ino)
    };
    println!(
        "  {:<14} link {:<5} prog {:<5} {netns:<18} {listener}",
        l.pod, l.link_id, l.prog_id
    );
}
