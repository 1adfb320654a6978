//! The reference sidecar: what Envoy does for interception, and nothing else.
//!
//! It listens on the outbound and inbound ports on all addresses (IPv4 and IPv6), asks every
//! accepted connection for its original destination (`SO_ORIGINAL_DST` /
//! `IP6T_SO_ORIGINAL_DST` — answered by conntrack under iptables, by merbridge's
//! `cgroup/getsockopt` program under eBPF), connects there — for inbound from `127.0.0.6` /
//! `::6` as Envoy's passthrough cluster does — and relays both ways until both sides have
//! closed (a half-close is passed on with `shutdown(SHUT_WR)`).
//!
//! Output on stdout, one line each: `ready …` once all listeners are bound, then one
//! [`Record`] line per finished connection. [`Sidecar`] starts the binary in a pod and
//! collects those lines.

mod event_loop;
pub mod haproxy;

use crate::node::{Pod, Spawned};
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How bytes are moved between the two sockets of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayMode {
    /// `read`/`write` through a 64 KiB buffer per direction (default: sees every byte even when
    /// a socket sits in a sockmap).
    ReadWrite,
    /// `splice` through a pipe (zero copy; bypasses a sockmap's receive path — see DESIGN.md).
    Splice,
}

/// Which proxy plays the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SidecarKind {
    /// `mb-sidecar`, this project's reference sidecar.
    #[default]
    Reference,
    /// Debian's HAProxy with a generated configuration (see [`haproxy`]).
    Haproxy,
}

impl SidecarKind {
    pub const ALL: [SidecarKind; 2] = [SidecarKind::Reference, SidecarKind::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            SidecarKind::Reference => "reference",
            SidecarKind::Haproxy => "haproxy",
        }
    }
}

impl fmt::Display for SidecarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sidecar settings. The defaults are Istio's; see [`SidecarConfig::for_mesh`].
#[derive(Debug, Clone, clap::Args)]
pub struct SidecarConfig {
    /// Port of the outbound listener (Istio/Kuma/OSM 15001, Linkerd 4140).
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// Port of the inbound listener (Istio/Kuma 15006, OSM 15003, Linkerd 4143).
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// Source address of inbound passthrough connections to the local app (IPv4).
    #[arg(long, default_value = "127.0.0.6")]
    pub passthrough_v4: Ipv4Addr,
    /// Source address of inbound passthrough connections to the local app (IPv6).
    #[arg(long, default_value = "::6")]
    pub passthrough_v6: Ipv6Addr,
    /// How to relay bytes.
    #[arg(long, value_enum, default_value_t = RelayMode::ReadWrite)]
    pub relay: RelayMode,
    /// Relay buffer size per direction (read-write mode) in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub buffer: usize,
    /// Worker threads, each an event loop serving many connections (Envoy's `--concurrency`;
    /// Istio's sidecars run 2).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Refuse to start unless running as this UID (the UID the interception exempts).
    #[arg(long)]
    pub expect_uid: Option<u32>,
    /// Do not listen on IPv6.
    #[arg(long)]
    pub no_ipv6: bool,
    /// UDP port of the DNS proxy on 127.0.0.1 and ::1 (Istio/Kuma 15053); none by default.
    #[arg(long)]
    pub dns_port: Option<u16>,
    /// The A record the DNS proxy answers every query with.
    #[arg(long, default_value = "10.96.15.53")]
    pub dns_answer: Ipv4Addr,
    /// An explicit-proxy listener, `PORT=DESTINATION` (repeatable): what it accepts goes to
    /// DESTINATION, known from configuration — no interception, no original-destination
    /// lookup, as when applications dial their sidecar directly.
    #[arg(long = "forward", value_name = "PORT=ADDR")]
    pub forward: Vec<Forward>,
    /// Which proxy [`Sidecar::start_binary`] starts (not a flag of `mb-sidecar` itself).
    #[arg(skip)]
    pub kind: SidecarKind,
}

/// One explicit-proxy listener: connections to `port` are relayed to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub port: u16,
    pub to: SocketAddr,
}

impl std::str::FromStr for Forward {
    type Err = String;

    fn from_str(text: &str) -> Result<Forward, String> {
        let (port, to) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: want PORT=ADDRESS:PORT, e.g. 15080=10.0.0.2:8080"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{text:?}: {port:?} is not a port (1-65535)"))?;
        let to = to
            .parse()
            .map_err(|_| format!("{text:?}: {to:?} is not an address:port"))?;
        Ok(Forward { port, to })
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.port, self.to)
    }
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            outbound_port: 15001,
            inbound_port: 15006,
            passthrough_v4: Ipv4Addr::new(127, 0, 0, 6),
            passthrough_v6: Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6),
            relay: RelayMode::ReadWrite,
            buffer: 64 * 1024,
            workers: 2,
            expect_uid: None,
            no_ipv6: false,
            dns_port: None,
            dns_answer: Ipv4Addr::new(10, 96, 15, 53),
            forward: Vec::new(),
            kind: SidecarKind::Reference,
        }
    }
}

impl SidecarConfig {
    /// Settings matching a mesh's ports (see [`crate::interception::MeshPorts`]).
    pub fn for_mesh(ports: &crate::interception::MeshPorts) -> SidecarConfig {
        SidecarConfig {
            outbound_port: ports.outbound_port,
            inbound_port: ports.inbound_port,
            expect_uid: Some(ports.proxy_uid),
            dns_port: ports.dns_port,
            ..SidecarConfig::default()
        }
    }

    /// The command-line flags that give the binary these settings.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--outbound-port={}", self.outbound_port),
            format!("--inbound-port={}", self.inbound_port),
            format!("--passthrough-v4={}", self.passthrough_v4),
            format!("--passthrough-v6={}", self.passthrough_v6),
            format!(
                "--relay={}",
                match self.relay {
                    RelayMode::ReadWrite => "read-write",
                    RelayMode::Splice => "splice",
                }
            ),
            format!("--buffer={}", self.buffer),
            format!("--workers={}", self.workers),
        ];
        if let Some(uid) = self.expect_uid {
            a.push(format!("--expect-uid={uid}"));
        }
        if self.no_ipv6 {
            a.push("--no-ipv6".to_owned());
        }
        if let Some(port) = self.dns_port {
            a.push(format!("--dns-port={port}"));
        }
        a.push(format!("--dns-answer={}", self.dns_answer));
        a.extend(self.forward.iter().map(|f| format!("--forward={f}")));
        a
    }
}

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Outbound,
    Inbound,
    /// An explicit-proxy listener (`--forward`): its destination comes from configuration.
    Forward,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Listener::Outbound => "outbound",
            Listener::Inbound => "inbound",
            Listener::Forward => "forward",
        })
    }
}

/// What the sidecar saw of one connection (printed when it ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub listener: Listener,
    /// Source of the accepted connection.
    pub peer: SocketAddr,
    /// Local address of the accepted connection (the listener after the redirect).
    pub local: SocketAddr,
    /// The original destination the kernel reported (`None` if it reported none).
    pub original_dst: Option<SocketAddr>,
    /// Local address of the upstream connection the sidecar made.
    pub upstream_local: Option<SocketAddr>,
    /// Bytes from the downstream client to the upstream server.
    pub bytes_up: u64,
    /// Bytes from the upstream server back to the client.
    pub bytes_down: u64,
    /// Why the connection failed, if it did (no spaces).
    pub error: Option<String>,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |a: Option<SocketAddr>| a.map_or("-".to_owned(), |a| a.to_string());
        write!(
            f,
            "conn listener={} peer={} local={} orig={} upstream_local={} bytes_up={} bytes_down={} error={}",
            self.listener,
            self.peer,
            self.local,
            opt(self.original_dst),
            opt(self.upstream_local),
            self.bytes_up,
            self.bytes_down,
            self.error.as_deref().unwrap_or("-")
        )
    }
}

impl Record {
    /// Parses a line printed by `Display`; `None` for other lines.
    pub fn parse(line: &str) -> Option<Record> {
        let m = crate::workload::parse_kv(line);
        if m.get("kind").map(String::as_str) != Some("conn") {
            return None;
        }
        let addr = |k: &str| -> Option<Option<SocketAddr>> {
            match m.get(k)?.as_str() {
                "-" => Some(None),
                v => v.parse().ok().map(Some),
            }
        };
        Some(Record {
            listener: match m.get("listener")?.as_str() {
                "outbound" => Listener::Outbound,
                "inbound" => Listener::Inbound,
                "forward" => Listener::Forward,
                _ => return None,
            },
            peer: addr("peer")??,
            local: addr("local")??,
            original_dst: addr("orig")?,
            upstream_local: addr("upstream_local")?,
            bytes_up: m.get("bytes_up")?.parse().ok()?,
            bytes_down: m.get("bytes_down")?.parse().ok()?,
            error: match m.get("error")?.as_str() {
                "-" => None,
                e => Some(e.to_owned()),
            },
        })
    }
}

/// Runs the sidecar until the process is killed. Errors only at start (bad UID, ports taken).
pub fn run(config: SidecarConfig) -> io::Result<()> {
    if let Some(want) = config.expect_uid {
        let uid = nix::unistd::geteuid().as_raw();
        if uid != want {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("running as UID {uid}, expected {want}: interception exempts only the proxy UID, so start the sidecar as that user"),
            ));
        }
    }
    if config.buffer == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--buffer must be at least 1",
        ));
    }
    if config.workers == 0 || config.workers > 256 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--workers must be 1 to 256, not {}", config.workers),
        ));
    }
    let mut listeners = Vec::new();
    let forwards = config.forward.iter().map(|f| (Listener::Forward, f.port));
    for (listener, port) in [
        (Listener::Outbound, config.outbound_port),
        (Listener::Inbound, config.inbound_port),
    ]
    .into_iter()
    .chain(forwards)
    {
        listeners.push((
            listener,
            bind_listener(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?,
        ));
        if !config.no_ipv6 {
            listeners.push((
                listener,
                bind_listener(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))?,
            ));
        }
    }
    let mut dns_sockets = Vec::new();
    let mut dns_tcp_listeners = Vec::new();
    if let Some(port) = config.dns_port {
        // On loopback, as Istio's DNS proxy: a UDP socket bound to a wildcard would answer
        // from the pod IP, which conntrack cannot match to the redirected query. DNS over
        // TCP on the same port.
        dns_sockets.push(bind_udp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))?);
        dns_tcp_listeners.push(bind_listener(SocketAddr::new(
            Ipv4Addr::LOCALHOST.into(),
            port,
        ))?);
        if !config.no_ipv6 {
            dns_sockets.push(bind_udp(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port))?);
            dns_tcp_listeners.push(bind_listener(SocketAddr::new(
                Ipv6Addr::LOCALHOST.into(),
                port,
            ))?);
        }
    }
    for (_, listener) in &listeners {
        listener.set_nonblocking(true)?;
    }
    let shared = Arc::new(event_loop::Shared {
        config,
        listeners,
        out: Mutex::new(io::stdout()),
    });
    let config = &shared.config;
    {
        let mut o = shared.out.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(
            o,
            "ready outbound={} inbound={} uid={} relay={:?} workers={}",
            config.outbound_port,
            config.inbound_port,
            nix::unistd::geteuid(),
            config.relay,
            config.workers
        )?;
        o.flush()?;
    }
    let mut workers = Vec::new();
    for _ in 0..config.workers {
        let shared = Arc::clone(&shared);
        workers.push(std::thread::spawn(move || event_loop::worker(shared)));
    }
    for socket in dns_sockets {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || dns_loop(socket, shared));
    }
    for listener in dns_tcp_listeners {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || dns_tcp_loop(listener, shared));
    }
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io::Error::other(format!("worker failed: {e}"))),
            Err(_) => return Err(io::Error::other("worker panicked")),
        }
    }
    Ok(())
}

/// A UDP socket on `addr`; IPv6 ones are v6-only so the IPv4 one can share the port.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
    .map_err(|e| io::Error::other(format!("bind UDP {addr}: {e}")))?;
    Ok(UdpSocket::from(fd))
}

/// The DNS proxy: answers every query itself (like Istio's DNS proxy for names it knows) and
/// prints `dns peer=<client> local=<socket address>` per query.
fn dns_loop(socket: UdpSocket, shared: Arc<event_loop::Shared>) {
    let out = &shared.out;
    let local = socket.local_addr().ok();
    let local = local.map_or("-".to_owned(), |a| a.to_string());
    crate::workload::answer_dns(socket, shared.config.dns_answer, "mb-sidecar", |from| {
        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(o, "dns peer={from} local={local}");
        let _ = o.flush();
    });
}

/// The DNS proxy over TCP: answers like [`dns_loop`] and prints the same line per query.
fn dns_tcp_loop(listener: TcpListener, shared: Arc<event_loop::Shared>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            let answer = shared.config.dns_answer;
            let _ = crate::workload::answer_dns_tcp(stream, answer, |s| {
                let peer = s.peer_addr().map_or("-".to_owned(), |a| a.to_string());
                let local = s.local_addr().map_or("-".to_owned(), |a| a.to_string());
                let mut o = shared.out.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(o, "dns peer={peer} local={local}");
                let _ = o.flush();
            });
        });
    }
}

/// A listener on `addr`; IPv6 ones are v6-only so the IPv4 one can share the port.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
    .map_err(|e| io::Error::other(format!("bind {addr}: {e} (port taken? another sidecar?)")))?;
    socket::listen(
        &fd,
        socket::Backlog::new(1024).unwrap_or(socket::Backlog::MAXCONN),
    )?;
    Ok(TcpListener::from(fd))
}

/// Where the `mb-sidecar` binary is: `$MB_SIDECAR_BIN`, else next to the running executable
/// (or one directory up, where Cargo puts binaries relative to test executables).
pub fn sidecar_binary() -> io::Result<PathBuf> {
    crate::find_binary("mb-sidecar", "MB_SIDECAR_BIN")
}

#[derive(Debug, Default)]
struct Seen {
    records: Vec<Record>,
    /// Sources of DNS queries the sidecar's DNS proxy answered.
    dns_peers: Vec<SocketAddr>,
    ready: bool,
    ended: bool,
}

/// A running sidecar in a pod and what it has reported so far.
#[derive(Debug)]
pub struct Sidecar {
    config: SidecarConfig,
    seen: Arc<(Mutex<Seen>, Condvar)>,
    // Killed after the reader has its Arc...
    _process: Spawned,
    // ...and its configuration removed once it is gone.
    _config_dir: Option<haproxy::ConfigDir>,
}

impl Sidecar {
    /// Starts `mb-sidecar` in `pod` as `uid` and waits (≤ 5 s) until it listens.
    pub fn start(pod: &Pod, config: SidecarConfig, uid: u32) -> io::Result<Sidecar> {
        Self::start_binary(&sidecar_binary()?, pod, config, uid)
    }

    /// [`Sidecar::start_binary`] with Istio's ports, as Istio's proxy user.
    pub fn start_istio(binary: &std::path::Path, pod: &Pod) -> io::Result<Sidecar> {
        let istio = crate::MeshPorts::istio();
        Self::start_binary(
            binary,
            pod,
            SidecarConfig::for_mesh(&istio),
            istio.proxy_uid,
        )
    }

    /// Like [`Sidecar::start`] with an explicit binary path (tests pass
    /// `env!("CARGO_BIN_EXE_mb-sidecar")`); with [`SidecarKind::Haproxy`] in `config`,
    /// starts HAProxy instead and `binary` is not used.
    pub fn start_binary(
        binary: &std::path::Path,
        pod: &Pod,
        config: SidecarConfig,
        uid: u32,
    ) -> io::Result<Sidecar> {
        let (cmd, config_dir) = match config.kind {
            SidecarKind::Reference => {
                let mut cmd = Command::new(crate::stage::runnable_by_anyone(binary)?);
                cmd.args(config.to_args());
                (cmd, None)
            }
            SidecarKind::Haproxy => {
                let binary = haproxy::haproxy_binary()?;
                let dir = haproxy::ConfigDir::create(uid)?;
                let text = haproxy::config_text(&config, &dir.stats_socket()).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("HAProxy sidecar: {e}"))
                })?;
                dir.write_config(&text)?;
                let mut cmd = Command::new(binary);
                // -db: foreground, no master process; -f: only our file, never /etc/haproxy.
                cmd.arg("-db").arg("-f").arg(dir.config_path());
                (cmd, Some(dir))
            }
        };
        Self::start_command(cmd, config_dir, pod, config, uid)
    }

    fn start_command(
        mut cmd: Command,
        config_dir: Option<haproxy::ConfigDir>,
        pod: &Pod,
        config: SidecarConfig,
        uid: u32,
    ) -> io::Result<Sidecar> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut process = pod.spawn(cmd, uid)?;
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("sidecar stdout not captured"))?;
        if config.kind == SidecarKind::Haproxy {
            // HAProxy drops log lines it cannot write at once: give the pipe room (1 MiB,
            // the default pipe-max-size) for bursts the reader has not caught up with.
            nix::fcntl::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&stdout),
                nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20),
            )
            .map_err(|e| io::Error::other(format!("enlarge HAProxy's log pipe to 1 MiB: {e}")))?;
        }
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let reader_seen = Arc::clone(&seen);
        let reader_config = config.clone();
        std::thread::spawn(move || {
            let (lock, cvar) = &*reader_seen;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
                if reader_config.kind == SidecarKind::Haproxy {
                    match haproxy::parse_log_line(&line, &reader_config) {
                        Some(r) => s.records.push(r),
                        // Never silently: a connection whose line we cannot read is missing.
                        None => eprintln!("haproxy sidecar: unreadable line: {line}"),
                    }
                } else if line.starts_with("ready ") {
                    s.ready = true;
                } else if let Some(r) = Record::parse(&line) {
                    s.records.push(r);
                } else if let Some(peer) = line
                    .strip_prefix("dns peer=")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|p| p.parse().ok())
                {
                    s.dns_peers.push(peer);
                }
                cvar.notify_all();
            }
            lock.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
            cvar.notify_all();
        });
        let pid = process.pid();
        let sidecar = Sidecar {
            config,
            seen,
            _process: process,
            _config_dir: config_dir,
        };
        if sidecar.config.kind == SidecarKind::Haproxy {
            // HAProxy prints nothing when ready: watch its netns for the listeners.
            let mut ports = vec![sidecar.config.outbound_port, sidecar.config.inbound_port];
            ports.extend(sidecar.config.forward.iter().map(|f| f.port));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && !sidecar
                    .seen
                    .0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ended
            {
                if haproxy::listening(pid, &ports) {
                    sidecar
                        .seen
                        .0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .ready = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            sidecar.wait_until(Duration::from_secs(5), |s| s.ready || s.ended);
        }
        let (ready, ended) = {
            let s = sidecar.seen.0.lock().unwrap_or_else(|p| p.into_inner());
            (s.ready, s.ended)
        };
        if !ready {
            return Err(io::Error::other(format!(
                "{} sidecar in pod {} did not become ready ({}); see its stderr above",
                sidecar.config.kind,
                pod.name(),
                if ended {
                    "it exited"
                } else {
                    "timed out after 5 s"
                }
            )));
        }
        Ok(sidecar)
    }

    pub fn config(&self) -> &SidecarConfig {
        &self.config
    }

    /// The sidecar process's PID (e.g. to stop it for a while).
    pub fn pid(&self) -> u32 {
        self._process.pid()
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&Seen) -> bool) -> bool {
        let (lock, cvar) = &*self.seen;
        let deadline = Instant::now() + timeout;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !done(&s) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = cvar
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// For HAProxy, its own account of dropped log lines and open connections (to explain
    /// missing records); `None` for the reference sidecar, whose records are never dropped.
    pub fn runtime_state(&self) -> Option<String> {
        let dir = self._config_dir.as_ref()?;
        Some(
            haproxy::runtime_state(&dir.stats_socket())
                .unwrap_or_else(|e| format!("HAProxy runtime API unreadable: {e}")),
        )
    }

    /// For HAProxy, the sessions its inbound frontend accepted (its own counter, which holds
    /// even when a log line, and so a record, went missing); `None` for the reference sidecar.
    pub fn inbound_sessions(&self) -> Option<std::io::Result<u64>> {
        self.frontend_sessions(Listener::Inbound)
    }

    /// For HAProxy, the sessions the frontend of `listener` (outbound or inbound) accepted so
    /// far; `None` for the reference sidecar and for listeners HAProxy has no frontend for.
    pub fn frontend_sessions(&self, listener: Listener) -> Option<std::io::Result<u64>> {
        let dir = self._config_dir.as_ref()?;
        let frontend = match listener {
            Listener::Outbound => "outbound",
            Listener::Inbound => "inbound",
            _ => return None,
        };
        Some(haproxy::frontend_sessions(&dir.stats_socket(), frontend))
    }

    /// Sources of the DNS queries the DNS proxy answered so far.
    pub fn dns_peers(&self) -> Vec<SocketAddr> {
        self.seen
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dns_peers
            .clone()
    }

    /// Waits (≤ `timeout`) until the DNS proxy has answered at least `n` queries; returns
    /// their sources either way.
    pub fn wait_for_dns_peers(&self, n: usize, timeout: Duration) -> Vec<SocketAddr> {
        self.wait_until(timeout, |s| s.dns_peers.len() >= n || s.ended);
        self.dns_peers()
    }

    /// Records of finished connections so far.
    pub fn records(&self) -> Vec<Record> {
        self.seen
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .records
            .clone()
    }

    /// Waits (≤ `timeout`) until at least `n` connections have been recorded; returns all
    /// records either way.
    pub fn wait_for_records(&self, n: usize, timeout: Duration) -> Vec<Record> {
        self.wait_until(timeout, |s| s.records.len() >= n || s.ended);
        self.records()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_lines_round_trip() {
        let r = Record {
            listener: Listener::Inbound,
            peer: "10.1.0.2:40000".parse().unwrap(),
            local: "10.1.0.3:15006".parse().unwrap(),
            original_dst: Some("[fd00:10:1::3]:9080".parse().unwrap()),
            upstream_local: Some("[::6]:41234".parse().unwrap()),
            bytes_up: 7,
            bytes_down: 4,
            error: None,
        };
        assert_eq!(Record::parse(&r.to_string()), Some(r.clone()));
        let failed = Record {
            original_dst: None,
            upstream_local: None,
            error: Some("connect:refused".into()),
            ..r
        };
        assert_eq!(Record::parse(&failed.to_string()), Some(failed));
        assert_eq!(Record::parse("ready outbound=15001"), None);
        assert_eq!(Record::parse("conn listener=sideways"), None);
    }

    #[test]
    fn config_round_trips_through_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: SidecarConfig,
        }
        let config = SidecarConfig {
            relay: RelayMode::Splice,
            expect_uid: Some(2102),
            no_ipv6: true,
            forward: vec!["18080=10.1.0.3:8080".parse().unwrap()],
            ..SidecarConfig::for_mesh(&crate::MeshPorts::linkerd())
        };
        let parsed = Cli::try_parse_from(std::iter::once("x".to_owned()).chain(config.to_args()))
            .unwrap()
            .config;
        assert_eq!(parsed.to_args(), config.to_args());
        assert_eq!((parsed.outbound_port, parsed.inbound_port), (4140, 4143));
        assert_eq!(parsed.forward, config.forward);
    }

    #[test]
    fn forward_needs_a_port_and_an_address() {
        let f: Forward = "15080=[fd00::3]:8080".parse().unwrap();
        assert_eq!((f.port, f.to), (15080, "[fd00::3]:8080".parse().unwrap()));
        assert!("15080"
            .parse::<Forward>()
            .unwrap_err()
            .contains("PORT=ADDRESS:PORT"));
        assert!("0=10.0.0.1:80"
            .parse::<Forward>()
            .unwrap_err()
            .contains("not a port"));
        assert!("80=10.0.0.1"
            .parse::<Forward>()
            .unwrap_err()
            .contains("address:port"));
    }
}
