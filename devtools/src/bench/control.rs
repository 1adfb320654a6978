//! Control plane at scale: the time to add the N-th pod's interception settings.
//!
//! - merbridge: `PodMaps::upsert` into a loaded data path's maps (a private, empty cgroup and a
//!   private bpffs), pods 1..=N one after another, every add timed.
//! - iptables, per-node table: a node-level data plane (one `nat` table for all pods, as a
//!   CNI-style per-node iptables interception would keep it) holding N-1 pods' Istio chains,
//!   each pod's chains entered by its pod address; the time of `iptables-restore --noflush`
//!   adding pod N's chains. This is the cost that grows with the node: iptables (nft backend
//!   here) reads and checks the whole table on every change.
//! - iptables, per pod namespace (what Istio's init container does today): restoring the
//!   Istio rules (IPv4 and IPv6) into a new pod's own namespace; independent of N, but paid
//!   per pod start with a process per table.
//! - merbridge inbound capture: attaching, then detaching, the sk_lookup link of
//!   [`INBOUND_PODS`] pods, each in its own real network namespace, exactly the way the agent
//!   does it (`mb_agent::inbound::InboundPods::ensure`: the link, then the check for a
//!   listener to adopt). Budget: [`INBOUND_ATTACH_BUDGET_US`] per pod. Beside it, the rarer
//!   case of [`INBOUND_ADOPT_PODS`] pods whose sidecar listened before the attach (a real
//!   `mb-workload` listener in each namespace), adopted through `/proc` and `pidfd_getfd`.

use super::env::{fake_pod, Datapath};
use super::stats::median;
use mb_agent::inbound::InboundPods;
use mb_agent::pods::PodMaps;
use mb_maps::datapath::SPLICE_SIDECARS;
use mb_sys::cgroup::OwnedCgroup;
use mb_sys::netns::NamedNetns;
use mb_sys::process::{place, Placement};
use mb_testbed::cmd::run_with_input;
use mb_testbed::MeshPorts;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Pods (network namespaces) for the inbound attach series.
pub const INBOUND_PODS: u32 = 200;
/// Issue 12's budget for attaching one pod's inbound program.
pub const INBOUND_ATTACH_BUDGET_US: f64 = 2_000.0;
/// Pods whose sidecar listens before the attach (the adoption series).
pub const INBOUND_ADOPT_PODS: u32 = 10;

/// Attaching and detaching pods' sk_lookup links (microseconds, sorted).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboundAttach {
    /// `InboundPods::ensure` in all, no sidecar listening yet: the link plus the check for a
    /// listener to adopt (the agent's cost per pod).
    pub attach_us: Vec<f64>,
    /// The link alone (`BPF_LINK_CREATE` on the namespace and its pin).
    pub link_us: Vec<f64>,
    /// `detach_pod`: the link's pin and the pod's listener entries removed.
    pub detach_us: Vec<f64>,
    /// `InboundPods::ensure` for a pod whose sidecar listened before the attach: the link
    /// plus the adoption of its listener (the walk over `/proc`, `pidfd_getfd`).
    pub adopt_us: Vec<f64>,
}

impl InboundAttach {
    /// Median and p99 (nearest rank) of sorted `samples`.
    pub fn summary(samples: &[f64]) -> Option<(f64, f64)> {
        if samples.is_empty() {
            return None;
        }
        let rank = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Some((median(samples).unwrap_or(f64::NAN), rank(0.99)))
    }
}

/// Time to add the N-th pod, for one N.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub pods: u32,
    /// merbridge: the add of pod N itself.
    pub merbridge_us: f64,
    /// merbridge: median over the adds of pods N-w+1..=N (w = min(N, 50)): less noise.
    pub merbridge_window_median_us: f64,
    /// The agent's path (`merbridge run`: `PodSync::upsert` + `set_cookie` into the maps):
    /// median over the adds of pods N-w+1..=N.
    pub agent_window_median_us: f64,
    /// iptables per-node table: median of three adds at N, N+1, N+2.
    pub iptables_node_us: Option<f64>,
    /// Rules in the node table when pod N was added.
    pub iptables_node_rules: usize,
}

#[derive(Clone, Debug, Default)]
pub struct ControlPlane {
    pub checkpoints: Vec<Checkpoint>,
    /// Total time to add pods 1..=N to merbridge's maps (seconds).
    pub merbridge_total_s: f64,
    /// Median time to install Istio's rules into a fresh pod namespace (IPv4 + IPv6).
    pub iptables_pod_netns_us: Option<f64>,
    pub inbound: InboundAttach,
    pub errors: Vec<String>,
}

/// The checkpoints for `max_pods`: 1, 10, 100, … and `max_pods` itself.
pub fn checkpoints(max_pods: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut n = 1u32;
    while n < max_pods {
        out.push(n);
        n = n.saturating_mul(10);
    }
    out.push(max_pods.max(1));
    out
}

/// Measures both ways up to `max_pods`; `workload` is the `mb-workload` binary (the
/// listening sidecars of the adoption series).
pub fn run(max_pods: u32, workload: &Path, progress: &dyn Fn(&str)) -> ControlPlane {
    let mut cp = ControlPlane::default();
    let points = checkpoints(max_pods);
    progress(&format!("merbridge maps: adding {max_pods} pods"));
    let merbridge = match merbridge_adds(max_pods) {
        Ok(times) => times,
        Err(e) => {
            cp.errors.push(format!("merbridge: {e}"));
            Vec::new()
        }
    };
    progress(&format!("merbridge agent sync: adding {max_pods} pods"));
    let agent = match agent_adds(max_pods) {
        Ok(times) => times,
        Err(e) => {
            cp.errors.push(format!("merbridge agent: {e}"));
            Vec::new()
        }
    };
    cp.merbridge_total_s = merbridge.iter().sum::<f64>() / 1e6;
    let netns = NamedNetns::create(&format!("mb-bench-ipt-{}", std::process::id()));
    let netns = match netns {
        Ok(n) => Some(n),
        Err(e) => {
            cp.errors
                .push(format!("iptables: create a network namespace: {e}"));
            None
        }
    };
    for &n in &points {
        let (merbridge_us, window) = if merbridge.len() >= n as usize {
            let i = n as usize - 1;
            let w = (n as usize).min(50);
            (
                merbridge[i],
                median(&merbridge[n as usize - w..n as usize]).unwrap_or(0.0),
            )
        } else {
            (f64::NAN, f64::NAN)
        };
        let agent_window_median_us = if agent.len() >= n as usize {
            let w = (n as usize).min(50);
            median(&agent[n as usize - w..n as usize]).unwrap_or(f64::NAN)
        } else {
            f64::NAN
        };
        let mut iptables_node_us = None;
        let mut rules = 0;
        if let Some(ns) = &netns {
            progress(&format!("iptables node table: adding pod {n}"));
            match iptables_node_add(ns, n) {
                Ok((us, r)) => {
                    iptables_node_us = Some(us);
                    rules = r;
                }
                Err(e) => cp.errors.push(format!("iptables at {n} pods: {e}")),
            }
        }
        cp.checkpoints.push(Checkpoint {
            pods: n,
            merbridge_us,
            merbridge_window_median_us: window,
            agent_window_median_us,
            iptables_node_us,
            iptables_node_rules: rules,
        });
    }
    progress("iptables per pod namespace");
    match iptables_pod_netns() {
        Ok(us) => cp.iptables_pod_netns_us = Some(us),
        Err(e) => cp.errors.push(format!("iptables per pod namespace: {e}")),
    }
    progress(&format!(
        "merbridge inbound: attaching {INBOUND_PODS} pods' sk_lookup links"
    ));
    match inbound_attach(INBOUND_PODS) {
        Ok(times) => cp.inbound = times,
        Err(e) => cp.errors.push(format!("merbridge inbound attach: {e}")),
    }
    progress(&format!(
        "merbridge inbound: attaching {INBOUND_ADOPT_PODS} pods whose sidecar listens already"
    ));
    match inbound_adopt(INBOUND_ADOPT_PODS, workload) {
        Ok(times) => cp.inbound.adopt_us = times,
        Err(e) => cp.errors.push(format!("merbridge inbound adoption: {e}")),
    }
    cp
}

/// Attaches `n` pods' inbound programs into `n` fresh network namespaces as the agent does
/// (`InboundPods::ensure`), then detaches them, every call timed. Nothing listens there, as
/// for a pod whose namespace the agent learns before its sidecar starts (the sidecar's
/// `listen()` then reaches the map through sock_ops on 6.1+, or the next resync's adoption).
fn inbound_attach(n: u32) -> Result<InboundAttach, String> {
    let (_cgroup, datapath) = fresh_datapath("mb-bench-in")?;
    let pin_dir = datapath.pin_dir();
    let inbound_port = MeshPorts::istio().inbound_port;
    let mut namespaces = Vec::with_capacity(n as usize);
    for i in 1..=n {
        namespaces.push(
            NamedNetns::create(&format!("mb-bench-in-{}-{i}", std::process::id()))
                .map_err(|e| format!("create network namespace {i}: {e}"))?,
        );
    }
    let mut out = InboundAttach::default();
    let mut agent = InboundPods::new(pin_dir);
    for (pod_id, ns) in (1..).zip(&namespaces) {
        let start = Instant::now();
        let done = agent
            .ensure(&format!("bench-{pod_id}"), pod_id, ns.path(), inbound_port)
            .map_err(|e| format!("attach pod {pod_id}: {e}"))?
            .ok_or_else(|| format!("pod {pod_id} was attached already"))?;
        out.attach_us.push(start.elapsed().as_nanos() as f64 / 1e3);
        out.link_us.push(done.attach_time.as_nanos() as f64 / 1e3);
        if done.listeners.any() || done.adopted != 0 {
            return Err(format!("pod {pod_id}: a listener where nothing listens"));
        }
    }
    let attached = mb_agent::inbound::list(pin_dir)?.len();
    if attached != namespaces.len() {
        return Err(format!(
            "{attached} links pinned for {} pods",
            namespaces.len()
        ));
    }
    for pod_id in 1..=n {
        let start = Instant::now();
        if !mb_agent::inbound::detach_pod(pin_dir, pod_id)? {
            return Err(format!("pod {pod_id} had no link to detach"));
        }
        out.detach_us.push(start.elapsed().as_nanos() as f64 / 1e3);
    }
    for v in [&mut out.attach_us, &mut out.link_us, &mut out.detach_us] {
        v.sort_by(f64::total_cmp);
    }
    Ok(out)
}

/// A sidecar stand-in listening on `port` in the namespace `ns`, killed when dropped.
struct Listening(std::process::Child);

impl Listening {
    fn start(workload: &Path, ns: &NamedNetns, port: u16) -> Result<Listening, String> {
        let mut cmd = Command::new(workload);
        cmd.args(["serve", "--echo", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        place(
            &mut cmd,
            &Placement {
                netns: Some(ns.path()),
                die_with_parent: true,
                ..Placement::default()
            },
        )
        .map_err(|e| format!("prepare {}: {e}", workload.display()))?;
        let mut child = Listening(
            cmd.spawn()
                .map_err(|e| format!("start {}: {e}", workload.display()))?,
        );
        let mut line = String::new();
        let stdout = child.0.stdout.take().ok_or("no stdout")?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", workload.display()))?;
        if line.trim() != "ready" {
            return Err(format!(
                "{} serve --echo {port} did not get ready: {line:?}",
                workload.display()
            ));
        }
        Ok(child)
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Attaches `n` pods whose sidecar (a real process in the pod's namespace) listens on the
/// inbound port already, as the agent does; every attach timed. Each must adopt a listener.
fn inbound_adopt(n: u32, workload: &Path) -> Result<Vec<f64>, String> {
    let (_cgroup, datapath) = fresh_datapath("mb-bench-adopt")?;
    let pin_dir = datapath.pin_dir();
    let inbound_port = MeshPorts::istio().inbound_port;
    let mut pods = Vec::with_capacity(n as usize);
    for i in 1..=n {
        let ns = NamedNetns::create(&format!("mb-bench-adopt-{}-{i}", std::process::id()))
            .map_err(|e| format!("create network namespace {i}: {e}"))?;
        let listening = Listening::start(workload, &ns, inbound_port)?;
        // Tuple fields drop in order: the process goes first, then its namespace.
        pods.push((listening, ns));
    }
    let mut agent = InboundPods::new(pin_dir);
    let mut times = Vec::with_capacity(n as usize);
    for (pod_id, (_, ns)) in (1..).zip(&pods) {
        let start = Instant::now();
        let done = agent
            .ensure(&format!("bench-{pod_id}"), pod_id, ns.path(), inbound_port)
            .map_err(|e| format!("attach pod {pod_id}: {e}"))?
            .ok_or_else(|| format!("pod {pod_id} was attached already"))?;
        times.push(start.elapsed().as_nanos() as f64 / 1e3);
        if done.adopted == 0 || !done.listeners.any() {
            return Err(format!(
                "pod {pod_id}: its sidecar's listener was not adopted ({done:?})"
            ));
        }
    }
    for pod_id in 1..=n {
        agent.remove(&format!("bench-{pod_id}"))?;
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Adds pods 1..=n to a fresh data path's maps; the time of each add in microseconds.
fn merbridge_adds(n: u32) -> Result<Vec<f64>, String> {
    let (_cgroup, datapath) = fresh_datapath("mb-bench-cp")?;
    let maps = PodMaps::open(datapath.pin_dir())?;
    let mut times = Vec::with_capacity(n as usize);
    for i in 1..=n {
        let pod = fake_pod(i);
        let start = Instant::now();
        maps.upsert(&pod)
            .map_err(|e| format!("add pod {i} of {n}: {e}"))?;
        times.push(start.elapsed().as_nanos() as f64 / 1e3);
    }
    Ok(times)
}

/// Adds pods 1..=n the way `merbridge run` does (its map sync: the pod from the API, then its
/// namespace cookie); the time of each add in microseconds.
fn agent_adds(n: u32) -> Result<Vec<f64>, String> {
    use mb_agent::k8s::{ContainerInfo, PodInfo};
    use mb_agent::mesh::Mesh;
    use mb_agent::run::{BpfPodStore, PodSync};
    let (_cgroup, datapath) = fresh_datapath("mb-bench-cp")?;
    let store = BpfPodStore::open(datapath.pin_dir())?;
    let mut sync = PodSync::new(store, Mesh::Istio, false);
    sync.reconcile()?;
    let mut times = Vec::with_capacity(n as usize);
    for i in 1..=n {
        let fake = fake_pod(i);
        let mut pod = PodInfo {
            uid: format!("bench-{i}"),
            name: format!("bench-{i}"),
            namespace: "default".into(),
            phase: "Running".into(),
            pod_ips: fake.ips.clone(),
            containers: ["app", "istio-proxy"]
                .into_iter()
                .map(|name| ContainerInfo {
                    name: name.into(),
                    ..ContainerInfo::default()
                })
                .collect(),
            ..PodInfo::default()
        };
        pod.annotations
            .insert("sidecar.istio.io/status".into(), "{}".into());
        let start = Instant::now();
        sync.upsert(&pod)
            .map_err(|e| format!("add pod {i} of {n}: {e}"))?;
        sync.set_cookie(&pod.uid, fake.netns_cookie)
            .map_err(|e| format!("pod {i}: set its namespace: {e}"))?;
        times.push(start.elapsed().as_nanos() as f64 / 1e3);
    }
    Ok(times)
}

/// Pod `i`'s Istio chains in a node-level `nat` table: the chains of
/// [`MeshPorts::nat_rules`] renamed per pod, entered from the built-in chains by the pod's
/// address, REDIRECT turned into DNAT to the pod's sidecar ports.
fn pod_rules(i: u32) -> Vec<String> {
    let ip = Ipv4Addr::from(0x6440_0000u32 + i);
    let rules = MeshPorts::istio().nat_rules(false);
    let rename = |line: &str| {
        line.split(' ')
            .map(|word| {
                if word.starts_with("ISTIO_") {
                    format!("{word}_{i}")
                } else {
                    word.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = Vec::new();
    for line in rules.lines() {
        if let Some(chain) = line.strip_prefix(':').filter(|c| c.starts_with("ISTIO_")) {
            let name = chain.split(' ').next().unwrap_or(chain);
            out.push(format!(":{name}_{i} - [0:0]"));
        } else if line == "-A PREROUTING -p tcp -j ISTIO_INBOUND" {
            out.push(format!(
                "-A PREROUTING -d {ip}/32 -p tcp -j ISTIO_INBOUND_{i}"
            ));
        } else if line == "-A OUTPUT -p tcp -j ISTIO_OUTPUT" {
            out.push(format!("-A OUTPUT -s {ip}/32 -p tcp -j ISTIO_OUTPUT_{i}"));
        } else if line.starts_with("-A ISTIO_") {
            let line = rename(line);
            out.push(match line.split_once("-j REDIRECT --to-ports ") {
                Some((head, port)) => format!("{head}-j DNAT --to-destination {ip}:{port}"),
                None => line,
            });
        }
    }
    out
}

fn restore(netns: &NamedNetns, args: &[&str], input: &str) -> Result<(), String> {
    restore_with("iptables-restore", netns, args, input)
}

/// Runs `tool` (`iptables-restore` or `ip6tables-restore`) with `args` in `netns`, feeding it
/// `input`.
fn restore_with(tool: &str, netns: &NamedNetns, args: &[&str], input: &str) -> Result<(), String> {
    let mut cmd = Command::new(tool);
    cmd.args(args);
    place(
        &mut cmd,
        &Placement {
            netns: Some(netns.path()),
            die_with_parent: true,
            ..Placement::default()
        },
    )
    .map_err(|e| format!("prepare {tool}: {e}"))?;
    run_with_input(cmd, input)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Replaces the node table with pods 1..n-1, then times adding pod n, n+1 and n+2
/// (`--noflush`). Returns the median add time (µs) and the rules present at pod n.
fn iptables_node_add(netns: &NamedNetns, n: u32) -> Result<(f64, usize), String> {
    let mut table = vec![
        "*nat".to_owned(),
        ":PREROUTING ACCEPT [0:0]".to_owned(),
        ":INPUT ACCEPT [0:0]".to_owned(),
        ":OUTPUT ACCEPT [0:0]".to_owned(),
        ":POSTROUTING ACCEPT [0:0]".to_owned(),
    ];
    let mut rules = 0;
    for i in 1..n {
        let r = pod_rules(i);
        rules += r.iter().filter(|l| l.starts_with("-A")).count();
        table.extend(r);
    }
    table.push("COMMIT".to_owned());
    restore(netns, &["--wait"], &(table.join("\n") + "\n"))?;
    let mut times = Vec::new();
    for i in n..n + 3 {
        let mut add = vec!["*nat".to_owned()];
        add.extend(pod_rules(i));
        add.push("COMMIT".to_owned());
        let text = add.join("\n") + "\n";
        let start = Instant::now();
        restore(netns, &["--wait", "--noflush"], &text)?;
        times.push(start.elapsed().as_nanos() as f64 / 1e3);
    }
    Ok((median(&times).unwrap_or(f64::NAN), rules))
}

/// Installs Istio's IPv4 and IPv6 rules into fresh namespaces, five times; the median (µs).
fn iptables_pod_netns() -> Result<f64, String> {
    let mesh = MeshPorts::istio();
    let mut times = Vec::new();
    for k in 0..5 {
        let ns = NamedNetns::create(&format!("mb-bench-pod-{}-{k}", std::process::id()))
            .map_err(|e| format!("create a network namespace: {e}"))?;
        let start = Instant::now();
        for (tool, v6) in [("iptables-restore", false), ("ip6tables-restore", true)] {
            restore_with(tool, &ns, &["--wait"], &mesh.nat_rules(v6))?;
        }
        times.push(start.elapsed().as_nanos() as f64 / 1e3);
    }
    median(&times).ok_or_else(|| "no measurement".to_string())
}

/// A data path loaded (`--splice sidecars`) into a new private cgroup. Bind it as
/// `let (_cgroup, datapath)`: locals drop in reverse, so the data path is detached before its
/// cgroup is removed.
fn fresh_datapath(cgroup_name: &str) -> Result<(OwnedCgroup, Datapath), String> {
    let cgroup = OwnedCgroup::create_private(cgroup_name)
        .map_err(|e| format!("create a private cgroup: {e}"))?;
    let datapath = Datapath::load(cgroup.path(), SPLICE_SIDECARS)?;
    Ok((cgroup, datapath))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_decades_and_the_maximum() {
        assert_eq!(checkpoints(10_000), vec![1, 10, 100, 1000, 10_000]);
        assert_eq!(checkpoints(300), vec![1, 10, 100, 300]);
        assert_eq!(checkpoints(1), vec![1]);
    }

    #[test]
    fn pod_rules_are_per_pod_chains_entered_by_address() {
        let r = pod_rules(7);
        assert!(r.contains(&"-A PREROUTING -d 100.64.0.7/32 -p tcp -j ISTIO_INBOUND_7".into()));
        assert!(r.contains(&"-A OUTPUT -s 100.64.0.7/32 -p tcp -j ISTIO_OUTPUT_7".into()));
        assert!(r.contains(&":ISTIO_IN_REDIRECT_7 - [0:0]".into()));
        assert!(r
            .iter()
            .any(|l| l == "-A ISTIO_REDIRECT_7 -p tcp -j DNAT --to-destination 100.64.0.7:15001"));
        assert!(r.iter().all(|l| !l.contains("REDIRECT --to-ports")));
        assert!(r
            .iter()
            .all(|l| !l.contains("COMMIT") && !l.starts_with('*')));
    }
}
