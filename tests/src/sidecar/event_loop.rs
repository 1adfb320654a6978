//! The sidecar's workers: one epoll loop per worker thread, every connection a small state
//! machine — no thread per connection, as in Envoy.
//!
//! Each worker watches every listener (`EPOLLEXCLUSIVE`, so one worker wakes per new
//! connection) and the sockets of the connections it accepted. Level-triggered: a socket is
//! registered only while the relay wants something from it (readable while its direction's
//! buffer is empty, writable while the other direction has bytes for it, writable while the
//! upstream connect is in progress), so an idle, half-closed or finished socket never wakes
//! the loop.

use super::{Listener, Record, RelayMode, SidecarConfig};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an upstream connect may take before the connection is failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads per direction per wake-up before the loop serves other connections.
const READS_PER_WAKE: usize = 16;
const READABLE: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLHUP)
    .union(EpollFlags::EPOLLERR);
const WRITABLE: EpollFlags = EpollFlags::EPOLLOUT
    .union(EpollFlags::EPOLLHUP)
    .union(EpollFlags::EPOLLERR);
/// Record lines are written at most once per this interval...
const LOG_FLUSH_AFTER: Duration = Duration::from_millis(20);
/// ...unless this many bytes of them are waiting.
const LOG_FLUSH_BYTES: usize = 16 * 1024;
/// Tokens at or above this are listeners; below, `slot << 32 | generation << 1 | side`.
const LISTENER_TOKEN: u64 = u64::MAX - 1024;

pub(super) struct Shared {
    pub config: SidecarConfig,
    pub listeners: Vec<(Listener, TcpListener)>,
    pub out: Mutex<io::Stdout>,
}

/// Runs one worker until the process ends. Returns only on a failure of epoll itself.
pub(super) fn worker(shared: Arc<Shared>) -> io::Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, (_, listener)) in shared.listeners.iter().enumerate() {
        epoll.add(
            listener,
            EpollEvent::new(
                EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE,
                LISTENER_TOKEN + i as u64,
            ),
        )?;
    }
    let mut w = Worker {
        shared: &shared,
        epoll,
        conns: Vec::new(),
        free: Vec::new(),
        buffers: Vec::new(),
        connecting: 0,
        log: String::new(),
        last_flush: None,
    };
    let mut events = vec![EpollEvent::empty(); 256];
    loop {
        let timeout = match (w.log.is_empty(), w.last_flush, w.connecting > 0) {
            (false, Some(last), _) => EpollTimeout::from(
                LOG_FLUSH_AFTER
                    .saturating_sub(last.elapsed())
                    .as_millis()
                    .clamp(1, 1000) as u16,
            ),
            (_, _, true) => EpollTimeout::from(1000u16),
            _ => EpollTimeout::NONE,
        };
        let n = match w.epoll.wait(&mut events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..n] {
            let token = ev.data();
            if token >= LISTENER_TOKEN {
                w.accept_one((token - LISTENER_TOKEN) as usize);
            } else {
                w.on_event(token, ev.events());
            }
        }
        if w.connecting > 0 {
            w.expire_connects();
        }
        w.flush_log();
    }
}

/// One direction of a connection: bytes read from one socket, not yet written to the other.
#[derive(Default)]
struct Direction {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Splice mode: the pipe the bytes wait in, and how many.
    pipe: Option<(OwnedFd, OwnedFd)>,
    in_pipe: usize,
    /// The source said EOF.
    eof: bool,
    /// The destination was half-closed after the EOF was passed on.
    shut: bool,
    bytes: u64,
}

impl Direction {
    fn pending(&self) -> usize {
        self.end - self.start + self.in_pipe
    }
    fn wants_read(&self) -> bool {
        !self.eof && self.pending() == 0
    }
}

struct Conn {
    record: Record,
    /// `[downstream, upstream]`.
    sockets: [TcpStream; 2],
    /// Interest registered with epoll per socket (empty = not registered).
    registered: [EpollFlags; 2],
    /// Deadline of the upstream connect while it is in progress.
    connect_deadline: Option<Instant>,
    /// `[downstream → upstream, upstream → downstream]`.
    dirs: [Direction; 2],
}

struct Worker<'a> {
    shared: &'a Shared,
    epoll: Epoll,
    conns: Vec<(u32, Option<Conn>)>,
    free: Vec<usize>,
    buffers: Vec<Vec<u8>>,
    connecting: usize,
    /// Record lines not yet written, and when lines were last written: at most one write
    /// per [`LOG_FLUSH_AFTER`] (a lone record goes out at once, a burst in batches, like
    /// Envoy's access log), not a pipe write and a reader wake-up per connection.
    log: String,
    last_flush: Option<Instant>,
}

enum Step {
    Continue,
    Done,
    Failed(String, io::Error),
}

impl Worker<'_> {
    fn config(&self) -> &SidecarConfig {
        &self.shared.config
    }

    fn accept_one(&mut self, index: usize) {
        let Some((kind, listener)) = self.shared.listeners.get(index) else {
            return;
        };
        let kind = *kind;
        // One per wake-up: the listener is level-triggered, so more waiting connections
        // wake the loop again, and a lone one costs no extra accept that says EAGAIN.
        loop {
            match listener.accept() {
                Ok((stream, peer)) => return self.start(kind, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Aborted before accept, or out of fds: report; when out of resources pause
                // briefly, so a level-triggered listener that cannot be served does not spin.
                Err(e) => {
                    eprintln!("mb-sidecar: accept on {kind}: {e}");
                    let exhausted = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
                    if e.raw_os_error().is_some_and(|n| exhausted.contains(&n)) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    return;
                }
            }
        }
    }

    /// Asks the kernel for the original destination and starts the upstream connect.
    fn start(&mut self, kind: Listener, downstream: TcpStream, peer: SocketAddr) {
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
        let upstream = match self.open_upstream(kind, &downstream, &local, &mut record) {
            Ok(s) => s,
            Err((what, e)) => {
                record.error = Some(error_text(&what, &e));
                let _ = downstream.shutdown(Shutdown::Both);
                self.emit(&record);
                return;
            }
        };
        let _ = downstream.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push((0, None));
                self.conns.len() - 1
            }
        };
        let generation = self.conns[slot].0.wrapping_add(1) & 0x7fff_ffff;
        self.conns[slot] = (
            generation,
            Some(Conn {
                record,
                sockets: [downstream, upstream],
                registered: [EpollFlags::empty(); 2],
                connect_deadline: Some(Instant::now() + CONNECT_TIMEOUT),
                dirs: Default::default(),
            }),
        );
        self.connecting += 1;
        self.drive(slot, [EpollFlags::empty(); 2]);
    }

    fn open_upstream(
        &self,
        kind: Listener,
        downstream: &TcpStream,
        local: &SocketAddr,
        record: &mut Record,
    ) -> Result<TcpStream, (String, io::Error)> {
        let config = self.config();
        if kind == Listener::Forward {
            // Explicit proxy: the destination is configuration, the kernel is not asked.
            let to = config
                .forward
                .iter()
                .find(|f| f.port == local.port())
                .map(|f| f.to)
                .ok_or_else(|| {
                    let e = io::Error::other(format!("no_forward_for_port_{}", local.port()));
                    ("forward".to_owned(), e)
                })?;
            downstream
                .set_nonblocking(true)
                .map_err(|e| ("nonblocking".to_owned(), e))?;
            return connect_nonblocking(None, to).map_err(|e| ("connect".to_owned(), e));
        }
        let original = mb_sys::sockopt::original_dst_for(downstream.as_fd(), local)
            .map_err(|e| ("no_original_dst".to_owned(), e))?;
        record.original_dst = Some(original);
        // A connection whose original destination is one of our own listeners would loop.
        if original.port() == config.outbound_port || original.port() == config.inbound_port {
            return Err((
                "loop".to_owned(),
                io::Error::other(format!("original_dst_{original}_is_a_sidecar_port")),
            ));
        }
        downstream
            .set_nonblocking(true)
            .map_err(|e| ("nonblocking".to_owned(), e))?;
        // Inbound goes to the app from the passthrough address, as Envoy's passthrough cluster.
        let source = match (kind, original.ip()) {
            (Listener::Inbound, IpAddr::V4(_)) => {
                Some(SocketAddr::new(config.passthrough_v4.into(), 0))
            }
            (Listener::Inbound, IpAddr::V6(_)) => {
                Some(SocketAddr::new(config.passthrough_v6.into(), 0))
            }
            (Listener::Outbound | Listener::Forward, _) => None,
        };
        connect_nonblocking(source, original).map_err(|e| ("connect".to_owned(), e))
    }

    fn on_event(&mut self, token: u64, events: EpollFlags) {
        let slot = (token >> 32) as usize;
        let generation = ((token >> 1) & 0x7fff_ffff) as u32;
        let side = (token & 1) as usize;
        // A stale event of a connection that ended earlier in this batch.
        match self.conns.get(slot) {
            Some((g, Some(_))) if *g == generation => {}
            _ => return,
        }
        let mut seen = [EpollFlags::empty(); 2];
        seen[side] = events;
        self.drive(slot, seen);
    }

    fn expire_connects(&mut self) {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(slot, (_, c))| {
                let deadline = c.as_ref()?.connect_deadline?;
                (deadline <= now).then_some(slot)
            })
            .collect();
        for slot in expired {
            let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out after 10 s");
            self.finish(slot, Some(("connect".to_owned(), e)));
        }
    }

    /// Moves the connection as far as its sockets allow, then re-registers interest.
    fn drive(&mut self, slot: usize, seen: [EpollFlags; 2]) {
        let mode = self.config().relay;
        let buffer_size = self.config().buffer;
        let conn = self.conns[slot].1.as_mut().expect("live connection");
        let was_connecting = conn.connect_deadline.is_some();
        let step = step(conn, seen, mode, buffer_size, &mut self.buffers);
        if was_connecting && conn.connect_deadline.is_none() {
            conn.record.upstream_local = conn.sockets[1].local_addr().ok();
            self.connecting -= 1;
        }
        match step {
            Step::Continue => {
                if let Err(e) = self.register(slot) {
                    self.finish(slot, Some(("epoll".to_owned(), e)));
                }
            }
            Step::Done => self.finish(slot, None),
            Step::Failed(what, e) => self.finish(slot, Some((what, e))),
        }
    }

    fn register(&mut self, slot: usize) -> io::Result<()> {
        let (generation, conn) = &mut self.conns[slot];
        let generation = *generation;
        let conn = conn.as_mut().expect("live connection");
        let mut want = [EpollFlags::empty(); 2];
        if conn.connect_deadline.is_some() {
            want[1] = EpollFlags::EPOLLOUT;
        } else {
            for (d, dir) in conn.dirs.iter().enumerate() {
                let (from, to) = (d, 1 - d);
                if dir.wants_read() {
                    want[from] |= EpollFlags::EPOLLIN;
                }
                if dir.pending() > 0 {
                    want[to] |= EpollFlags::EPOLLOUT;
                }
            }
        }
        for (side, &new) in want.iter().enumerate() {
            let old = conn.registered[side];
            if old == new {
                continue;
            }
            let token = (slot as u64) << 32 | u64::from(generation) << 1 | side as u64;
            let socket = conn.sockets[side].as_fd();
            if new.is_empty() {
                self.epoll.delete(socket)?;
            } else if old.is_empty() {
                self.epoll.add(socket, EpollEvent::new(new, token))?;
            } else {
                self.epoll
                    .modify(socket, &mut EpollEvent::new(new, token))?;
            }
            conn.registered[side] = new;
        }
        Ok(())
    }

    /// Ends a connection: closes both sockets (dropping them leaves epoll too), prints its
    /// record.
    fn finish(&mut self, slot: usize, error: Option<(String, io::Error)>) {
        let Some(mut conn) = self.conns[slot].1.take() else {
            return;
        };
        if conn.connect_deadline.is_some() {
            self.connecting -= 1;
        }
        conn.record.bytes_up = conn.dirs[0].bytes;
        conn.record.bytes_down = conn.dirs[1].bytes;
        if let Some((what, e)) = error {
            conn.record.error = Some(error_text(&what, &e));
            // Both peers learn at once; nothing is left half-open.
            for s in &conn.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        for dir in &mut conn.dirs {
            let buf = std::mem::take(&mut dir.buf);
            if buf.capacity() > 0 && self.buffers.len() < 64 {
                self.buffers.push(buf);
            }
        }
        self.free.push(slot);
        self.emit(&conn.record);
    }

    fn emit(&mut self, record: &Record) {
        use std::fmt::Write as _;
        let _ = writeln!(self.log, "{record}");
        self.flush_log();
    }

    fn flush_log(&mut self) {
        let due = self
            .last_flush
            .is_none_or(|last| last.elapsed() >= LOG_FLUSH_AFTER);
        if !self.log.is_empty() && (due || self.log.len() >= LOG_FLUSH_BYTES) {
            let mut o = self.shared.out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = o.write_all(self.log.as_bytes());
            let _ = o.flush();
            self.log.clear();
            self.last_flush = Some(Instant::now());
        }
    }
}

/// One step of the state machine for one connection.
fn step(
    conn: &mut Conn,
    seen: [EpollFlags; 2],
    mode: RelayMode,
    buffer_size: usize,
    buffers: &mut Vec<Vec<u8>>,
) -> Step {
    let mut just_connected = false;
    if conn.connect_deadline.is_some() {
        if !seen[1].intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            return Step::Continue;
        }
        use nix::sys::socket::{getsockopt, sockopt::SocketError};
        match getsockopt(&conn.sockets[1], SocketError) {
            Ok(0) => {
                conn.connect_deadline = None;
                just_connected = true;
            }
            Ok(errno) => {
                return Step::Failed("connect".to_owned(), io::Error::from_raw_os_error(errno))
            }
            Err(e) => return Step::Failed("connect".to_owned(), e.into()),
        }
    }
    for (side, events) in seen.iter().enumerate() {
        // An error with nothing to read or write would otherwise go unnoticed.
        if events.contains(EpollFlags::EPOLLERR) {
            use nix::sys::socket::{getsockopt, sockopt::SocketError};
            if let Ok(errno) = getsockopt(&conn.sockets[side], SocketError) {
                if errno != 0 {
                    return Step::Failed("relay".to_owned(), io::Error::from_raw_os_error(errno));
                }
            }
        }
    }
    for d in 0..2 {
        let (src, dst) = if d == 0 {
            let [a, b] = &conn.sockets;
            (a, b)
        } else {
            let [a, b] = &conn.sockets;
            (b, a)
        };
        let dir = &mut conn.dirs[d];
        // Only what epoll reported is tried (a read or write that can only say EAGAIN is a
        // wasted syscall per wake-up): bytes stuck for a full destination move when it is
        // writable, and then the source may have more; a source is read when readable, or
        // when the downstream sent bytes while the upstream connect was in progress.
        let (from, to) = (d, 1 - d);
        let blocked = dir.pending() > 0;
        if blocked && !seen[to].intersects(WRITABLE) {
            continue;
        }
        let may_read = blocked || seen[from].intersects(READABLE) || (just_connected && d == 0);
        // Reads are bounded per wake-up so one busy connection cannot starve the others;
        // writing out and passing on an EOF are not, or a direction could end up waiting for
        // nothing (no bytes to write, nothing registered to read).
        let mut reads = 0;
        let mut drained = false;
        loop {
            if dir.pending() > 0 {
                match write_out(dir, dst) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => return Step::Failed("relay".to_owned(), e),
                }
                if dir.pending() > 0 {
                    break;
                }
            }
            if dir.eof {
                if !dir.shut {
                    let _ = dst.shutdown(Shutdown::Write);
                    dir.shut = true;
                }
                break;
            }
            // After a short read the socket was empty: epoll says when it is not, which
            // saves a read that would only say EAGAIN (one syscall per message relayed).
            if drained || !may_read || reads == READS_PER_WAKE {
                break;
            }
            reads += 1;
            match read_in(dir, src, mode, buffer_size, buffers) {
                Ok(ReadOutcome::Data { drained: d }) => drained = d,
                Ok(ReadOutcome::Eof) => {}
                Ok(ReadOutcome::Empty) => break,
                Err(e) => return Step::Failed("relay".to_owned(), e),
            }
        }
    }
    if conn.dirs.iter().all(|d| d.shut) {
        Step::Done
    } else {
        Step::Continue
    }
}

enum ReadOutcome {
    /// Bytes arrived; `drained`: fewer than asked for, so the socket had no more then.
    Data {
        drained: bool,
    },
    Eof,
    /// Nothing to read now.
    Empty,
}

/// Reads into the direction's buffer or pipe.
fn read_in(
    dir: &mut Direction,
    mut src: &TcpStream,
    mode: RelayMode,
    buffer_size: usize,
    buffers: &mut Vec<Vec<u8>>,
) -> io::Result<ReadOutcome> {
    loop {
        let got = match mode {
            RelayMode::ReadWrite => {
                if dir.buf.len() != buffer_size {
                    dir.buf = buffers
                        .pop()
                        .filter(|b| b.len() == buffer_size)
                        .unwrap_or_else(|| vec![0u8; buffer_size]);
                }
                src.read(&mut dir.buf).inspect(|&n| {
                    dir.start = 0;
                    dir.end = n;
                })
            }
            RelayMode::Splice => {
                if dir.pipe.is_none() {
                    dir.pipe = Some(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?);
                }
                let (_, pipe_w) = dir.pipe.as_ref().expect("pipe just made");
                splice(src.as_fd(), pipe_w.as_fd(), buffer_size).inspect(|&n| dir.in_pipe = n)
            }
        };
        return match got {
            Ok(0) => {
                dir.eof = true;
                Ok(ReadOutcome::Eof)
            }
            Ok(n) => Ok(ReadOutcome::Data {
                drained: n < buffer_size,
            }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Also what a socket in a sockhash says when woken without data.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::Empty),
            Err(e) => Err(e),
        };
    }
}

/// Writes pending bytes out. `Ok(false)`: the destination is full.
fn write_out(dir: &mut Direction, mut dst: &TcpStream) -> io::Result<bool> {
    loop {
        let wrote = if dir.in_pipe > 0 {
            let (pipe_r, _) = dir.pipe.as_ref().expect("bytes in a pipe");
            splice(pipe_r.as_fd(), dst.as_fd(), dir.in_pipe).inspect(|&n| dir.in_pipe -= n)
        } else {
            dst.write(&dir.buf[dir.start..dir.end])
                .inspect(|&n| dir.start += n)
        };
        return match wrote {
            Ok(0) => Err(io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes")),
            Ok(n) => {
                dir.bytes += n as u64;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        };
    }
}

fn splice(
    from: std::os::fd::BorrowedFd<'_>,
    to: std::os::fd::BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    use nix::fcntl::SpliceFFlags;
    nix::fcntl::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
    )
    .map_err(io::Error::from)
}

/// A non-blocking TCP socket connecting to `to` (from `source` if given); the connect
/// completes when the socket turns writable.
fn connect_nonblocking(source: Option<SocketAddr>, to: SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{self, SockFlag, SockaddrStorage};
    use std::os::fd::AsRawFd;
    let fd = crate::workload::tcp_socket_from(source, to, SockFlag::SOCK_NONBLOCK)?;
    match socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(io::Error::other(format!("connect {to}: {e}"))),
    }
}

/// `what:error` with no whitespace, as records carry it.
fn error_text(what: &str, e: &io::Error) -> String {
    format!("{what}:{e}").replace(char::is_whitespace, "_")
}
