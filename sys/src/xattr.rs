//! Extended attributes of socket files: `system.sockprotoname` names the protocol of the
//! socket behind a path such as `/proc/PID/fd/N` (`TCP`, `TCPv6`, `UDP`, `UNIX-STREAM`, ...).
//! It is read from the socket's own inode: no walk over any socket table, unlike
//! `/proc/PID/net/tcp`, whose every read walks every bucket of the host-wide established hash
//! (milliseconds on a busy node, for each namespace, each time).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The attribute sockfs answers for every socket inode (linux/xattr.h).
const SOCKPROTONAME: &[u8] = b"system.sockprotoname\0";

/// The protocol name of the socket at `path` (symbolic links followed, so `/proc/PID/fd/N`
/// works): `TCP` for an IPv4 TCP socket, `TCPv6` for an IPv6 one. A path that is not a
/// socket fails (`ENODATA` or `EOPNOTSUPP`, by file system).
pub fn socket_protocol(path: &Path) -> io::Result<String> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: a path with a NUL byte", path.display()),
        )
    })?;
    // Protocol names are short (struct proto's name is 32 bytes with its NUL).
    let mut value = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live across the call; `value` is writable
    // for `value.len()` bytes, and the kernel writes at most that many (else ERANGE).
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            SOCKPROTONAME.as_ptr().cast(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("getxattr {} system.sockprotoname: {e}", path.display()),
        ));
    }
    // The value includes its terminating NUL.
    let name = &value[..n as usize];
    let name = name.strip_suffix(&[0]).unwrap_or(name);
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// Whether the socket at `path` is TCP (IPv4 or IPv6); `false` for other sockets and for
/// paths that are not sockets or are gone.
pub fn is_tcp_socket(path: &Path) -> bool {
    matches!(socket_protocol(path).as_deref(), Ok("TCP" | "TCPv6"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn fd_path(fd: &impl AsRawFd) -> std::path::PathBuf {
        format!("/proc/self/fd/{}", fd.as_raw_fd()).into()
    }

    #[test]
    fn names_the_protocol_of_real_sockets_and_refuses_other_files() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_protocol(&fd_path(&v4)).unwrap(), "TCP");
        let stream = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let (accepted, _) = v4.accept().unwrap();
        assert!(is_tcp_socket(&fd_path(&stream)));
        assert!(is_tcp_socket(&fd_path(&accepted)));
        // IPv6 may be off in some sandboxes; where it is on, the name says so.
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            assert_eq!(socket_protocol(&fd_path(&v6)).unwrap(), "TCPv6");
            assert!(is_tcp_socket(&fd_path(&v6)));
        }
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_protocol(&fd_path(&udp)).unwrap(), "UDP");
        assert!(!is_tcp_socket(&fd_path(&udp)));
        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(socket_protocol(&fd_path(&unix))
            .unwrap()
            .starts_with("UNIX"));
        assert!(!is_tcp_socket(&fd_path(&unix)));

        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let err = socket_protocol(&fd_path(&file)).unwrap_err();
        assert!(err.to_string().contains("system.sockprotoname"), "{err}");
        assert!(!is_tcp_socket(&fd_path(&file)));
        assert!(!is_tcp_socket(Path::new("/proc/self/fd/999999")));
        assert!(socket_protocol(Path::new("a\0b")).is_err());
    }
}
