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

use crate::node::{Pod, Spawned};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsFd, OwnedFd};
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
            expect_uid: None,
            no_ipv6: false,
            dns_port: None,
            dns_answer: Ipv4Addr::new(10, 96, 15, 53),
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
        a
    }
}

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Outbound,
    Inbound,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Listener::Outbound => "outbound",
            Listener::Inbound => "inbound",
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
    let config = Arc::new(config);
    let mut listeners = Vec::new();
    for (listener, port) in [
        (Listener::Outbound, config.outbound_port),
        (Listener::Inbound, config.inbound_port),
    ] {
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
    if let Some(port) = config.dns_port {
        // On loopback, as Istio's DNS proxy: a UDP socket bound to a wildcard would answer
        // from the pod IP, which conntrack cannot match to the redirected query.
        dns_sockets.push(bind_udp(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))?);
        if !config.no_ipv6 {
            dns_sockets.push(bind_udp(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port))?);
        }
    }
    let out = Arc::new(Mutex::new(io::stdout()));
    {
        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(
            o,
            "ready outbound={} inbound={} uid={} relay={:?}",
            config.outbound_port,
            config.inbound_port,
            nix::unistd::geteuid(),
            config.relay
        )?;
        o.flush()?;
    }
    let mut threads = Vec::new();
    for (kind, listener) in listeners {
        let config = Arc::clone(&config);
        let out = Arc::clone(&out);
        threads.push(std::thread::spawn(move || {
            accept_loop(kind, listener, config, out)
        }));
    }
    for socket in dns_sockets {
        let out = Arc::clone(&out);
        let answer = config.dns_answer;
        threads.push(std::thread::spawn(move || dns_loop(socket, answer, out)));
    }
    for t in threads {
        let _ = t.join();
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
fn dns_loop(socket: UdpSocket, answer: Ipv4Addr, out: Arc<Mutex<io::Stdout>>) {
    let local = socket.local_addr().ok();
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("mb-sidecar: dns recv: {e}");
                return;
            }
        };
        if let Some(reply) = crate::workload::dns_reply(&buf[..n], answer) {
            let _ = socket.send_to(&reply, from);
        }
        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
        let local = local.map_or("-".to_owned(), |a| a.to_string());
        let _ = writeln!(o, "dns peer={from} local={local}");
        let _ = o.flush();
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

fn accept_loop(
    kind: Listener,
    listener: TcpListener,
    config: Arc<SidecarConfig>,
    out: Arc<Mutex<io::Stdout>>,
) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                let config = Arc::clone(&config);
                let out = Arc::clone(&out);
                std::thread::spawn(move || {
                    let record = handle(kind, stream, peer, &config);
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = writeln!(o, "{record}");
                    let _ = o.flush();
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("mb-sidecar: accept on {kind}: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn handle(
    kind: Listener,
    downstream: TcpStream,
    peer: SocketAddr,
    config: &SidecarConfig,
) -> Record {
    let local = downstream.local_addr().unwrap_or(peer);
    let mut record = Record {
        listener: kind,
        peer,
        local,
        original_dst: None,
        upstream_local: None,
        bytes_up: 0,
        bytes_down: 0,
        error: None,
    };
    let fail = |mut record: Record, what: &str, e: &dyn fmt::Display| {
        record.error = Some(format!("{what}:{e}").replace(char::is_whitespace, "_"));
        record
    };
    let original = match mb_sys::sockopt::original_dst_for(downstream.as_fd(), &local) {
        Ok(a) => a,
        Err(e) => return fail(record, "no_original_dst", &e),
    };
    record.original_dst = Some(original);
    // A connection whose original destination is one of our own listeners would loop forever.
    if original.port() == config.outbound_port || original.port() == config.inbound_port {
        return fail(
            record,
            "loop",
            &format!("original_dst_{original}_is_a_sidecar_port"),
        );
    }
    let source = match (kind, original.ip()) {
        (Listener::Inbound, IpAddr::V4(_)) => {
            Some(SocketAddr::new(config.passthrough_v4.into(), 0))
        }
        (Listener::Inbound, IpAddr::V6(_)) => {
            Some(SocketAddr::new(config.passthrough_v6.into(), 0))
        }
        (Listener::Outbound, _) => None,
    };
    let upstream = match connect_from(source, original) {
        Ok(s) => s,
        Err(e) => return fail(record, "connect", &e),
    };
    record.upstream_local = upstream.local_addr().ok();
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match relay_both(downstream, upstream, config) {
        Ok((up, down)) => {
            record.bytes_up = up;
            record.bytes_down = down;
            record
        }
        Err((up, down, e)) => {
            record.bytes_up = up;
            record.bytes_down = down;
            fail(record, "relay", &e)
        }
    }
}

fn connect_from(source: Option<SocketAddr>, to: SocketAddr) -> io::Result<TcpStream> {
    match source {
        None => TcpStream::connect_timeout(&to, Duration::from_secs(10)),
        Some(source) => crate::workload::connect_from(source, to),
    }
}

type RelayResult = Result<(u64, u64), (u64, u64, io::Error)>;

/// Relays in both directions (one on this thread, one on a helper) until both have ended.
fn relay_both(downstream: TcpStream, upstream: TcpStream, config: &SidecarConfig) -> RelayResult {
    let (down_r, up_w) = match (downstream.try_clone(), upstream.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Err((0, 0, e)),
    };
    let mode = config.relay;
    let buffer = config.buffer;
    let up = std::thread::spawn(move || relay_one(down_r, up_w, mode, buffer));
    let down = relay_one(upstream, downstream, mode, buffer);
    let up = up
        .join()
        .unwrap_or_else(|_| (0, Some(io::Error::other("relay thread panicked"))));
    match (up, down) {
        ((u, None), (d, None)) => Ok((u, d)),
        ((u, Some(e)), (d, _)) | ((u, None), (d, Some(e))) => Err((u, d, e)),
    }
}

/// Copies `from` → `to` until EOF, then half-closes `to`. On an error both sockets are shut
/// down so the other direction ends too.
fn relay_one(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: RelayMode,
    buffer: usize,
) -> (u64, Option<io::Error>) {
    let result = match mode {
        RelayMode::ReadWrite => copy_read_write(&mut from, &mut to, buffer),
        RelayMode::Splice => copy_splice(&from, &to),
    };
    match result {
        Ok(n) => {
            let _ = to.shutdown(Shutdown::Write);
            (n, None)
        }
        Err((n, e)) => {
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            (n, Some(e))
        }
    }
}

fn copy_read_write(
    from: &mut TcpStream,
    to: &mut TcpStream,
    buffer: usize,
) -> Result<u64, (u64, io::Error)> {
    let mut buf = vec![0u8; buffer];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A socket in a sockhash can return EAGAIN from a *blocking* read when its wait
            // queue is woken without data (tcp_bpf_recvmsg, e.g. when the other relay thread
            // half-closes it). Envoy is event-driven and simply waits for readiness again;
            // so do we.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(from).map_err(|e| (total, e))?;
                continue;
            }
            Err(e) => return Err((total, e)),
        };
        if let Err(e) = to.write_all(&buf[..n]) {
            return Err((total, e));
        }
        total += n as u64;
    }
}

/// Blocks until `socket` is readable (data, EOF or error).
fn wait_readable(socket: &TcpStream) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn copy_splice(from: &TcpStream, to: &TcpStream) -> Result<u64, (u64, io::Error)> {
    use nix::fcntl::{splice, SpliceFFlags};
    let (pipe_r, pipe_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| (0, e.into()))?;
    let flags = SpliceFFlags::SPLICE_F_MOVE;
    let mut total = 0u64;
    loop {
        let n = match splice(from.as_fd(), None, pipe_w.as_fd(), None, 1 << 16, flags) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err((total, e.into())),
        };
        let mut left = n;
        while left > 0 {
            match splice(pipe_r.as_fd(), None, to.as_fd(), None, left, flags) {
                Ok(0) => {
                    return Err((
                        total,
                        io::Error::new(io::ErrorKind::WriteZero, "splice wrote 0"),
                    ))
                }
                Ok(m) => left -= m,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err((total, e.into())),
            }
        }
        total += n as u64;
    }
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
    // Declared last: killed after the reader has its Arc.
    _process: Spawned,
}

impl Sidecar {
    /// Starts `mb-sidecar` in `pod` as `uid` and waits (≤ 5 s) until it listens.
    pub fn start(pod: &Pod, config: SidecarConfig, uid: u32) -> io::Result<Sidecar> {
        Self::start_binary(&sidecar_binary()?, pod, config, uid)
    }

    /// Like [`Sidecar::start`] with an explicit binary path (tests pass
    /// `env!("CARGO_BIN_EXE_mb-sidecar")`).
    pub fn start_binary(
        binary: &std::path::Path,
        pod: &Pod,
        config: SidecarConfig,
        uid: u32,
    ) -> io::Result<Sidecar> {
        let mut cmd = Command::new(binary);
        cmd.args(config.to_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = pod.spawn(cmd, uid)?;
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("sidecar stdout not captured"))?;
        let seen: Arc<(Mutex<Seen>, Condvar)> = Arc::default();
        let reader_seen = Arc::clone(&seen);
        std::thread::spawn(move || {
            let (lock, cvar) = &*reader_seen;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
                if line.starts_with("ready ") {
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
        let sidecar = Sidecar {
            config,
            seen,
            _process: process,
        };
        sidecar.wait_until(Duration::from_secs(5), |s| s.ready || s.ended);
        let (ready, ended) = {
            let s = sidecar.seen.0.lock().unwrap_or_else(|p| p.into_inner());
            (s.ready, s.ended)
        };
        if !ready {
            return Err(io::Error::other(format!(
                "sidecar in pod {} did not become ready ({}); see its stderr above",
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
            ..SidecarConfig::for_mesh(&crate::MeshPorts::linkerd())
        };
        let parsed = Cli::try_parse_from(std::iter::once("x".to_owned()).chain(config.to_args()))
            .unwrap()
            .config;
        assert_eq!(parsed.to_args(), config.to_args());
        assert_eq!((parsed.outbound_port, parsed.inbound_port), (4140, 4143));
    }
}
