//! Workloads for pods: servers (echo, bulk-with-checksum, who-am-I, UDP DNS-like responder)
//! and clients (persistent-connection request/response with a latency histogram,
//! connect-request-close rate, bulk stream with checksum, DNS query).
//!
//! Usable in process (e.g. from [`crate::Pod::run_in_netns`]) and through the `mb-workload`
//! binary, whose clients print one `key=value` line that [`parse_kv`] reads back.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

static WAIT_ON_EAGAIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process's clients wait for readiness when a blocking read says EAGAIN before
/// its timeout, as event-driven applications (Go, Java NIO, Node, Envoy) do on their
/// non-blocking sockets. Needed only where an application's socket sits in a sockhash
/// (`merbridge load --splice all`, or a pod with `merbridge.io/splice-app`): the kernel's
/// `tcp_bpf_recvmsg` answers a blocking read with EAGAIN when woken without queued data —
/// e.g. by send-buffer space freed while waiting for the reply to a large upload. Off by
/// default, so tests see what a plain blocking application sees.
pub fn wait_on_eagain(on: bool) {
    WAIT_ON_EAGAIN.store(on, std::sync::atomic::Ordering::Relaxed);
}

static EVENT_DRIVEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process's clients and servers event-driven, as Go, Envoy or Node are: every TCP
/// socket is non-blocking from its creation (`SOCK_NONBLOCK` on `socket`, `accept4`), and
/// each `EAGAIN` is a wait for readiness (`poll`), for reads, writes, connects and accepts.
/// Servers keep one thread per connection; what matters to the kernel (and to merbridge's
/// per-process classifier) is that no socket ever blocks. Off by default.
pub fn event_driven(on: bool) {
    EVENT_DRIVEN.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// What a long-running event-driven application looks like before it gets to work: holds a
/// non-blocking listening socket on loopback (created `SOCK_NONBLOCK`) for `ms` milliseconds,
/// so that a per-process classifier (merbridge's agent) sees it event-driven before its first
/// measured connection. Returns the socket; keep it for the life of the process.
pub fn settle(ms: u64) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{listen, Backlog, SockFlag};
    let any: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
    let fd = tcp_socket_from(Some(any), any, SockFlag::SOCK_NONBLOCK)?;
    listen(&fd, Backlog::new(1).map_err(io::Error::from)?).map_err(io::Error::from)?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(fd)
}

fn is_event_driven() -> bool {
    EVENT_DRIVEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until `fd` is ready for `events`, or `deadline` (`None`: no bound) passed.
fn wait_ready(
    fd: std::os::fd::BorrowedFd<'_>,
    events: nix::poll::PollFlags,
    deadline: Option<Instant>,
    what: &str,
) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollTimeout};
    let ms = match deadline {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} timed out"),
                ));
            }
            PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32)
                .unwrap_or(PollTimeout::MAX)
        }
        None => PollTimeout::NONE,
    };
    let mut fds = [PollFd::new(fd, events)];
    match poll(&mut fds, ms) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `read`, retried after a readiness wait when EAGAIN came early (see [`wait_on_eagain`]),
/// or on a non-blocking socket (see [`event_driven`]).
fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    read_until(s, buf, Some(Instant::now() + IO_TIMEOUT))
}

fn read_until(s: &mut TcpStream, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<usize> {
    use nix::poll::PollFlags;
    use std::os::fd::AsFd;
    loop {
        match s.read(buf) {
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    && (is_event_driven()
                        || WAIT_ON_EAGAIN.load(std::sync::atomic::Ordering::Relaxed)) =>
            {
                wait_ready(s.as_fd(), PollFlags::POLLIN, deadline, "read")?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// `write_all` that waits for write space on EAGAIN (non-blocking sockets).
fn write_all(s: &mut TcpStream, mut buf: &[u8]) -> io::Result<()> {
    use nix::poll::PollFlags;
    use std::os::fd::AsFd;
    let deadline = Instant::now() + IO_TIMEOUT;
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_ready(s.as_fd(), PollFlags::POLLOUT, Some(deadline), "write")?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A non-blocking connect: `SOCK_NONBLOCK` from the start, `EINPROGRESS` waited out with
/// `poll`, the outcome read from `SO_ERROR`.
fn connect_non_blocking(addr: SocketAddr) -> io::Result<TcpStream> {
    use nix::errno::Errno;
    use nix::poll::PollFlags;
    use nix::sys::socket::{self, sockopt, SockFlag, SockaddrStorage};
    use std::os::fd::{AsFd, AsRawFd};
    let fd = tcp_socket_from(None, addr, SockFlag::SOCK_NONBLOCK)?;
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS) | Err(Errno::EINTR) => {
            let deadline = Instant::now() + IO_TIMEOUT;
            loop {
                wait_ready(fd.as_fd(), PollFlags::POLLOUT, Some(deadline), "connect")?;
                let err = socket::getsockopt(&fd, sockopt::SocketError)?;
                if err != 0 {
                    return Err(io::Error::from_raw_os_error(err));
                }
                // Writable and no error: connected (a spurious wake-up is not writable).
                if socket::getpeername::<SockaddrStorage>(fd.as_raw_fd()).is_ok() {
                    break;
                }
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(TcpStream::from(fd))
}

fn read_exact(s: &mut TcpStream, mut buf: &mut [u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match read_some(s, buf)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => buf = &mut buf[n..],
        }
    }
    Ok(())
}

fn read_to_string(s: &mut TcpStream, out: &mut String) -> io::Result<()> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match read_some(s, &mut buf)? {
            0 => break,
            n => bytes.extend_from_slice(&buf[..n]),
        }
    }
    out.push_str(
        std::str::from_utf8(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
    );
    Ok(())
}

/// Parses a `word key=value key=value …` line into its pairs (the leading word is returned
/// under the key `kind`).
pub fn parse_kv(line: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for (i, field) in line.split_whitespace().enumerate() {
        match field.split_once('=') {
            Some((k, v)) => {
                map.insert(k.to_owned(), v.to_owned());
            }
            None if i == 0 => {
                map.insert("kind".to_owned(), field.to_owned());
            }
            None => {}
        }
    }
    map
}

fn field<T: std::str::FromStr>(map: &BTreeMap<String, String>, key: &str) -> io::Result<T> {
    map.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("missing or bad {key}")))
}

/// The bulk stream's end-to-end checksum: a 64-bit multiply-xor hash over little-endian
/// 8-byte words, order sensitive, and independent of how the stream is cut into chunks
/// (a partial word waits for the next `update`). Fast enough (word at a time) not to be the
/// bottleneck of a bulk measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checksum {
    hash: u64,
    pending: [u8; 8],
    pending_len: usize,
    total: u64,
}

impl Checksum {
    fn mix(hash: u64, word: u64) -> u64 {
        let h = (hash ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 8 {
                return;
            }
            self.hash = Self::mix(self.hash, u64::from_le_bytes(self.pending));
            self.pending_len = 0;
        }
        let words = data.chunks_exact(8);
        let rest = words.remainder();
        let mut h = self.hash;
        for w in words {
            h = Self::mix(h, u64::from_le_bytes(w.try_into().expect("chunks of 8")));
        }
        self.hash = h;
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The checksum of everything so far (the partial last word and the length included).
    pub fn value(&self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
        let h = Self::mix(self.hash, u64::from_le_bytes(last));
        Self::mix(h, self.total)
    }
}

/// Period of [`bulk_pattern`]: prime, so it never lines up with buffer sizes.
const PATTERN_PERIOD: u64 = 251;

/// The bulk stream's byte at position `pos`.
pub fn bulk_byte(pos: u64) -> u8 {
    ((pos % PATTERN_PERIOD) as u8) ^ 0x5a
}

/// Fills `buf` with the bulk stream's bytes from `offset` on.
pub fn bulk_pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = bulk_byte(offset + i as u64);
    }
}

/// Binds a TCP listener on all addresses (IPv4 and IPv6) at `port`.
pub fn listen_any(port: u16) -> io::Result<TcpListener> {
    if is_event_driven() {
        return listen_non_blocking((Ipv6Addr::UNSPECIFIED, port).into())
            .or_else(|_| listen_non_blocking((Ipv4Addr::UNSPECIFIED, port).into()))
            .map_err(|e| io::Error::new(e.kind(), format!("listen on port {port}: {e}")));
    }
    TcpListener::bind(("::", port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .map_err(|e| io::Error::new(e.kind(), format!("listen on port {port}: {e}")))
}

/// A listening socket that is non-blocking from its creation (`SOCK_NONBLOCK`), as an
/// event-driven server opens it: never seen blocking, even for an instant.
fn listen_non_blocking(addr: SocketAddr) -> io::Result<TcpListener> {
    use nix::sys::socket::{listen, setsockopt, sockopt, Backlog, SockFlag};
    let fd = tcp_socket_from(None, addr, SockFlag::SOCK_NONBLOCK)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    {
        use nix::sys::socket::{bind, SockaddrStorage};
        use std::os::fd::AsRawFd;
        bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    }
    // The C library's SOMAXCONN (musl's is 128: nix refuses more there); the kernel caps it.
    listen(&fd, Backlog::MAXCONN)?;
    Ok(TcpListener::from(fd))
}

/// `accept4(SOCK_NONBLOCK)` in a readiness loop: the accepted socket is never blocking.
fn accept_non_blocking(listener: &TcpListener) -> io::Result<TcpStream> {
    use nix::poll::PollFlags;
    use std::os::fd::AsFd;
    loop {
        match mb_sys::sockopt::accept_non_blocking(listener.as_fd()) {
            Ok(fd) => return Ok(TcpStream::from(fd)),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::EINTR | libc::ECONNABORTED)
                ) =>
            {
                wait_ready(listener.as_fd(), PollFlags::POLLIN, None, "accept")?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn serve(listener: TcpListener, handler: fn(TcpStream) -> io::Result<()>) {
    if is_event_driven() {
        loop {
            match accept_non_blocking(&listener) {
                Ok(s) => {
                    std::thread::spawn(move || {
                        let _ = handler(s);
                    });
                }
                Err(e) => {
                    eprintln!("mb-workload: accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    for stream in listener.incoming() {
        match stream {
            Ok(s) => {
                std::thread::spawn(move || {
                    let _ = handler(s);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("mb-workload: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Echoes every byte back until the client closes its side, then closes.
pub fn serve_echo(listener: TcpListener) {
    serve(listener, echo_connection)
}

fn echo_connection(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read_until(&mut s, &mut buf, None)?;
        if n == 0 {
            return s.shutdown(std::net::Shutdown::Write);
        }
        write_all(&mut s, &buf[..n])?;
    }
}

/// Reads the whole stream, then answers `count=<bytes> checksum=<fnv1a>\n` and closes.
pub fn serve_bulk(listener: TcpListener) {
    serve(listener, bulk_connection)
}

fn bulk_connection(mut s: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut sum = Checksum::default();
    let mut count = 0u64;
    loop {
        let n = read_until(&mut s, &mut buf, None)?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        count += n as u64;
    }
    let reply = format!("bulk count={count} checksum={:016x}\n", sum.value());
    write_all(&mut s, reply.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)
}

/// Answers `whoami peer=<source seen> local=<destination seen>\n` and closes: lets a test see
/// the addresses the application side of a connection observed.
pub fn serve_whoami(listener: TcpListener) {
    serve(listener, whoami_connection)
}

fn whoami_connection(mut s: TcpStream) -> io::Result<()> {
    let peer = canonical(s.peer_addr()?);
    let local = canonical(s.local_addr()?);
    let reply = format!("whoami peer={peer} local={local}\n");
    write_all(&mut s, reply.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the client's close so the server is not the side left in TIME_WAIT.
    let mut sink = [0u8; 64];
    while read_until(&mut s, &mut sink, None)? > 0 {}
    Ok(())
}

/// `::ffff:a.b.c.d` (dual-stack sockets) shown as `a.b.c.d`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A DNS-like UDP responder: answers every query with the same id, the question echoed and
/// one A record `answer`. Good enough for DNS interception tests; not a resolver.
pub fn serve_dns(socket: UdpSocket, answer: Ipv4Addr) {
    answer_dns(socket, answer, "mb-workload", |_| {});
}

/// [`serve_dns`]'s loop, calling `on_query` with the sender of each datagram received (after
/// answering it, if it is a DNS question); `who` names the program in the message of a
/// receive error, which ends the loop.
pub fn answer_dns(
    socket: UdpSocket,
    answer: Ipv4Addr,
    who: &str,
    mut on_query: impl FnMut(SocketAddr),
) {
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("{who}: dns recv: {e}");
                return;
            }
        };
        if let Some(reply) = dns_reply(&buf[..n], answer) {
            let _ = socket.send_to(&reply, from);
        }
        on_query(from);
    }
}

/// DNS over TCP (RFC 1035 4.2.2: each message after a 2-byte length): answers every query
/// on every connection like [`serve_dns`].
pub fn serve_dns_tcp(listener: TcpListener, answer: Ipv4Addr) {
    for stream in listener.incoming() {
        let Ok(s) = stream else { continue };
        std::thread::spawn(move || {
            let _ = answer_dns_tcp(s, answer, |_| {});
        });
    }
}

/// Answers the DNS-over-TCP queries of one connection until it closes; `seen` is called
/// with the stream once per query.
pub fn answer_dns_tcp(
    mut s: TcpStream,
    answer: Ipv4Addr,
    mut seen: impl FnMut(&TcpStream),
) -> io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match s.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut query)?;
        seen(&s);
        if let Some(reply) = dns_reply(&query, answer) {
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            s.write_all(&framed)?;
        }
    }
}

/// One DNS query over TCP to `server`: the A record of the answer.
pub fn dns_query_tcp(server: SocketAddr, name: &str) -> io::Result<Ipv4Addr> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let id = (std::process::id() as u16) ^ 0x7a7a;
    let query = dns_query_packet(id, name)?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut reply)?;
    let n = reply.len();
    if n < query.len() + 16 || reply[0..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("DNS-over-TCP answer from {server} does not match query {id}"),
        ));
    }
    Ok(Ipv4Addr::new(
        reply[n - 4],
        reply[n - 3],
        reply[n - 2],
        reply[n - 1],
    ))
}

/// A minimal query: id, RD flag, one question `name` IN A.
pub fn dns_query_packet(id: u16, name: &str) -> io::Result<Vec<u8>> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad DNS name {name:?}: labels must be 1-63 bytes"),
            ));
        }
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    Ok(p)
}

/// The answer [`serve_dns`] gives to `query` (`None` if it is not a DNS question).
pub fn dns_reply(query: &[u8], answer: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 17 {
        return None;
    }
    // End of the question: the name's labels, then type and class.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + usize::from(query[i]);
    }
    let question_end = i + 5;
    let question = query.get(12..question_end)?;
    let mut r = Vec::with_capacity(question_end + 16);
    r.extend_from_slice(&query[0..2]);
    r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    r.extend_from_slice(question);
    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
    r.extend_from_slice(&answer.octets());
    Some(r)
}

/// Sends one query to `server` and returns the A record of the answer and the address the
/// answer came from.
pub fn dns_query(server: SocketAddr, name: &str) -> io::Result<(Ipv4Addr, SocketAddr)> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(bind)?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let id = (std::process::id() as u16) ^ 0x5a5a;
    let query = dns_query_packet(id, name)?;
    let mut buf = [0u8; 512];
    // UDP: ask up to three times, as resolvers do.
    let mut attempt = 0;
    let (n, from) = loop {
        attempt += 1;
        socket.send_to(&query, server)?;
        match socket.recv_from(&mut buf) {
            Ok(got) => break got,
            Err(e)
                if attempt < 3
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("no DNS answer from {server} after {attempt} tries: {e}"),
                ))
            }
        }
    };
    let reply = &buf[..n];
    if n < query.len() + 16 || reply[0..2] != id.to_be_bytes() || reply[2] & 0x80 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("DNS answer from {from} does not match query {id}"),
        ));
    }
    let a = &reply[n - 4..n];
    Ok((Ipv4Addr::new(a[0], a[1], a[2], a[3]), canonical(from)))
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    if is_event_driven() {
        let s = connect_non_blocking(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("connect to {addr}: {e}")))?;
        s.set_nodelay(true)?;
        return Ok(s);
    }
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| io::Error::new(e.kind(), format!("connect to {addr}: {e}")))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Connects from `source` (bound first) to `to`.
pub fn connect_from(source: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{self, SockFlag, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let fd = tcp_socket_from(Some(source), to, SockFlag::empty())?;
    socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to))
        .map_err(|e| io::Error::other(format!("connect {to} from {source}: {e}")))?;
    Ok(TcpStream::from(fd))
}

/// A close-on-exec TCP socket of `to`'s family (plus `flags`), bound to `source` if given.
pub(crate) fn tcp_socket_from(
    source: Option<SocketAddr>,
    to: SocketAddr,
    flags: nix::sys::socket::SockFlag,
) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | flags,
        None,
    )?;
    if let Some(source) = source {
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(source))
            .map_err(|e| io::Error::other(format!("bind {source}: {e}")))?;
    }
    Ok(fd)
}

/// Latency summary of many request/response exchanges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyStats {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
}

impl LatencyStats {
    /// Summarises `samples` (nanoseconds; sorted in place).
    pub fn from_samples(samples: &mut [u64]) -> LatencyStats {
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: f64| -> u64 {
            if n == 0 {
                0
            } else {
                samples[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]
            }
        };
        let sum: u128 = samples.iter().map(|&s| u128::from(s)).sum();
        LatencyStats {
            count: n as u64,
            p50_ns: at(0.50),
            p90_ns: at(0.90),
            p99_ns: at(0.99),
            max_ns: samples.last().copied().unwrap_or(0),
            mean_ns: if n == 0 { 0 } else { (sum / n as u128) as u64 },
        }
    }

    /// Reads back a line printed by `Display` (`rr count=… p50_ns=…`).
    pub fn parse(line: &str) -> io::Result<LatencyStats> {
        let m = parse_kv(line);
        Ok(LatencyStats {
            count: field(&m, "count")?,
            p50_ns: field(&m, "p50_ns")?,
            p90_ns: field(&m, "p90_ns")?,
            p99_ns: field(&m, "p99_ns")?,
            max_ns: field(&m, "max_ns")?,
            mean_ns: field(&m, "mean_ns")?,
        })
    }
}

impl fmt::Display for LatencyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rr count={} p50_ns={} p90_ns={} p99_ns={} max_ns={} mean_ns={}",
            self.count, self.p50_ns, self.p90_ns, self.p99_ns, self.max_ns, self.mean_ns
        )
    }
}

/// Persistent-connection ping-pong against an echo server: `warmup` unmeasured exchanges,
/// then `count` measured ones of `size` bytes each way.
pub fn rr_client(
    addr: SocketAddr,
    size: usize,
    count: u64,
    warmup: u64,
) -> io::Result<LatencyStats> {
    let mut samples = rr_samples(addr, size, count, warmup)?;
    Ok(LatencyStats::from_samples(&mut samples))
}

/// Like [`rr_client`], returning every measured round trip in nanoseconds (in order), e.g.
/// for [`histogram`].
pub fn rr_samples(addr: SocketAddr, size: usize, count: u64, warmup: u64) -> io::Result<Vec<u64>> {
    let mut s = connect(addr)?;
    let mut echo = Echo::new(size);
    let mut samples = Vec::with_capacity(count as usize);
    for i in 0..warmup + count {
        let ns = echo.round_trip(&mut s)?;
        if i >= warmup {
            samples.push(ns);
        }
    }
    echo.verify()?;
    Ok(samples)
}

/// One connection's echo exchange: a request of `size` bytes and the buffer for its answer.
struct Echo {
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Echo {
    fn new(size: usize) -> Echo {
        let request = vec![0xa5u8; size.max(1)];
        let response = vec![0u8; request.len()];
        Echo { request, response }
    }

    /// Sends the request and reads the answer: the round trip in nanoseconds.
    fn round_trip(&mut self, s: &mut TcpStream) -> io::Result<u64> {
        let start = Instant::now();
        write_all(s, &self.request)?;
        read_exact(s, &mut self.response)?;
        Ok(start.elapsed().as_nanos() as u64)
    }

    /// The last answer was the request echoed.
    fn verify(&self) -> io::Result<()> {
        if self.response != self.request {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "echo returned other bytes",
            ));
        }
        Ok(())
    }
}

/// Round trips measured over `connections` persistent connections at once (the
/// concurrency of an RR benchmark).
#[derive(Debug, Clone)]
pub struct ParallelRr {
    /// Every measured round trip in nanoseconds, all connections together.
    pub samples: Vec<u64>,
    /// Wall time of the measured phase (all connections connected and warmed up first).
    pub elapsed_ns: u64,
}

/// [`rr_samples`] on `connections` connections in parallel (one thread each): `count`
/// measured exchanges in total (split evenly, at least one per connection), each
/// connection first doing `warmup` unmeasured ones. The measured phase starts for all
/// connections together, so `samples.len() / elapsed` is the request rate.
pub fn rr_parallel(
    addr: SocketAddr,
    size: usize,
    count: u64,
    warmup: u64,
    connections: usize,
) -> io::Result<ParallelRr> {
    let connections = connections.max(1);
    let per_connection = (count / connections as u64).max(1);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(connections + 1));
    let mut threads = Vec::with_capacity(connections);
    for _ in 0..connections {
        let barrier = std::sync::Arc::clone(&barrier);
        threads.push(std::thread::spawn(move || -> io::Result<Vec<u64>> {
            let connected = connect(addr);
            let result = connected.and_then(|mut s| {
                let mut echo = Echo::new(size);
                for _ in 0..warmup {
                    echo.round_trip(&mut s)?;
                }
                Ok((s, echo))
            });
            // Every thread reaches the barrier, also after an error, so none waits forever.
            barrier.wait();
            let (mut s, mut echo) = result?;
            let mut samples = Vec::with_capacity(per_connection as usize);
            for _ in 0..per_connection {
                samples.push(echo.round_trip(&mut s)?);
            }
            echo.verify()?;
            Ok(samples)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut samples = Vec::with_capacity((per_connection as usize) * connections);
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(s)) => samples.extend(s),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(io::Error::other("an RR client thread panicked"));
            }
        }
    }
    let elapsed_ns = start.elapsed().as_nanos() as u64;
    match first_error {
        Some(e) => Err(e),
        None => Ok(ParallelRr {
            samples,
            elapsed_ns,
        }),
    }
}

/// Latency histogram with 1-2-5 buckets per decade from 1 µs to 5 s: `(upper bound ns,
/// count)` for every non-empty bucket; samples above 5 s land in a last `u64::MAX` bucket.
pub fn histogram(samples: &[u64]) -> Vec<(u64, u64)> {
    let mut bounds = Vec::new();
    let mut decade = 1_000u64;
    while decade <= 1_000_000_000 {
        bounds.extend([decade, 2 * decade, 5 * decade]);
        decade *= 10;
    }
    bounds.push(u64::MAX);
    let mut counts = vec![0u64; bounds.len()];
    for &s in samples {
        let i = bounds.partition_point(|&b| b < s);
        counts[i] += 1;
    }
    bounds
        .into_iter()
        .zip(counts)
        .filter(|&(_, c)| c > 0)
        .collect()
}

/// Connect-request-close rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrrStats {
    pub connections: u64,
    pub elapsed_ns: u64,
    pub latency: LatencyStats,
}

impl CrrStats {
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / (self.elapsed_ns.max(1) as f64 / 1e9)
    }

    pub fn parse(line: &str) -> io::Result<CrrStats> {
        let m = parse_kv(line);
        Ok(CrrStats {
            connections: field(&m, "connections")?,
            elapsed_ns: field(&m, "elapsed_ns")?,
            latency: LatencyStats::parse(line)?,
        })
    }
}

impl fmt::Display for CrrStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency;
        write!(
            f,
            "crr connections={} elapsed_ns={} per_sec={:.0} count={} p50_ns={} p90_ns={} p99_ns={} max_ns={} mean_ns={}",
            self.connections, self.elapsed_ns, self.per_second(), l.count, l.p50_ns, l.p90_ns,
            l.p99_ns, l.max_ns, l.mean_ns
        )
    }
}

/// `count` times: connect, send `size` bytes, read them back, close.
pub fn crr_client(addr: SocketAddr, size: usize, count: u64) -> io::Result<CrrStats> {
    let request = vec![0x5au8; size.max(1)];
    let mut response = vec![0u8; request.len()];
    let mut samples = Vec::with_capacity(count as usize);
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        let mut s = connect(addr)?;
        write_all(&mut s, &request)?;
        read_exact(&mut s, &mut response)?;
        drop(s);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    Ok(CrrStats {
        connections: count,
        elapsed_ns: start.elapsed().as_nanos() as u64,
        latency: LatencyStats::from_samples(&mut samples),
    })
}

/// Result of a bulk transfer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BulkStats {
    pub bytes: u64,
    pub elapsed_ns: u64,
    pub checksum: u64,
}

impl BulkStats {
    pub fn mbit_per_second(&self) -> f64 {
        self.bytes as f64 * 8.0 / (self.elapsed_ns.max(1) as f64 / 1e9) / 1e6
    }

    pub fn parse(line: &str) -> io::Result<BulkStats> {
        let m = parse_kv(line);
        let checksum: String = field(&m, "checksum")?;
        Ok(BulkStats {
            bytes: field(&m, "bytes")?,
            elapsed_ns: field(&m, "elapsed_ns")?,
            checksum: u64::from_str_radix(&checksum, 16).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("checksum: {e}"))
            })?,
        })
    }
}

impl fmt::Display for BulkStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bulk bytes={} elapsed_ns={} mbit_per_sec={:.0} checksum={:016x}",
            self.bytes,
            self.elapsed_ns,
            self.mbit_per_second(),
            self.checksum
        )
    }
}

/// Streams `bytes` bytes of [`bulk_pattern`], half-closes, and checks the server's count and
/// checksum against what was sent. A mismatch is an `InvalidData` error naming both.
pub fn bulk_client(addr: SocketAddr, bytes: u64) -> io::Result<BulkStats> {
    let mut s = connect(addr)?;
    const CHUNK: usize = 256 * 1024;
    // One pattern buffer, one period longer than a chunk: any offset's bytes are a slice.
    let mut pattern = vec![0u8; CHUNK + PATTERN_PERIOD as usize];
    bulk_pattern(0, &mut pattern);
    let mut sum = Checksum::default();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = ((bytes - sent) as usize).min(CHUNK);
        let from = (sent % PATTERN_PERIOD) as usize;
        let chunk = &pattern[from..from + n];
        sum.update(chunk);
        write_all(&mut s, chunk)?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    read_to_string(&mut s, &mut reply)?;
    let elapsed_ns = start.elapsed().as_nanos() as u64;
    let m = parse_kv(reply.trim());
    let count: u64 = field(&m, "count")?;
    let theirs: String = field(&m, "checksum")?;
    let ours = format!("{:016x}", sum.value());
    if count != bytes || theirs != ours {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bulk mismatch: sent {bytes} bytes checksum {ours}, server got {count} checksum {theirs}"),
        ));
    }
    Ok(BulkStats {
        bytes,
        elapsed_ns,
        checksum: sum.value(),
    })
}

/// Connects, writes `data` and closes without reading: the socket is orphaned while its
/// FIN may still be unacknowledged. Returns the local address it used.
pub fn send_and_close(addr: SocketAddr, data: &[u8]) -> io::Result<SocketAddr> {
    let mut s = connect(addr)?;
    write_all(&mut s, data)?;
    s.local_addr()
}

/// What a who-am-I server saw: (source, destination) of the connection.
pub fn whoami(addr: SocketAddr) -> io::Result<(SocketAddr, SocketAddr)> {
    whoami_from(addr, None)
}

/// [`whoami`] from a chosen source address (e.g. the sidecar's passthrough `127.0.0.6`).
pub fn whoami_from(
    addr: SocketAddr,
    from: Option<std::net::IpAddr>,
) -> io::Result<(SocketAddr, SocketAddr)> {
    let mut s = match from {
        None => connect(addr)?,
        Some(ip) => connect_from(SocketAddr::new(ip, 0), addr)?,
    };
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let m = parse_kv(reply.trim());
    Ok((field(&m, "peer")?, field(&m, "local")?))
}

/// What a connection storm saw: see [`storm_client`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StormStats {
    pub connects: usize,
    /// A who-am-I answer from the intended server (its `local=` is the target).
    pub answered: usize,
    /// An answer from anywhere else: a wrong destination.
    pub wrong: usize,
    /// Closed without an answer (e.g. the sidecar found no original destination).
    pub closed: usize,
    /// Refused, reset or timed out (connect or read).
    pub errors: usize,
}

impl fmt::Display for StormStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "storm connects={} answered={} wrong={} closed={} errors={}",
            self.connects, self.answered, self.wrong, self.closed, self.errors
        )
    }
}

impl StormStats {
    pub fn parse(line: &str) -> io::Result<StormStats> {
        let kv = parse_kv(line);
        let get = |k: &str| -> io::Result<usize> {
            kv.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| io::Error::other(format!("storm line lacks {k}: {line}")))
        };
        Ok(StormStats {
            connects: get("connects")?,
            answered: get("answered")?,
            wrong: get("wrong")?,
            closed: get("closed")?,
            errors: get("errors")?,
        })
    }
}

/// `count` non-blocking connects to a who-am-I server issued back to back (so that many are
/// in flight at once), then each answer read within `timeout` overall and classified.
pub fn storm_client(to: SocketAddr, count: usize, timeout: Duration) -> io::Result<StormStats> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;
    let family = if to.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let target = SockaddrStorage::from(to);
    let mut stats = StormStats {
        connects: count,
        ..StormStats::default()
    };
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let fd = socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        match connect(fd.as_raw_fd(), &target) {
            Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => streams.push(TcpStream::from(fd)),
            Err(_) => stats.errors += 1,
        }
    }
    let deadline = std::time::Instant::now() + timeout;
    for mut stream in streams {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut answer = String::new();
        match BufReader::new(&mut stream).read_line(&mut answer) {
            Ok(0) => stats.closed += 1,
            Ok(_) => {
                let kv = parse_kv(answer.trim());
                let local = kv.get("local").and_then(|l| l.parse::<SocketAddr>().ok());
                if local.map(canonical) == Some(canonical(to)) {
                    stats.answered += 1;
                } else {
                    stats.wrong += 1;
                }
            }
            Err(_) => stats.errors += 1,
        }
    }
    Ok(stats)
}

/// What a steady load saw: see [`steady_load`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// New connections tried (each: connect, read the who-am-I answer, close).
    pub connects: u64,
    pub failed_connects: u64,
    /// Connected, but no answer or an answer from the wrong server.
    pub failed_requests: u64,
    /// Answered by the right server, but it saw a peer other than the expected one (its
    /// sidecar's): the connection went around a sidecar.
    pub bypassed: u64,
    /// Round trips on the long-lived connections, and those that failed (then reconnected).
    pub rr_requests: u64,
    pub rr_failed: u64,
    /// Milliseconds since the start of every failure (at most 1,000 kept), for windows.
    pub failures_ms: Vec<u64>,
}

impl fmt::Display for LoadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.failures_ms.iter().map(u64::to_string).collect();
        write!(
            f,
            "load connects={} failed_connects={} failed_requests={} bypassed={} rr_requests={} \
             rr_failed={} failures_ms={}",
            self.connects,
            self.failed_connects,
            self.failed_requests,
            self.bypassed,
            self.rr_requests,
            self.rr_failed,
            if list.is_empty() {
                "-".to_owned()
            } else {
                list.join(",")
            }
        )
    }
}

impl LoadStats {
    pub fn parse(line: &str) -> io::Result<LoadStats> {
        let kv = parse_kv(line);
        let get = |k: &str| -> io::Result<u64> {
            kv.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| io::Error::other(format!("load line lacks {k}: {line}")))
        };
        let failures_ms = match kv.get("failures_ms").map(String::as_str) {
            None | Some("-") => Vec::new(),
            Some(list) => list.split(',').filter_map(|v| v.parse().ok()).collect(),
        };
        Ok(LoadStats {
            connects: get("connects")?,
            failed_connects: get("failed_connects")?,
            failed_requests: get("failed_requests")?,
            bypassed: get("bypassed")?,
            rr_requests: get("rr_requests")?,
            rr_failed: get("rr_failed")?,
            failures_ms,
        })
    }
}

/// For `duration`: `rate` new connections per second to the who-am-I server `whoami` (each
/// answer checked to come from it), and `rr_connections` long-lived echo connections to
/// `echo` doing 64-byte round trips back to back. Every failure is counted and timed; with
/// `expect_peer`, an answer whose server saw another peer address counts as bypassed.
pub fn steady_load(
    whoami: SocketAddr,
    echo: SocketAddr,
    expect_peer: Option<std::net::IpAddr>,
    rate: u32,
    rr_connections: usize,
    duration: Duration,
) -> LoadStats {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    const TIMEOUT: Duration = Duration::from_secs(2);
    let started = Instant::now();
    let stats = Arc::new(Mutex::new(LoadStats::default()));
    fn failed(stats: &Mutex<LoadStats>, started: Instant, field: fn(&mut LoadStats) -> &mut u64) {
        let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
        *field(&mut s) += 1;
        if s.failures_ms.len() < 1000 {
            s.failures_ms.push(started.elapsed().as_millis() as u64);
        }
    }
    let rr_threads: Vec<_> = (0..rr_connections)
        .map(|_| {
            let stats = Arc::clone(&stats);
            std::thread::spawn(move || {
                let mut conn: Option<TcpStream> = None;
                let mut buf = [0u8; 64];
                let (mut done, mut bad) = (0u64, 0u64);
                while started.elapsed() < duration {
                    let ok = (|| -> io::Result<()> {
                        if conn.is_none() {
                            let c = TcpStream::connect_timeout(&echo, TIMEOUT)?;
                            c.set_read_timeout(Some(TIMEOUT))?;
                            c.set_nodelay(true)?;
                            conn = Some(c);
                        }
                        let c = conn.as_mut().expect("connected above");
                        c.write_all(&[7u8; 64])?;
                        c.read_exact(&mut buf)?;
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => done += 1,
                        Err(_) => {
                            bad += 1;
                            conn = None;
                            failed(&stats, started, |s| &mut s.rr_failed);
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
                s.rr_requests += done + bad;
            })
        })
        .collect();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut next = Instant::now();
    let mut connects = 0;
    while started.elapsed() < duration {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += interval;
        connects += 1;
        let stream = match TcpStream::connect_timeout(&whoami, TIMEOUT) {
            Ok(s) => s,
            Err(_) => {
                failed(&stats, started, |s| &mut s.failed_connects);
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(TIMEOUT));
        let mut answer = String::new();
        let read = BufReader::new(&stream).read_line(&mut answer).is_ok();
        let kv = parse_kv(answer.trim());
        let addr = |k: &str| {
            kv.get(k)
                .and_then(|l| l.parse::<SocketAddr>().ok())
                .map(canonical)
        };
        if !read || addr("local") != Some(canonical(whoami)) {
            failed(&stats, started, |s| &mut s.failed_requests);
        } else if expect_peer.is_some_and(|p| addr("peer").map(|a| a.ip()) != Some(p)) {
            failed(&stats, started, |s| &mut s.bypassed);
        }
    }
    for t in rr_threads {
        let _ = t.join();
    }
    let mut s = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
    s.connects = connects;
    s.failures_ms.sort_unstable();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_lines_round_trip() {
        let mut samples = vec![5, 1, 4, 2, 3, 100, 7, 8, 9, 6];
        let s = LatencyStats::from_samples(&mut samples);
        assert_eq!(
            (s.count, s.p50_ns, s.p90_ns, s.max_ns, s.mean_ns),
            (10, 5, 9, 100, 14)
        );
        assert_eq!(LatencyStats::parse(&s.to_string()).unwrap(), s);
        let c = CrrStats {
            connections: 3,
            elapsed_ns: 1000,
            latency: s,
        };
        assert_eq!(CrrStats::parse(&c.to_string()).unwrap(), c);
        let b = BulkStats {
            bytes: 10,
            elapsed_ns: 5,
            checksum: 0xdead_beef,
        };
        assert_eq!(BulkStats::parse(&b.to_string()).unwrap(), b);
        assert!(LatencyStats::parse("rr count=x").is_err());
    }

    #[test]
    fn dns_reply_echoes_id_and_question_and_answers() {
        let q = dns_query_packet(0x1234, "svc.cluster.local").unwrap();
        let r = dns_reply(&q, Ipv4Addr::new(10, 0, 0, 53)).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(&r[12..q.len()], &q[12..]);
        assert_eq!(&r[r.len() - 4..], &[10, 0, 0, 53]);
        assert!(dns_reply(&q[..10], Ipv4Addr::LOCALHOST).is_none());
        assert!(dns_query_packet(1, "a..b").is_err());
    }

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let h = histogram(&[500, 1_000, 1_001, 15_000, 20_000_000_000]);
        assert_eq!(h, vec![(1_000, 2), (2_000, 1), (20_000, 1), (u64::MAX, 1)]);
        assert!(histogram(&[]).is_empty());
    }

    #[test]
    fn checksum_sees_order_and_length_but_not_chunking() {
        let checksum = |parts: &[&[u8]]| {
            let mut c = Checksum::default();
            for p in parts {
                c.update(p);
            }
            c.value()
        };
        assert_ne!(checksum(&[b"ab"]), checksum(&[b"ba"]));
        assert_ne!(
            checksum(&[b"abcdefgh12345678"]),
            checksum(&[b"12345678abcdefgh"])
        );
        assert_ne!(checksum(&[b"a"]), checksum(&[b"a\0"]));
        let data: Vec<u8> = (0..1000u32).map(|i| bulk_byte(u64::from(i))).collect();
        let whole = checksum(&[&data]);
        for cut in [1, 3, 7, 8, 9, 500, 999] {
            let (x, y) = data.split_at(cut);
            let (y1, y2) = y.split_at(y.len() / 2);
            assert_eq!(checksum(&[x, y1, y2]), whole, "cut at {cut}");
        }
        let mut pattern = vec![0u8; 300];
        bulk_pattern(700, &mut pattern);
        assert_eq!(&pattern[..], &data[700..1000]);
    }

    #[test]
    fn loopback_echo_bulk_whoami_and_dns_work() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = echo.local_addr().unwrap();
        std::thread::spawn(move || serve_echo(echo));
        let bulk = TcpListener::bind("127.0.0.1:0").unwrap();
        let bulk_addr = bulk.local_addr().unwrap();
        std::thread::spawn(move || serve_bulk(bulk));
        let who = TcpListener::bind("127.0.0.1:0").unwrap();
        let who_addr = who.local_addr().unwrap();
        std::thread::spawn(move || serve_whoami(who));
        let dns = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dns_addr = dns.local_addr().unwrap();
        std::thread::spawn(move || serve_dns(dns, Ipv4Addr::new(1, 2, 3, 4)));

        let rr = rr_client(echo_addr, 64, 200, 10).unwrap();
        assert_eq!(rr.count, 200);
        assert!(rr.p50_ns > 0 && rr.p50_ns <= rr.p99_ns && rr.p99_ns <= rr.max_ns);
        let par = rr_parallel(echo_addr, 64, 80, 5, 8).unwrap();
        assert_eq!(par.samples.len(), 80);
        assert!(par.elapsed_ns > 0 && par.samples.iter().all(|&ns| ns > 0));
        let crr = crr_client(echo_addr, 64, 20).unwrap();
        assert_eq!(crr.connections, 20);
        let b = bulk_client(bulk_addr, 3 * 1024 * 1024 + 17).unwrap();
        assert_eq!(b.bytes, 3 * 1024 * 1024 + 17);
        let (peer, local) = whoami(who_addr).unwrap();
        assert_eq!(local, who_addr);
        assert_eq!(peer.ip(), who_addr.ip());
        let (a, from) = dns_query(dns_addr, "x.y").unwrap();
        assert_eq!(a, Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!(from, dns_addr);
    }
}
