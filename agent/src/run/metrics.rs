//! `/metrics` (Prometheus text format), `/healthz` and `/readyz` over plain HTTP/1.1 on a std
//! `TcpListener`: one small thread, one request per connection.

use crate::k8s::WatcherStats;
use mb_loader::datapath::PinLayout;
use mb_maps::datapath::{MAPS, MAP_COUNTERS};
use mb_maps::layout::Counter;
use mb_maps::{Map, PerCpuArray};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the event → map-written latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// A Prometheus histogram with fixed buckets.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    pub counts: [u64; LATENCY_BUCKETS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        for (bound, count) in LATENCY_BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// What the agent reports; shared between the sync loop and the HTTP thread.
#[derive(Default)]
pub struct AgentStatus {
    pub mesh: String,
    pub pin_dir: PathBuf,
    /// The data path is loaded (or adopted) and attached.
    pub attached: AtomicBool,
    /// The first complete list has been reconciled into the maps.
    pub synced: AtomicBool,
    pub pods: AtomicU64,
    pub pods_without_netns: AtomicU64,
    /// Meshed pods kept out of the maps by a failed write (a full map): not intercepted.
    pub pods_unwritten: AtomicU64,
    pub events_applied: AtomicU64,
    pub sync_errors: AtomicU64,
    pub stale_removed: AtomicU64,
    pub netns_scans: AtomicU64,
    pub namespaces: AtomicU64,
    /// Pods whose namespace has our sk_lookup link (inbound from every caller).
    pub inbound_links: AtomicU64,
    /// Attaching or detaching a pod's inbound capture failed (vanished namespace, ...).
    pub inbound_errors: AtomicU64,
    /// Meshed pods refused (not intercepted at all): Istio TPROXY mode.
    pub pods_refused_tproxy: AtomicU64,
    /// Meshed pods with annotations merbridge ignores (Istio excludeInterfaces, ...).
    pub pods_ignored_annotations: AtomicU64,
    /// Unix time (ms) of the last map write from an event or reconcile.
    pub last_sync_ms: AtomicU64,
    /// Milliseconds from start to the first reconciled list.
    pub first_sync_ms: AtomicU64,
    pub apply_latency: Mutex<Histogram>,
    pub watcher: Mutex<Option<Arc<WatcherStats>>>,
    /// `/readyz` also checks that the pinned links still exist.
    pub check_links: bool,
    /// Per-process splice classifier (agent/src/splice): completed scans, and the processes
    /// of meshed pods at the last one by (verdict, reason).
    pub splice_scans: AtomicU64,
    pub splice_processes: Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

impl AgentStatus {
    pub fn ready(&self) -> bool {
        self.attached.load(Ordering::SeqCst) && self.synced.load(Ordering::SeqCst)
    }

    /// Whether the pinned links are still there (someone may have run `merbridge unload`).
    fn links_present(&self) -> bool {
        !self.check_links || !mb_loader::datapath::hook_status(&self.pin_dir).is_empty()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v.to_string())];
        metric(
            "merbridge_ready",
            "gauge",
            "1 once the data path is attached and the first pod list is in the maps.",
            &one(u64::from(self.ready())),
        );
        metric(
            "merbridge_pods",
            "gauge",
            "Meshed pods of this node in the maps, by mesh.",
            &[(
                format!("{{mesh=\"{}\"}}", self.mesh),
                g(&self.pods).to_string(),
            )],
        );
        metric(
            "merbridge_pods_without_netns",
            "gauge",
            "Meshed pods whose network namespace was not found yet (inbound only until it is).",
            &one(g(&self.pods_without_netns)),
        );
        metric(
            "merbridge_inbound_links",
            "gauge",
            "Meshed pods whose network namespace has the sk_lookup inbound link.",
            &one(g(&self.inbound_links)),
        );
        metric(
            "merbridge_pods_refused",
            "gauge",
            "Meshed pods merbridge does not intercept at all, by reason (see the log).",
            &[(
                "{reason=\"tproxy\"}".to_string(),
                g(&self.pods_refused_tproxy).to_string(),
            )],
        );
        metric(
            "merbridge_pods_ignored_annotations",
            "gauge",
            "Meshed pods with annotations merbridge cannot honour and ignores (see the log).",
            &one(g(&self.pods_ignored_annotations)),
        );
        metric(
            "merbridge_inbound_errors_total",
            "counter",
            "Pods whose inbound capture could not be attached or detached (see the log).",
            &one(g(&self.inbound_errors)),
        );
        metric(
            "merbridge_pods_not_intercepted",
            "gauge",
            "Meshed pods not in the maps because a write failed (a full map: see --max-pods).",
            &one(g(&self.pods_unwritten)),
        );
        metric(
            "merbridge_sync_events_total",
            "counter",
            "Pod events applied to the maps.",
            &one(g(&self.events_applied)),
        );
        metric(
            "merbridge_sync_errors_total",
            "counter",
            "Map writes that failed.",
            &one(g(&self.sync_errors)),
        );
        metric(
            "merbridge_sync_stale_pods_removed_total",
            "counter",
            "Pods removed at the first sync because the API no longer has them.",
            &one(g(&self.stale_removed)),
        );
        metric(
            "merbridge_last_sync_timestamp_seconds",
            "gauge",
            "Unix time of the last map update.",
            &[(
                String::new(),
                format!("{:.3}", g(&self.last_sync_ms) as f64 / 1000.0),
            )],
        );
        metric(
            "merbridge_first_sync_seconds",
            "gauge",
            "From agent start to the first pod list reconciled into the maps.",
            &[(
                String::new(),
                format!("{:.3}", g(&self.first_sync_ms) as f64 / 1000.0),
            )],
        );
        metric(
            "merbridge_splice_scans_total",
            "counter",
            "Scans of the meshed pods' processes by the per-process splice classifier.",
            &one(g(&self.splice_scans)),
        );
        let splice: Vec<(String, String)> = self
            .splice_processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((verdict, reason), n)| {
                (
                    format!("{{verdict=\"{verdict}\",reason=\"{reason}\"}}"),
                    n.to_string(),
                )
            })
            .collect();
        metric(
            "merbridge_splice_processes",
            "gauge",
            "Application processes of meshed pods at the last classifier scan, by verdict \
             (splice: its legs to the sidecar are spliced; blocking, unknown: not) and reason.",
            &splice,
        );
        metric(
            "merbridge_netns_scans_total",
            "counter",
            "Scans of the host's network namespaces.",
            &one(g(&self.netns_scans)),
        );
        metric(
            "merbridge_netns_known",
            "gauge",
            "Network namespaces on the host at the last scan.",
            &one(g(&self.namespaces)),
        );
        let latency = self
            .apply_latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut samples: Vec<(String, String)> = LATENCY_BUCKETS
            .iter()
            .zip(latency.counts.iter())
            .map(|(b, c)| (format!("_bucket{{le=\"{b}\"}}"), c.to_string()))
            .collect();
        samples.push(("_bucket{le=\"+Inf\"}".into(), latency.count.to_string()));
        samples.push(("_sum".into(), format!("{:.6}", latency.sum)));
        samples.push(("_count".into(), latency.count.to_string()));
        metric(
            "merbridge_sync_event_apply_seconds",
            "histogram",
            "From a pod event decoded off the watch stream to the maps written.",
            &samples,
        );
        if let Some(w) = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            let w_get = |v: &AtomicU64| WatcherStats::get(v);
            for (name, help, value) in [
                (
                    "lists",
                    "Pod lists (first list and relists).",
                    w_get(&w.lists),
                ),
                (
                    "watches",
                    "Watch requests (restarts included).",
                    w_get(&w.watches),
                ),
                ("events", "Watch events received.", w_get(&w.events)),
                (
                    "expired",
                    "Relists because the version expired (410).",
                    w_get(&w.expired),
                ),
                ("errors", "Failed requests or streams.", w_get(&w.errors)),
                (
                    "unauthorized",
                    "401 answers (token re-read).",
                    w_get(&w.unauthorized),
                ),
            ] {
                metric(
                    &format!("merbridge_watch_{name}_total"),
                    "counter",
                    help,
                    &one(value),
                );
            }
        }
        let layout = PinLayout::new(&self.pin_dir);
        let mut fills = Vec::new();
        let mut capacity = Vec::new();
        for decl in MAPS {
            if let Ok(map) = Map::open_pinned_any(&layout.map(decl.name)) {
                let entries = map.raw_keys().filter(Result::is_ok).count();
                let label = format!("{{map=\"{}\"}}", decl.name);
                fills.push((label.clone(), entries.to_string()));
                capacity.push((label, map.info().max_entries.to_string()));
            }
        }
        metric(
            "merbridge_map_entries",
            "gauge",
            "Entries in each data-path map.",
            &fills,
        );
        metric(
            "merbridge_map_max_entries",
            "gauge",
            "Capacity of each data-path map.",
            &capacity,
        );
        if let Ok(counters) = PerCpuArray::<u64>::open_pinned(&layout.map(MAP_COUNTERS)) {
            let samples: Vec<(String, String)> = Counter::ALL
                .iter()
                .map(|&c| {
                    let value = counters.get_sum(c as u32).ok().flatten().unwrap_or(0);
                    (format!("{{counter=\"{}\"}}", c.name()), value.to_string())
                })
                .collect();
            metric(
                "merbridge_datapath_total",
                "counter",
                "Data-path counters (summed over CPUs).",
                &samples,
            );
        }
        out
    }
}

/// Serves the endpoints on `addr` from a background thread. Returns the bound address.
pub fn serve(addr: SocketAddr, status: Arc<AgentStatus>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| format!("--metrics-addr {addr}: cannot listen: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = answer(conn, &status) {
                    log::debug!("metrics request: {e}");
                }
            }
        })
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(bound)
}

fn answer(mut conn: TcpStream, status: &AgentStatus) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("").split('?').next().unwrap_or("");
    let (code, body, kind) = match (method, path) {
        ("GET", "/metrics") => (200, status.render(), "text/plain; version=0.0.4"),
        ("GET", "/healthz") => (200, "ok\n".to_string(), "text/plain"),
        ("GET", "/readyz") if status.ready() && status.links_present() => {
            (200, "ready\n".to_string(), "text/plain")
        }
        ("GET", "/readyz") => {
            let why = if !status.attached.load(Ordering::SeqCst) {
                "data path not attached yet\n"
            } else if !status.links_present() {
                "the data path's pinned links are gone (unloaded?): restart the agent\n"
            } else {
                "waiting for the first pod list\n"
            };
            (503, why.to_string(), "text/plain")
        }
        ("GET", _) => (
            404,
            "not found: try /metrics, /healthz or /readyz\n".into(),
            "text/plain",
        ),
        _ => (405, "only GET\n".to_string(), "text/plain"),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.0002);
        h.observe(0.003);
        h.observe(2.0);
        assert_eq!(h.counts[0], 0);
        assert_eq!(h.counts[1], 1, "0.2 ms <= 0.25 ms");
        assert_eq!(h.counts[5], 2, "3 ms <= 5 ms");
        assert_eq!(h.counts[9], 2, "2 s is only in +Inf");
        assert_eq!(h.count, 3);
    }

    #[test]
    fn endpoints_answer_over_http() {
        let status = Arc::new(AgentStatus {
            mesh: "istio".into(),
            pin_dir: "/nonexistent-mb-pins".into(),
            ..AgentStatus::default()
        });
        status.pods.store(3, Ordering::SeqCst);
        let addr = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&status)).unwrap();
        let get = |path: &str| {
            let mut c = TcpStream::connect(addr).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut text = String::new();
            c.read_to_string(&mut text).unwrap();
            text
        };
        assert!(get("/healthz").starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").starts_with("HTTP/1.1 503"));
        status.attached.store(true, Ordering::SeqCst);
        status.synced.store(true, Ordering::SeqCst);
        assert!(get("/readyz").starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics");
        assert!(
            metrics.contains("merbridge_pods{mesh=\"istio\"} 3"),
            "{metrics}"
        );
        assert!(metrics.contains("merbridge_ready 1"), "{metrics}");
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }
}
