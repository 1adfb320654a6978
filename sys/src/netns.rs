//! Network namespaces: create named ones (visible to `ip netns`), enter them on a helper
//! thread, and learn their cookie.
//!
//! `setns(2)` changes the namespace of the calling *thread* only. The functions here never
//! switch the caller's thread: work that must happen inside a namespace runs on a short-lived
//! helper thread, so a test thread (or the agent's main thread) stays where it was. Sockets
//! opened on the helper thread keep their namespace after it ends (fds are per process).
//! One exception, [`create_in_netns`], makes a socket in a namespace on the calling thread
//! and switches it straight back: a helper thread's start costs milliseconds of run-queue
//! wait on a loaded node, more than the whole budget of attaching a pod.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace this process created and bind-mounted at `/run/netns/<name>`.
/// Dropping it unmounts and removes the name; the kernel frees the namespace (and the
/// veths, addresses, routes and netfilter rules in it) once nothing else holds it.
#[derive(Debug)]
pub struct NamedNetns {
    name: String,
    path: PathBuf,
}

impl NamedNetns {
    /// Creates a fresh network namespace named `name` (at most 200 bytes of `[A-Za-z0-9._-]`).
    /// Fails with `AlreadyExists` if the name is taken: callers choose unique names.
    pub fn create(name: &str) -> io::Result<NamedNetns> {
        validate_name(name)?;
        fs::create_dir_all(NETNS_RUN_DIR)
            .map_err(|e| annotate(e, "create directory", Path::new(NETNS_RUN_DIR)))?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| annotate(e, "create netns mount point", &path))?;
        // From here on a failure must remove the mount point again: the guard does it.
        let guard = NamedNetns {
            name: name.to_owned(),
            path,
        };
        let target = guard.path.clone();
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> io::Result<()> {
                    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "unshare(CLONE_NEWNET): {e} (needs CAP_SYS_ADMIN: run as root)"
                            ),
                        )
                    })?;
                    mount(
                        Some("/proc/thread-self/ns/net"),
                        &target,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(|e| {
                        io::Error::other(format!(
                            "bind-mount new netns at {}: {e}",
                            target.display()
                        ))
                    })
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("netns helper thread panicked")))
        })?;
        Ok(guard)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: open it for `setns`, or pass the name to `ip -n`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on a helper thread that has entered this namespace.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> io::Result<T> {
        run_in_netns(&self.path, work)
    }

    /// The namespace's cookie (see [`netns_cookie`]).
    pub fn cookie(&self) -> io::Result<u64> {
        netns_cookie(&self.path)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
            // EINVAL: never got mounted (creation failed half way); nothing to unmount.
            if e != nix::errno::Errno::EINVAL {
                eprintln!("mb-sys: unmount netns {}: {e}", self.path.display());
            }
        }
        if let Err(e) = fs::remove_file(&self.path) {
            eprintln!("mb-sys: remove netns {}: {e}", self.path.display());
        }
    }
}

fn validate_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("netns name {name:?} must be 1-200 characters of A-Z a-z 0-9 . _ - and not start with '.'"),
        ))
    }
}

/// Opens a network namespace file (`/run/netns/<name>`, `/proc/<pid>/ns/net`) for `setns`.
pub fn open_netns(path: &Path) -> io::Result<File> {
    File::open(path).map_err(|e| annotate(e, "open netns", path))
}

/// Runs `work` on a helper thread that has entered the namespace at `path` and returns its
/// result. The calling thread's namespace never changes.
pub fn run_in_netns<T: Send>(path: &Path, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = open_netns(path)?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || -> io::Result<T> {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("setns into {}: {e} (needs CAP_SYS_ADMIN)", path.display()),
                )
            })?;
            Ok(work())
        });
        match handle.join() {
            Ok(result) => result,
            // Re-raise the closure's panic on the caller's thread, as if it ran there.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Runs `make` on the calling thread while that thread is in the namespace at `path`, and
/// returns the thread to its own namespace before returning: for creating a socket there (a
/// socket keeps the namespace it was made in) without a helper thread. `make` must be short
/// and must not start threads or processes (they would start in that namespace).
pub fn create_in_netns<T>(path: &Path, make: impl FnOnce() -> T) -> io::Result<T> {
    let target = open_netns(path)?;
    let home = File::open("/proc/thread-self/ns/net").map_err(|e| {
        annotate(
            e,
            "open this thread's netns",
            Path::new("/proc/thread-self"),
        )
    })?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("setns into {}: {e} (needs CAP_SYS_ADMIN)", path.display()),
        )
    })?;
    /// Switches the thread back, also when `make` panics.
    struct Home(File);
    impl Drop for Home {
        fn drop(&mut self) {
            if let Err(e) = setns(self.0.as_fd(), CloneFlags::CLONE_NEWNET) {
                // The thread would go on in a pod's namespace: stop rather than act there.
                eprintln!("setns back to this thread's own network namespace failed: {e}");
                std::process::abort();
            }
        }
    }
    let _home = Home(home);
    Ok(make())
}

/// Runs `work` on a helper thread inside a fresh, anonymous network namespace whose loopback
/// is up, and returns its result. Nothing outside sees the namespace, and the kernel frees it
/// when the thread ends and the sockets opened in it are closed. Threads `work` spawns start
/// in the same namespace.
pub fn run_in_private_netns<T: Send>(work: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || -> io::Result<T> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("unshare(CLONE_NEWNET): {e} (needs CAP_SYS_ADMIN: run as root)"),
                )
            })?;
            loopback_up()?;
            Ok(work())
        });
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Sets `lo` of the calling thread's network namespace up (`SIOCSIFFLAGS`, `IFF_UP`).
fn loopback_up() -> io::Result<()> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")
        .or_else(|_| std::net::UdpSocket::bind("[::]:0"))
        .map_err(|e| io::Error::other(format!("socket for SIOCSIFFLAGS: {e}")))?;
    // SAFETY: an all-zero ifreq is a valid value (a C struct of integers and arrays).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // The request's type is c_ulong with glibc and c_int with musl (the static build).
    #[allow(clippy::unnecessary_cast)]
    let request = libc::SIOCSIFFLAGS as libc::Ioctl;
    // SAFETY: `req` is a live ifreq naming "lo" for the duration of the call; SIOCSIFFLAGS
    // only reads it.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request, &req) };
    if rc != 0 {
        return Err(io::Error::other(format!(
            "setting lo up in a private netns: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// The cookie the kernel gives the network namespace at `path` (what `bpf_get_netns_cookie`
/// returns for sockets in it): read with `SO_NETNS_COOKIE` from a socket opened inside.
pub fn netns_cookie(path: &Path) -> io::Result<u64> {
    run_in_netns(path, || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| {
            // A namespace with IPv6 only (or no lo up) still lets us open an unbound socket.
            std::net::UdpSocket::bind("[::]:0")
        })?;
        crate::sockopt::netns_cookie(socket.as_fd())
    })?
}

/// The cookie of the namespace this process's main thread lives in.
pub fn current_netns_cookie() -> io::Result<u64> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    crate::sockopt::netns_cookie(socket.as_fd())
}

/// The inode number identifying the namespace at `path` (what `ip netns identify` compares).
pub fn netns_inode(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(fs::metadata(path)?.ino())
}

/// Raw fd helper used by [`crate::process`]: the fd number of an open namespace file.
pub(crate) fn raw(file: &File) -> i32 {
    file.as_raw_fd()
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Makes one UDP `connect()` to `127.0.0.1:9` from a short-lived child process placed in the
/// network namespace at `netns` and the cgroup at `cgroup` — so that cgroup connect programs
/// run for a socket of that namespace (how kernels without `SO_NETNS_COOKIE`, before 5.14,
/// learn a namespace's cookie from a BPF program). No packet is sent; the connect's own result
/// does not matter (with `lo` down it fails after the cgroup hook ran).
pub fn connect_once_in(netns: &Path, cgroup: &Path) -> io::Result<()> {
    let ns = open_netns(netns)?;
    let procs_path = cgroup.join("cgroup.procs");
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|e| annotate(e, "open", &procs_path))?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 9u16.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
    // SAFETY: the child runs only async-signal-safe system calls on memory prepared before the
    // fork (two open fds, a sockaddr on the stack, a static byte) and leaves with _exit, so a
    // lock another thread held at fork time is never touched.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above; each call's arguments are valid for it.
        unsafe {
            let code = if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                2
            } else if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                3
            } else {
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    4
                } else if libc::connect(
                    s,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                ) != 0
                {
                    5
                } else {
                    0
                }
            };
            libc::_exit(code);
        }
    }
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None)
        .map_err(|e| io::Error::other(format!("waiting for the connect child: {e}")))?;
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0 | 5) => Ok(()),
        nix::sys::wait::WaitStatus::Exited(_, code) => Err(io::Error::other(format!(
            "connect child in {} failed at step {code} (2 setns, 3 join cgroup {}, 4 socket)",
            netns.display(),
            cgroup.display()
        ))),
        other => Err(io::Error::other(format!(
            "connect child ended with {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(NamedNetns::create(name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn created_netns_is_separate_and_removed_on_drop() {
        if !crate::testing::kernel_tests_enabled("created_netns_is_separate_and_removed_on_drop") {
            return;
        }
        let name = format!("mb-test-ns-{}", std::process::id());
        let ns = NamedNetns::create(&name).unwrap();
        let path = ns.path().to_path_buf();
        assert!(path.exists());
        let own_ns = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        // Cookies by socket option exist from 5.14 on; before, the error says so (the
        // separation itself is proven below by reachability).
        let outer = if crate::testing::kernel_has_so_netns_cookie() {
            let inner = ns.cookie().unwrap();
            let outer = current_netns_cookie().unwrap();
            assert_ne!(inner, outer, "new namespace has the caller's cookie");
            // Stable: asking twice gives the same cookie.
            assert_eq!(inner, ns.cookie().unwrap());
            Some(outer)
        } else {
            let e = ns.cookie().unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
            None
        };
        // A listener of the caller's namespace is not reachable from inside.
        let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = outside.local_addr().unwrap();
        let reached = ns
            .run(move || {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1))
                    .is_ok()
            })
            .unwrap();
        assert!(
            !reached,
            "connected to {addr} of the outer namespace from inside"
        );
        // The caller's thread did not move (its namespace inode, on every kernel; its cookie
        // too where there are cookies).
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            own_ns
        );
        if let Some(outer) = outer {
            assert_eq!(current_netns_cookie().unwrap(), outer);
        }
        drop(ns);
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn duplicate_name_is_refused() {
        if !crate::testing::kernel_tests_enabled("duplicate_name_is_refused") {
            return;
        }
        let name = format!("mb-test-dup-{}", std::process::id());
        let first = NamedNetns::create(&name).unwrap();
        let err = NamedNetns::create(&name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert!(first.path().exists(), "failed duplicate removed the first");
    }
}
