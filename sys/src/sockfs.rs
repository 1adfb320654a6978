//! What sockfs says about a socket file without touching any socket table: its protocol name,
//! the `system.sockprotoname` extended attribute (`TCP`, `TCPv6`, `UDP`, `UNIX-STREAM`, ...).
//! Read through `/proc/PID/fd/N` it tells whether another process's fd is a TCP socket at the
//! cost of one path lookup, where `/proc/PID/net/tcp` walks every bucket of the host-wide
//! established hash (milliseconds on a busy node, with each bucket's lock taken).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The extended attribute sockfs answers on every socket inode.
const SOCKPROTONAME: &[u8] = b"system.sockprotoname\0";

/// The protocol name of the socket that `path` is or links to (`/proc/PID/fd/N` follows the
/// link). Fails with `ENODATA` or `EOPNOTSUPP` when it is no socket, `ENOENT` when the fd or
/// process is gone.
pub fn protocol_name(path: &Path) -> io::Result<String> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
    // Protocol names are short (`struct proto`'s name is 32 bytes).
    let mut buf = [0u8; 64];
    // SAFETY: both names are NUL-terminated and outlive the call; the kernel writes at most
    // `buf.len()` bytes into `buf`, which we own.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            SOCKPROTONAME.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let value = &buf[..n as usize];
    // The value carries its terminating NUL.
    let value = value.strip_suffix(&[0]).unwrap_or(value);
    Ok(String::from_utf8_lossy(value).into_owned())
}

/// True when the socket behind `path` is TCP over IPv4 or IPv6.
pub fn is_tcp(path: &Path) -> io::Result<bool> {
    Ok(matches!(protocol_name(path)?.as_str(), "TCP" | "TCPv6"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn fd_path(fd: &impl AsRawFd) -> std::path::PathBuf {
        format!("/proc/self/fd/{}", fd.as_raw_fd()).into()
    }

    #[test]
    fn names_tcp_udp_and_unix_sockets_and_refuses_other_files() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (unix, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(protocol_name(&fd_path(&tcp)).unwrap(), "TCP");
        assert!(is_tcp(&fd_path(&tcp)).unwrap());
        assert_eq!(protocol_name(&fd_path(&udp)).unwrap(), "UDP");
        assert!(!is_tcp(&fd_path(&udp)).unwrap());
        assert!(!is_tcp(&fd_path(&unix)).unwrap());
        if let Ok(tcp6) = std::net::TcpListener::bind("[::1]:0") {
            assert_eq!(protocol_name(&fd_path(&tcp6)).unwrap(), "TCPv6");
        }
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(protocol_name(&fd_path(&file)).is_err());
        assert!(protocol_name(Path::new("/proc/self/fd/999999")).is_err());
    }
}
