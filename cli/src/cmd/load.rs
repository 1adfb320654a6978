//! `merbridge load`: load the data path and attach it to a cgroup; it stays attached through
//! its pins.

use super::args::{cgroup_or_root, MeshArgs, SpliceChoice, TargetArgs};
use clap::Args;
use mb_agent::mesh::Mesh;
use mb_loader::attach::AttachMode;
use mb_loader::datapath::{load_datapath_sized, LoadOptions, LoadReport};
use std::path::Path;
use std::process::ExitCode;

#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub mesh: MeshArgs,
    #[command(flatten)]
    pub target: TargetArgs,
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

pub fn run(args: LoadArgs) -> Result<ExitCode, String> {
    let mesh = args.mesh.mesh()?;
    let opts = load_options(&args, mesh)?;
    let sizes = args.target.sizes.sizes()?;
    args.target.pin.prepare()?;
    let report = load_datapath_sized(&opts, &sizes).map_err(|e| e.to_string())?;
    print_report(mesh, &opts, &report, &args.mesh.splice_choice()?);
    Ok(ExitCode::SUCCESS)
}

/// The loader's options from the command line, every value checked.
fn load_options(args: &LoadArgs, mesh: Mesh) -> Result<LoadOptions, String> {
    let constants = args.mesh.constants()?;
    let cgroup = cgroup_or_root(&args.target.cgroup)?;
    Ok(LoadOptions {
        cgroup,
        pin_dir: args.target.pin.pin_dir.clone(),
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
    })
}

/// What was attached where, and the notes a user needs about it.
fn print_report(mesh: Mesh, opts: &LoadOptions, report: &LoadReport, splice: &SpliceChoice) {
    println!(
        "merbridge: {} data path attached to {} in {:.1} ms (pins in {}), splice {} ({})",
        mesh,
        opts.cgroup.display(),
        report.elapsed.as_secs_f64() * 1000.0,
        opts.pin_dir.display(),
        splice.mode_name(),
        splice.why
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
    print_notes(&opts.cgroup, report);
    if splice.hazard_present && splice.mode != mb_maps::datapath::SPLICE_NONE {
        println!(
            "  note: sidecar legs are spliced and this kernel answers a blocking recv() on a \
             spliced socket with a spurious EAGAIN: sidecars must be event-driven (non-blocking \
             sockets), as Envoy and linkerd2-proxy are; a sidecar that blocks in recv() needs \
             --splice none"
        );
    }
}

fn print_notes(cgroup: &Path, report: &LoadReport) {
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
}
