//! Raw `bpf(2)`: command, type and flag numbers, errors that name the command and errno, the
//! syscall entry point (replaceable in unit tests, see [`fake`]), owned close-on-exec fds, and
//! one safe wrapper per command (in [`ops`]) plus [`MapFd`], a map fd that knows its shape so
//! element operations can check buffer sizes before the kernel writes into them.

pub mod attr;
#[cfg(any(test, feature = "fake-syscall"))]
pub mod fake;
mod map;
pub mod ops;

pub use map::{possible_cpus, BatchCursor, MapFd};
pub use ops::*;

use attr::Attr;
use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

crate::coded_enum! {
    /// `enum bpf_cmd` values we use.
    pub enum Cmd {
        MapCreate = 0 => "BPF_MAP_CREATE",
        MapLookupElem = 1 => "BPF_MAP_LOOKUP_ELEM",
        MapUpdateElem = 2 => "BPF_MAP_UPDATE_ELEM",
        MapDeleteElem = 3 => "BPF_MAP_DELETE_ELEM",
        MapGetNextKey = 4 => "BPF_MAP_GET_NEXT_KEY",
        ProgLoad = 5 => "BPF_PROG_LOAD",
        ObjPin = 6 => "BPF_OBJ_PIN",
        ObjGet = 7 => "BPF_OBJ_GET",
        ProgAttach = 8 => "BPF_PROG_ATTACH",
        ProgDetach = 9 => "BPF_PROG_DETACH",
        ProgTestRun = 10 => "BPF_PROG_TEST_RUN",
        ProgGetFdById = 13 => "BPF_PROG_GET_FD_BY_ID",
        MapLookupBatch = 24 => "BPF_MAP_LOOKUP_BATCH",
        MapUpdateBatch = 26 => "BPF_MAP_UPDATE_BATCH",
        ObjGetInfoByFd = 15 => "BPF_OBJ_GET_INFO_BY_FD",
        ProgQuery = 16 => "BPF_PROG_QUERY",
        LinkCreate = 28 => "BPF_LINK_CREATE",
        LinkUpdate = 29 => "BPF_LINK_UPDATE",
        LinkDetach = 34 => "BPF_LINK_DETACH",
    }
}

macro_rules! numbered {
    ($(#[$meta:meta])* $name:ident { $($(#[$cm:meta])* $konst:ident = $value:expr, $text:expr;)* }) => {
        $(#[$meta])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            $($(#[$cm])* pub const $konst: $name = $name($value);)*
            /// The kernel's name for this value, or `None` for a number we have no name for.
            pub fn known_name(self) -> Option<&'static str> {
                match self.0 { $($value => Some($text),)* _ => None }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.known_name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }
    };
}

numbered! {
    /// `enum bpf_prog_type`.
    ProgType {
        SOCKET_FILTER = 1, "socket_filter";
        CGROUP_SKB = 8, "cgroup_skb";
        CGROUP_SOCK = 9, "cgroup_sock";
        SOCK_OPS = 13, "sock_ops";
        SK_MSG = 16, "sk_msg";
        CGROUP_SOCK_ADDR = 18, "cgroup_sock_addr";
        CGROUP_SOCKOPT = 25, "cgroup_sockopt";
        SK_LOOKUP = 30, "sk_lookup";
    }
}

numbered! {
    /// `enum bpf_map_type`.
    MapType {
        HASH = 1, "hash";
        ARRAY = 2, "array";
        PERCPU_HASH = 5, "percpu_hash";
        PERCPU_ARRAY = 6, "percpu_array";
        LRU_HASH = 9, "lru_hash";
        LRU_PERCPU_HASH = 10, "lru_percpu_hash";
        LPM_TRIE = 11, "lpm_trie";
        SOCKMAP = 15, "sockmap";
        SOCKHASH = 18, "sockhash";
    }
}

impl MapType {
    /// Per-CPU maps hand user space one value slot per possible CPU.
    pub fn is_per_cpu(self) -> bool {
        matches!(
            self,
            MapType::PERCPU_HASH | MapType::PERCPU_ARRAY | MapType::LRU_PERCPU_HASH
        ) || self.0 == 21 // BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE
    }
}

numbered! {
    /// `enum bpf_attach_type`.
    AttachType {
        CGROUP_INET_INGRESS = 0, "cgroup_inet_ingress";
        CGROUP_INET_EGRESS = 1, "cgroup_inet_egress";
        CGROUP_INET_SOCK_CREATE = 2, "cgroup_inet_sock_create";
        CGROUP_SOCK_OPS = 3, "cgroup_sock_ops";
        SK_MSG_VERDICT = 7, "sk_msg_verdict";
        CGROUP_INET4_BIND = 8, "cgroup_inet4_bind";
        CGROUP_INET6_BIND = 9, "cgroup_inet6_bind";
        CGROUP_INET4_CONNECT = 10, "cgroup_inet4_connect";
        CGROUP_INET6_CONNECT = 11, "cgroup_inet6_connect";
        CGROUP_UDP4_SENDMSG = 14, "cgroup_udp4_sendmsg";
        CGROUP_UDP6_SENDMSG = 15, "cgroup_udp6_sendmsg";
        CGROUP_UDP4_RECVMSG = 19, "cgroup_udp4_recvmsg";
        CGROUP_UDP6_RECVMSG = 20, "cgroup_udp6_recvmsg";
        CGROUP_GETSOCKOPT = 21, "cgroup_getsockopt";
        CGROUP_SETSOCKOPT = 22, "cgroup_setsockopt";
        SK_LOOKUP = 36, "sk_lookup";
    }
}

/// `BPF_F_ALLOW_OVERRIDE` (PROG_ATTACH).
pub const F_ALLOW_OVERRIDE: u32 = 1 << 0;
/// `BPF_F_ALLOW_MULTI` (PROG_ATTACH): coexist with other programs on the cgroup.
pub const F_ALLOW_MULTI: u32 = 1 << 1;
/// `BPF_F_REPLACE` (PROG_ATTACH with `replace_bpf_fd`, LINK_UPDATE with `old_prog_fd`).
pub const F_REPLACE: u32 = 1 << 2;
/// `BPF_F_QUERY_EFFECTIVE` (PROG_QUERY).
pub const F_QUERY_EFFECTIVE: u32 = 1 << 0;
/// `BPF_F_NO_PREALLOC` (MAP_CREATE; required for LPM tries).
pub const F_NO_PREALLOC: u32 = 1 << 0;
/// MAP_UPDATE_ELEM flags.
pub const UPDATE_ANY: u64 = 0;
pub const UPDATE_NOEXIST: u64 = 1;
pub const UPDATE_EXIST: u64 = 2;
/// BPF_OBJ_GET file flags.
pub const OBJ_RDONLY: u32 = 1 << 3;
pub const OBJ_WRONLY: u32 = 1 << 4;
/// `BPF_LINK_TYPE_CGROUP`.
pub const LINK_TYPE_CGROUP: u32 = 3;
/// `BPF_LINK_TYPE_NETNS` (flow dissector, sk_lookup).
pub const LINK_TYPE_NETNS: u32 = 5;
/// Kernel-internal "operation not supported" that leaks to user space (not in libc).
pub const ENOTSUPP: i32 = 524;

/// A failed `bpf(2)` call: which command and which errno, with an optional detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfError {
    pub cmd: Cmd,
    pub errno: i32,
    /// What we were doing, when the caller knows more than the command (a path, a size).
    pub detail: Option<String>,
}

impl BpfError {
    pub fn new(cmd: Cmd, errno: i32) -> BpfError {
        BpfError {
            cmd,
            errno,
            detail: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> BpfError {
        self.detail = Some(detail.into());
        self
    }

    /// True if the errno is `e`.
    pub fn is(&self, e: nix::errno::Errno) -> bool {
        self.errno == e as i32
    }

    /// "EINVAL", "ENOTSUPP", … (or the number when we have no name).
    pub fn errno_name(&self) -> String {
        errno_name(self.errno)
    }
}

/// The symbolic name of an errno value.
pub fn errno_name(errno: i32) -> String {
    if errno == ENOTSUPP {
        return "ENOTSUPP".to_string();
    }
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => format!("errno {errno}"),
        e => format!("{e:?}"),
    }
}

fn errno_text(errno: i32) -> String {
    if errno == ENOTSUPP {
        return "operation not supported by this kernel".to_string();
    }
    nix::errno::Errno::from_raw(errno).desc().to_string()
}

impl fmt::Display for BpfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bpf({}) failed: {} ({})",
            self.cmd.name(),
            errno_name(self.errno),
            errno_text(self.errno)
        )?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        if self.errno == nix::errno::Errno::EPERM as i32 {
            f.write_str(
                " — needs root or CAP_BPF (and CAP_NET_ADMIN to attach); on kernels before \
                 5.11 also a high enough RLIMIT_MEMLOCK (ulimit -l unlimited)",
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for BpfError {}

/// Calls the real `bpf(2)` — or, in unit tests, the closure installed with
/// [`fake::override_syscall`] on this thread.
fn raw_bpf(cmd: Cmd, attr: &mut [u8]) -> Result<i64, i32> {
    #[cfg(any(test, feature = "fake-syscall"))]
    if let Some(result) = fake::dispatch(cmd, attr) {
        return result;
    }
    // SAFETY: `attr` is an initialised attr struct of exactly `attr.len()` bytes that lives for
    // the call. Every pointer field in it was set by a wrapper in this module to a buffer that
    // outlives the call and is at least as long as the length field the kernel reads with it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as u32 as libc::c_int,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(nix::errno::Errno::last_raw())
    } else {
        Ok(ret)
    }
}

/// Runs `cmd` with `attr`; the kernel may write results back into `attr`.
fn bpf<A: Attr>(cmd: Cmd, attr: &mut A) -> Result<i64, BpfError> {
    // SAFETY: `A: Attr` guarantees a repr(C) struct of integers without implicit padding, so
    // all `size_of::<A>()` bytes are initialised and any byte pattern the kernel writes back is
    // a valid `A`. The slice borrows `attr` mutably for its whole life.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(attr as *mut A as *mut u8, std::mem::size_of::<A>())
    };
    match raw_bpf(cmd, bytes) {
        Err(errno) if errno == libc::EPERM && charges_memlock(cmd) && raise_memlock() => {
            raw_bpf(cmd, bytes).map_err(|errno| BpfError::new(cmd, errno))
        }
        other => other.map_err(|errno| BpfError::new(cmd, errno)),
    }
}

/// Commands whose memory kernels before 5.11 charge to RLIMIT_MEMLOCK (EPERM when it is low).
fn charges_memlock(cmd: Cmd) -> bool {
    matches!(cmd, Cmd::MapCreate | Cmd::ProgLoad)
}

/// Raises RLIMIT_MEMLOCK to infinity, once per process; true if it was below and is now
/// raised (then the failed command is worth one retry). Needs root or CAP_SYS_RESOURCE.
fn raise_memlock() -> bool {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    use std::sync::atomic::{AtomicBool, Ordering};
    static TRIED: AtomicBool = AtomicBool::new(false);
    if TRIED.swap(true, Ordering::SeqCst) {
        return false;
    }
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == RLIM_INFINITY => false,
        _ => setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok(),
    }
}

/// Wraps an fd the kernel just returned. fd 0 is dup'd to >= 1 (the BPF UAPI treats 0 as "no
/// fd"); fds from bpf(2) already have FD_CLOEXEC set by the kernel.
fn new_fd(cmd: Cmd, raw: i64) -> Result<OwnedFd, BpfError> {
    let raw = RawFd::try_from(raw).map_err(|_| {
        BpfError::new(cmd, libc::EBADF).with_detail(format!("kernel returned fd {raw}"))
    })?;
    // SAFETY: the kernel (or the test fake, which hands over an fd it owned) just created this
    // fd for us; nothing else owns or closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if raw != 0 {
        return Ok(fd);
    }
    use std::os::fd::AsRawFd;
    let dup = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(1))
        .map_err(|e| BpfError::new(cmd, e as i32).with_detail("moving fd 0 to fd >= 1"))?;
    // SAFETY: F_DUPFD_CLOEXEC just created `dup`; we are its only owner. `fd` (0) is closed
    // when it drops here.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// Copies `name` into the kernel's 16-byte object name: at most 15 bytes of `[A-Za-z0-9_.]`
/// (the characters every kernel accepts), NUL-terminated. Other characters become `_`.
pub fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *slot = if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' {
            b
        } else {
            b'_'
        };
    }
    out
}

/// The text of a NUL-padded kernel name.
pub fn name_from_kernel(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_command_and_errno() {
        let e = BpfError::new(Cmd::ProgLoad, libc::EINVAL);
        let s = e.to_string();
        assert!(s.contains("BPF_PROG_LOAD") && s.contains("EINVAL"), "{s}");
        let e = BpfError::new(Cmd::LinkCreate, ENOTSUPP);
        assert!(e.to_string().contains("ENOTSUPP"), "{e}");
        let e = BpfError::new(Cmd::MapCreate, libc::EPERM).with_detail("map foo");
        let s = e.to_string();
        assert!(
            s.contains("EPERM") && s.contains("map foo") && s.contains("root"),
            "{s}"
        );
        assert!(e.is(nix::errno::Errno::EPERM));
    }

    #[test]
    fn object_names_are_truncated_and_sanitised() {
        assert_eq!(&object_name("connect4")[..9], b"connect4\0");
        let long = object_name("a-very-long-program-name");
        assert_eq!(&long[..15], b"a_very_long_pro");
        assert_eq!(long[15], 0);
        assert_eq!(name_from_kernel(&long), "a_very_long_pro");
    }

    #[test]
    fn numbered_types_print_names() {
        assert_eq!(ProgType::CGROUP_SOCK_ADDR.to_string(), "cgroup_sock_addr");
        assert_eq!(MapType(99).to_string(), "MapType(99)");
        assert!(MapType::PERCPU_ARRAY.is_per_cpu() && !MapType::HASH.is_per_cpu());
    }

    /// fd 0 can only be handed out when stdin is closed, which a test must not do to the
    /// shared test process: the check runs in a child copy of this test binary.
    #[test]
    fn fd_zero_from_the_kernel_is_moved_to_a_higher_cloexec_fd() {
        const CHILD: &str = "MB_SYS_FD_ZERO_CHILD";
        if std::env::var_os(CHILD).is_some() {
            use std::os::fd::AsRawFd;
            nix::unistd::close(0).expect("close stdin in the child");
            let raw = fake::dummy_fd();
            assert_eq!(raw, 0, "the lowest free fd is 0 now");
            let fd = new_fd(Cmd::ObjGet, i64::from(raw)).unwrap();
            assert!(fd.as_raw_fd() >= 1);
            let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert!(nix::fcntl::FdFlag::from_bits_truncate(flags)
                .contains(nix::fcntl::FdFlag::FD_CLOEXEC));
            assert!(
                nix::fcntl::fcntl(0, nix::fcntl::FcntlArg::F_GETFD).is_err(),
                "0 closed"
            );
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "bpf::tests::fd_zero_from_the_kernel_is_moved_to_a_higher_cloexec_fd",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {text}");
        assert!(text.contains("1 passed"), "child ran nothing: {text}");
    }

    #[test]
    fn returned_fds_are_owned_and_bad_numbers_rejected() {
        let fd = fake::dummy_fd();
        let kept = new_fd(Cmd::ObjGet, fd as i64).unwrap();
        use std::os::fd::AsRawFd;
        assert_eq!(kept.as_raw_fd(), fd);
        assert!(new_fd(Cmd::ObjGet, i64::MAX).is_err());
    }
}
