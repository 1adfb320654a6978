//! What `/proc` says about one process's TCP sockets, read from the host: its socket fds
//! (`/proc/PID/fd` → `socket:[inode]`), which of them are TCP (sockfs's protocol name of the
//! fd), whether each carries `O_NONBLOCK` (`flags:` in `/proc/PID/fdinfo/N`, octal), and the
//! ports it listens on (its namespace's listeners, from `sock_diag` through a socket made in
//! that namespace, or `/proc/PID/net/tcp{,6}` where the kernel has no `tcp_diag`). Nothing
//! here walks the host's table of established TCP sockets on a kernel with `tcp_diag`.
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

/// The TCP sockets of the network namespace process `pid` is in.
pub fn namespace_tcp_sockets(
    proc_root: &Path,
    pid: u32,
) -> Result<HashMap<u64, TcpSocket>, ProcError> {
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

/// The TCP listeners of the network namespace process `pid` is in: socket inode -> local
/// port. Asked through `NETLINK_SOCK_DIAG` from a socket made in that namespace (a dump of the
/// LISTEN state walks only the kernel's listening hash); where the kernel has no `tcp_diag`,
/// read from the namespace's `/proc/PID/net/tcp{,6}` (which walks every TCP socket of the
/// host: milliseconds on a busy node).
pub fn namespace_listeners(proc_root: &Path, pid: u32) -> Result<HashMap<u64, u16>, ProcError> {
    use mb_sys::sockdiag::{tcp_listeners_in, AF_INET, AF_INET6};
    let netns = proc_root.join(format!("{pid}/ns/net"));
    match tcp_listeners_in(&netns, &[AF_INET, AF_INET6]).and_then(|dumped| dumped) {
        Ok(listeners) => Ok(listeners.iter().map(|l| (l.inode, l.port)).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !netns.exists() => {
            Err(ProcError::Gone)
        }
        Err(_) => listeners_from_net_tcp(proc_root, pid),
    }
}

/// [`namespace_listeners`] where `sock_diag` fails: the listeners in `/proc/PID/net/tcp{,6}`.
pub fn listeners_from_net_tcp(proc_root: &Path, pid: u32) -> Result<HashMap<u64, u16>, ProcError> {
    Ok(namespace_tcp_sockets(proc_root, pid)?
        .into_iter()
        .filter(|(_, s)| s.is_listening())
        .map(|(inode, s)| (inode, s.local_port))
        .collect())
}

/// Samples process `pid`'s TCP socket fds; `listeners` are its namespace's TCP listeners
/// (inode -> port). Whether a socket fd is TCP comes from sockfs (one `getxattr` per socket
/// the process did not hold at the last sample), remembered in `tcp_inodes` (socket inode ->
/// is TCP), which is left holding the process's current sockets only. `O_NONBLOCK` is read
/// for every TCP fd on every sample: a process may turn a socket blocking at any time. An fd
/// that closes while being read is skipped.
pub fn sample_sockets(
    proc_root: &Path,
    pid: u32,
    listeners: &HashMap<u64, u16>,
    tcp_inodes: &mut HashMap<u64, bool>,
) -> Result<SocketSample, ProcError> {
    let fd_dir = proc_root.join(format!("{pid}/fd"));
    let entries = fs::read_dir(&fd_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProcError::Gone,
        _ => ProcError::Unreadable(fd_dir.display().to_string(), e),
    })?;
    let mut sample = SocketSample::default();
    let mut now: HashMap<u64, bool> = HashMap::with_capacity(tcp_inodes.len());
    for entry in entries.flatten() {
        let fd_path = entry.path();
        let Ok(target) = fs::read_link(&fd_path) else {
            continue;
        };
        let Some(inode) = target.to_str().and_then(socket_inode) else {
            continue;
        };
        let tcp = match tcp_inodes.get(&inode) {
            Some(&tcp) => tcp,
            None => match mb_sys::sockfs::is_tcp(&fd_path) {
                Ok(tcp) => tcp,
                // Closed meanwhile.
                Err(_) => continue,
            },
        };
        now.insert(inode, tcp);
        if !tcp {
            continue;
        }
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
        sample.tcp_fds += 1;
        if flags & O_NONBLOCK == 0 {
            sample.blocking_fds += 1;
        }
        if let Some(&port) = listeners.get(&inode) {
            sample.listen_ports.insert(port);
        }
    }
    *tcp_inodes = now;
    Ok(sample)
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

/// Test input: a `/proc/net/tcp` table, the kernel's header and a line per socket `(local,
/// remote, state, inode)` (hex `address:port`, hex state), the columns the parsers skip
/// filled in as the kernel prints them.
#[cfg(test)]
pub(crate) fn net_tcp_table(rows: &[(&str, &str, &str, u64)]) -> String {
    let mut text = String::from(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  \
         timeout inode\n",
    );
    for (i, (local, remote, state, inode)) in rows.iter().enumerate() {
        text += &format!(
            "{i:4}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        \
             0 {inode} 1 0000000000000000 100 0 0 10 0\n"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_tcp_lines_give_inode_state_and_port() {
        let mut text = net_tcp_table(&[
            ("0100007F:1F90", "00000000:0000", "0A", 4242),
            ("0100007F:9C40", "0100007F:1F90", "01", 4343),
            // TIME_WAIT: no inode.
            ("0100007F:9C41", "0100007F:1F90", "06", 0),
            ("0100007F:ZZZZ", "0100007F:1F90", "01", 99),
        ]);
        text += "   garbage line\n";
        let mut sockets = HashMap::new();
        parse_net_tcp(&text, &mut sockets);
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

    /// Real sockets of this test process, read back through the real /proc.
    #[test]
    fn samples_this_process_blocking_and_non_blocking_sockets() {
        use std::net::{TcpListener, TcpStream};
        let proc_root = Path::new("/proc");
        let pid = std::process::id();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        listener.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        server.set_nonblocking(true).unwrap();

        // Other tests of this binary run in parallel with their own sockets (all blocking,
        // std's default): count ours by inode, through the cache the sample leaves.
        let inode = |fd: i32| {
            socket_inode(
                fs::read_link(format!("/proc/self/fd/{fd}"))
                    .unwrap()
                    .to_str()
                    .unwrap(),
            )
            .unwrap()
        };
        use std::os::fd::AsRawFd;
        let ours = [
            inode(listener.as_raw_fd()),
            inode(client.as_raw_fd()),
            inode(server.as_raw_fd()),
        ];
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listeners = namespace_listeners(proc_root, pid).unwrap();
        assert_eq!(listeners.get(&ours[0]), Some(&port), "{listeners:?}");
        assert!(!listeners.contains_key(&ours[1]));
        // The fallback for kernels without tcp_diag finds the same listener.
        let from_proc = listeners_from_net_tcp(proc_root, pid).unwrap();
        assert_eq!(from_proc.get(&ours[0]), Some(&port), "{from_proc:?}");
        assert!(!from_proc.contains_key(&ours[1]));
        let mut cache = HashMap::new();
        let sample = sample_sockets(proc_root, pid, &listeners, &mut cache).unwrap();
        assert!(sample.tcp_fds >= 3, "{sample:?}");
        assert!(sample.listen_ports.contains(&port));
        for i in ours {
            assert_eq!(cache.get(&i), Some(&true), "{cache:?}");
        }
        assert_eq!(cache.get(&inode(udp.as_raw_fd())), Some(&false));

        // From here on the cache says "not TCP" for every socket but ours, so that the
        // counts are exact: O_NONBLOCK is read again on every sample, the cache only
        // spares the "is it TCP" question.
        for (i, tcp) in cache.iter_mut() {
            *tcp = ours.contains(i);
        }
        let sample = sample_sockets(proc_root, pid, &listeners, &mut cache).unwrap();
        assert_eq!((sample.tcp_fds, sample.blocking_fds), (3, 0), "{sample:?}");
        server.set_nonblocking(false).unwrap();
        let sample = sample_sockets(proc_root, pid, &listeners, &mut cache).unwrap();
        assert_eq!((sample.tcp_fds, sample.blocking_fds), (3, 1), "{sample:?}");
        let cached_udp = inode(udp.as_raw_fd());
        drop(udp);
        sample_sockets(proc_root, pid, &listeners, &mut cache).unwrap();
        assert!(
            !cache.contains_key(&cached_udp),
            "a closed socket leaves the cache"
        );

        assert!(matches!(
            sample_sockets(proc_root, u32::MAX, &listeners, &mut cache),
            Err(ProcError::Gone)
        ));
        assert!(netns_inode(proc_root, pid).is_some());
    }
}
