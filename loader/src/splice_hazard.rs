//! The splice hazard, probed at run time: does this kernel answer a *blocking* `recv()` on a
//! socket in a sockhash with a spurious `EAGAIN`?
//!
//! A socket in a sockmap/sockhash reads through `tcp_bpf_recvmsg`, which waits for data once
//! and returns `-EAGAIN` if the wait ended without data — on any wake-up, not only on the
//! `SO_RCVTIMEO` expiry that alone should give it (docs/splice-hazard.md). The probe
//! reproduces it with the most deterministic wake-up: a signal whose handler has
//! `SA_RESTART`, which an ordinary TCP socket restarts transparently.
//!
//! Two connected TCP sockets on the loopback of a private network namespace; a reader thread
//! blocks in `recv()`; the probe signals it a few times, then the peer sends one byte. The
//! same sequence runs first on plain sockets (the control: it must read the byte) and then
//! with both sockets in a private sockhash. Nothing is attached and nothing is pinned: the
//! sockhash, the sockets and the namespace go away when the probe returns.

use mb_sys::bpf::{MapCreate, MapFd, MapType};
use mb_sys::signal::{current_thread, signal_thread};
use nix::sys::signal::Signal;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// How long the peer waits before it sends the byte; the reader is signalled before that.
const REPLY_AFTER: Duration = Duration::from_millis(150);
/// Signals sent to the blocked reader, this far apart (the first lands once it blocks).
const SIGNALS: u32 = 5;
const SIGNAL_EVERY: Duration = Duration::from_millis(20);
/// The reader's bound: no probe blocks longer, whatever the kernel does.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpliceHazard {
    /// A blocking `recv()` on a socket in a sockhash returned `EAGAIN` without data or timeout:
    /// splicing an application's (blocking) socket can fail its reads.
    Present(String),
    /// The blocked reader got its byte: the kernel restarts the wait.
    Absent,
    /// The probe could not decide (no root, no sockhash, the control failed).
    Unknown(String),
}

impl SpliceHazard {
    pub fn is_absent(&self) -> bool {
        matches!(self, SpliceHazard::Absent)
    }

    /// What `--splice auto` (the default) chooses: every leg (`SPLICE_ALL`) only where the
    /// hazard is known to be absent; sidecar-to-sidecar legs otherwise.
    pub fn auto_splice_mode(&self) -> u32 {
        if self.is_absent() {
            mb_maps::datapath::SPLICE_ALL
        } else {
            mb_maps::datapath::SPLICE_SIDECARS
        }
    }

    /// One line for summaries: the status and, where there is one, the reason.
    pub fn summary(&self) -> String {
        match self {
            SpliceHazard::Absent => "absent".into(),
            SpliceHazard::Present(why) => format!("present ({why})"),
            SpliceHazard::Unknown(why) => format!("unknown ({why})"),
        }
    }
}

/// The probe, run once per process (`--splice auto` may ask several times).
pub fn probed_splice_hazard() -> &'static SpliceHazard {
    static PROBED: std::sync::OnceLock<SpliceHazard> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe_splice_hazard)
}

/// How one blocked read ended.
#[derive(Debug)]
enum ReadOutcome {
    /// The byte arrived (after `REPLY_AFTER`).
    Data,
    /// `EAGAIN` this long after the read started.
    Eagain(Duration),
    Other(String),
}

impl ReadOutcome {
    fn describe(&self) -> String {
        match self {
            ReadOutcome::Data => "the byte".into(),
            ReadOutcome::Eagain(after) => format!("EAGAIN after {} ms", after.as_millis()),
            ReadOutcome::Other(e) => e.clone(),
        }
    }
}

/// Runs the probe: a control on plain sockets, then the same with both sockets spliced.
pub fn probe_splice_hazard() -> SpliceHazard {
    let run = || -> Result<SpliceHazard, String> {
        let _handler = mb_sys::signal::RestartingNoopHandler::install(Signal::SIGURG)
            .map_err(|e| e.to_string())?;
        match blocked_read(false)? {
            ReadOutcome::Data => {}
            other => {
                return Ok(SpliceHazard::Unknown(format!(
                    "the control (plain sockets) did not read its byte: {}",
                    other.describe()
                )))
            }
        }
        Ok(match blocked_read(true)? {
            ReadOutcome::Data => SpliceHazard::Absent,
            ReadOutcome::Eagain(after) if after < REPLY_AFTER => SpliceHazard::Present(format!(
                "a blocking recv() on a socket in a sockhash returned EAGAIN after {} ms, \
                 woken by a signal with SA_RESTART, before any data or timeout",
                after.as_millis()
            )),
            other => {
                SpliceHazard::Unknown(format!("the spliced read ended with {}", other.describe()))
            }
        })
    };
    match mb_sys::netns::run_in_private_netns(run) {
        Ok(Ok(hazard)) => hazard,
        Ok(Err(e)) => SpliceHazard::Unknown(e),
        Err(e) => SpliceHazard::Unknown(e.to_string()),
    }
}

/// One blocked read: `reader` blocks in `read()` on its socket, is signalled `SIGNALS` times,
/// and the peer then writes one byte. With `spliced`, both sockets are in a sockhash first.
fn blocked_read(spliced: bool) -> Result<ReadOutcome, String> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| format!("{what}: {e}")
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("bind 127.0.0.1:0"))?;
    let addr = listener.local_addr().map_err(io("local_addr"))?;
    let mut reader = TcpStream::connect(addr).map_err(io("connect"))?;
    let (mut peer, _) = listener.accept().map_err(io("accept"))?;
    // No SO_RCVTIMEO: with a timeout the kernel answers a signal with EINTR, not a restart.
    // The bound is a shutdown of the reader's socket if it is still blocked at READ_TIMEOUT.
    let unblock = reader.try_clone().map_err(io("dup"))?;
    let _map = if spliced {
        let map = MapFd::create(&MapCreate {
            map_type: MapType::SOCKHASH,
            key_size: 4,
            value_size: 4,
            max_entries: 2,
            map_flags: 0,
            name: "mb_probe_splice",
        })
        .map_err(|e| format!("creating a sockhash: {e}"))?;
        for (key, fd) in [(0u32, reader.as_raw_fd()), (1, peer.as_raw_fd())] {
            map.update(&key.to_ne_bytes(), &(fd as u32).to_ne_bytes(), 0)
                .map_err(|e| format!("adding a socket to the sockhash: {e}"))?;
        }
        Some(map)
    } else {
        None
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = scope.spawn(move || {
            let _ = tx.send(current_thread());
            let start = Instant::now();
            let mut byte = [0u8; 1];
            match reader.read(&mut byte) {
                Ok(1) => ReadOutcome::Data,
                Ok(n) => ReadOutcome::Other(format!("read returned {n}")),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ReadOutcome::Eagain(start.elapsed())
                }
                Err(e) => ReadOutcome::Other(e.to_string()),
            }
        });
        let thread = rx
            .recv()
            .map_err(|_| "the reader thread ended early".to_string())?;
        let start = Instant::now();
        for _ in 0..SIGNALS {
            std::thread::sleep(SIGNAL_EVERY);
            if handle.is_finished() {
                break;
            }
            // ESRCH: the reader already returned; nothing to signal.
            let _ = signal_thread(thread, Signal::SIGURG);
        }
        std::thread::sleep(REPLY_AFTER.saturating_sub(start.elapsed()));
        peer.write_all(b"x").map_err(io("peer write"))?;
        while !handle.is_finished() && start.elapsed() < READ_TIMEOUT {
            std::thread::sleep(SIGNAL_EVERY);
        }
        if !handle.is_finished() {
            let _ = unblock.shutdown(std::net::Shutdown::Both);
        }
        handle
            .join()
            .map_err(|_| "the reader thread panicked".to_string())
    })
}
