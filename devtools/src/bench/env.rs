//! One test-bed environment per (topology, setup): nodes, pods, interception, sidecars and the
//! server app, built once and measured round after round. Everything is torn down on drop
//! (processes, pods, the merbridge data path, nodes), also when a measurement fails.

use super::stats::{mean, quantile};
use mb_agent::mesh::{Mesh, PodPolicy};
use mb_agent::pods::{LocalPod, PodMaps};
use mb_loader::datapath::{load_datapath, unload_datapath, LoadOptions};
use mb_maps::datapath::{SPLICE_ALL, SPLICE_NONE, SPLICE_SIDECARS};
use mb_sys::bpffs::PrivateBpffs;
use mb_sys::process::{place, Placement};
use mb_testbed::scenarios::{Binaries, APP_UID, BULK_PORT, ECHO_PORT};
use mb_testbed::workload::{parse_kv, BulkStats, CrrStats};
use mb_testbed::{Interception, MeshPorts, Node, Pod, PodSpec, Sidecar, SidecarConfig};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How traffic reaches the sidecars (or not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Setup {
    /// No sidecar, no interception: the physical limit.
    Direct,
    /// Istio's nat rules in each meshed pod, the reference sidecar.
    Iptables,
    /// merbridge (`--splice sidecars`, the default), the same sidecar, no iptables.
    Merbridge,
    /// merbridge with `--splice all` (application legs spliced too).
    MerbridgeSpliceAll,
    /// merbridge with `--splice none` (no sockhash at all): shows what splicing gains.
    MerbridgeSpliceNone,
    /// merbridge with many other pods known to the maps (lookups must stay O(1)).
    MerbridgeManyPods,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::Iptables => "iptables",
            Setup::Merbridge => "merbridge",
            Setup::MerbridgeSpliceAll => "merbridge-splice-all",
            Setup::MerbridgeSpliceNone => "merbridge-splice-none",
            Setup::MerbridgeManyPods => "merbridge-many-pods",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Setup::Direct => "d",
            Setup::Iptables => "i",
            Setup::Merbridge => "m",
            Setup::MerbridgeSpliceAll => "ma",
            Setup::MerbridgeSpliceNone => "mn",
            Setup::MerbridgeManyPods => "mk",
        }
    }
}

/// Who talks to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topology {
    /// App -> its own sidecar -> a server pod without sidecar on the same node.
    Outbound,
    /// App -> sidecar -> sidecar -> app, both pods on one node.
    SameNode,
    /// App -> its own sidecar -> a server pod without sidecar on another node.
    CrossNode,
}

impl Topology {
    pub const ALL: [Topology; 3] = [Topology::Outbound, Topology::SameNode, Topology::CrossNode];

    /// The topology called `name` (as [`Topology::name`] prints it).
    pub fn from_name(name: &str) -> Option<Topology> {
        Topology::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Topology::Outbound => "outbound",
            Topology::SameNode => "same-node",
            Topology::CrossNode => "cross-node",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Topology::Outbound => "app -> own sidecar -> server pod without sidecar, one node",
            Topology::SameNode => "app -> sidecar -> sidecar -> app, one node",
            Topology::CrossNode => {
                "app -> own sidecar -> server pod without sidecar on another node (routed veth)"
            }
        }
    }

    fn short(self) -> &'static str {
        match self {
            Topology::Outbound => "out",
            Topology::SameNode => "same",
            Topology::CrossNode => "cross",
        }
    }

    /// Whether the server pod has a sidecar too.
    fn server_meshed(self) -> bool {
        self == Topology::SameNode
    }
}

/// CPUs to pin the client, the sidecars and the server app to (`None`: not pinned).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pinning {
    pub client: Option<usize>,
    pub sidecar: Option<usize>,
    pub server: Option<usize>,
}

/// Runs `spawn` with the calling thread's CPU affinity set to `cpu` (children inherit it),
/// then restores the previous affinity.
fn with_affinity<T>(cpu: Option<usize>, spawn: impl FnOnce() -> T) -> Result<T, String> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let Some(cpu) = cpu else {
        return Ok(spawn());
    };
    let me = Pid::from_raw(0);
    let previous = sched_getaffinity(me).map_err(|e| format!("read CPU affinity: {e}"))?;
    let mut only = CpuSet::new();
    only.set(cpu)
        .map_err(|e| format!("CPU {cpu} cannot be pinned to: {e}"))?;
    sched_setaffinity(me, &only)
        .map_err(|e| format!("pin to CPU {cpu}: {e} (does this machine have CPU {cpu}?)"))?;
    let result = spawn();
    sched_setaffinity(me, &previous).map_err(|e| format!("restore CPU affinity: {e}"))?;
    Ok(result)
}

/// A process started by the bench; killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A merbridge data path on a node's cgroup; unloaded, then its bpffs unmounted, on drop.
pub struct Datapath {
    pin_dir: PathBuf,
    _bpffs: PrivateBpffs,
}

impl Datapath {
    /// Loads the data path with Istio's ports on `cgroup` (never the root: the bench passes
    /// cgroups it created), pins under a private bpffs.
    pub fn load(cgroup: &Path, splice_mode: u32) -> Result<Datapath, String> {
        let bpffs = PrivateBpffs::new("mb-bench")
            .map_err(|e| format!("mount a private bpffs for the data path: {e}"))?;
        let pin_dir = bpffs.path().join("merbridge");
        let constants = Mesh::Istio.defaults().constants(splice_mode);
        load_datapath(&LoadOptions {
            ipv6: true,
            ..LoadOptions::for_mesh(cgroup, &pin_dir, constants)
        })
        .map_err(|e| format!("load the data path: {e}"))?;
        Ok(Datapath {
            pin_dir,
            _bpffs: bpffs,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(e) = unload_datapath(&self.pin_dir, None) {
            eprintln!("merbridge bench: unloading the data path: {e}");
        }
    }
}

/// A fake pod for the maps: addresses in 100.64.0.0/10 and fd64::/64 (never used by the test
/// bed), a network-namespace cookie far above any real one.
pub fn fake_pod(i: u32) -> LocalPod {
    LocalPod {
        ips: vec![
            IpAddr::V4(Ipv4Addr::from(0x6440_0000u32 + i)),
            IpAddr::V6(Ipv6Addr::new(
                0xfd64,
                0,
                0,
                0,
                0,
                0,
                (i >> 16) as u16,
                i as u16,
            )),
        ],
        netns_cookie: 0xfff0_0000_0000_0000 | u64::from(i),
        policy: PodPolicy::defaults(Mesh::Istio),
        dns_capture: false,
    }
}

/// Adds a real pod of the test bed to the maps with Istio's default policy.
pub fn add_real_pod(maps: &PodMaps, pod: &Pod) -> Result<(), String> {
    let cookie = pod
        .netns_cookie()
        .map_err(|e| format!("netns cookie of pod {}: {e}", pod.name()))?;
    maps.upsert(&LocalPod {
        ips: vec![pod.ipv4().into(), pod.ipv6().into()],
        netns_cookie: cookie,
        policy: PodPolicy::defaults(Mesh::Istio),
        dns_capture: false,
    })?;
    Ok(())
}

/// CPU time used, in microseconds, read from cgroup `cpu.stat` (hierarchical, includes
/// processes that already exited) and from `/proc/stat` (softirq, machine-wide or the pinned
/// CPUs).
#[derive(Clone, Copy, Debug, Default)]
struct CpuSnapshot {
    client_us: u64,
    client_pod_us: u64,
    app_us: u64,
    server_pod_us: u64,
    softirq_us: u64,
}

/// CPU seconds per unit of work, by whom.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    pub client: f64,
    pub sidecars: f64,
    pub server: f64,
    pub softirq: f64,
}

fn cgroup_usage_us(cgroup: &Path) -> u64 {
    std::fs::read_to_string(cgroup.join("cpu.stat"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Softirq time of `cpus` (all when empty) from `/proc/stat`, in microseconds.
fn softirq_us(cpus: &[usize]) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as u64;
    let wanted: Vec<String> = if cpus.is_empty() {
        vec!["cpu".to_owned()]
    } else {
        cpus.iter().map(|c| format!("cpu{c}")).collect()
    };
    let ticks: u64 = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            if !wanted.iter().any(|w| w == name) {
                return None;
            }
            // user nice system idle iowait irq softirq
            fields.nth(6)?.parse::<u64>().ok()
        })
        .sum();
    ticks * 1_000_000 / ticks_per_s
}

/// One measured figure per name (see `super::report::METRICS`) plus what failed.
#[derive(Clone, Debug, Default)]
pub struct RoundResult {
    pub figures: BTreeMap<&'static str, f64>,
    pub errors: Vec<String>,
    /// Round trips of the single-connection RR run (ns), for the latency distribution.
    pub rr_samples: Vec<u64>,
}

/// How much each measure does.
#[derive(Clone, Copy, Debug)]
pub struct Counts {
    pub rr: u64,
    pub rr_warmup: u64,
    /// Total exchanges of the concurrent RR runs.
    pub rr_parallel: u64,
    pub crr: u64,
    pub bulk_bytes: u64,
}

/// A built environment.
pub struct Env {
    pub topology: Topology,
    pub setup: Setup,
    pinning: Pinning,
    workload: PathBuf,
    // Drop order: processes, pods, data path, nodes.
    _sidecars: Vec<Sidecar>,
    _server_app: Proc,
    client_pod: Pod,
    server_pod: Pod,
    client_cgroup: PathBuf,
    app_cgroup: PathBuf,
    _datapath: Option<Datapath>,
    _nodes: Vec<Node>,
}

/// Spawns `cmd` in `pod`'s network namespace and in `cgroup` as `uid`, pinned to `cpu`.
fn spawn_in(
    pod: &Pod,
    cgroup: &Path,
    mut cmd: Command,
    uid: u32,
    cpu: Option<usize>,
) -> Result<Child, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    place(
        &mut cmd,
        &Placement {
            netns: Some(pod.netns_path()),
            cgroup: Some(cgroup),
            uid: Some(uid),
            gid: None,
            die_with_parent: true,
        },
    )
    .map_err(|e| format!("prepare {program} for pod {}: {e}", pod.name()))?;
    with_affinity(cpu, || cmd.spawn())?
        .map_err(|e| format!("start {program} in pod {}: {e}", pod.name()))
}

fn sub_cgroup(pod: &Pod, name: &str) -> Result<PathBuf, String> {
    let path = pod.cgroup_path().join(name);
    std::fs::create_dir(&path).map_err(|e| format!("create cgroup {}: {e}", path.display()))?;
    Ok(path)
}

impl Env {
    /// Builds `setup` in `topology`. `many_pods` fake pods go into the maps first for
    /// [`Setup::MerbridgeManyPods`].
    pub fn build(
        topology: Topology,
        setup: Setup,
        bins: &Binaries,
        pinning: Pinning,
        many_pods: u32,
    ) -> Result<Env, String> {
        let hint = format!("b-{}-{}", topology.short(), setup.short());
        let node = Node::new(&hint).map_err(|e| format!("create node: {e}"))?;
        let mut nodes = vec![node];
        if topology == Topology::CrossNode {
            let other = Node::new(&format!("{hint}-2")).map_err(|e| format!("create node: {e}"))?;
            Node::join(&nodes[0], &other).map_err(|e| format!("join nodes: {e}"))?;
            nodes.push(other);
        }
        let datapath = match setup {
            Setup::Merbridge | Setup::MerbridgeManyPods => {
                Some(Datapath::load(nodes[0].cgroup_path(), SPLICE_SIDECARS)?)
            }
            Setup::MerbridgeSpliceAll => Some(Datapath::load(nodes[0].cgroup_path(), SPLICE_ALL)?),
            Setup::MerbridgeSpliceNone => {
                Some(Datapath::load(nodes[0].cgroup_path(), SPLICE_NONE)?)
            }
            _ => None,
        };
        let maps = match &datapath {
            Some(d) => Some(PodMaps::open(d.pin_dir())?),
            None => None,
        };
        if let (Setup::MerbridgeManyPods, Some(maps)) = (setup, &maps) {
            for i in 1..=many_pods {
                maps.upsert(&fake_pod(i))
                    .map_err(|e| format!("add fake pod {i}: {e}"))?;
            }
        }
        let client_pod = nodes[0]
            .add_pod(PodSpec::named("client"))
            .map_err(|e| format!("create client pod: {e}"))?;
        let server_pod = nodes[nodes.len() - 1]
            .add_pod(PodSpec::named("server"))
            .map_err(|e| format!("create server pod: {e}"))?;
        let mesh = MeshPorts::istio();
        let mut meshed = Vec::new();
        if setup != Setup::Direct {
            meshed.push(&client_pod);
            if topology.server_meshed() {
                meshed.push(&server_pod);
            }
        }
        let mut sidecars = Vec::new();
        for pod in meshed {
            match &maps {
                Some(maps) => add_real_pod(maps, pod)?,
                None => Interception::Iptables(mesh.clone())
                    .install_pod(pod)
                    .map_err(|e| format!("install iptables rules: {e}"))?,
            }
            let sidecar = with_affinity(pinning.sidecar, || {
                Sidecar::start_binary(
                    &bins.sidecar,
                    pod,
                    SidecarConfig::for_mesh(&mesh),
                    mesh.proxy_uid,
                )
            })?
            .map_err(|e| format!("start sidecar: {e}"))?;
            sidecars.push(sidecar);
        }
        let client_cgroup = sub_cgroup(&client_pod, "bench-client")?;
        let app_cgroup = sub_cgroup(&server_pod, "bench-app")?;
        let server_app = start_server(&server_pod, &app_cgroup, bins, pinning.server)?;
        Ok(Env {
            topology,
            setup,
            pinning,
            workload: bins.workload.clone(),
            _sidecars: sidecars,
            _server_app: server_app,
            client_pod,
            server_pod,
            client_cgroup,
            app_cgroup,
            _datapath: datapath,
            _nodes: nodes,
        })
    }

    fn target(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_pod.ipv4().into(), port)
    }

    /// Runs `mb-workload <args>` as the client app; returns its stdout.
    fn client(&self, args: &[String]) -> Result<String, String> {
        let mut cmd = Command::new(&self.workload);
        if self.setup == Setup::MerbridgeSpliceAll {
            // The app's own sockets sit in the sockhash: a blocking read woken without data
            // says EAGAIN (kernel tcp_bpf_recvmsg); the client waits as an event-driven app
            // would.
            cmd.arg("--wait-on-eagain");
        }
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = Proc(spawn_in(
            &self.client_pod,
            &self.client_cgroup,
            cmd,
            APP_UID,
            self.pinning.client,
        )?);
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut text);
                }
                text
            })
        };
        let stdout = read(child.0.stdout.take().map(|p| Box::new(p) as _));
        let stderr = read(child.0.stderr.take().map(|p| Box::new(p) as _));
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            match child.0.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => return Err(format!("{} still running after 300 s", args[0])),
                Err(e) => return Err(format!("wait for the {} client: {e}", args[0])),
            }
        };
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(format!(
                "{} client failed ({status}): {}",
                args[0],
                err.trim()
            ));
        }
        Ok(out)
    }

    fn cpu_snapshot(&self) -> CpuSnapshot {
        let pinned: Vec<usize> = [
            self.pinning.client,
            self.pinning.sidecar,
            self.pinning.server,
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut cpus = pinned;
        cpus.sort_unstable();
        cpus.dedup();
        CpuSnapshot {
            client_us: cgroup_usage_us(&self.client_cgroup),
            client_pod_us: cgroup_usage_us(self.client_pod.cgroup_path()),
            app_us: cgroup_usage_us(&self.app_cgroup),
            server_pod_us: cgroup_usage_us(self.server_pod.cgroup_path()),
            softirq_us: softirq_us(&cpus),
        }
    }

    /// CPU seconds between two snapshots, divided by `units`.
    fn cpu_use(before: &CpuSnapshot, after: &CpuSnapshot, units: f64) -> CpuUse {
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6 / units.max(f64::MIN_POSITIVE);
        let client = d(before.client_us, after.client_us);
        let app = d(before.app_us, after.app_us);
        let client_pod = d(before.client_pod_us, after.client_pod_us);
        let server_pod = d(before.server_pod_us, after.server_pod_us);
        CpuUse {
            client,
            sidecars: (client_pod - client).max(0.0) + (server_pod - app).max(0.0),
            server: app,
            softirq: d(before.softirq_us, after.softirq_us),
        }
    }

    fn conntrack(&self) -> u64 {
        self.client_pod.conntrack_count().unwrap_or(0)
            + self.server_pod.conntrack_count().unwrap_or(0)
    }

    /// One round of every measure. A failing measure is recorded and the others still run.
    pub fn measure(&self, counts: &Counts, progress: &dyn Fn(&str)) -> RoundResult {
        let mut r = RoundResult::default();
        progress("rr c=1");
        if let Err(e) = self.measure_rr(counts, &mut r) {
            r.errors.push(format!("rr: {e}"));
        }
        for connections in [8usize, 64] {
            progress(&format!("rr c={connections}"));
            if let Err(e) = self.measure_rr_parallel(counts, connections, &mut r) {
                r.errors.push(format!("rr c={connections}: {e}"));
            }
        }
        progress("crr");
        if let Err(e) = self.measure_crr(counts, &mut r) {
            r.errors.push(format!("crr: {e}"));
        }
        progress("bulk");
        if let Err(e) = self.measure_bulk(counts, &mut r) {
            r.errors.push(format!("bulk: {e}"));
        }
        r
    }

    fn measure_rr(&self, counts: &Counts, r: &mut RoundResult) -> Result<(), String> {
        let before = self.cpu_snapshot();
        let out = self.client(&[
            "rr".into(),
            format!("--to={}", self.target(ECHO_PORT)),
            format!("--count={}", counts.rr),
            format!("--warmup={}", counts.rr_warmup),
            "--samples".into(),
        ])?;
        let after = self.cpu_snapshot();
        let mut samples = parse_samples(&out)?;
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1e3;
        r.figures.insert("rr_p50_us", us(quantile(&samples, 0.5)));
        r.figures.insert("rr_p99_us", us(quantile(&samples, 0.99)));
        r.figures
            .insert("rr_p999_us", us(quantile(&samples, 0.999)));
        r.figures.insert("rr_mean_us", mean(&samples) / 1e3);
        let requests = (counts.rr + counts.rr_warmup) as f64;
        let cpu = Self::cpu_use(&before, &after, requests / 10_000.0);
        r.figures.insert("cpu_10k_client_s", cpu.client);
        r.figures.insert("cpu_10k_sidecars_s", cpu.sidecars);
        r.figures.insert("cpu_10k_server_s", cpu.server);
        r.figures.insert("cpu_10k_softirq_s", cpu.softirq);
        r.rr_samples = samples;
        Ok(())
    }

    fn measure_rr_parallel(
        &self,
        counts: &Counts,
        connections: usize,
        r: &mut RoundResult,
    ) -> Result<(), String> {
        let out = self.client(&[
            "rr".into(),
            format!("--to={}", self.target(ECHO_PORT)),
            format!("--count={}", counts.rr_parallel),
            format!("--warmup={}", (counts.rr_warmup / 10).max(10)),
            format!("--connections={connections}"),
            "--samples".into(),
        ])?;
        let mut samples = parse_samples(&out)?;
        samples.sort_unstable();
        let summary = parse_kv(out.lines().last().unwrap_or(""));
        let per_sec: f64 = summary
            .get("per_sec")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("rr c={connections}: no per_sec in {out:?}"))?;
        let (rate, p50, p99) = match connections {
            8 => ("rr_c8_per_s", "rr_c8_p50_us", "rr_c8_p99_us"),
            _ => ("rr_c64_per_s", "rr_c64_p50_us", "rr_c64_p99_us"),
        };
        r.figures.insert(rate, per_sec);
        r.figures.insert(p50, quantile(&samples, 0.5) as f64 / 1e3);
        r.figures.insert(p99, quantile(&samples, 0.99) as f64 / 1e3);
        Ok(())
    }

    fn measure_crr(&self, counts: &Counts, r: &mut RoundResult) -> Result<(), String> {
        let conntrack_before = self.conntrack();
        let out = self.client(&[
            "crr".into(),
            format!("--to={}", self.target(ECHO_PORT)),
            format!("--count={}", counts.crr),
        ])?;
        let created = self.conntrack().saturating_sub(conntrack_before);
        let stats = CrrStats::parse(out.trim()).map_err(|e| format!("{e} in {out:?}"))?;
        r.figures.insert("crr_per_s", stats.per_second());
        r.figures
            .insert("crr_p50_us", stats.latency.p50_ns as f64 / 1e3);
        r.figures
            .insert("crr_p99_us", stats.latency.p99_ns as f64 / 1e3);
        r.figures
            .insert("crr_max_us", stats.latency.max_ns as f64 / 1e3);
        r.figures.insert("conntrack_entries", created as f64);
        Ok(())
    }

    fn measure_bulk(&self, counts: &Counts, r: &mut RoundResult) -> Result<(), String> {
        let before = self.cpu_snapshot();
        let out = self.client(&[
            "bulk".into(),
            format!("--to={}", self.target(BULK_PORT)),
            format!("--bytes={}", counts.bulk_bytes),
        ])?;
        let after = self.cpu_snapshot();
        let stats = BulkStats::parse(out.trim()).map_err(|e| format!("{e} in {out:?}"))?;
        r.figures.insert("bulk_mbit_s", stats.mbit_per_second());
        let cpu = Self::cpu_use(&before, &after, stats.bytes as f64 / 1e9);
        r.figures.insert("cpu_gb_client_s", cpu.client);
        r.figures.insert("cpu_gb_sidecars_s", cpu.sidecars);
        r.figures.insert("cpu_gb_server_s", cpu.server);
        r.figures.insert("cpu_gb_softirq_s", cpu.softirq);
        Ok(())
    }
}

/// The `samples ns=…` line of `mb-workload rr --samples`.
fn parse_samples(out: &str) -> Result<Vec<u64>, String> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("samples ns="))
        .ok_or_else(|| "the rr client printed no samples line".to_string())?;
    line.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|e| format!("bad sample {s:?}: {e}"))
        })
        .collect()
}

/// Starts `mb-workload serve` (echo + bulk) in `pod`, in `cgroup`, and waits for `ready`.
fn start_server(
    pod: &Pod,
    cgroup: &Path,
    bins: &Binaries,
    cpu: Option<usize>,
) -> Result<Proc, String> {
    let mut cmd = Command::new(&bins.workload);
    cmd.args([
        "serve",
        "--echo",
        &ECHO_PORT.to_string(),
        "--bulk",
        &BULK_PORT.to_string(),
    ])
    .stdout(Stdio::piped());
    let mut app = Proc(spawn_in(pod, cgroup, cmd, APP_UID, cpu)?);
    let stdout = app
        .0
        .stdout
        .take()
        .ok_or_else(|| "the server app's stdout was not captured".to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if line.trim() == "ready" => Ok(app),
        other => Err(format!(
            "the server app in pod {} did not start: {other:?}",
            pod.name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_line_parses_and_bad_input_is_an_error() {
        assert_eq!(
            parse_samples("samples ns=3,1,2\nrr count=3").unwrap(),
            vec![3, 1, 2]
        );
        assert!(parse_samples("rr count=3").is_err());
        assert!(parse_samples("samples ns=1,x").is_err());
    }

    #[test]
    fn fake_pods_are_distinct_and_outside_the_test_bed() {
        let (a, b) = (fake_pod(1), fake_pod(10_000));
        assert_ne!(a.ips, b.ips);
        assert_ne!(a.netns_cookie, b.netns_cookie);
        assert_eq!(b.ips[0], IpAddr::V4(Ipv4Addr::new(100, 64, 39, 16)));
    }
}
