//! One setup's nodes, pods, interception and sidecars — what the bench and the demo both
//! build — and the check, after every round, that it really intercepted: the sidecars'
//! records show the application's connections with the right original destination, and
//! merbridge's counters (or the pods' iptables REDIRECT counters) counted them. A setup that fails this check measured something else
//! (usually direct traffic) and its figures must not be reported.

use super::env::{add_real_pod, fake_pod, Datapath, Pinning, Setup, Topology};
use mb_agent::pods::PodMaps;
use mb_loader::datapath::PinLayout;
use mb_maps::datapath::{MAP_COUNTERS, SPLICE_ALL, SPLICE_NONE, SPLICE_SIDECARS};
use mb_maps::layout::Counter;
use mb_maps::PerCpuArray;
use mb_testbed::scenarios::Binaries;
use mb_testbed::sidecar::{Forward, Listener, Record};
use mb_testbed::{Interception, MeshPorts, Node, Pod, PodSpec, Sidecar};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Set (to anything) to make the merbridge setups leave their pods out of the maps: the data
/// path is loaded but intercepts nothing. Only for the test that proves the bench notices.
pub const BREAK_INTERCEPTION_ENV: &str = "MB_BENCH_BREAK_INTERCEPTION";

/// Explicit proxy: the client's sidecar listens for the server app's port P on P + this...
const EXPLICIT_CLIENT_OFFSET: u16 = 10_000;
/// ...and, where the server is meshed, the server's sidecar on P + this.
const EXPLICIT_SERVER_OFFSET: u16 = 20_000;

/// How long the sidecars get to report connections that just closed.
const RECORD_WAIT: Duration = Duration::from_secs(5);

/// How often the bench's per-process splice classifier scans (`merbridge run`'s every 500 ms;
/// faster here so that rounds need not wait for it).
pub const CLASSIFIER_PERIOD: Duration = Duration::from_millis(250);

/// The agent's per-process splice classifier (`mb_agent::splice`) on one node's data path,
/// on its own thread until dropped, as `merbridge run` runs it.
pub struct Classifier {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// The last scan's verdicts, for the round check's error.
    last: std::sync::Arc<std::sync::Mutex<Vec<mb_agent::splice::ProcessVerdict>>>,
}

impl Classifier {
    fn start(pin_dir: &Path) -> Result<Classifier, String> {
        let mut agent = mb_agent::splice::SpliceAgent::open(pin_dir, MeshPorts::istio().proxy_uid)
            .map_err(|e| format!("per-process splice classifier: {e}"))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let last = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = std::sync::Arc::clone(&last);
        let thread = std::thread::Builder::new()
            .name("bench-splice".into())
            .spawn(move || {
                while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    let report = agent
                        .scan_once()
                        .map_err(|e| format!("per-process splice scan: {e}"))?;
                    *shared.lock().unwrap_or_else(|p| p.into_inner()) = report.verdicts;
                    std::thread::sleep(CLASSIFIER_PERIOD);
                }
                Ok(())
            })
            .map_err(|e| format!("start the classifier thread: {e}"))?;
        Ok(Classifier {
            stop,
            thread: Some(thread),
            last,
        })
    }

    /// The last scan's verdicts, one `pid comm: verdict (reason)` each.
    fn verdicts(&self) -> String {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let all: Vec<String> = last
            .iter()
            .map(|v| {
                format!(
                    "{} {}: {} ({})",
                    v.pid,
                    v.comm,
                    v.verdict.name(),
                    v.reason.name()
                )
            })
            .collect();
        all.join(", ")
    }

    /// The thread's error if it stopped on one.
    fn failed(&self) -> Option<String> {
        let finished = self.thread.as_ref().is_some_and(|t| t.is_finished());
        finished.then(|| "the per-process splice classifier stopped".to_owned())
    }
}

impl Drop for Classifier {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if let Ok(Err(e)) = t.join() {
                eprintln!("bench: {e}");
            }
        }
    }
}

/// Names of the two pods.
#[derive(Clone, Copy, Debug)]
pub struct PodNames {
    pub client: &'static str,
    pub server: &'static str,
}

/// The built setup. Drop order: sidecars, pods, data path, nodes.
pub struct MeshSetup {
    /// Dropped first: they read the data path's maps.
    classifiers: Vec<Classifier>,
    pub topology: Topology,
    pub setup: Setup,
    /// The client pod's sidecar, then the server pod's where it has one.
    pub sidecars: Vec<(&'static str, Sidecar)>,
    pub client_pod: Pod,
    pub server_pod: Pod,
    pub datapath: Option<Datapath>,
    /// Cross-node merbridge setups: the server node's own data path (merbridge runs on
    /// every node), whose sk_lookup program steers inbound to the server's sidecar.
    pub server_datapath: Option<Datapath>,
    _nodes: Vec<Node>,
}

/// Where the sidecars' records and merbridge's counters stood before a round.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    records: Vec<usize>,
    /// HAProxy sidecars: the sessions their frontends accepted (its own count, which holds
    /// when a log line, and so a record, goes missing); `None` for the reference sidecar.
    sessions: Vec<Option<u64>>,
    counters: Option<Vec<(Counter, u64)>>,
    /// The server node's counters (cross-node merbridge setups).
    server_counters: Option<Vec<(Counter, u64)>>,
    /// Iptables setups: REDIRECT packets (one per redirected connection) in the client pod
    /// (outbound) and, where meshed, the server pod (inbound).
    iptables: Option<(u64, u64)>,
}

/// How many records a HAProxy sidecar may be short in one round when its own session counter
/// shows every connection (the test bed's 1,000-connection scenario allows the same).
const HAPROXY_LOST_LOG_LINES: usize = 3;

fn splice_mode(setup: Setup) -> Option<u32> {
    match setup {
        // The default, `--splice auto`: what the run-time hazard probe allows on this kernel.
        Setup::Merbridge | Setup::MerbridgeManyPods | Setup::MerbridgeBlockingApps => {
            Some(mb_loader::splice_hazard::probed_splice_hazard().auto_splice_mode())
        }
        Setup::MerbridgeSpliceAll => Some(SPLICE_ALL),
        Setup::MerbridgeSpliceNone => Some(SPLICE_NONE),
        Setup::Direct | Setup::ExplicitProxy | Setup::Iptables => None,
    }
}

impl MeshSetup {
    /// Builds `setup` in `topology`: one node (two for cross-node), the data path or the
    /// iptables rules, both pods, and a sidecar in each meshed pod. `many_pods` fake pods go
    /// into the maps first for [`Setup::MerbridgeManyPods`].
    pub fn build(
        topology: Topology,
        setup: Setup,
        names: PodNames,
        app_ports: &[u16],
        bins: &Binaries,
        pinning: Pinning,
        many_pods: u32,
    ) -> Result<MeshSetup, String> {
        let hint = format!("b-{}-{}", topology.short(), setup.short());
        let mut nodes = vec![Node::new(&hint).map_err(|e| format!("create node: {e}"))?];
        if topology == Topology::CrossNode {
            let other = Node::new(&format!("{hint}-2")).map_err(|e| format!("create node: {e}"))?;
            Node::join(&nodes[0], &other).map_err(|e| format!("join nodes: {e}"))?;
            nodes.push(other);
        }
        let datapath = match splice_mode(setup) {
            Some(mode) => Some(Datapath::load(nodes[0].cgroup_path(), mode)?),
            None => None,
        };
        let server_datapath = match (splice_mode(setup), nodes.get(1)) {
            (Some(mode), Some(node)) => Some(Datapath::load(node.cgroup_path(), mode)?),
            _ => None,
        };
        let maps = match &datapath {
            Some(d) => Some(PodMaps::open(d.pin_dir())?),
            None => None,
        };
        let server_maps = match &server_datapath {
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
            .add_pod(PodSpec::named(names.client))
            .map_err(|e| format!("create pod {}: {e}", names.client))?;
        let server_pod = nodes[nodes.len() - 1]
            .add_pod(PodSpec::named(names.server))
            .map_err(|e| format!("create pod {}: {e}", names.server))?;
        let mut meshed = Vec::new();
        if setup != Setup::Direct {
            meshed.push((names.client, &client_pod));
            if topology.server_meshed() {
                meshed.push((names.server, &server_pod));
            }
        }
        let mesh = MeshPorts::istio();
        let sabotaged = std::env::var_os(BREAK_INTERCEPTION_ENV).is_some();
        let mut sidecars = Vec::new();
        for (i, (name, pod)) in meshed.into_iter().enumerate() {
            let mut config = bins.sidecar_config(&mesh);
            // The pod's own node's maps and pins: the server's node's in cross-node setups.
            let (node_maps, node_datapath) = match (i, &server_maps) {
                (1.., Some(_)) => (&server_maps, &server_datapath),
                _ => (&maps, &datapath),
            };
            let mut inbound = None;
            match (node_maps, node_datapath) {
                _ if setup == Setup::ExplicitProxy => {
                    config.forward = explicit_forwards(i == 0, topology, &server_pod, app_ports)
                }
                (Some(_), _) if sabotaged => {}
                (Some(maps), Some(d)) => inbound = Some((add_real_pod(maps, pod)?, d.pin_dir())),
                _ => Interception::Iptables(mesh.clone())
                    .install_pod(pod)
                    .map_err(|e| format!("install iptables rules in pod {name}: {e}"))?,
            }
            let sidecar = super::env::with_affinity(pinning.sidecar, || {
                Sidecar::start_binary(&bins.sidecar, pod, config, mesh.proxy_uid)
            })?
            .map_err(|e| format!("start the sidecar of pod {name}: {e}"))?;
            // As `merbridge run` does for every meshed pod: its sk_lookup link (inbound from
            // outside the pod), with the sidecar's listener in the map.
            if let Some((pod_id, pin_dir)) = inbound {
                let done = mb_agent::inbound::attach_pod(
                    pin_dir,
                    pod_id,
                    pod.netns_path(),
                    mesh.inbound_port,
                )
                .map_err(|e| format!("attach inbound capture to pod {name}: {e}"))?;
                if !done.listeners.any() {
                    return Err(format!(
                        "pod {name}: its sidecar's inbound listener is not in the map after attaching"
                    ));
                }
            }
            sidecars.push((name, sidecar));
        }
        Ok(MeshSetup {
            classifiers: Vec::new(),
            topology,
            setup,
            sidecars,
            client_pod,
            server_pod,
            datapath,
            server_datapath,
            _nodes: nodes,
        })
    }

    /// Where the client app dials to reach the server app's `port`: the server pod, or
    /// (explicit proxy) its own sidecar's listener for that port.
    pub fn dial_addr(&self, port: u16) -> SocketAddr {
        if self.setup == Setup::ExplicitProxy {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port + EXPLICIT_CLIENT_OFFSET)
        } else {
            SocketAddr::new(self.server_pod.ipv4().into(), port)
        }
    }

    /// The sidecars' record counts and merbridge's counters now.
    pub fn checkpoint(&self) -> Result<Checkpoint, String> {
        Ok(Checkpoint {
            records: self
                .sidecars
                .iter()
                .map(|(_, s)| s.records().len())
                .collect(),
            sessions: self
                .sidecars
                .iter()
                .enumerate()
                .map(|(i, (_, s))| {
                    s.frontend_sessions(self.listener_of(i))
                        .and_then(Result::ok)
                })
                .collect(),
            counters: match &self.datapath {
                Some(d) => Some(read_counters(d.pin_dir())?),
                None => None,
            },
            server_counters: match &self.server_datapath {
                Some(d) => Some(read_counters(d.pin_dir())?),
                None => None,
            },
            iptables: match self.setup {
                Setup::Iptables => Some(self.iptables_redirects()?),
                _ => None,
            },
        })
    }

    /// Starts the agent's per-process splice classifier on each node's data path, where the
    /// setup is a default-mode merbridge one ([`Setup::classified`]) and the mode is
    /// `sidecars` (the one its verdicts apply to). From then on [`MeshSetup::verify`] also
    /// checks which application legs were spliced.
    pub fn start_classifiers(&mut self) -> Result<(), String> {
        if self.setup.classified() && splice_mode(self.setup) == Some(SPLICE_SIDECARS) {
            for d in [&self.datapath, &self.server_datapath]
                .into_iter()
                .flatten()
            {
                self.classifiers.push(Classifier::start(d.pin_dir())?);
            }
        }
        Ok(())
    }

    /// The default mode's per-process decisions this round (only where the classifier runs
    /// and the mode is `sidecars`): with event-driven apps at least 90% of the client legs
    /// (`expected` connections; the clients settle first, but on a loaded machine a scan can
    /// come late for one of them) and, where the server is meshed, of both sockets of the
    /// sidecar-to-server-app legs must have been spliced; with blocking apps none. Returns what
    /// was counted, or why the setup did not do what it claims.
    fn verify_app_legs(
        &self,
        before: &Checkpoint,
        expected: usize,
    ) -> Result<Option<String>, String> {
        if self.classifiers.is_empty() {
            return Ok(None);
        }
        if let Some(e) = self.classifiers.iter().find_map(Classifier::failed) {
            return Err(e);
        }
        let (Some(d), Some(old)) = (&self.datapath, &before.counters) else {
            return Ok(None);
        };
        let now = read_counters(d.pin_dir())?;
        let by_process = counter(&now, Counter::SpliceAppByProcess)
            .saturating_sub(counter(old, Counter::SpliceAppByProcess));
        let by_port = match (&self.server_datapath, &before.server_counters) {
            (Some(sd), Some(sold)) => {
                let snow = read_counters(sd.pin_dir())?;
                counter(&snow, Counter::SpliceAppByPort)
                    .saturating_sub(counter(sold, Counter::SpliceAppByPort))
            }
            _ => counter(&now, Counter::SpliceAppByPort)
                .saturating_sub(counter(old, Counter::SpliceAppByPort)),
        };
        let seen = format!(
            "application legs spliced: {by_process} client legs (process verdicts), {by_port} \
             server-leg sockets (port verdicts)"
        );
        let verdicts = || {
            let all: Vec<String> = self.classifiers.iter().map(Classifier::verdicts).collect();
            format!("last verdicts: {}", all.join("; "))
        };
        let expected = expected as u64;
        // At least 90% (rounded up) of `n`.
        let most = |n: u64| n - n / 10;
        if self.setup.event_driven_apps() {
            if by_process < most(expected) {
                return Err(format!(
                    "default mode with event-driven apps spliced {by_process} of {expected} \
                     client legs ({seen}; {})",
                    verdicts()
                ));
            }
            if self.topology.server_meshed() && by_port < most(2 * expected) {
                return Err(format!(
                    "default mode with event-driven apps spliced {by_port} of {} server-leg \
                     sockets ({seen}; {})",
                    2 * expected,
                    verdicts()
                ));
            }
        } else if by_process + by_port > 0 {
            return Err(format!(
                "blocking apps had legs spliced ({seen}; {})",
                verdicts()
            ));
        }
        Ok(Some(seen))
    }

    /// The listener the `i`th sidecar relays this setup's connections on: the client's
    /// outbound and the server's inbound one, or an explicit proxy's forward listeners.
    fn listener_of(&self, i: usize) -> Listener {
        match (self.setup == Setup::ExplicitProxy, i) {
            (true, _) => Listener::Forward,
            (false, 0) => Listener::Outbound,
            (false, _) => Listener::Inbound,
        }
    }

    /// REDIRECT packets counted so far: outbound in the client pod, inbound in the server
    /// pod (0 when it has no sidecar).
    fn iptables_redirects(&self) -> Result<(u64, u64), String> {
        let outbound = redirect_packets(&self.client_pod, "ISTIO_REDIRECT")?;
        let inbound = if self.topology.server_meshed() {
            redirect_packets(&self.server_pod, "ISTIO_IN_REDIRECT")?
        } else {
            0
        };
        Ok((outbound, inbound))
    }

    /// Confirms that since `before`, at least `expected` connections to `targets` went
    /// through the client's sidecar (outbound listener) and, where the server is meshed,
    /// the server's sidecar (inbound listener), each with its original destination among
    /// `targets`; and that merbridge counted at least as many redirects. Returns what was
    /// seen, or why this is not an intercepted setup.
    pub fn verify(
        &self,
        before: &Checkpoint,
        targets: &[SocketAddr],
        expected: usize,
    ) -> Result<String, String> {
        if self.setup == Setup::Direct {
            return Ok("not meshed (direct)".into());
        }
        if expected == 0 {
            return Err("no connection completed this round: nothing to check".into());
        }
        let explicit = self.setup == Setup::ExplicitProxy;
        let mut seen = Vec::new();
        for (i, (name, sidecar)) in self.sidecars.iter().enumerate() {
            let listener = self.listener_of(i);
            // An explicit proxy's destination is configuration: no original one to check.
            let targets = (!explicit).then_some(targets);
            // HAProxy drops a log line (so a record) about once in a thousand connections, on
            // a quiet machine too. Its own frontend session counter is then the proof that
            // every connection went through it, and the records may be that many short.
            let sessions = match (
                before.sessions.get(i).copied().flatten(),
                sidecar.frontend_sessions(listener),
            ) {
                (Some(old), Some(Ok(now))) => Some(now.saturating_sub(old)),
                _ => None,
            };
            let need = match sessions {
                Some(n) if n >= expected as u64 => expected.saturating_sub(HAPROXY_LOST_LOG_LINES),
                _ => expected,
            };
            let from = before.records.get(i).copied().unwrap_or(0);
            let records = sidecar.wait_for_records(from + expected, RECORD_WAIT);
            let new = records.get(from..).unwrap_or(&[]);
            let through = check_records(name, listener, new, targets, need).map_err(|e| {
                match sidecar.runtime_state() {
                    Some(state) => format!("{e}\n{state}"),
                    None => e,
                }
            })?;
            match sessions {
                Some(n) if through < expected => seen.push(format!(
                    "{name} sidecar {through} {listener} ({n} sessions by HAProxy's own count, \
                     {} log lines missing)",
                    expected - through
                )),
                _ => seen.push(format!("{name} sidecar {through} {listener}")),
            }
        }
        // Same node: connect4 redirects both legs. Cross-node: the client node's connect4
        // the outbound leg, the server node's sk_lookup the inbound one.
        let mut wanted = Vec::new();
        if let (Some(d), Some(old)) = (&self.datapath, &before.counters) {
            wanted.push((d, old, Counter::RedirectOutbound));
            if self.topology.server_meshed() && self.server_datapath.is_none() {
                wanted.push((d, old, Counter::RedirectInbound));
            }
        }
        if let (Some(d), Some(old)) = (&self.server_datapath, &before.server_counters) {
            wanted.push((d, old, Counter::InboundSteered));
        }
        for (d, old, c) in wanted {
            let now = read_counters(d.pin_dir())?;
            let delta = counter(&now, c).saturating_sub(counter(old, c));
            if delta < expected as u64 {
                return Err(format!(
                    "merbridge counted {delta} {} for {expected} connections",
                    c.name()
                ));
            }
            seen.push(format!("{}+{delta}", c.name()));
        }
        if let Some(checked) = self.verify_app_legs(before, expected)? {
            seen.push(checked);
        }
        if let Some((out_before, in_before)) = before.iptables {
            let (out_now, in_now) = self.iptables_redirects()?;
            let mut wanted = vec![("outbound", out_now.saturating_sub(out_before))];
            if self.topology.server_meshed() {
                wanted.push(("inbound", in_now.saturating_sub(in_before)));
            }
            for (way, delta) in wanted {
                if delta < expected as u64 {
                    return Err(format!(
                        "iptables redirected {delta} {way} connections of {expected}"
                    ));
                }
                seen.push(format!("iptables {way} REDIRECT+{delta}"));
            }
        }
        Ok(seen.join(", "))
    }
}

/// The explicit-proxy listeners of the client's sidecar (`client`) or the server's: app
/// port P on P + offset, to the server's sidecar where it has one, else to the server app.
fn explicit_forwards(
    client: bool,
    topology: Topology,
    server: &Pod,
    app_ports: &[u16],
) -> Vec<Forward> {
    let server_ip = server.ipv4().into();
    app_ports
        .iter()
        .map(|&p| match (client, topology.server_meshed()) {
            (true, true) => Forward {
                port: p + EXPLICIT_CLIENT_OFFSET,
                to: SocketAddr::new(server_ip, p + EXPLICIT_SERVER_OFFSET),
            },
            (true, false) => Forward {
                port: p + EXPLICIT_CLIENT_OFFSET,
                to: SocketAddr::new(server_ip, p),
            },
            (false, _) => Forward {
                port: p + EXPLICIT_SERVER_OFFSET,
                to: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p),
            },
        })
        .collect()
}

/// Of one sidecar's new records: how many came through `listener` (to one of `targets`,
/// when given); an error when fewer than `expected`, or when one carries another original
/// destination.
fn check_records(
    name: &str,
    listener: Listener,
    new: &[Record],
    targets: Option<&[SocketAddr]>,
    expected: usize,
) -> Result<usize, String> {
    let mine: Vec<&Record> = new.iter().filter(|r| r.listener == listener).collect();
    if let Some(wrong) = targets.and_then(|targets| {
        mine.iter()
            .find(|r| r.original_dst.is_none_or(|d| !targets.contains(&d)))
    }) {
        return Err(format!(
            "the {name} sidecar relayed a connection with original destination {} (expected one of {:?}): {wrong}",
            wrong.original_dst.map_or("none".into(), |d| d.to_string()),
            targets.unwrap_or(&[])
        ));
    }
    let through = mine.iter().filter(|r| r.error.is_none()).count();
    if through < expected {
        return Err(format!(
            "not intercepted: the {name} sidecar's {listener} listener relayed {through} of \
             {expected} connections ({} records in all this round)",
            new.len()
        ));
    }
    Ok(through)
}

fn counter(values: &[(Counter, u64)], c: Counter) -> u64 {
    values.iter().find(|(x, _)| *x == c).map_or(0, |(_, v)| *v)
}

/// Packets that went through `chain`'s REDIRECT rules in `pod`'s IPv4 nat table: in nat,
/// only a connection's first packet, so one per redirected connection.
fn redirect_packets(pod: &Pod, chain: &str) -> Result<u64, String> {
    let mut cmd = std::process::Command::new("iptables-save");
    cmd.args(["-c", "-t", "nat"]);
    let saved = pod
        .output(cmd)
        .map_err(|e| format!("iptables counters of pod {}: {e}", pod.name()))?;
    sum_redirects(&saved, chain)
}

/// Sums the packet counters (`[packets:bytes] -A CHAIN … -j REDIRECT …`) of `chain`.
fn sum_redirects(saved: &str, chain: &str) -> Result<u64, String> {
    let rule = format!("-A {chain} ");
    let mut total = 0;
    for line in saved.lines() {
        let Some((counters, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        if !rest.starts_with(&rule) || !rest.contains("-j REDIRECT") {
            continue;
        }
        let packets = counters
            .split(':')
            .next()
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(|| format!("iptables-save -c: unreadable counters in {line:?}"))?;
        total += packets;
    }
    Ok(total)
}

/// merbridge's counters, summed over the CPUs.
pub fn read_counters(pin_dir: &Path) -> Result<Vec<(Counter, u64)>, String> {
    let map: PerCpuArray<u64> =
        PerCpuArray::open_pinned(&PinLayout::new(pin_dir).map(MAP_COUNTERS))
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

/// Entries in `pod`'s conntrack table. Unreadable is an error — except on a machine where
/// conntrack is not loaded at all, where nothing can have created an entry.
pub fn conntrack_entries(pod: &Pod) -> Result<u64, String> {
    match pod.conntrack_count() {
        Ok(n) => Ok(n),
        Err(_) if !Path::new("/sys/module/nf_conntrack").exists() => Ok(0),
        Err(e) => Err(format!(
            "conntrack count of pod {} unreadable: {e}",
            pod.name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(listener: Listener, dst: Option<&str>, error: Option<&str>) -> Record {
        Record {
            listener,
            peer: "10.0.0.1:40000".parse().unwrap(),
            local: "10.0.0.1:15001".parse().unwrap(),
            original_dst: dst.map(|d| d.parse().unwrap()),
            upstream_local: None,
            bytes_up: 1,
            bytes_down: 1,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn redirect_counters_are_summed_per_chain() {
        let saved = "*nat\n:ISTIO_REDIRECT - [0:0]\n\
            [7:420] -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n\
            [3:180] -A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n\
            [9:540] -A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n";
        assert_eq!(sum_redirects(saved, "ISTIO_REDIRECT"), Ok(7));
        assert_eq!(sum_redirects(saved, "ISTIO_IN_REDIRECT"), Ok(3));
        assert_eq!(sum_redirects("*nat\nCOMMIT\n", "ISTIO_REDIRECT"), Ok(0));
        assert!(sum_redirects("[x:1] -A ISTIO_REDIRECT -j REDIRECT", "ISTIO_REDIRECT").is_err());
    }

    #[test]
    fn records_must_reach_the_count_with_the_right_destination() {
        let target: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let good = record(Listener::Outbound, Some("10.0.0.2:8080"), None);
        let ok = vec![good.clone(), good.clone()];
        assert_eq!(
            check_records("c", Listener::Outbound, &ok, Some(&[target]), 2),
            Ok(2)
        );
        let err = check_records("c", Listener::Outbound, &ok, Some(&[target]), 3).unwrap_err();
        assert!(err.contains("relayed 2 of 3"), "{err}");
        let wrong = vec![
            good.clone(),
            record(Listener::Outbound, Some("10.9.9.9:1"), None),
        ];
        let err = check_records("c", Listener::Outbound, &wrong, Some(&[target]), 1).unwrap_err();
        assert!(err.contains("original destination 10.9.9.9:1"), "{err}");
        let none = vec![record(Listener::Outbound, None, None)];
        assert!(check_records("c", Listener::Outbound, &none, Some(&[target]), 1).is_err());
        // Inbound records do not count for the outbound listener; failed ones not at all.
        let other = vec![
            record(Listener::Inbound, Some("10.0.0.2:8080"), None),
            record(Listener::Outbound, Some("10.0.0.2:8080"), Some("reset")),
        ];
        assert!(check_records("c", Listener::Outbound, &other, Some(&[target]), 1).is_err());
        assert!(check_records("c", Listener::Outbound, &[], Some(&[target]), 1).is_err());
    }
}
