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
use mb_testbed::{MeshPorts, Node, Pod, PodSpec, Sidecar, SidecarConfig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODE: &str = "mb-bench-faults";

/// What to run.
pub struct FaultPlan {
    pub rate: u32,
    pub seconds: u64,
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
        let l = &self.load;
        l.failed_connects
            + l.failed_requests
            + l.bypassed
            + l.rr_failed
            + self.missed_client_sidecar
            == 0
    }
}

/// A list of fixed pods and watches that never send an event: all the agent needs here.
struct ApiStub {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl ApiStub {
    fn start(pods: Vec<serde_json::Value>) -> std::io::Result<ApiStub> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let body = serde_json::json!({"kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"}, "items": pods})
        .to_string();
        let flag = Arc::clone(&stop);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let (body, flag) = (body.clone(), Arc::clone(&flag));
                std::thread::spawn(move || serve_api(conn, &body, &flag));
            }
        });
        Ok(ApiStub { addr, stop })
    }
}

impl Drop for ApiStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_api(conn: TcpStream, list: &str, stop: &AtomicBool) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut conn = conn;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
        }
        if request.contains("watch=true") {
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                  Transfer-Encoding: chunked\r\n\r\n",
            );
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            return;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            list.len()
        );
        if conn.write_all(head.as_bytes()).is_err() || conn.write_all(list.as_bytes()).is_err() {
            return;
        }
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
                "keep",
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
        let base = node.gateway_v6().segments();
        let pid = std::process::id();
        spec.ipv6 = Some(std::net::Ipv6Addr::new(
            base[0],
            base[1],
            base[2],
            0,
            0x79,
            (pid >> 16) as u16,
            pid as u16,
            host,
        ));
        node.add_pod(spec)
    };
    let client = unique_pod("client", 2).map_err(e("client pod"))?;
    let server = unique_pod("server", 3).map_err(e("server pod"))?;
    let ghost = unique_pod("ghost", 4).map_err(e("third pod"))?;
    let sidecar = |pod: &Pod| {
        Sidecar::start_binary(
            &bins.sidecar,
            pod,
            SidecarConfig::for_mesh(&MeshPorts::istio()),
            1337,
        )
    };
    let client_sidecar = sidecar(&client).map_err(e("client sidecar"))?;
    let _server_sidecar = sidecar(&server).map_err(e("server sidecar"))?;
    let _app = start_app(&server, bins).map_err(e("server app"))?;
    let api = ApiStub::start(vec![
        api_pod(&client, "uid-client"),
        api_pod(&server, "uid-server"),
        api_pod(&ghost, "uid-ghost"),
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
    })
}
