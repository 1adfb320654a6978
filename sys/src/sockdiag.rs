//! The TCP listeners of the calling thread's network namespace, through `NETLINK_SOCK_DIAG`
//! (`inet_diag`, as `ss -lt` asks). A dump of the LISTEN state walks only the kernel's
//! listening hash; `/proc/net/tcp` walks every bucket of the host-wide established hash as
//! well, which takes milliseconds on a busy node. No `unsafe`: plain socket reads and writes
//! of the UAPI's fixed layouts (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h).

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// The address families a dump asks for (linux/socket.h).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
const IPPROTO_TCP: u8 = 6;
const TCP_LISTEN: u32 = 10;
/// `struct inet_diag_sockid`: source and destination port, addresses, interface, cookie;
/// the source port (network order) first.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad (a byte each), the `states` mask
/// (u32), then the sockid.
const REQ_LEN: usize = 4 + 4 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retrans (a byte each), the sockid, then
/// expires, rqueue, wqueue, uid and inode (u32 each).
const MSG_LEN: usize = 4 + SOCKID_LEN + 5 * 4;
const MSG_SPORT: usize = 4;
const MSG_INODE: usize = MSG_LEN - 4;

/// One listening socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    pub port: u16,
    /// The socket's inode, as `/proc/PID/fd/N` links name it (`socket:[inode]`).
    pub inode: u64,
}

/// A `NETLINK_SOCK_DIAG` socket: it answers for the network namespace it was created in
/// (create it in a pod's with [`crate::netns::create_in_netns`]).
#[derive(Debug)]
pub struct DiagSocket(File);

impl DiagSocket {
    pub fn open() -> io::Result<DiagSocket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(io::Error::from)?;
        Ok(DiagSocket(File::from(fd)))
    }

    /// The TCP listeners of family `family` (`AF_INET` or `AF_INET6`) in the socket's
    /// namespace. Fails (e.g. `ENOENT`) where the kernel has no `tcp_diag`.
    pub fn tcp_listeners(&mut self, family: u8) -> io::Result<Vec<Listener>> {
        self.0.write_all(&request(family))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = self.0.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sock_diag: the dump ended without NLMSG_DONE",
                ));
            }
            if parse(&buf[..n], family, &mut out)? {
                return Ok(out);
            }
        }
    }
}

/// The TCP listeners of family `family` in the calling thread's network namespace.
pub fn tcp_listeners(family: u8) -> io::Result<Vec<Listener>> {
    DiagSocket::open()?.tcp_listeners(family)
}

/// The TCP listeners of `families` in the network namespace at `netns`, through a diag socket
/// made there. The outer error: the namespace could not be entered (gone, or no privilege);
/// the inner one: the dump failed (a kernel without `tcp_diag`), where a caller may fall back
/// to the namespace's `/proc` tables.
pub fn tcp_listeners_in(netns: &Path, families: &[u8]) -> io::Result<io::Result<Vec<Listener>>> {
    crate::netns::create_in_netns(netns, DiagSocket::open).map(|diag| {
        let mut diag = diag?;
        let mut out = Vec::new();
        for &family in families {
            out.extend(diag.tcp_listeners(family)?);
        }
        Ok(out)
    })
}

/// A dump request for the TCP listeners of `family`.
fn request(family: u8) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut req = Vec::with_capacity(len);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    req.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    req.resize(len, 0); // the socket id: zeros, no filter
    req
}

/// Appends the listeners in one datagram of the dump to `out`; true once the dump is done.
fn parse(mut data: &[u8], family: u8, out: &mut Vec<Listener>) -> io::Result<bool> {
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "sock_diag: a message of {len} bytes in {} received",
                    data.len()
                ),
            ));
        }
        let payload = &data[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = if payload.len() >= 4 {
                    -(u32_at(payload, 0) as i32)
                } else {
                    nix::libc::EIO
                };
                return Err(io::Error::from_raw_os_error(errno));
            }
            SOCK_DIAG_BY_FAMILY if payload.len() >= MSG_LEN => out.push(Listener {
                family,
                port: u16::from_be_bytes([payload[MSG_SPORT], payload[MSG_SPORT + 1]]),
                inode: u64::from(u32_at(payload, MSG_INODE)),
            }),
            _ => {}
        }
        // NLMSG_ALIGN: messages start on 4-byte boundaries.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or(&[]);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn requests_and_replies_have_the_uapi_layout() {
        let req = request(2);
        assert_eq!(req.len(), 72);
        assert_eq!(&req[16..20], &[2, 6, 0, 0]);
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), 1 << 10);

        let mut msg = vec![0u8; MSG_LEN];
        msg[0] = 2;
        msg[1] = 10;
        msg[MSG_SPORT..MSG_SPORT + 2].copy_from_slice(&15006u16.to_be_bytes());
        msg[MSG_INODE..MSG_INODE + 4].copy_from_slice(&4242u32.to_ne_bytes());
        let mut data = message(SOCK_DIAG_BY_FAMILY, &msg);
        data.extend(message(NLMSG_DONE, &[0; 4]));
        let mut out = Vec::new();
        assert!(parse(&data, 2, &mut out).unwrap());
        assert_eq!(
            out,
            vec![Listener {
                family: 2,
                port: 15006,
                inode: 4242
            }]
        );
        let err = parse(&message(NLMSG_ERROR, &(-2i32).to_ne_bytes()), 2, &mut out);
        assert_eq!(err.unwrap_err().raw_os_error(), Some(2));
        assert!(parse(&[1, 2, 3], 2, &mut out).is_ok_and(|done| !done));
        let mut bad = message(NLMSG_DONE, &[]);
        bad[0] = 200;
        assert!(parse(&bad, 2, &mut out).is_err());
    }

    fn inode_of(fd: &impl std::os::fd::AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        link.to_string_lossy()
            .trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .unwrap()
    }

    /// Against the kernel: a socket made in a namespace by `create_in_netns` (the calling
    /// thread back home afterwards) dumps that namespace's listener, with its port and
    /// inode, and nothing of this one's.
    #[test]
    fn the_dump_lists_the_listeners_of_the_sockets_namespace() {
        if !crate::testing::kernel_tests_enabled(
            "the_dump_lists_the_listeners_of_the_sockets_namespace",
        ) {
            return;
        }
        let ns = crate::netns::NamedNetns::create(&format!("mb-sockdiag-{}", std::process::id()))
            .expect("netns");
        let home = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let here = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (there, port) = ns
            .run(|| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let port = l.local_addr().unwrap().port();
                (l, port)
            })
            .unwrap();
        let mut diag = crate::netns::create_in_netns(ns.path(), DiagSocket::open)
            .unwrap()
            .expect("a sock_diag socket (needs tcp_diag)");
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
            home,
            "the calling thread is back in its own namespace"
        );
        let listeners = diag
            .tcp_listeners(AF_INET)
            .expect("sock_diag dump (needs tcp_diag)");
        assert_eq!(
            listeners,
            vec![Listener {
                family: 2,
                port,
                inode: inode_of(&there)
            }],
            "only that namespace's listener"
        );
        assert!(tcp_listeners(AF_INET)
            .unwrap()
            .iter()
            .any(|l| l.inode == inode_of(&here)));
        assert!(diag.tcp_listeners(AF_INET6).unwrap().is_empty());
    }
}
