//! The agent's main loop: load or adopt the data path, watch the API, keep the maps in sync,
//! find namespaces, and on SIGTERM either leave everything attached (rolling upgrade) or
//! unload (the DaemonSet is being deleted).

use super::metrics::{self, AgentStatus};
use super::netns_scan::NetnsScanner;
use super::sync::{Change, PodStore, PodSync};
use crate::inbound::InboundPods;
use crate::k8s::{http, ClientConfig, PodEvent, PodWatcher, WatchOptions};
use crate::mesh::Mesh;
use crate::pods::PodMaps;
use mb_loader::datapath::{load_datapath_sized, unload_datapath, LoadOptions};
use mb_loader::map_sizes::MapSizes;
use nix::sys::signal::{SigSet, Signal};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What to do with the data path when the agent stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExit {
    /// Leave it attached (an upgrade's successor adopts it).
    Keep,
    /// Detach and unpin everything (as `merbridge unload`).
    Unload,
    /// Unload only when our DaemonSet is gone or being deleted; otherwise keep.
    Auto,
}

impl std::str::FromStr for OnExit {
    type Err = String;
    fn from_str(s: &str) -> Result<OnExit, String> {
        match s {
            "keep" => Ok(OnExit::Keep),
            "unload" => Ok(OnExit::Unload),
            "auto" => Ok(OnExit::Auto),
            other => Err(format!("--on-exit {other:?}: use keep, unload or auto")),
        }
    }
}

/// Everything `merbridge run` was told.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub load: LoadOptions,
    /// DNS capture for pods whose annotations do not say (`load.dns_capture` attaches the
    /// hooks, which pods can then turn on one by one).
    pub dns_capture_default: bool,
    /// `--max-pods`, `--max-connections`.
    pub map_sizes: MapSizes,
    pub mesh: Mesh,
    pub node_name: String,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub on_exit: OnExit,
    /// Our own DaemonSet (namespace, name), asked about on exit in `Auto` mode.
    pub daemonset: Option<(String, String)>,
    /// Full re-scan of the host's namespaces.
    pub rescan_interval: Duration,
    /// Re-scan while some pod's namespace is still missing.
    pub retry_interval: Duration,
    /// Minimum time between two scans (bounds the cost of a burst of new pods).
    pub scan_spacing: Duration,
    /// `--watch-timeout`: see [`WatchOptions::with_watch_timeout`].
    pub watch_timeout_secs: u32,
    /// How often the per-process splice classifier scans the meshed pods' processes (only
    /// under `--splice sidecars`, the mode its verdicts apply to).
    pub splice_interval: Duration,
}

enum Msg {
    Pod(Box<PodEvent>, Instant),
    Signal(Signal),
    WatcherEnded(Result<(), String>),
    /// Namespaces found by a scan, and the namespace count.
    Scanned(Vec<Found>, usize),
}

/// [`Msg`] with the event unboxed, for matching (a short-lived local: its size is no cost).
#[allow(clippy::large_enum_variant)]
enum Unboxed {
    Pod(PodEvent, Instant),
    Signal(Signal),
    WatcherEnded(Result<(), String>),
    Scanned(Vec<Found>, usize),
}

/// A pod's namespace found by a scan: `(uid, ips asked about, cookie, a path that opens it)`.
type Found = (String, Vec<IpAddr>, u64, std::path::PathBuf);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the agent until SIGTERM/SIGINT. Must be called before the process starts any other
/// thread: the signals are blocked here so that only the agent's signal thread takes them.
pub fn run(config: AgentConfig) -> Result<(), String> {
    let started = Instant::now();
    // Before anything is loaded or written, and before SIGTERM is blocked (a waiting agent
    // still dies of it): one agent per pin directory.
    let pin_dir = config.load.pin_dir.clone();
    let _agent_lock = crate::pin_lock::agent_lock(&pin_dir, || {
        mb_loader::datapath::prepare_pin_dir(&pin_dir).map_err(|e| e.to_string())
    })?;
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .map_err(|e| format!("cannot block SIGTERM/SIGINT for the signal thread: {e}"))?;

    let client = ClientConfig::load(config.kubeconfig.as_deref(), config.context.as_deref())
        .map_err(|e| e.to_string())?;
    log::info!(
        "merbridge run: mesh {}, node {}, API {:?}",
        config.mesh,
        config.node_name,
        client
    );
    let status = Arc::new(AgentStatus {
        mesh: config.mesh.to_string(),
        pin_dir: config.load.pin_dir.clone(),
        check_links: true,
        ..AgentStatus::default()
    });
    if let Some(addr) = config.metrics_addr {
        let bound = metrics::serve(addr, Arc::clone(&status))?;
        log::info!("metrics on http://{bound}/metrics (/healthz, /readyz)");
    }

    // Load, or adopt what a previous agent pinned: programs are swapped in place, maps kept.
    let report = load_datapath_sized(&config.load, &config.map_sizes).map_err(|e| e.to_string())?;
    let replaced = report.hooks.iter().filter(|h| h.replaced).count();
    log::info!(
        "data path attached to {} in {:.1} ms ({} hooks, {} replaced in place, maps re-used: {})",
        config.load.cgroup.display(),
        report.elapsed.as_secs_f64() * 1000.0,
        report.hooks.len(),
        replaced,
        if report.maps_reused.is_empty() {
            "none".to_string()
        } else {
            report.maps_reused.join(", ")
        }
    );
    status.attached.store(true, Ordering::SeqCst);
    let splice_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if config.load.constants.splice_mode == mb_maps::datapath::SPLICE_SIDECARS {
        start_splice_classifier(&config, Arc::clone(&status), Arc::clone(&splice_stop));
    }
    let store = PodMaps::open(&config.load.pin_dir)?;
    let mut sync = PodSync::new(store, config.mesh, config.dns_capture_default);
    let mut inbound = InboundPods::new(&config.load.pin_dir);
    // Pods refused as a whole (TPROXY), for the metric.
    let mut refused: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Pods with annotations we ignore (excludeInterfaces, ...), for the metric.
    let mut ignoring: std::collections::HashSet<String> = std::collections::HashSet::new();

    let mut watcher = PodWatcher::new(
        client,
        WatchOptions::new(config.node_name.clone()).with_watch_timeout(config.watch_timeout_secs),
    );
    *status.watcher.lock().unwrap_or_else(|p| p.into_inner()) = Some(watcher.stats());
    let stop = watcher.stop_handle();
    let (tx, rx) = mpsc::channel::<Msg>();
    {
        let tx = tx.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Ok(signal) = signals.wait() {
                    stop.stop();
                    let _ = tx.send(Msg::Signal(signal));
                }
            })
            .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    }
    let watch_thread = {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || {
                let result = watcher.run(&mut |event| {
                    let _ = tx.send(Msg::Pod(Box::new(event), Instant::now()));
                });
                let _ = tx.send(Msg::WatcherEnded(result));
            })
            .map_err(|e| format!("cannot start the watch thread: {e}"))?
    };
    let scan_requests = start_scanner(tx.clone(), config.scan_spacing)?;
    drop(tx);
    // Asks the scanner thread about `pods`; their cookies come back as `Msg::Scanned`.
    let request_scan = |pods: Vec<(String, Vec<IpAddr>)>| {
        let _ = scan_requests.send(pods);
    };
    request_scan(Vec::new());
    let mut next_full_scan = Instant::now() + config.rescan_interval;
    let mut next_retry = Instant::now() + config.retry_interval;
    let mut watcher_error = None;
    loop {
        let waiting = sync.counts().without_netns > 0;
        let deadline = if waiting {
            next_full_scan.min(next_retry)
        } else {
            next_full_scan
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        let message = rx.recv_timeout(wait).map(|m| match m {
            Msg::Pod(event, at) => Unboxed::Pod(*event, at),
            Msg::Signal(s) => Unboxed::Signal(s),
            Msg::WatcherEnded(r) => Unboxed::WatcherEnded(r),
            Msg::Scanned(found, namespaces) => Unboxed::Scanned(found, namespaces),
        });
        // Map writes are serialised with `merbridge pod` and the CNI plugin (pin_lock).
        let _write = matches!(message, Ok(Unboxed::Pod(..) | Unboxed::Scanned(..)))
            .then(|| crate::pin_lock::write_lock(&pin_dir, Duration::MAX))
            .and_then(|lock| lock.map_err(|e| log::error!("{e}")).ok());
        match message {
            Ok(Unboxed::Pod(PodEvent::Upsert(pod), at)) => {
                if let Some(reason) = crate::mesh::refusal(&pod, config.mesh) {
                    if refused.insert(pod.uid.clone()) {
                        log::warn!(
                            "pod {}/{}: annotation {}: {reason} interception is not supported: \
                             the pod is not intercepted at all (no map entry, no inbound link; \
                             keep istio-init for it)",
                            pod.namespace,
                            pod.name,
                            crate::mesh::INTERCEPTION_MODE_ANNOTATION
                        );
                    }
                } else {
                    refused.remove(&pod.uid);
                }
                if crate::mesh::has_ignored_annotations(&pod, config.mesh) {
                    ignoring.insert(pod.uid.clone());
                } else {
                    ignoring.remove(&pod.uid);
                }
                let ips_changed = sync.ips_of(&pod.uid) != Some(pod.pod_ips.as_slice());
                match sync.upsert(&pod) {
                    Ok(change) => {
                        if matches!(change, Change::Added | Change::Updated | Change::Removed) {
                            observe(&status, at);
                        }
                        if change == Change::Removed {
                            remove_inbound(&mut inbound, &status, &pod.uid);
                        }
                        if matches!(change, Change::Added | Change::Updated) && ips_changed {
                            // Off the event path: the scanner thread answers in a moment.
                            request_scan(vec![(pod.uid.clone(), pod.pod_ips.clone())]);
                        }
                        log::debug!("pod {}: {change:?}", pod.pod_ref());
                    }
                    Err(e) => {
                        status.sync_errors.fetch_add(1, Ordering::Relaxed);
                        log::error!("pod {}: {e}", pod.pod_ref());
                    }
                }
            }
            Ok(Unboxed::Pod(PodEvent::Delete(pod_ref), at)) => {
                refused.remove(&pod_ref.uid);
                ignoring.remove(&pod_ref.uid);
                match sync.delete(&pod_ref.uid) {
                    Ok(Change::Removed) => {
                        remove_inbound(&mut inbound, &status, &pod_ref.uid);
                        observe(&status, at);
                        log::info!("pod {pod_ref}: removed from the maps");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        status.sync_errors.fetch_add(1, Ordering::Relaxed);
                        log::error!("pod {pod_ref}: {e}");
                    }
                }
            }
            Ok(Unboxed::Pod(PodEvent::Synced, _)) => {
                if !sync.is_synced() {
                    let reconcile_started = Instant::now();
                    match sync.reconcile() {
                        Ok(stale) => {
                            match sync
                                .store()
                                .pod_ip_entries()
                                .map(|e| e.iter().map(|(_, p)| p.pod_id).collect::<Vec<_>>())
                                .map_err(|e| e.to_string())
                                .and_then(|live| inbound.sweep_stale(&live))
                            {
                                Ok(gone) if !gone.is_empty() => {
                                    log::info!("inbound links of gone pods detached: {gone:?}")
                                }
                                Ok(_) => {}
                                Err(e) => log::warn!("sweeping stale inbound links: {e}"),
                            }
                            status.stale_removed.store(stale as u64, Ordering::Relaxed);
                            status.synced.store(true, Ordering::SeqCst);
                            status.last_sync_ms.store(now_ms(), Ordering::Relaxed);
                            status
                                .first_sync_ms
                                .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                            let counts = sync.counts();
                            log::info!(
                                "first list reconciled in {:.1} ms: {} meshed pods ({} without a \
                                 network namespace yet), {} stale pods removed",
                                reconcile_started.elapsed().as_secs_f64() * 1000.0,
                                counts.pods,
                                counts.without_netns,
                                stale
                            );
                            request_scan(sync.all_pods());
                        }
                        Err(e) => {
                            status.sync_errors.fetch_add(1, Ordering::Relaxed);
                            log::error!("first sync: {e}");
                        }
                    }
                }
            }
            Ok(Unboxed::Scanned(found, namespaces)) => {
                status.netns_scans.fetch_add(1, Ordering::Relaxed);
                status
                    .namespaces
                    .store(namespaces as u64, Ordering::Relaxed);
                for (uid, ips, cookie, path) in found {
                    // The pod may have changed address (or gone) while the scan ran.
                    if sync.ips_of(&uid) != Some(ips.as_slice()) {
                        continue;
                    }
                    match sync.set_cookie(&uid, cookie) {
                        Ok(true) => log::info!("pod uid {uid}: network namespace cookie {cookie}"),
                        Ok(false) => {}
                        Err(e) => {
                            status.sync_errors.fetch_add(1, Ordering::Relaxed);
                            log::error!("pod uid {uid}: {e}");
                        }
                    }
                    if sync.is_synced() {
                        ensure_inbound(&mut inbound, &sync, &status, &uid, &path);
                    }
                }
            }
            Ok(Unboxed::Signal(signal)) => {
                log::info!("{signal}: stopping the watch");
                break;
            }
            Ok(Unboxed::WatcherEnded(result)) => {
                if let Err(e) = result {
                    watcher_error = Some(e);
                }
                break;
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if now >= next_full_scan {
                    let missing = sync.without_netns();
                    if !missing.is_empty() {
                        let names: Vec<String> = missing
                            .iter()
                            .take(5)
                            .filter_map(|(uid, _)| sync.pod_ref(uid))
                            .map(|r| format!("{}/{}", r.namespace, r.name))
                            .collect();
                        log::warn!(
                            "{} meshed pods have no network namespace on this host yet (their \
                             inbound is intercepted, their outbound not until it is found; \
                             hostPID is needed to see them): {}{}",
                            missing.len(),
                            names.join(", "),
                            if missing.len() > 5 { ", ..." } else { "" }
                        );
                    }
                    // Also re-checks the namespaces already known (a sandbox may be replaced).
                    request_scan(sync.all_pods());
                    sync.forget_ids_in_maps();
                    next_full_scan = now + config.rescan_interval;
                    next_retry = now + config.retry_interval;
                } else if now >= next_retry {
                    request_scan(sync.without_netns());
                    next_retry = now + config.retry_interval;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let counts = sync.counts();
        status
            .inbound_links
            .store(inbound.len() as u64, Ordering::Relaxed);
        status
            .pods_refused_tproxy
            .store(refused.len() as u64, Ordering::Relaxed);
        status
            .pods_ignored_annotations
            .store(ignoring.len() as u64, Ordering::Relaxed);
        status.pods.store(counts.pods as u64, Ordering::Relaxed);
        status
            .pods_without_netns
            .store(counts.without_netns as u64, Ordering::Relaxed);
        status
            .pods_unwritten
            .store(sync.unwritten() as u64, Ordering::Relaxed);
    }
    stop.stop();
    splice_stop.store(true, Ordering::SeqCst);
    let _ = watch_thread.join();
    if let Some(e) = watcher_error {
        return Err(e);
    }
    if should_unload(&config) {
        let report = unload_datapath(&config.load.pin_dir, Some(&config.load.cgroup))
            .map_err(|e| e.to_string())?;
        log::info!(
            "data path unloaded: {} links and {} legacy attachments detached, {} pins removed",
            report.links_detached,
            report.legacy_detached,
            report.pins_removed
        );
    } else {
        log::info!(
            "data path left attached (pins in {}): the next agent adopts it",
            config.load.pin_dir.display()
        );
    }
    Ok(())
}

/// Attaches (or keeps) pod `uid`'s inbound capture in the namespace at `path`; a failure is
/// a warning naming the pod and what to do, counted in `inbound_errors`.
fn ensure_inbound(
    inbound: &mut InboundPods,
    sync: &PodSync<PodMaps>,
    status: &AgentStatus,
    uid: &str,
    path: &std::path::Path,
) {
    let Some((pod_id, port)) = sync.inbound_target(uid) else {
        return;
    };
    let name = sync.pod_ref(uid).map_or_else(
        || format!("uid {uid}"),
        |r| format!("{}/{}", r.namespace, r.name),
    );
    match inbound.ensure(uid, pod_id, path, port) {
        Ok(Some(done)) => {
            log::info!(
                "pod {name}: inbound capture {:?} in {:.2} ms (link {}), listener {}",
                done.outcome,
                done.attach_time.as_secs_f64() * 1000.0,
                done.link.link_id,
                if done.listeners.any() {
                    "in place"
                } else {
                    "not yet: connections to captured ports are refused until the sidecar listens"
                }
            );
        }
        Ok(None) => {}
        Err(e) => {
            status.inbound_errors.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "pod {name}: inbound capture (network namespace {}): {e}",
                path.display()
            );
        }
    }
}

fn remove_inbound(inbound: &mut InboundPods, status: &AgentStatus, uid: &str) {
    if let Err(e) = inbound.remove(uid) {
        status.inbound_errors.fetch_add(1, Ordering::Relaxed);
        log::warn!("pod uid {uid}: detaching its inbound capture: {e}");
    }
}

fn observe(status: &AgentStatus, event_at: Instant) {
    status.events_applied.fetch_add(1, Ordering::Relaxed);
    status
        .apply_latency
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .observe(event_at.elapsed().as_secs_f64());
    status.last_sync_ms.store(now_ms(), Ordering::Relaxed);
}

/// The per-process splice classifier's thread: one scan every `splice_interval` until `stop`.
/// A failure is logged (once per distinct message) and retried at the next period; it never
/// stops the agent (without verdicts, application legs are simply not spliced).
fn start_splice_classifier(
    config: &AgentConfig,
    status: Arc<AgentStatus>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let pin_dir = config.load.pin_dir.clone();
    let proxy_uid = config.load.constants.proxy_uid;
    let interval = config.splice_interval;
    let spawned = std::thread::Builder::new()
        .name("splice-scan".into())
        .spawn(move || {
            let mut agent = None;
            let mut last_error = String::new();
            while !stop.load(Ordering::SeqCst) {
                if agent.is_none() {
                    match crate::splice::SpliceAgent::open(&pin_dir, proxy_uid) {
                        Ok(a) => agent = Some(a),
                        Err(e) => {
                            let text = e.to_string();
                            if text != last_error {
                                log::warn!("per-process splice: {text}");
                                last_error = text;
                            }
                        }
                    }
                }
                if let Some(a) = agent.as_mut() {
                    match a.scan_once() {
                        Ok(report) => {
                            status.splice_scans.fetch_add(1, Ordering::Relaxed);
                            let counts = report
                                .counts()
                                .into_iter()
                                .map(|((v, r), n)| ((v.name(), r.name()), n as u64))
                                .collect();
                            *status
                                .splice_processes
                                .lock()
                                .unwrap_or_else(|p| p.into_inner()) = counts;
                            if report.applied.written + report.applied.removed > 0 {
                                log::debug!(
                                    "per-process splice: {} pods, {:?}, {:?}",
                                    report.pods,
                                    report.applied,
                                    report.cost
                                );
                            }
                        }
                        Err(e) => {
                            let text = e.to_string();
                            if text != last_error {
                                log::warn!("per-process splice: {text}");
                                last_error = text;
                            }
                        }
                    }
                }
                std::thread::sleep(interval);
            }
        });
    if let Err(e) = spawned {
        log::warn!(
            "cannot start the per-process splice thread ({e}): application legs stay unspliced"
        );
    }
}

/// Pods to look up: `(uid, ips)`.
type ScanRequest = Vec<(String, Vec<IpAddr>)>;

/// The scanner thread: each request (requests queued meanwhile are merged into it) is one
/// scan of the host's namespaces, answered with the cookies found. Scans are at least
/// `spacing` apart, so a burst of new pods costs a few scans, not one per pod.
fn start_scanner(
    tx: mpsc::Sender<Msg>,
    spacing: Duration,
) -> Result<mpsc::Sender<ScanRequest>, String> {
    let (requests, incoming) = mpsc::channel::<ScanRequest>();
    std::thread::Builder::new()
        .name("netns-scan".into())
        .spawn(move || {
            let mut scanner = NetnsScanner::new();
            let mut last_scan: Option<Instant> = None;
            while let Ok(first) = incoming.recv() {
                if let Some(last) = last_scan {
                    std::thread::sleep(spacing.saturating_sub(last.elapsed()));
                }
                let mut wanted: HashMap<String, Vec<IpAddr>> = first.into_iter().collect();
                while let Ok(more) = incoming.try_recv() {
                    wanted.extend(more);
                }
                let stats = scanner.scan();
                last_scan = Some(Instant::now());
                log::debug!("netns scan: {stats:?}");
                let found: Vec<Found> = wanted
                    .into_iter()
                    .filter_map(|(uid, ips)| {
                        let cookie = scanner.cookie_for(&ips)?;
                        let path = scanner.path_for(&ips)?;
                        Some((uid, ips, cookie, path))
                    })
                    .collect();
                if tx.send(Msg::Scanned(found, stats.namespaces)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the namespace scanner thread: {e}"))?;
    Ok(requests)
}

fn should_unload(config: &AgentConfig) -> bool {
    match config.on_exit {
        OnExit::Keep => false,
        OnExit::Unload => true,
        OnExit::Auto => {
            let Some((namespace, name)) = &config.daemonset else {
                log::warn!(
                    "on exit: own DaemonSet unknown (set --daemonset-namespace/--daemonset-name \
                     or POD_NAMESPACE/DAEMONSET_NAME); leaving the data path attached — run \
                     `merbridge unload` to remove it"
                );
                return false;
            };
            match daemonset_state(config, namespace, name) {
                Ok(DaemonSetState::Present) => {
                    log::info!("DaemonSet {namespace}/{name} still exists: rolling upgrade");
                    false
                }
                Ok(DaemonSetState::Deleting) => {
                    log::info!("DaemonSet {namespace}/{name} is being deleted: unloading");
                    true
                }
                Ok(DaemonSetState::Gone) => {
                    log::info!("DaemonSet {namespace}/{name} is gone: unloading");
                    true
                }
                Err(e) => {
                    log::warn!(
                        "on exit: cannot tell whether DaemonSet {namespace}/{name} exists ({e}); \
                         leaving the data path attached — run `merbridge unload` to remove it"
                    );
                    false
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum DaemonSetState {
    Present,
    Deleting,
    Gone,
}

fn daemonset_state(
    config: &AgentConfig,
    namespace: &str,
    name: &str,
) -> Result<DaemonSetState, String> {
    let client = ClientConfig::load(config.kubeconfig.as_deref(), config.context.as_deref())
        .map_err(|e| e.to_string())?;
    let path = format!(
        "/apis/apps/v1/namespaces/{}/daemonsets/{}",
        http::encode_query_value(namespace),
        http::encode_query_value(name)
    );
    for attempt in 0..2 {
        let token = client.auth.bearer().map_err(|e| e.to_string())?;
        let authorization = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Accept", "application/json")];
        if let Some(value) = authorization.as_deref() {
            headers.push(("Authorization", value));
        }
        let mut response = http::get(
            &client.endpoint,
            &path,
            &headers,
            Duration::from_secs(5),
            &mut |_| {},
        )
        .map_err(|e| e.message)?;
        let body = response.read_to_end(4 << 20).map_err(|e| e.message)?;
        match response.status {
            200 => {
                let value: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("GET {path}: not JSON: {e}"))?;
                let deleting = value
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|t| !t.is_null());
                return Ok(if deleting {
                    DaemonSetState::Deleting
                } else {
                    DaemonSetState::Present
                });
            }
            404 => return Ok(DaemonSetState::Gone),
            401 if attempt == 0 => client.auth.invalidate(),
            code => {
                return Err(format!(
                    "GET {path}: HTTP {code} (the ClusterRole must allow get on daemonsets)"
                ))
            }
        }
    }
    Err(format!("GET {path}: HTTP 401 after re-reading the token"))
}
