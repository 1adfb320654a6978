//! Socket options the test bed, the sidecar and the agent read: the original destination of a
//! redirected connection and the network namespace cookie of a socket.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

/// `SO_ORIGINAL_DST` at `SOL_IP` (linux/netfilter_ipv4.h).
pub const SO_ORIGINAL_DST: i32 = 80;
/// `IP6T_SO_ORIGINAL_DST` at `SOL_IPV6` (linux/netfilter_ipv6/ip6_tables.h).
pub const IP6T_SO_ORIGINAL_DST: i32 = 80;
/// `SO_NETNS_COOKIE` at `SOL_SOCKET` (asm-generic/socket.h, Linux 5.14+).
pub const SO_NETNS_COOKIE: i32 = 71;

/// `accept4(2)` with `SOCK_NONBLOCK | SOCK_CLOEXEC`: the accepted socket is non-blocking from
/// its first instant, as event-driven servers (Go, Envoy) accept. The peer address is not
/// asked for.
pub fn accept_non_blocking(listener: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: accept4 takes a listening fd, two null pointers (no address wanted) and flags;
    // it returns a new fd or -1. No memory is passed.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Reads a fixed-size option value. `T` must be plain old data (every bit pattern valid).
fn getsockopt_pod<T: Copy + Default>(
    fd: BorrowedFd<'_>,
    level: i32,
    name: i32,
    what: &str,
) -> io::Result<T> {
    let mut value = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, writable `T` of `len` bytes for the duration of the call and
    // the kernel writes at most `len` bytes; the callers only instantiate `T` with integer and
    // libc sockaddr types, for which any bytes the kernel writes are a valid value.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut T).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
            // Callers tell "this kernel has no such option" from other failures by it.
            return Err(e);
        }
        return Err(io::Error::new(e.kind(), format!("getsockopt({what}): {e}")));
    }
    if len as usize != size_of::<T>() {
        return Err(io::Error::other(format!(
            "getsockopt({what}) returned {len} bytes, expected {}",
            size_of::<T>()
        )));
    }
    Ok(value)
}

#[derive(Clone, Copy)]
struct SockaddrIn(libc::sockaddr_in);
impl Default for SockaddrIn {
    fn default() -> Self {
        SockaddrIn(libc::sockaddr_in {
            sin_family: 0,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        })
    }
}

#[derive(Clone, Copy)]
struct SockaddrIn6(libc::sockaddr_in6);
impl Default for SockaddrIn6 {
    fn default() -> Self {
        SockaddrIn6(libc::sockaddr_in6 {
            sin6_family: 0,
            sin6_port: 0,
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
            sin6_scope_id: 0,
        })
    }
}

/// The destination an IPv4 TCP connection had before NAT (iptables REDIRECT) or before a
/// `cgroup/connect4` rewrite (answered by merbridge's `cgroup/getsockopt` program).
/// `ENOENT` means the connection was not redirected.
pub fn original_dst(fd: BorrowedFd<'_>) -> io::Result<SocketAddrV4> {
    let SockaddrIn(sa) =
        getsockopt_pod::<SockaddrIn>(fd, libc::SOL_IP, SO_ORIGINAL_DST, "SO_ORIGINAL_DST")?;
    if i32::from(sa.sin_family) != libc::AF_INET {
        return Err(io::Error::other(format!(
            "SO_ORIGINAL_DST returned address family {}, expected AF_INET",
            sa.sin_family
        )));
    }
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    ))
}

/// The IPv6 counterpart of [`original_dst`] (`IP6T_SO_ORIGINAL_DST` at `SOL_IPV6`).
pub fn original_dst6(fd: BorrowedFd<'_>) -> io::Result<SocketAddrV6> {
    let SockaddrIn6(sa) = getsockopt_pod::<SockaddrIn6>(
        fd,
        libc::SOL_IPV6,
        IP6T_SO_ORIGINAL_DST,
        "IP6T_SO_ORIGINAL_DST",
    )?;
    if i32::from(sa.sin6_family) != libc::AF_INET6 {
        return Err(io::Error::other(format!(
            "IP6T_SO_ORIGINAL_DST returned address family {}, expected AF_INET6",
            sa.sin6_family
        )));
    }
    Ok(SocketAddrV6::new(
        Ipv6Addr::from(sa.sin6_addr.s6_addr),
        u16::from_be(sa.sin6_port),
        u32::from_be(sa.sin6_flowinfo),
        sa.sin6_scope_id,
    ))
}

/// The original destination of an accepted socket whose local address is `local`: IPv4
/// sockets ask `SO_ORIGINAL_DST`, IPv6 ones `IP6T_SO_ORIGINAL_DST`.
pub fn original_dst_for(fd: BorrowedFd<'_>, local: &SocketAddr) -> io::Result<SocketAddr> {
    match local {
        SocketAddr::V4(_) => original_dst(fd).map(SocketAddr::V4),
        SocketAddr::V6(_) => original_dst6(fd).map(SocketAddr::V6),
    }
}

/// The cookie of the network namespace the socket lives in (`SO_NETNS_COOKIE`, Linux 5.14+).
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    getsockopt_pod::<u64>(fd, libc::SOL_SOCKET, SO_NETNS_COOKIE, "SO_NETNS_COOKIE").map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "SO_NETNS_COOKIE is not supported: it needs Linux 5.14 or newer",
            )
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn netns_cookie_is_nonzero_and_same_for_sockets_of_one_namespace() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        if !crate::testing::kernel_has_so_netns_cookie() {
            // Before 5.14: the error says what is missing, for both kinds of socket.
            for fd in [a.as_fd(), b.as_fd()] {
                let e = netns_cookie(fd).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
                assert!(e.to_string().contains("Linux 5.14"), "{e}");
            }
            return;
        }
        let ca = netns_cookie(a.as_fd()).unwrap();
        assert_ne!(ca, 0);
        assert_eq!(ca, netns_cookie(b.as_fd()).unwrap());
    }
}
