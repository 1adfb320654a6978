//! `merbridge bench --faults`: faults injected under a steady load, counted (issue 17).
//!
//! One test-bed node: a client and a server pod with the reference sidecar, a third meshed
//! pod whose namespace is deleted mid-run, the real `merbridge run` agent following a small
//! built-in API server (a static list of the three pods and a watch that stays open), pins in
//! a private bpffs. The client runs `mb-workload load`: RATE new connections per second (each
//! answer checked: right server, seen through its sidecar) plus 8 long-lived echo
//! connections. Meanwhile: the agent SIGKILLed and restarted; `merbridge load` over the
//! loaded data path (every program swapped in place); a second agent started and the first
//! SIGTERMed (the lock makes the second wait); a pod's netns deleted. Then, as a named
//! failure mode, bpffs unmounted under the agent, measured while it runs and after it exits.

use mb_sys::bpffs::PrivateBpffs;
use mb_testbed::merbridge::merbridge_binary;
use mb_testbed::scenarios::{start_app, Binaries, APP_UID, ECHO_PORT, WHOAMI_PORT};
use mb_testbed::sidecar::Listener;
use mb_testbed::workload::LoadStats;
use mb_testbed::{Node, Pod, PodSpec, Sidecar};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = "mb-bench-faults";
/// The agents' `--watch-timeout`: a stalled watch is noticed within 2 × 4 + 1 s (the
/// default, 300, gives 660 s).
const WATCH_TIMEOUT_SECS: u32 = 4;

/// What to run.
pub struct FaultPlan {
    pub rate: u32,
    pub seconds: u64,
    /// How long the API server stays down (60 s in the full run).
    pub api_outage_secs: u64,
}

/// One API server fault (or SIGTERM with keep), under a load of its own.
pub struct ApiFaultRow {
    pub name: &'static str,
    pub lasted_ms: u64,
    /// From the fault's end until the maps equal the API's view (None: not within 60 s).
    pub converged_ms: Option<u64>,
    /// Pod lists the agent made meanwhile.
    pub lists: u64,
    pub load: LoadStats,
    pub missed_client_sidecar: u64,
}

impl ApiFaultRow {
    fn failures(&self) -> u64 {
        lost(&self.load, self.missed_client_sidecar)
    }
}

/// Connections and round trips a load lost: failed, or past a sidecar (seen by the server
/// from another peer, or `missed` by the client's sidecar records).
fn lost(load: &LoadStats, missed: u64) -> u64 {
    load.failed_connects + load.failed_requests + load.bypassed + load.rr_failed + missed
}

/// SIGTERM with the DaemonSet gone.
pub struct UnloadCheck {
    pub took_ms: u64,
    /// Programs still attached and pins left (should be none).
    pub left: Vec<String>,
    /// A short load afterwards: connections go direct (all bypass, none fail).
    pub after: LoadStats,
}

/// One fault's row.
pub struct FaultRow {
    pub name: &'static str,
    pub at_ms: u64,
    pub took_ms: u64,
    pub failures: usize,
}

/// Everything measured.
pub struct FaultReport {
    pub plan_rate: u32,
    pub seconds: u64,
    pub load: LoadStats,
    /// Answered connections missing from the client sidecar's records.
    pub missed_client_sidecar: u64,
    pub rows: Vec<FaultRow>,
    pub unmount_while_running: LoadStats,
    pub unmount_readyz: u16,
    pub unmount_after_exit: LoadStats,
    pub api_rows: Vec<ApiFaultRow>,
    pub unload: UnloadCheck,
}

impl FaultReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "faults under load: {} new connections/s + 8 RR connections for {} s \
             (client -> sidecar -> sidecar -> server)\n\n\
             | fault | at (s) | took (ms) | failures in its window (connect, request, RR, bypass) |\n\
             |---|---:|---:|---:|\n",
            self.plan_rate, self.seconds
        );
        for r in &self.rows {
            out += &format!(
                "| {} | {:.1} | {} | {} |\n",
                r.name,
                r.at_ms as f64 / 1000.0,
                r.took_ms,
                r.failures
            );
        }
        let l = &self.load;
        out += &format!(
            "\ntotals: {} connects, {} failed connects, {} failed requests, {} bypassed \
             (server saw another peer) + {} (missing from the client sidecar's records), {} RR \
             round trips, {} failed\n",
            l.connects,
            l.failed_connects,
            l.failed_requests,
            l.bypassed,
            self.missed_client_sidecar,
            l.rr_requests,
            l.rr_failed
        );
        out += "\nAPI server faults and SIGTERM, each under its own load (the API's view changes \
                as the fault starts):\n\n\
                | fault | lasted (ms) | maps converged (ms after its end) | lists | connects | \
                failures (connect, request, RR, bypass) |\n|---|---:|---:|---:|---:|---:|\n";
        for r in &self.api_rows {
            out += &format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.name,
                r.lasted_ms,
                r.converged_ms
                    .map_or_else(|| "not within 60 s".to_owned(), |ms| ms.to_string()),
                r.lists,
                r.load.connects,
                r.failures()
            );
        }
        let u = &self.unload;
        out +=
            &format!(
            "SIGTERM, DaemonSet gone: unloaded in {} ms, left attached or pinned: {}; then {} of \
             {} connections went direct, {} failed\n",
            u.took_ms,
            if u.left.is_empty() { "nothing".to_owned() } else { u.left.join(", ") },
            u.after.bypassed,
            u.after.connects,
            u.after.failed_connects + u.after.failed_requests
        );
        let (w, a) = (&self.unmount_while_running, &self.unmount_after_exit);
        out += &format!(
            "bpffs unmounted under the agent (named failure mode): while it runs {} of {} \
             bypassed, {} failed, /readyz {}; after it exits {} of {} bypassed (the pinned links \
             go with the last open fd of the detached bpffs; a new agent refuses the pin \
             directory until bpffs is mounted again)\n",
            w.bypassed,
            w.connects,
            w.failed_connects + w.failed_requests,
            self.unmount_readyz,
            a.bypassed,
            a.connects
        );
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let l = &self.load;
        serde_json::json!({
            "rate_per_s": self.plan_rate,
            "rr_connections": 8,
            "seconds": self.seconds,
            "connects": l.connects,
            "failed_connects": l.failed_connects,
            "failed_requests": l.failed_requests,
            "bypassed": l.bypassed + self.missed_client_sidecar,
            "rr_round_trips": l.rr_requests,
            "rr_failed": l.rr_failed,
            "faults": self.rows.iter().map(|r| serde_json::json!({
                "fault": r.name, "at_ms": r.at_ms, "took_ms": r.took_ms, "failures": r.failures,
            })).collect::<Vec<_>>(),
            "api_faults": self.api_rows.iter().map(|r| serde_json::json!({
                "fault": r.name, "lasted_ms": r.lasted_ms, "converged_ms": r.converged_ms,
                "lists": r.lists, "connects": r.load.connects,
                "failed": r.load.failed_connects + r.load.failed_requests + r.load.rr_failed,
                "bypassed": r.load.bypassed + r.missed_client_sidecar,
            })).collect::<Vec<_>>(),
            "sigterm_daemonset_gone": {"took_ms": self.unload.took_ms, "left": self.unload.left,
                "after_connects": self.unload.after.connects,
                "after_direct": self.unload.after.bypassed,
                "after_failed": self.unload.after.failed_connects
                    + self.unload.after.failed_requests},
            "bpffs_unmounted": {
                "while_agent_runs": {"connects": self.unmount_while_running.connects,
                    "bypassed": self.unmount_while_running.bypassed,
                    "failed": self.unmount_while_running.failed_connects
                        + self.unmount_while_running.failed_requests,
                    "readyz": self.unmount_readyz},
                "after_agent_exits": {"connects": self.unmount_after_exit.connects,
                    "bypassed": self.unmount_after_exit.bypassed},
            },
        })
    }

    /// Whether every absorbable fault lost nothing.
    pub fn clean(&self) -> bool {
        lost(&self.load, self.missed_client_sidecar) == 0
            && self
                .api_rows
                .iter()
                .all(|r| r.failures() == 0 && r.converged_ms.is_some())
            && self.unload.left.is_empty()
            && self.unload.after.failed_connects + self.unload.after.failed_requests == 0
            && self.unload.after.bypassed == self.unload.after.connects
    }
}

/// What the built-in API server does to the agent right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApiMode {
    Up,
    /// Listener closed, every open connection closed: connects are refused.
    Down,
    /// Every watch (open or new) ends with an ERROR 410 event: the agent must list again.
    Gone,
}

/// The API's view of this node and what the server does; see [`ApiStub`].
struct ApiState {
    mode: ApiMode,
    resource_version: u64,
    pods: std::collections::BTreeMap<String, serde_json::Value>,
    /// Changes as watch events: (resource version, ADDED/DELETED, pod).
    events: Vec<(u64, &'static str, serde_json::Value)>,
    /// Bumped when the server goes down: connections of an older epoch close.
    epoch: u64,
    /// Bumped to stall: watches opened before go silent forever (and never end).
    stall: u64,
    /// Un-meshed pods listed besides `pods`, and how long a list takes to send.
    filler: usize,
    list_time: Duration,
    /// Whether our DaemonSet exists (`--on-exit auto` asks on SIGTERM).
    daemonset: bool,
    lists: u64,
    watches: u64,
}

/// A small API server: pods of one node listed and watched from a resource version (changes
/// are ADDED/DELETED events), our DaemonSet, and faults on demand: down (connections
/// refused), a 410 storm, a stalled watch, a slow list of many pods.
struct ApiStub {
    addr: SocketAddr,
    shared: Arc<(std::sync::Mutex<ApiState>, std::sync::Condvar)>,
    stop: Arc<AtomicBool>,
}

impl ApiStub {
    fn start(pods: Vec<(&str, serde_json::Value)>) -> std::io::Result<ApiStub> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let state = ApiState {
            mode: ApiMode::Up,
            resource_version: 1,
            pods: pods.into_iter().map(|(u, p)| (u.to_owned(), p)).collect(),
            events: Vec::new(),
            epoch: 0,
            stall: 0,
            filler: 0,
            list_time: Duration::ZERO,
            daemonset: true,
            lists: 0,
            watches: 0,
        };
        let shared = Arc::new((std::sync::Mutex::new(state), std::sync::Condvar::new()));
        let (flag, server) = (Arc::clone(&stop), Arc::clone(&shared));
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            while !flag.load(Ordering::SeqCst) {
                if lock(&server).mode == ApiMode::Down {
                    listener = None;
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let Some(open) = &listener else {
                    // Back up on the same port (SO_REUSEADDR: old connections do not block).
                    listener = TcpListener::bind(addr)
                        .and_then(|l| l.set_nonblocking(true).map(|()| l))
                        .ok();
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                match open.accept() {
                    Ok((conn, _)) => {
                        let (server, flag) = (Arc::clone(&server), Arc::clone(&flag));
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            serve_api(conn, &server, &flag)
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(ApiStub { addr, shared, stop })
    }

    fn change(&self, f: impl FnOnce(&mut ApiState)) {
        f(&mut lock(&self.shared));
        self.shared.1.notify_all();
    }

    fn set_mode(&self, mode: ApiMode) {
        self.change(|s| {
            if mode == ApiMode::Down {
                s.epoch += 1;
            }
            s.mode = mode;
        });
    }

    fn add_pod(&self, uid: &str, mut pod: serde_json::Value) {
        self.change(|s| {
            s.resource_version += 1;
            pod["metadata"]["resourceVersion"] = s.resource_version.to_string().into();
            s.events.push((s.resource_version, "ADDED", pod.clone()));
            s.pods.insert(uid.to_owned(), pod);
        });
    }

    fn remove_pod(&self, uid: &str) {
        self.change(|s| {
            if let Some(mut pod) = s.pods.remove(uid) {
                s.resource_version += 1;
                pod["metadata"]["resourceVersion"] = s.resource_version.to_string().into();
                s.events.push((s.resource_version, "DELETED", pod));
            }
        });
    }

    fn counts(&self) -> (u64, u64) {
        let s = lock(&self.shared);
        (s.lists, s.watches)
    }
}

impl Drop for ApiStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.shared.1.notify_all();
    }
}

fn lock(
    shared: &(std::sync::Mutex<ApiState>, std::sync::Condvar),
) -> std::sync::MutexGuard<'_, ApiState> {
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// The value of `name=` in a request line's query.
fn query_value<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    let query = request.split_whitespace().nth(1)?.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn chunk(conn: &mut TcpStream, line: &str) -> std::io::Result<()> {
    write!(conn, "{:x}\r\n{line}\r\n", line.len())
}

/// An un-meshed pod of this node (the slow list's filler).
fn filler_pod(i: usize) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": format!("filler-{i}"), "namespace": "default",
            "uid": format!("uid-filler-{i}"), "resourceVersion": "1"},
        "spec": {"nodeName": NODE, "containers": [{"name": "app"}]},
        "status": {"phase": "Running",
            "podIP": format!("10.251.{}.{}", i / 250, i % 250 + 1)},
    })
}

fn serve_api(
    conn: TcpStream,
    shared: &(std::sync::Mutex<ApiState>, std::sync::Condvar),
    stop: &AtomicBool,
) {
    let epoch = lock(shared).epoch;
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut conn = conn;
    // Closed when the server "goes down" (the reads below would not notice).
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let gone = |conn: &TcpStream| {
        let down = stop.load(Ordering::SeqCst) || lock(shared).epoch != epoch;
        if down {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        down
    };
    loop {
        let mut request = String::new();
        loop {
            match reader.read_line(&mut request) {
                Ok(0) => return,
                Ok(_) => break,
                Err(_) if !gone(&conn) => continue,
                Err(_) => return,
            }
        }
        let mut header = String::new();
        loop {
            header.clear();
            match reader.read_line(&mut header) {
                Ok(0) => return,
                Ok(_) if header.trim().is_empty() => break,
                Ok(_) => {}
                Err(_) if !gone(&conn) => {}
                Err(_) => return,
            }
        }
        if gone(&conn) {
            return;
        }
        let path = request.split_whitespace().nth(1).unwrap_or("");
        if path.starts_with("/apis/apps/v1/namespaces/") {
            let body = if lock(shared).daemonset {
                serde_json::json!({"kind": "DaemonSet", "apiVersion": "apps/v1",
                    "metadata": {"name": "merbridge", "namespace": "merbridge"}})
            } else {
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404})
            }
            .to_string();
            let status = if body.contains("NotFound") {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if conn
                .write_all(head.as_bytes())
                .and_then(|()| conn.write_all(body.as_bytes()))
                .is_err()
            {
                return;
            }
        } else if request.contains("watch=true") {
            serve_watch(conn, &request, shared, stop, epoch);
            return;
        } else {
            let (body, list_time) = {
                let mut s = lock(shared);
                s.lists += 1;
                // The filler first: a changed pod arrives only at the end of a slow list.
                let items: Vec<serde_json::Value> = (0..s.filler)
                    .map(filler_pod)
                    .chain(s.pods.values().cloned())
                    .collect();
                let body = serde_json::json!({"kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": s.resource_version.to_string()},
                    "items": items});
                (body.to_string(), s.list_time)
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            if conn.write_all(head.as_bytes()).is_err() {
                return;
            }
            // A slow list: the body in 50 pieces spread over `list_time`.
            let piece = body.len().div_ceil(50).max(1);
            for part in body.as_bytes().chunks(piece) {
                if gone(&conn) || conn.write_all(part).is_err() {
                    return;
                }
                std::thread::sleep(list_time / 50);
            }
        }
    }
}

fn serve_watch(
    mut conn: TcpStream,
    request: &str,
    shared: &(std::sync::Mutex<ApiState>, std::sync::Condvar),
    stop: &AtomicBool,
    epoch: u64,
) {
    let mut since: u64 = query_value(request, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout: u64 = query_value(request, "timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let stall = {
        let mut s = lock(shared);
        s.watches += 1;
        s.stall
    };
    if conn
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .is_err()
    {
        return;
    }
    let mut state = lock(shared);
    loop {
        if stop.load(Ordering::SeqCst) || state.epoch != epoch {
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        if state.stall != stall {
            // Stalled: silent and open until the server stops or goes down.
            drop(state);
            while !stop.load(Ordering::SeqCst) && lock(shared).epoch == epoch {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
        if state.mode == ApiMode::Gone {
            drop(state);
            let expired = serde_json::json!({"type": "ERROR", "object": {"kind": "Status",
                "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
                "message": "too old resource version"}});
            let _ = chunk(&mut conn, &format!("{expired}\n"));
            let _ = conn.write_all(b"0\r\n\r\n");
            return;
        }
        let pending: Vec<String> = state
            .events
            .iter()
            .filter(|e| e.0 > since)
            .map(|(_, kind, pod)| serde_json::json!({"type": kind, "object": pod}).to_string())
            .collect();
        if let Some(last) = state.events.last() {
            since = since.max(last.0);
        }
        if !pending.is_empty() {
            drop(state);
            for event in pending {
                if chunk(&mut conn, &format!("{event}\n")).is_err() {
                    return;
                }
            }
            state = lock(shared);
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            drop(state);
            let _ = conn.write_all(b"0\r\n\r\n");
            return;
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        state = shared
            .1
            .wait_timeout(state, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// An Istio-injected pod as the API would list it (SYNTHETIC: built here, not from a cluster).
fn api_pod(pod: &Pod, uid: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": pod.name(), "namespace": "default", "uid": uid,
            "resourceVersion": "1",
            "annotations": {"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"}},
        "spec": {"nodeName": NODE, "containers": [
            {"name": "app"},
            {"name": "istio-proxy", "args": ["proxy", "sidecar"],
             "securityContext": {"runAsUser": 1337}}]},
        "status": {"phase": "Running", "podIP": pod.ipv4().to_string(),
            "podIPs": [{"ip": pod.ipv4().to_string()}, {"ip": pod.ipv6().to_string()}]},
    })
}

/// A running `merbridge run`, SIGKILLed on drop.
struct AgentProcess {
    child: Child,
    log: PathBuf,
    metrics: SocketAddr,
}

impl AgentProcess {
    fn start(kubeconfig: &Path, cgroup: &Path, pin_dir: &Path, dir: &Path, n: u32) -> Self {
        let metrics = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = dir.join(format!("agent-{n}.log"));
        let child = Command::new(merbridge_binary().expect("the merbridge binary"))
            .args([
                "run",
                "--mesh",
                "istio",
                "--node-name",
                NODE,
                "--on-exit",
                "auto",
                "--daemonset-namespace",
                "merbridge",
                "--daemonset-name",
                "merbridge",
                "--watch-timeout",
                &WATCH_TIMEOUT_SECS.to_string(),
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(["--metrics-addr", &metrics.to_string()])
            .env_remove("NODE_NAME")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("start merbridge run");
        AgentProcess {
            child,
            log,
            metrics,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn readyz(&self) -> Option<u16> {
        let mut conn = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(1)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(conn, "GET /readyz HTTP/1.1\r\nHost: agent\r\n\r\n").ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        text.split_whitespace().nth(1)?.parse().ok()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("merbridge run exited ({status}):\n{}", self.log()));
            }
            if self.readyz() == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "merbridge run not ready after 30 s:\n{}",
            self.log()
        ))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }

    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Unloads whatever is still pinned, then the bpffs goes (declared after it: dropped first).
struct Unload {
    pin_dir: PathBuf,
    cgroup: PathBuf,
}

impl Drop for Unload {
    fn drop(&mut self) {
        let _ = mb_loader::datapath::unload_datapath(&self.pin_dir, Some(&self.cgroup));
    }
}

fn outbound_to(sidecar: &Sidecar, target: SocketAddr) -> u64 {
    sidecar
        .records()
        .iter()
        .filter(|r| r.listener == Listener::Outbound && r.original_dst == Some(target))
        .count() as u64
}

/// Runs the suite (root).
pub fn run(
    plan: &FaultPlan,
    bins: &Binaries,
    progress: &dyn Fn(&str),
) -> Result<FaultReport, String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: std::io::Error| format!("{what}: {err}")
    };
    let node = Node::new("faults").map_err(e("node"))?;
    let bpffs = PrivateBpffs::new("mb-bench-faults").map_err(e("private bpffs"))?;
    let pin_dir = bpffs.path().join("merbridge");
    let _unload = Unload {
        pin_dir: pin_dir.clone(),
        cgroup: node.cgroup_path().to_path_buf(),
    };
    let dir = std::env::temp_dir().join(format!("mb-bench-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(e("scratch directory"))?;
    // An IPv6 address unique to this process tells the agent's scanner which namespace is
    // ours (other test beds may use the same IPv4 subnets).
    let unique_pod = |name: &str, host: u16| {
        let mut spec = PodSpec::named(name);
        spec.ipv6 = Some(node.process_unique_v6(0x79, host));
        node.add_pod(spec)
    };
    let client = unique_pod("client", 2).map_err(e("client pod"))?;
    let server = unique_pod("server", 3).map_err(e("server pod"))?;
    let ghost = unique_pod("ghost", 4).map_err(e("third pod"))?;
    let sidecar = |pod: &Pod| Sidecar::start_istio(&bins.sidecar, pod);
    let client_sidecar = sidecar(&client).map_err(e("client sidecar"))?;
    let _server_sidecar = sidecar(&server).map_err(e("server sidecar"))?;
    let _app = start_app(&server, bins).map_err(e("server app"))?;
    let late = unique_pod("late", 5).map_err(e("fourth pod"))?;
    let api = ApiStub::start(vec![
        ("uid-client", api_pod(&client, "uid-client")),
        ("uid-server", api_pod(&server, "uid-server")),
        ("uid-ghost", api_pod(&ghost, "uid-ghost")),
    ])
    .map_err(e("API stub"))?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: bench\nclusters:\n- name: bench\n  \
             cluster:\n    server: http://{}\ncontexts:\n- name: bench\n  context:\n    \
             cluster: bench\n    user: bench\nusers:\n- name: bench\n  user: {{}}\n",
            api.addr
        ),
    )
    .map_err(e("kubeconfig"))?;
    let cgroup = node.cgroup_path().to_path_buf();
    let mut starts = 0;
    let mut start_agent = || {
        starts += 1;
        AgentProcess::start(&kubeconfig, &cgroup, &pin_dir, &dir, starts)
    };
    let mut agent = start_agent();
    agent.wait_ready()?;
    let maps = mb_agent::run::BpfPodStore::open(&pin_dir)?;
    for pod in [&client, &server, &ghost] {
        let cookie = pod.netns_cookie().map_err(e("netns cookie"))?;
        let started = Instant::now();
        while maps
            .find(pod.ipv4().into())?
            .is_none_or(|entry| entry.netns != cookie)
        {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "pod {} not in the maps with its namespace:\n{}",
                    pod.name(),
                    agent.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    progress("data path and agent ready; load starts");

    let whoami = SocketAddr::new(IpAddr::V4(server.ipv4()), WHOAMI_PORT);
    let echo = SocketAddr::new(IpAddr::V4(server.ipv4()), ECHO_PORT);
    let load_cmd = |rate: u32, rr: usize, secs: u64| {
        let mut cmd = Command::new(&bins.workload);
        cmd.args(["load", "--whoami", &whoami.to_string()])
            .args(["--echo", &echo.to_string(), "--expect-peer", "127.0.0.6"])
            .args([
                "--rate",
                &rate.to_string(),
                "--rr-connections",
                &rr.to_string(),
            ])
            .args(["--secs", &secs.to_string()])
            .stdout(Stdio::piped());
        cmd
    };
    let before = outbound_to(&client_sidecar, whoami);
    let load = client
        .spawn(load_cmd(plan.rate, 8, plan.seconds), APP_UID)
        .map_err(e("load"))?;
    let started = Instant::now();
    let at = || started.elapsed().as_millis() as u64;
    let slot = |n: u64| {
        let ms = plan.seconds * 1000 * n / 6;
        std::thread::sleep(Duration::from_millis(ms).saturating_sub(started.elapsed()));
    };
    let mut rows: Vec<(&'static str, u64, u64)> = Vec::new();

    slot(1);
    let t = at();
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.wait_exit();
    let mut agent = start_agent();
    agent.wait_ready()?;
    rows.push(("agent SIGKILL + restart (to ready)", t, at() - t));
    progress("agent killed and restarted");

    slot(2);
    let t = at();
    let out = Command::new(merbridge_binary().map_err(e("merbridge binary"))?)
        .args(["load", "--mesh", "istio", "--cgroup"])
        .arg(&cgroup)
        .arg("--pin-dir")
        .arg(&pin_dir)
        .output()
        .map_err(e("merbridge load"))?;
    if !out.status.success() {
        return Err(format!(
            "merbridge load over the data path: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    rows.push(("reload: every program swapped in place", t, at() - t));
    progress("programs swapped in place");

    slot(3);
    let t = at();
    let mut successor = start_agent();
    let waiting = Instant::now();
    while !successor.log().contains("another merbridge agent") {
        if waiting.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "the second agent did not wait:\n{}",
                successor.log()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = agent.wait_exit();
    successor.wait_ready()?;
    rows.push(("two agents: rolling update (to ready)", t, at() - t));
    progress("rolling update done");

    slot(4);
    let t = at();
    drop(ghost);
    rows.push(("pod netns + cgroup removed while in the maps", t, at() - t));

    let line = load
        .finish(Duration::from_secs(plan.seconds + 60))
        .map_err(e("load"))?;
    let stats = LoadStats::parse(line.trim()).map_err(e("load output"))?;
    std::thread::sleep(Duration::from_millis(500));
    let answered = stats.connects - stats.failed_connects - stats.failed_requests;
    let missed = answered.saturating_sub(outbound_to(&client_sidecar, whoami) - before);
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, &(name, at_ms, took_ms))| {
            let to = rows.get(i + 1).map_or(u64::MAX, |r| r.1);
            FaultRow {
                name,
                at_ms,
                took_ms,
                failures: stats
                    .failures_ms
                    .iter()
                    .filter(|&&ms| ms >= at_ms && ms < to)
                    .count(),
            }
        })
        .collect();

    // API server faults, each under a load of its own. The API's view changes as a fault
    // starts (a fourth pod, `late`, added or removed); convergence is the time from the
    // fault's end until the maps show it.
    let late_ip: IpAddr = late.ipv4().into();
    let late_cookie = late.netns_cookie().map_err(e("netns cookie"))?;
    let wait_late = |maps: &mb_agent::run::BpfPodStore,
                     present: bool,
                     budget: Duration|
     -> Result<Option<u64>, String> {
        let t = Instant::now();
        loop {
            let entry = maps.find(late_ip)?;
            let equal = match entry {
                Some(entry) => present && entry.netns == late_cookie,
                None => !present,
            };
            if equal {
                return Ok(Some(t.elapsed().as_millis() as u64));
            }
            if t.elapsed() > budget {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    api.add_pod("uid-late", api_pod(&late, "uid-late"));
    if wait_late(&maps, true, Duration::from_secs(10))?.is_none() {
        return Err(format!("pod late not in the maps:\n{}", successor.log()));
    }
    let run_with_load = |secs: u64,
                         fault: &mut dyn FnMut() -> Result<ApiOutcome, String>|
     -> Result<(LoadStats, u64, ApiOutcome), String> {
        let before = outbound_to(&client_sidecar, whoami);
        let load = client
            .spawn(load_cmd(plan.rate, 8, secs), APP_UID)
            .map_err(e("load"))?;
        std::thread::sleep(Duration::from_secs(1));
        let outcome = fault();
        let line = load
            .finish(Duration::from_secs(secs + 60))
            .map_err(e("load"))?;
        let outcome = outcome?;
        let stats = LoadStats::parse(line.trim()).map_err(e("load output"))?;
        std::thread::sleep(Duration::from_millis(300));
        let answered = stats.connects - stats.failed_connects - stats.failed_requests;
        let missed = answered.saturating_sub(outbound_to(&client_sidecar, whoami) - before);
        Ok((stats, missed, outcome))
    };
    let mut api_rows = Vec::new();
    let mut push = |name: &'static str, (load, missed, o): (LoadStats, u64, ApiOutcome)| {
        api_rows.push(ApiFaultRow {
            name,
            lasted_ms: o.lasted_ms,
            converged_ms: o.converged_ms,
            lists: o.lists,
            load,
            missed_client_sidecar: missed,
        })
    };
    // An API fault under `secs` of load: its step returns how long the fault lasted and when
    // the maps converged; the lists the agent made meanwhile are counted around it.
    let run_api_fault =
        |secs: u64, step: &mut dyn FnMut() -> Result<(u64, Option<u64>), String>| {
            run_with_load(secs, &mut || {
                let (lists, _) = api.counts();
                let (lasted_ms, converged_ms) = step()?;
                Ok(ApiOutcome {
                    lasted_ms,
                    converged_ms,
                    lists: api.counts().0 - lists,
                })
            })
        };
    let budget = Duration::from_secs(60);
    // The API in `mode` for `secs` while the late pod is added (or removed) there: how long
    // that lasted, and when the maps showed the change.
    let api_away = |mode: ApiMode, late_added: bool, secs: u64| {
        let t = Instant::now();
        api.set_mode(mode);
        if late_added {
            api.add_pod("uid-late", api_pod(&late, "uid-late"));
        } else {
            api.remove_pod("uid-late");
        }
        std::thread::sleep(Duration::from_secs(secs));
        api.set_mode(ApiMode::Up);
        let lasted_ms = t.elapsed().as_millis() as u64;
        Ok((lasted_ms, wait_late(&maps, late_added, budget)?))
    };
    let outage = plan.api_outage_secs;
    progress(&format!("API server down for {outage} s"));
    push(
        "API server down, then back",
        run_api_fault(outage + 6, &mut || api_away(ApiMode::Down, false, outage))?,
    );
    let storm = outage.clamp(2, 5);
    progress(&format!("410 storm for {storm} s"));
    push(
        "410 storm (every watch expired)",
        run_api_fault(storm + 4, &mut || api_away(ApiMode::Gone, true, storm))?,
    );
    progress("a watch stalls without closing");
    let stalled_before = successor.log().matches("watch stalled").count();
    push(
        "watch stalls without closing",
        run_api_fault(u64::from(WATCH_TIMEOUT_SECS) * 3 + 3, &mut || {
            api.change(|s| s.stall += 1);
            api.remove_pod("uid-late");
            let converged_ms = wait_late(
                &maps,
                false,
                Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS) * 4),
            )?;
            if successor.log().matches("watch stalled").count() == stalled_before {
                return Err(format!(
                    "the agent did not log the stalled watch:\n{}",
                    successor.log()
                ));
            }
            Ok((0, converged_ms))
        })?,
    );
    let list_secs = outage.clamp(2, 5);
    progress(&format!("a slow list of 10,000 pods ({list_secs} s)"));
    push(
        "slow list of 10,000 pods (after a 410)",
        run_api_fault(list_secs + 6, &mut || {
            let t = Instant::now();
            api.change(|s| {
                s.filler = 10_000 - 4;
                s.list_time = Duration::from_secs(list_secs);
                s.mode = ApiMode::Gone;
            });
            api.add_pod("uid-late", api_pod(&late, "uid-late"));
            std::thread::sleep(Duration::from_millis(200));
            api.set_mode(ApiMode::Up);
            let converged = wait_late(&maps, true, budget)?.map(|_| t.elapsed().as_millis() as u64);
            api.change(|s| {
                s.filler = 0;
                s.list_time = Duration::ZERO;
            });
            // "Lasted": the list's own time; converged: after that.
            let lasted_ms = list_secs * 1000;
            Ok((lasted_ms, converged.map(|ms| ms.saturating_sub(lasted_ms))))
        })?,
    );

    // SIGTERM: with the DaemonSet present (keep), nothing is lost while no agent runs; with it
    // gone (unload), nothing is left attached or pinned and connections go direct.
    progress("SIGTERM, DaemonSet present (keep)");
    let mut next_agent = None;
    push(
        "SIGTERM, DaemonSet present: keep (1 s without agent)",
        run_with_load(4, &mut || {
            let t = Instant::now();
            successor.signal(nix::sys::signal::Signal::SIGTERM);
            let _ = successor.wait_exit();
            if !successor.log().contains("still exists") {
                return Err(format!("the agent did not keep:\n{}", successor.log()));
            }
            std::thread::sleep(Duration::from_secs(1));
            let mut agent = start_agent();
            agent.wait_ready()?;
            next_agent = Some(agent);
            Ok(ApiOutcome {
                lasted_ms: t.elapsed().as_millis() as u64,
                converged_ms: Some(0),
                lists: 0,
            })
        })?,
    );
    let mut successor = next_agent.ok_or("no agent after keep")?;
    progress("SIGTERM, DaemonSet gone (unload)");
    api.change(|s| s.daemonset = false);
    let t = Instant::now();
    successor.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = successor.wait_exit();
    let unload_ms = t.elapsed().as_millis() as u64;
    if !successor.log().contains("is gone: unloading") {
        return Err(format!("the agent did not unload:\n{}", successor.log()));
    }
    let mut left: Vec<String> = mb_maps::datapath::Hook::ALL
        .iter()
        .filter(|h| h.attaches_to_cgroup())
        .flat_map(|h| {
            mb_loader::attach::query_cgroup(&cgroup, h.attach_type(), false).unwrap_or_default()
        })
        .map(|p| format!("attached {}", p.name))
        .collect();
    left.extend(
        std::fs::read_dir(&pin_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| format!("pinned {}", entry.path().display())),
    );
    let after_unload = {
        let line = client
            .spawn(load_cmd(plan.rate.min(200), 1, 2), APP_UID)
            .and_then(|l| l.finish(Duration::from_secs(30)))
            .map_err(e("load after unload"))?;
        LoadStats::parse(line.trim()).map_err(e("load after unload"))?
    };
    api.change(|s| s.daemonset = true);
    let mut successor = start_agent();
    successor.wait_ready()?;
    let maps = mb_agent::run::BpfPodStore::open(&pin_dir)?;
    let started_maps = Instant::now();
    while maps.find(server.ipv4().into())?.is_none() || maps.find(client.ipv4().into())?.is_none() {
        if started_maps.elapsed() > Duration::from_secs(10) {
            return Err(format!("pods not back in the maps:\n{}", successor.log()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    progress("bpffs unmounted under the agent");
    nix::mount::umount2(bpffs.path(), nix::mount::MntFlags::MNT_DETACH)
        .map_err(|err| format!("umount {}: {err}", bpffs.path().display()))?;
    let short = |what: &str| -> Result<LoadStats, String> {
        let line = client
            .spawn(load_cmd(50, 1, 2), APP_UID)
            .and_then(|l| l.finish(Duration::from_secs(30)))
            .map_err(|err| format!("{what}: {err}"))?;
        LoadStats::parse(line.trim()).map_err(|err| format!("{what}: {err}"))
    };
    let while_running = short("load with bpffs unmounted")?;
    let readyz = successor.readyz().unwrap_or(0);
    successor.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = successor.wait_exit();
    let after_exit = short("load after the agent exited")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(FaultReport {
        plan_rate: plan.rate,
        seconds: plan.seconds,
        load: stats,
        missed_client_sidecar: missed,
        rows,
        unmount_while_running: while_running,
        unmount_readyz: readyz,
        unmount_after_exit: after_exit,
        api_rows,
        unload: UnloadCheck {
            took_ms: unload_ms,
            left,
            after: after_unload,
        },
    })
}

/// What one API fault did.
struct ApiOutcome {
    lasted_ms: u64,
    converged_ms: Option<u64>,
    lists: u64,
}
