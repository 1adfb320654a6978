//! Arguments shared by the data-path commands: where the pins live, which mesh and its
//! numbers, and which cgroup is intercepted.

use clap::Args;
use mb_agent::mesh::Mesh;
use mb_loader::datapath::MeshConstants;
use mb_loader::map_sizes::MapSizes;
use mb_maps::datapath::{SPLICE_ALL, SPLICE_NONE, SPLICE_SIDECARS};
use std::path::{Path, PathBuf};

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
    pub fn prepare(&self) -> Result<(), String> {
        if self.pin_dir == Path::new(DEFAULT_PIN_DIR) {
            mb_sys::bpffs::ensure_bpffs(Path::new(mb_sys::bpffs::DEFAULT_BPFFS))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// How large the maps are made (a pinned data path keeps the size it was created with).
#[derive(Args, Clone, Debug)]
pub struct MapSizeArgs {
    /// Meshed pods the maps hold on this node: netns_pods, pod_ips (2 addresses each) and
    /// 16 rules each. A pod beyond it is not intercepted (warned, counted in metrics).
    #[arg(long, default_value_t = MapSizes::default().pods)]
    pub max_pods: u32,
    /// Concurrent redirected connections (cookie_orig, pair_orig, sock_pairs).
    #[arg(long, default_value_t = MapSizes::default().connections)]
    pub max_connections: u32,
}

impl MapSizeArgs {
    pub fn sizes(&self) -> Result<MapSizes, String> {
        MapSizes::checked(self.max_pods, self.max_connections)
    }
}

/// Where a data path goes: the cgroup it intercepts, the pin directory and the map sizes
/// (`load` and `run`).
#[derive(Args, Clone, Debug)]
pub struct TargetArgs {
    /// The cgroup (v2) whose processes are intercepted: the node's root cgroup by default.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[command(flatten)]
    pub pin: PinArgs,
    #[command(flatten)]
    pub sizes: MapSizeArgs,
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
    /// recv() can see spurious EAGAIN on kernels with the splice hazard), `none`, or `auto`
    /// (the default: probe the hazard; `all` where this kernel is free of it, else `sidecars`).
    #[arg(long, default_value = "auto")]
    pub splice: String,
}

/// The splice mode chosen and why, for `load`'s summary line.
#[derive(Clone, Debug)]
pub struct SpliceChoice {
    pub mode: u32,
    pub why: String,
    /// The probe ran and found the hazard: blocking readers on spliced sockets can fail.
    pub hazard_present: bool,
}

impl SpliceChoice {
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            SPLICE_NONE => "none",
            SPLICE_ALL => "all",
            _ => "sidecars",
        }
    }
}

impl MeshArgs {
    /// `--splice` resolved: an explicit mode as given; `auto` runs the run-time probe of the
    /// splice hazard (mb_loader::splice_hazard) once per process.
    pub fn splice_choice(&self) -> Result<SpliceChoice, String> {
        use mb_loader::splice_hazard::{probed_splice_hazard as probed, SpliceHazard};
        let given = |mode| SpliceChoice {
            mode,
            why: "--splice".into(),
            hazard_present: mode != SPLICE_NONE && matches!(probed(), SpliceHazard::Present(_)),
        };
        Ok(match self.splice.as_str() {
            "none" => given(SPLICE_NONE),
            "sidecars" => given(SPLICE_SIDECARS),
            "all" => given(SPLICE_ALL),
            "auto" => match probed() {
                h @ SpliceHazard::Absent => SpliceChoice {
                    mode: h.auto_splice_mode(),
                    why: "auto: this kernel has no splice hazard".into(),
                    hazard_present: false,
                },
                SpliceHazard::Present(_) => SpliceChoice {
                    mode: SPLICE_SIDECARS,
                    why: "auto: this kernel has the splice hazard, see `merbridge probe`".into(),
                    hazard_present: true,
                },
                SpliceHazard::Unknown(e) => SpliceChoice {
                    mode: SPLICE_SIDECARS,
                    why: format!("auto: the splice-hazard probe could not decide ({e})"),
                    hazard_present: false,
                },
            },
            other => {
                return Err(format!(
                    "--splice {other:?}: use auto (the default), sidecars, all or none"
                ))
            }
        })
    }

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
            splice_mode: self.splice_choice()?.mode,
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

/// The cgroup given, or the node's cgroup2 root; either must be a cgroup v2 directory.
pub fn cgroup_or_root(cgroup: &Option<PathBuf>) -> Result<PathBuf, String> {
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
