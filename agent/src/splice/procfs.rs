//! What `/proc` says about one process's TCP sockets, read from the host without entering any
//! namespace for long: its socket fds (`/proc/PID/fd` → `socket:[inode]`), which of them are
//! TCP (the socket's own `system.sockprotoname` attribute), whether each carries `O_NONBLOCK`
//! (`flags:` in `/proc/PID/fdinfo/N`, octal), and the ports it listens on (a `sock_diag` dump
//! of its namespace's listeners). Nothing here reads `/proc/PID/net/tcp{,6}` while `sock_diag`
//! answers: each read of those walks every bucket of the host-wide established hash (5 ms per
//! file on the test machine, for an empty namespace), and the classifier asks every scan.
//!
//! Every parser tolerates bad input: a line it cannot read is skipped, a file it cannot read
//! is an error for that process only.
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `O_NONBLOCK` in the `flags:` line of `/proc/PID/fdinfo/N` (octal 04000 on Linux).
pub const O_NONBLOCK: u32 = 0o4000;
/// TCP state `LISTEN` in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0a;

/// One TCP socket of a network namespace: its state and local port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSocket {
    pub state: u8,
    pub local_port: u16,
}

impl TcpSocket {
    pub fn is_listening(&self) -> bool {
        self.state == TCP_LISTEN
    }
}

/// The TCP sockets of `/proc/PID/net/tcp` or `tcp6` text, by inode. Inode 0 (a socket with no
/// file: time-wait, a request) is left out.
pub fn parse_net_tcp(text: &str, into: &mut HashMap<u64, TcpSocket>) {
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            continue;
        }
        let Some(port) = fields[1]
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        let Ok(state) = u8::from_str_radix(fields[3], 16) else {
            continue;
        };
        let Ok(inode) = fields[9].parse::<u64>() else {
            continue;
        };
        if inode != 0 {
            into.insert(
                inode,
                TcpSocket {
                    state,
                    local_port: port,
                },
            );
        }
    }
}

/// The file status flags of `/proc/PID/fdinfo/N` text (`flags:\t02004002`, octal).
pub fn parse_fdinfo_flags(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

/// The inode of a `socket:[12345]` link target.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The cgroup v2 path of `/proc/PID/cgroup` text (the `0::/path` line).
pub fn parse_cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot): with the pid, it
/// names a process for good (a reused pid has another start time).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The real UID and GID of `/proc/PID/status` text.
pub fn parse_uid_gid(status: &str) -> Option<(u32, u32)> {
    let first = |prefix: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
    };
    Some((first("Uid:")?, first("Gid:")?))
}

/// One look at a process's TCP socket fds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketSample {
    /// TCP socket fds (any state, listeners included).
    pub tcp_fds: usize,
    /// Of those, the ones without `O_NONBLOCK`.
    pub blocking_fds: usize,
    /// Local ports of its listening TCP sockets.
    pub listen_ports: BTreeSet<u16>,
}

/// Why a process could not be read.
#[derive(Debug)]
pub enum ProcError {
    /// The process is gone (or its directory cannot be listed).
    Gone,
    /// A file of it could not be read: the path and the error.
    Unreadable(String, std::io::Error),
}

impl std::fmt::Display for ProcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcError::Gone => write!(f, "process gone"),
            ProcError::Unreadable(path, e) => write!(f, "{path}: {e}"),
        }
    }
}

/// The TCP listeners of the network namespace process `pid` is in, by inode: a `sock_diag`
/// dump of the LISTEN state (the kernel's listening hash only) through a socket made in that
/// namespace. Where the kernel has no `tcp_diag`, the namespace's `/proc/PID/net/tcp{,6}`
/// tables instead (every TCP socket of the namespace, at the cost of the walk above).
/// [`sample_sockets`] takes either: a socket fd missing from the map is asked whether it is
/// TCP at all.
pub fn namespace_tcp_sockets(
    proc_root: &Path,
    pid: u32,
) -> Result<HashMap<u64, TcpSocket>, ProcError> {
    let netns = proc_root.join(format!("{pid}/ns/net"));
    let diag = match mb_sys::netns::create_in_netns(&netns, mb_sys::sockdiag::DiagSocket::open) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ProcError::Gone),
        // Not allowed to enter it (no CAP_SYS_ADMIN): the tables need no privilege.
        Err(_) => return namespace_tcp_tables(proc_root, pid),
        Ok(diag) => diag,
    };
    let dumped = diag.and_then(|mut diag| {
        let mut listeners = diag.tcp_listeners(nix::libc::AF_INET as u8)?;
        // A kernel without IPv6 has no IPv6 listeners to report.
        match diag.tcp_listeners(nix::libc::AF_INET6 as u8) {
            Ok(v6) => listeners.extend(v6),
            Err(e) if e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) => {}
            Err(e) => return Err(e),
        }
        Ok(listeners)
    });
    match dumped {
        Ok(listeners) => Ok(listeners
            .into_iter()
            .map(|l| {
                (
                    l.inode,
                    TcpSocket {
                        state: TCP_LISTEN,
                        local_port: l.port,
                    },
                )
            })
            .collect()),
        Err(_) => namespace_tcp_tables(proc_root, pid),
    }
}

/// Every TCP socket of the namespace of `pid`, from `/proc/PID/net/tcp{,6}`.
fn namespace_tcp_tables(proc_root: &Path, pid: u32) -> Result<HashMap<u64, TcpSocket>, ProcError> {
    let mut sockets = HashMap::new();
    for name in ["tcp", "tcp6"] {
        let path = proc_root.join(format!("{pid}/net/{name}"));
        match fs::read_to_string(&path) {
            Ok(text) => parse_net_tcp(&text, &mut sockets),
            // A kernel without IPv6 has no tcp6.
            Err(e) if name == "tcp6" && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ProcError::Unreadable(path.display().to_string(), e)),
        }
    }
    Ok(sockets)
}

/// One TCP socket fd of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFd {
    pub inode: u64,
    pub non_blocking: bool,
    /// Its local port where it listens.
    pub listen_port: Option<u16>,
}

/// Process `pid`'s TCP socket fds: a socket fd is TCP when `tcp` (from
/// [`namespace_tcp_sockets`]) has its inode or, failing that, its `system.sockprotoname`
/// says so. An fd that closes while being read is skipped.
pub fn tcp_fds(
    proc_root: &Path,
    pid: u32,
    tcp: &HashMap<u64, TcpSocket>,
) -> Result<Vec<TcpFd>, ProcError> {
    let fd_dir = proc_root.join(format!("{pid}/fd"));
    let entries = fs::read_dir(&fd_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProcError::Gone,
        _ => ProcError::Unreadable(fd_dir.display().to_string(), e),
    })?;
    let mut fds = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(target) = fs::read_link(&path) else {
            continue;
        };
        let Some(inode) = target.to_str().and_then(socket_inode) else {
            continue;
        };
        let listen_port = match tcp.get(&inode) {
            Some(socket) => socket.is_listening().then_some(socket.local_port),
            None if mb_sys::xattr::is_tcp_socket(&path) => None,
            None => continue,
        };
        let info = proc_root.join(format!(
            "{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ));
        let Some(flags) = fs::read_to_string(&info)
            .ok()
            .and_then(|t| parse_fdinfo_flags(&t))
        else {
            continue;
        };
        fds.push(TcpFd {
            inode,
            non_blocking: flags & O_NONBLOCK != 0,
            listen_port,
        });
    }
    Ok(fds)
}

impl SocketSample {
    /// The sample of these TCP fds.
    pub fn of(fds: &[TcpFd]) -> SocketSample {
        SocketSample {
            tcp_fds: fds.len(),
            blocking_fds: fds.iter().filter(|f| !f.non_blocking).count(),
            listen_ports: fds.iter().filter_map(|f| f.listen_port).collect(),
        }
    }
}

/// Samples process `pid`'s TCP socket fds ([`tcp_fds`]).
pub fn sample_sockets(
    proc_root: &Path,
    pid: u32,
    tcp: &HashMap<u64, TcpSocket>,
) -> Result<SocketSample, ProcError> {
    tcp_fds(proc_root, pid, tcp).map(|fds| SocketSample::of(&fds))
}

/// The inode of the network namespace process `pid` is in.
pub fn netns_inode(proc_root: &Path, pid: u32) -> Option<u64> {
    fs::metadata(proc_root.join(format!("{pid}/ns/net")))
        .ok()
        .map(|m| m.ino())
}

/// The cgroup v2 id of process `pid` (the inode of its cgroup's directory under
/// `cgroup_root`, the cgroup2 mount): what `bpf_get_current_cgroup_id()` returns for it.
pub fn cgroup_id(proc_root: &Path, cgroup_root: &Path, pid: u32) -> Option<u64> {
    let text = fs::read_to_string(proc_root.join(format!("{pid}/cgroup"))).ok()?;
    let path = parse_cgroup_v2_path(&text)?.trim();
    let dir = cgroup_root.join(path.trim_start_matches('/'));
    fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_tcp_lines_give_inode_state_and_port() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n\
   2: 0100007F:9C41 0100007F:1F90 06 00000000:00000000 03:00000bb8 00000000     0        0 0 3 0000000000000000\n\
   garbage line\n\
   3: 0100007F:ZZZZ 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 99 1\n";
        let mut sockets = HashMap::new();
        parse_net_tcp(text, &mut sockets);
        assert_eq!(sockets.len(), 2, "{sockets:?}");
        assert!(sockets[&4242].is_listening());
        assert_eq!(sockets[&4242].local_port, 8080);
        assert_eq!(sockets[&4343].state, 1);
        assert_eq!(sockets[&4343].local_port, 40000);
    }

    #[test]
    fn small_parsers_read_what_the_kernel_writes_and_refuse_the_rest() {
        assert_eq!(
            parse_fdinfo_flags("pos:\t0\nflags:\t02004002\nmnt_id:\t9\n"),
            Some(0o2004002)
        );
        assert_eq!(parse_fdinfo_flags("flags:\t0xz\n"), None);
        assert_eq!(parse_fdinfo_flags(""), None);
        assert_eq!(socket_inode("socket:[123]"), Some(123));
        assert_eq!(socket_inode("pipe:[123]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
        assert_eq!(
            parse_cgroup_v2_path("1:name=systemd:/a\n0::/kubepods/pod1/c1\n"),
            Some("/kubepods/pod1/c1")
        );
        assert_eq!(parse_cgroup_v2_path("1:cpu:/a\n"), None);
        let stat =
            "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("42 (x"), None);
        assert_eq!(
            parse_uid_gid("Name:\tx\nUid:\t1337\t1337\t1337\t1337\nGid:\t7\t7\t7\t7\n"),
            Some((1337, 7))
        );
        assert_eq!(parse_uid_gid("Uid:\tnope\n"), None);
    }

    /// Real sockets of this test process, read back through the real /proc: the listener
    /// from `sock_diag`, the connected ones by their protocol attribute.
    #[test]
    fn samples_this_process_blocking_and_non_blocking_sockets() {
        use std::net::{TcpListener, TcpStream, UdpSocket};
        use std::os::fd::AsRawFd;
        let proc_root = Path::new("/proc");
        let pid = std::process::id();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        server.set_nonblocking(true).unwrap();
        let inode = |fd: i32| {
            fs::read_link(format!("/proc/self/fd/{fd}"))
                .ok()
                .and_then(|t| t.to_str().and_then(socket_inode))
                .unwrap()
        };
        let ours = [
            inode(listener.as_raw_fd()),
            inode(client.as_raw_fd()),
            inode(server.as_raw_fd()),
        ];
        // Other tests of this binary run in parallel with their own sockets: look only for
        // ours, by inode.
        let sample = |tcp: &HashMap<u64, TcpSocket>| {
            let fds = tcp_fds(proc_root, pid, tcp).unwrap();
            let mine: Vec<TcpFd> = fds
                .into_iter()
                .filter(|f| ours.contains(&f.inode))
                .collect();
            SocketSample::of(&mine)
        };

        let listeners = namespace_tcp_sockets(proc_root, pid).unwrap();
        assert_eq!(
            listeners.get(&ours[0]),
            Some(&TcpSocket {
                state: TCP_LISTEN,
                local_port: port
            })
        );
        let s = sample(&listeners);
        assert_eq!(s.tcp_fds, 3, "{s:?}");
        assert_eq!(s.blocking_fds, 0);
        assert_eq!(s.listen_ports, BTreeSet::from([port]));
        // The UDP socket is a socket fd but not TCP.
        let all = tcp_fds(proc_root, pid, &listeners).unwrap();
        assert!(!all.iter().any(|f| f.inode == inode(udp.as_raw_fd())));

        server.set_nonblocking(false).unwrap();
        assert_eq!(sample(&listeners).blocking_fds, 1);

        // The fallback tables (a kernel without tcp_diag) say the same.
        let tables = namespace_tcp_tables(proc_root, pid).unwrap();
        assert_eq!(sample(&tables), sample(&listeners));

        assert!(matches!(
            sample_sockets(proc_root, u32::MAX, &listeners),
            Err(ProcError::Gone)
        ));
        assert!(matches!(
            namespace_tcp_sockets(proc_root, u32::MAX),
            Err(ProcError::Gone)
        ));
        assert!(netns_inode(proc_root, pid).is_some());
    }
}
