//! `pidfd_open(2)` and `pidfd_getfd(2)` (Linux 5.6): a duplicate of a file descriptor another
//! process holds. The agent uses it to adopt a sidecar's inbound listener that was listening
//! before the data path was loaded (no `listen()` event will come for it) or on kernels
//! whose sock_ops cannot tell which pod a listener belongs to (5.10). Needs
//! `PTRACE_MODE_ATTACH` over the target (root, or CAP_SYS_PTRACE).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A pidfd for process `pid`.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags (0) and returns a new fd or -1; no memory is
    // passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A duplicate (close-on-exec) of file descriptor `target_fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target_fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes two fds and flags (0) and returns a new fd or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    /// Our own process: a duplicate of one of our fds reads the same pipe.
    #[test]
    fn getfd_duplicates_a_descriptor_of_a_process() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&w, b"hi").expect("write");
        let pidfd = match pidfd_open(std::process::id()) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return, // before 5.3
            Err(e) => panic!("pidfd_open: {e}"),
        };
        let dup = match pidfd_getfd(pidfd.as_fd(), r.as_raw_fd()) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return, // before 5.6
            Err(e) => panic!("pidfd_getfd: {e}"),
        };
        let mut buf = [0u8; 2];
        std::fs::File::from(dup).read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"hi");
        assert!(pidfd_getfd(pidfd.as_fd(), 1 << 20).is_err(), "no such fd");
    }
}
