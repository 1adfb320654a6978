//! `merbridge status`: what is attached where, map fill levels, local pods and counters,
//! as text or (`--json`) as one JSON object. A map that exists but cannot be read is an
//! error, never a zero.

use super::args::PinArgs;
use clap::Args;
use mb_agent::pods::PodMaps;
use mb_loader::datapath::{hook_status, HookStatus, PinLayout};
use mb_maps::datapath::{Hook, MapDecl, MAPS, MAP_COUNTERS};
use mb_maps::layout::Counter;
use mb_maps::{Map, PerCpuArray};
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

fn print_text(report: &StatusReport) {
    println!("pin directory: {}", report.pin_dir);
    println!("attached:");
    if report.hooks.is_empty() {
        println!("  nothing");
    }
    for h in &report.hooks {
        print_hook(h);
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
        println!("  {:<20} {v}", c.name());
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
            } else {
                "without link"
            }
        ),
    }
}
