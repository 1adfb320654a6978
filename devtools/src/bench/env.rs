//! One test-bed environment per (topology, setup): a [`MeshSetup`] (nodes, pods, interception,
//! sidecars) and the server app, built once and measured round after round, each round
//! checked for interception. Everything is torn down on drop
//! (processes, pods, the merbridge data path, nodes), also when a measurement fails.

use super::setup::{conntrack_entries, MeshSetup, PodNames};
use super::stats::{mean, quantile};
use mb_agent::mesh::{Mesh, PodPolicy};
use mb_agent::pods::{LocalPod, PodMaps};
use mb_loader::datapath::{load_datapath, unload_datapath, LoadOptions};
use mb_sys::bpffs::PrivateBpffs;
use mb_sys::process::{place, Placement};
use mb_testbed::scenarios::{Binaries, APP_UID, BULK_PORT, ECHO_PORT};
use mb_testbed::workload::{parse_kv, BulkStats, CrrStats};
use mb_testbed::Pod;
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
    /// The same sidecars, no interception: the application dials its sidecar, which knows
    /// the destination from configuration. The cost floor of a relaying sidecar; what the
    /// other mesh setups add over it is the cost of interception itself.
    ExplicitProxy,
    /// Istio's nat rules in each meshed pod, the reference sidecar.
    Iptables,
    /// merbridge as loaded by default (`--splice auto`: the hazard probe decides), the same
    /// sidecar, no iptables.
    Merbridge,
    /// merbridge with `--splice all` (application legs spliced too).
    MerbridgeSpliceAll,
    /// merbridge with `--splice none` (no sockhash at all): shows what splicing gains.
    MerbridgeSpliceNone,
    /// merbridge with many other pods known to the maps (lookups must stay O(1)).
    MerbridgeManyPods,
    /// merbridge as loaded by default, with BLOCKING apps (thread per connection, blocking
    /// sockets): the per-process classifier marks them blocking, their legs stay unspliced.
    MerbridgeBlockingApps,
}

impl Setup {
    pub fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::ExplicitProxy => "explicit-proxy",
            Setup::Iptables => "iptables",
            Setup::Merbridge => "merbridge",
            Setup::MerbridgeSpliceAll => "merbridge-splice-all",
            Setup::MerbridgeSpliceNone => "merbridge-splice-none",
            Setup::MerbridgeManyPods => "merbridge-many-pods",
            Setup::MerbridgeBlockingApps => "merbridge-blocking-apps",
        }
    }

    pub(super) fn short(self) -> &'static str {
        match self {
            Setup::Direct => "d",
            Setup::ExplicitProxy => "x",
            Setup::Iptables => "i",
            Setup::Merbridge => "m",
            Setup::MerbridgeSpliceAll => "ma",
            Setup::MerbridgeSpliceNone => "mn",
            Setup::MerbridgeManyPods => "mk",
            Setup::MerbridgeBlockingApps => "mb",
        }
    }

    /// Whether this setup's apps (client and server) are event-driven (`mb-workload
    /// --event-driven`: non-blocking sockets, EAGAIN = wait), as Go, Envoy or Node apps are.
    /// Every setup but [`Setup::MerbridgeBlockingApps`]: the same apps everywhere.
    pub fn event_driven_apps(self) -> bool {
        self != Setup::MerbridgeBlockingApps
    }

    /// Whether the agent's per-process splice classifier runs (the default-mode merbridge
    /// setups): their clients settle first, so that they are classified before they connect
    /// as a long-running app would be.
    pub fn classified(self) -> bool {
        matches!(
            self,
            Setup::Merbridge | Setup::MerbridgeManyPods | Setup::MerbridgeBlockingApps
        )
    }
}

/// Who talks to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topology {
    /// App -> its own sidecar -> a server pod without sidecar on the same node.
    Outbound,
    /// App -> sidecar -> sidecar -> app, both pods on one node.
    SameNode,
    /// App -> sidecar -> sidecar -> app, the server pod on another node: its sidecar gets
    /// the connection from iptables' REDIRECT or merbridge's per-pod sk_lookup program.
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
                "app -> sidecar -> sidecar -> app, server pod on another node (routed veth)"
            }
        }
    }

    pub(super) fn short(self) -> &'static str {
        match self {
            Topology::Outbound => "out",
            Topology::SameNode => "same",
            Topology::CrossNode => "cross",
        }
    }

    /// Whether the server pod has a sidecar too.
    pub(super) fn server_meshed(self) -> bool {
        matches!(self, Topology::SameNode | Topology::CrossNode)
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
pub(super) fn with_affinity<T>(cpu: Option<usize>, spawn: impl FnOnce() -> T) -> Result<T, String> {
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

/// Adds a real pod of the test bed to the maps with Istio's default policy; returns its pod id.
pub fn add_real_pod(maps: &PodMaps, pod: &Pod) -> Result<u32, String> {
    let cookie = pod
        .netns_cookie()
        .map_err(|e| format!("netns cookie of pod {}: {e}", pod.name()))?;
    let (pod_id, _) = maps.upsert(&LocalPod {
        ips: vec![pod.ipv4().into(), pod.ipv6().into()],
        netns_cookie: cookie,
        policy: PodPolicy::defaults(Mesh::Istio),
        dns_capture: false,
    })?;
    Ok(pod_id)
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

/// CPU time used by `cgroup` and its children; unreadable is an error, never 0 s.
fn cgroup_usage_us(cgroup: &Path) -> Result<u64, String> {
    let path = cgroup.join("cpu.stat");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("CPU use: read {}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("CPU use: no usage_usec in {}", path.display()))
}

/// Softirq time of `cpus` (all when empty) from `/proc/stat`, in microseconds.
fn softirq_us(cpus: &[usize]) -> Result<u64, String> {
    let text = std::fs::read_to_string("/proc/stat")
        .map_err(|e| format!("softirq time: read /proc/stat: {e}"))?;
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
    let mut ticks = 0;
    let mut found = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        if !wanted.iter().any(|w| w == name) {
            continue;
        }
        // user nice system idle iowait irq softirq
        ticks += fields
            .nth(6)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("softirq time: unreadable /proc/stat line {line:?}"))?;
        found += 1;
    }
    if found != wanted.len() {
        return Err(format!("softirq time: /proc/stat lacks some of {wanted:?}"));
    }
    Ok(ticks * 1_000_000 / ticks_per_s)
}

/// One measured figure per name (see `super::report::METRICS`) plus what failed.
#[derive(Clone, Debug)]
pub struct RoundResult {
    pub figures: BTreeMap<&'static str, f64>,
    pub errors: Vec<String>,
    /// What the sidecars and counters saw this round, or why the setup did not intercept
    /// (then the round's figures are not the setup's and are never reported).
    pub interception: Result<String, String>,
    /// Round trips of the single-connection RR run (ns), for the latency distribution.
    pub rr_samples: Vec<u64>,
}

impl Default for RoundResult {
    fn default() -> Self {
        RoundResult {
            figures: BTreeMap::new(),
            errors: Vec::new(),
            interception: Err("not checked".into()),
            rr_samples: Vec::new(),
        }
    }
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
    // Drop order: the server app, then the setup (sidecars, pods, data path, nodes).
    _server_app: Proc,
    client_cgroup: PathBuf,
    app_cgroup: PathBuf,
    mesh: MeshSetup,
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
        let names = PodNames {
            client: "client",
            server: "server",
        };
        let app_ports = [ECHO_PORT, BULK_PORT];
        let mut mesh =
            MeshSetup::build(topology, setup, names, &app_ports, bins, pinning, many_pods)?;
        mesh.start_classifiers()?;
        let client_cgroup = sub_cgroup(&mesh.client_pod, "bench-client")?;
        let app_cgroup = sub_cgroup(&mesh.server_pod, "bench-app")?;
        let server_app = start_server(
            &mesh.server_pod,
            &app_cgroup,
            bins,
            pinning.server,
            setup.event_driven_apps(),
        )?;
        Ok(Env {
            topology,
            setup,
            pinning,
            workload: bins.workload.clone(),
            _server_app: server_app,
            client_cgroup,
            app_cgroup,
            mesh,
        })
    }

    /// Where the client app dials for the server app's `port`: the server itself, or its
    /// own sidecar's explicit-proxy listener.
    fn target(&self, port: u16) -> SocketAddr {
        self.mesh.dial_addr(port)
    }

    /// Where the connections to the server app's `port` are meant to go.
    fn destination(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.mesh.server_pod.ipv4().into(), port)
    }

    /// Runs `mb-workload <args>` as the client app; returns its stdout.
    fn client(&self, args: &[String]) -> Result<String, String> {
        let mut cmd = Command::new(&self.workload);
        if self.setup.event_driven_apps() {
            // Non-blocking sockets: an EAGAIN from a spliced socket (kernel tcp_bpf_recvmsg)
            // is a wait, as for any event-driven app.
            cmd.arg("--event-driven");
            if self.setup.classified() {
                cmd.arg(format!("--settle-ms={}", CLIENT_SETTLE.as_millis()));
            }
        }
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = Proc(spawn_in(
            &self.mesh.client_pod,
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

    fn cpu_snapshot(&self) -> Result<CpuSnapshot, String> {
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
        Ok(CpuSnapshot {
            client_us: cgroup_usage_us(&self.client_cgroup)?,
            client_pod_us: cgroup_usage_us(self.mesh.client_pod.cgroup_path())?,
            app_us: cgroup_usage_us(&self.app_cgroup)?,
            server_pod_us: cgroup_usage_us(self.mesh.server_pod.cgroup_path())?,
            softirq_us: softirq_us(&cpus)?,
        })
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

    fn conntrack(&self) -> Result<u64, String> {
        Ok(conntrack_entries(&self.mesh.client_pod)? + conntrack_entries(&self.mesh.server_pod)?)
    }

    /// One round of every measure, then the check that the round was intercepted. A failing
    /// measure is recorded and the others still run.
    pub fn measure(&self, counts: &Counts, progress: &dyn Fn(&str)) -> RoundResult {
        let mut r = RoundResult::default();
        let before = match self.mesh.checkpoint() {
            Ok(c) => c,
            Err(e) => {
                r.interception = Err(format!("before the round: {e}"));
                return r;
            }
        };
        // Connections made by the measures that completed.
        let mut connections = 0;
        progress("rr c=1");
        match self.measure_rr(counts, &mut r) {
            Ok(()) => connections += 1,
            Err(e) => r.errors.push(format!("rr: {e}")),
        }
        for parallel in [8usize, 64] {
            progress(&format!("rr c={parallel}"));
            match self.measure_rr_parallel(counts, parallel, &mut r) {
                Ok(()) => connections += parallel,
                Err(e) => r.errors.push(format!("rr c={parallel}: {e}")),
            }
        }
        progress("crr");
        match self.measure_crr(counts, &mut r) {
            Ok(()) => connections += counts.crr as usize,
            Err(e) => r.errors.push(format!("crr: {e}")),
        }
        progress("bulk");
        match self.measure_bulk(counts, &mut r) {
            Ok(()) => connections += 1,
            Err(e) => r.errors.push(format!("bulk: {e}")),
        }
        progress("check interception");
        let targets = [self.destination(ECHO_PORT), self.destination(BULK_PORT)];
        r.interception = self.mesh.verify(&before, &targets, connections);
        r
    }

    fn measure_rr(&self, counts: &Counts, r: &mut RoundResult) -> Result<(), String> {
        let before = self.cpu_snapshot()?;
        let out = self.client(&[
            "rr".into(),
            format!("--to={}", self.target(ECHO_PORT)),
            format!("--count={}", counts.rr),
            format!("--warmup={}", counts.rr_warmup),
            "--samples".into(),
        ])?;
        let after = self.cpu_snapshot()?;
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
        let conntrack_before = self.conntrack()?;
        let out = self.client(&[
            "crr".into(),
            format!("--to={}", self.target(ECHO_PORT)),
            format!("--count={}", counts.crr),
        ])?;
        let created = self.conntrack()?.saturating_sub(conntrack_before);
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
        let before = self.cpu_snapshot()?;
        let out = self.client(&[
            "bulk".into(),
            format!("--to={}", self.target(BULK_PORT)),
            format!("--bytes={}", counts.bulk_bytes),
        ])?;
        let after = self.cpu_snapshot()?;
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

/// How long a classified setup's client holds a non-blocking socket before its first
/// connection: a few classifier periods ([`super::setup::CLASSIFIER_PERIOD`]), with a margin
/// for a loaded machine.
const CLIENT_SETTLE: Duration = Duration::from_millis(1500);

/// Starts `mb-workload serve` (echo + bulk) in `pod`, in `cgroup`, and waits for `ready`.
fn start_server(
    pod: &Pod,
    cgroup: &Path,
    bins: &Binaries,
    cpu: Option<usize>,
    event_driven: bool,
) -> Result<Proc, String> {
    let mut cmd = Command::new(&bins.workload);
    if event_driven {
        cmd.arg("--event-driven");
    }
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
