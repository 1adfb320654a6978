//! Shared by the `run_*` tests: the `merbridge run` process as a guard (killed on drop), its
//! HTTP endpoints, bounded waiting, and the node/pods/sidecar/API setups (`fixture`).
#![allow(dead_code)]

pub mod cli;
pub mod fixture;

use crate::k8s_support::kubeconfig_text;
use crate::k8s_support::server::FakeApiServer;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Polls `check` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    check: impl FnMut() -> bool,
) -> Result<Duration, String> {
    poll_until(timeout, what, check, || {
        std::thread::sleep(Duration::from_millis(5))
    })
}

/// Like [`wait_until`] but polls without sleeping (for latency measurements; each check
/// must be cheap, e.g. one map lookup).
pub fn spin_until(
    timeout: Duration,
    what: &str,
    check: impl FnMut() -> bool,
) -> Result<Duration, String> {
    poll_until(timeout, what, check, std::thread::yield_now)
}

/// Calls `check`, then `pause`, until `check` holds (how long that took) or `timeout` passes.
fn poll_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
    pause: impl Fn(),
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        if check() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!("timed out after {timeout:?} waiting for: {what}"));
        }
        pause();
    }
}

pub struct AgentOptions<'a> {
    pub api: &'a FakeApiServer,
    /// A scratch directory for the kubeconfig and the log.
    pub dir: &'a Path,
    pub node: &'a str,
    pub cgroup: &'a Path,
    pub pin_dir: &'a Path,
    pub extra: &'a [&'a str],
}

/// A running `merbridge run`; SIGKILLed on drop if still running.
pub struct Agent {
    child: Child,
    pub log_path: PathBuf,
    pub metrics: SocketAddr,
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

impl Agent {
    pub fn start(o: &AgentOptions<'_>) -> Agent {
        let kubeconfig = o.dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_text(&format!("http://{}", o.api.addr), None, None, None),
        )
        .unwrap();
        let metrics = free_port();
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log_path = o.dir.join(format!("agent-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_merbridge"))
            .arg("run")
            .args(["--mesh", "istio", "--node-name", o.node])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cgroup")
            .arg(o.cgroup)
            .arg("--pin-dir")
            .arg(o.pin_dir)
            .args(["--metrics-addr", &metrics.to_string()])
            .args(if o.extra.contains(&"--log-level") {
                &[][..]
            } else {
                &["--log-level", "debug"][..]
            })
            .args(o.extra)
            .env_remove("NODE_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("DAEMONSET_NAME")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn merbridge run");
        Agent {
            child,
            log_path,
            metrics,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET on the metrics address: (status code, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut conn = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(1)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(conn, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((code, body))
    }

    /// Waits for `/readyz` to say 200; panics with the log if the agent dies or times out.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("merbridge run exited ({status}):\n{}", self.log());
            }
            if self.get("/readyz").is_some_and(|(code, _)| code == 200) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "not ready after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "merbridge run did not exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident memory of the agent (kB), from /proc/<pid>/status.
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
