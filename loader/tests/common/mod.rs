//! Shared pieces of the loader's kernel tests: small programs built with `mb-asm`, a peer
//! process that runs inside a private child cgroup, and loopback acceptors that count.
#![allow(dead_code)]

use mb_asm::{Asm, JmpOp, Reg, Size};
use mb_loader::ProgramImage;
use mb_sys::bpf::{AttachType, ProgType};
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `bpf_sock_addr.user_port` (u32, port in network order in the low 16 bits).
const SOCK_ADDR_USER_PORT: i16 = 24;

/// A port as `user_port` holds it when read as a little-endian u32.
pub fn port_in_ctx(port: u16) -> i64 {
    i64::from(port.to_be())
}

/// connect4: `if user_port == from_port { user_port = to_port }`; always allows the connect.
pub fn connect4_rewrite(name: &str) -> ProgramImage {
    let mut a = Asm::new();
    let out = a.label();
    a.ldx(Size::W, Reg::R2, Reg::R1, SOCK_ADDR_USER_PORT)
        .jmp_const(JmpOp::Ne, Reg::R2, "from_port", out)
        .mov64_const(Reg::R2, "to_port")
        .stx(Size::W, Reg::R1, SOCK_ADDR_USER_PORT, Reg::R2)
        .bind(out)
        .mov64_imm(Reg::R0, 1)
        .exit();
    ProgramImage::new(
        name,
        ProgType::CGROUP_SOCK_ADDR,
        Some(AttachType::CGROUP_INET4_CONNECT),
        a.finish().expect("connect4 program assembles"),
    )
}

/// sockops: on active/passive established, put the socket into sockhash `socks` under its
/// local port (host order, u32).
pub fn sockops_insert(name: &str) -> ProgramImage {
    let mut a = Asm::new();
    let insert = a.label();
    let out = a.label();
    a.mov64_reg(Reg::R6, Reg::R1)
        .ldx(Size::W, Reg::R2, Reg::R6, 0) // op
        .jmp_imm(JmpOp::Eq, Reg::R2, 4, insert) // BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        .jmp_imm(JmpOp::Eq, Reg::R2, 5, insert) // BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        .ja(out)
        .bind(insert)
        .ldx(Size::W, Reg::R2, Reg::R6, 68) // local_port, host order
        .stx(Size::W, Reg::R10, -4, Reg::R2)
        .mov64_reg(Reg::R1, Reg::R6)
        .ld_map_fd(Reg::R2, "socks")
        .mov64_reg(Reg::R3, Reg::R10)
        .alu64_imm(mb_asm::AluOp::Add, Reg::R3, -4)
        .mov64_imm(Reg::R4, 0) // BPF_ANY
        .call(mb_asm::Helper::SockHashUpdate)
        .bind(out)
        .mov64_imm(Reg::R0, 1)
        .exit();
    ProgramImage::new(
        name,
        ProgType::SOCK_OPS,
        None,
        a.finish().expect("sockops program assembles"),
    )
}

/// sk_msg: redirect every message to the ingress of the socket under key `target_port`.
pub fn sk_msg_redirect(name: &str) -> ProgramImage {
    let mut a = Asm::new();
    a.mov64_const(Reg::R2, "target_port")
        .stx(Size::W, Reg::R10, -4, Reg::R2)
        .ld_map_fd(Reg::R2, "socks")
        .mov64_reg(Reg::R3, Reg::R10)
        .alu64_imm(mb_asm::AluOp::Add, Reg::R3, -4)
        .mov64_imm(Reg::R4, 1) // BPF_F_INGRESS
        .call(mb_asm::Helper::MsgRedirectHash)
        .exit();
    ProgramImage::new(
        name,
        ProgType::SK_MSG,
        Some(AttachType::SK_MSG_VERDICT),
        a.finish().expect("sk_msg program assembles"),
    )
}

/// getsockopt: for `optname`, write a 16-byte sockaddr_in (`word0`, `word1`, 0, 0), set
/// optlen 16 and retval 0. Other calls pass untouched.
pub fn getsockopt_answer(name: &str) -> ProgramImage {
    let mut a = Asm::new();
    let out = a.label();
    a.ldx(Size::W, Reg::R2, Reg::R1, 28) // optname
        .jmp_const(JmpOp::Ne, Reg::R2, "optname", out)
        .ldx(Size::DW, Reg::R2, Reg::R1, 8) // optval
        .ldx(Size::DW, Reg::R3, Reg::R1, 16) // optval_end
        .mov64_reg(Reg::R4, Reg::R2)
        .alu64_imm(mb_asm::AluOp::Add, Reg::R4, 16)
        .jmp_reg(JmpOp::Gt, Reg::R4, Reg::R3, out)
        .mov64_const(Reg::R5, "word0")
        .stx(Size::W, Reg::R2, 0, Reg::R5)
        .mov64_const(Reg::R5, "word1")
        .stx(Size::W, Reg::R2, 4, Reg::R5)
        .st_imm(Size::W, Reg::R2, 8, 0)
        .st_imm(Size::W, Reg::R2, 12, 0)
        // The verifier refuses BPF_ST into the context: store from a register.
        .mov64_imm(Reg::R5, 16)
        .stx(Size::W, Reg::R1, 32, Reg::R5) // optlen
        .mov64_imm(Reg::R5, 0)
        .stx(Size::W, Reg::R1, 36, Reg::R5) // retval
        .bind(out)
        .mov64_imm(Reg::R0, 1)
        .exit();
    ProgramImage::new(
        name,
        ProgType::CGROUP_SOCKOPT,
        Some(AttachType::CGROUP_GETSOCKOPT),
        a.finish().expect("getsockopt program assembles"),
    )
}

/// The test peer, started and moved into `cgroup` before it touches the network.
pub struct Peer {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Peer {
    pub fn start(cgroup: &Path, args: &[&str]) -> Peer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mb-test-peer"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn mb-test-peer");
        mb_sys::cgroup::move_pid(cgroup, child.id()).expect("move peer into the cgroup");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"go\n").expect("start peer");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Peer {
            child,
            stdin: Some(stdin),
            stdout,
        }
    }

    /// The peer's next output line.
    pub fn read_line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read peer output");
        line.trim_end().to_string()
    }

    /// Sends one line to the peer.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("peer stdin open");
        writeln!(stdin, "{line}").expect("write to peer");
    }

    /// Waits for the peer and returns its `RESULT` line (without the prefix).
    pub fn result(mut self) -> String {
        use std::io::Read;
        drop(self.stdin.take());
        let mut text = String::new();
        self.stdout.read_to_string(&mut text).expect("peer output");
        let status = self.child.wait().expect("peer exit");
        assert!(status.success(), "peer failed: {status:?} {text}");
        text.lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("peer printed no RESULT: {text:?}"))
            .to_string()
    }
}

/// A loopback listener whose accepted connections are counted on a thread.
pub struct Acceptor {
    pub port: u16,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    pub fn new() -> Acceptor {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        Acceptor {
            port,
            count,
            stop,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until at least `n` connections were accepted.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port nothing listens on right now (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
