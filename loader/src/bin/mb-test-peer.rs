//! Test helper for mb-loader's kernel tests (not part of merbridge): a process the tests move
//! into a private child cgroup before it opens sockets, so cgroup programs see its traffic.
//! It waits for one line on stdin ("go"), does its role, prints `RESULT …` lines and exits.
//!
//! Roles:
//!   connect PORT COUNT                      connect COUNT times to 127.0.0.1:PORT
//!   connect-until PORT STOPFILE AFTER MAX   connect until STOPFILE exists, then AFTER more
//!   sockmap PORT1 PORT2                     two loopback connections; write on the first,
//!                                           report what the second's server end received
//!   hold PORT1 PORT2                        two loopback connections kept open: prints
//!                                           `READY`, waits for another stdin line
//!   origdst                                 getsockopt(SOL_IP, SO_ORIGINAL_DST) on a socket
#![forbid(unsafe_code)]

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|_| format!("bad {what}: {:?}", args[i]))
}

fn connect_once(port: u16) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)).is_ok()
}

fn run(args: &[String]) -> Result<(), String> {
    let mut go = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut go)
        .map_err(|e| e.to_string())?;
    match args.first().map(String::as_str) {
        Some("connect") => {
            let port: u16 = arg(args, 1, "port")?;
            let count: u32 = arg(args, 2, "count")?;
            let ok = (0..count).filter(|_| connect_once(port)).count();
            println!("RESULT connected={ok} failed={}", count as usize - ok);
        }
        Some("connect-until") => {
            let port: u16 = arg(args, 1, "port")?;
            let stop: String = arg(args, 2, "stop file")?;
            let after: u32 = arg(args, 3, "count after stop")?;
            let max: u32 = arg(args, 4, "max connects")?;
            let (mut ok, mut failed, mut n) = (0u32, 0u32, 0u32);
            while n < max && !Path::new(&stop).exists() {
                if connect_once(port) {
                    ok += 1
                } else {
                    failed += 1
                }
                n += 1;
            }
            for _ in 0..after {
                if connect_once(port) {
                    ok += 1
                } else {
                    failed += 1
                }
            }
            println!("RESULT connected={ok} failed={failed}");
        }
        Some("sockmap") => {
            let p1: u16 = arg(args, 1, "port1")?;
            let p2: u16 = arg(args, 2, "port2")?;
            let bind = |p| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p));
            let l1 = bind(p1).map_err(|e| format!("bind {p1}: {e}"))?;
            let l2 = bind(p2).map_err(|e| format!("bind {p2}: {e}"))?;
            let mut c1 =
                TcpStream::connect((Ipv4Addr::LOCALHOST, p1)).map_err(|e| e.to_string())?;
            let _c2 = TcpStream::connect((Ipv4Addr::LOCALHOST, p2)).map_err(|e| e.to_string())?;
            let (mut s1, _) = l1.accept().map_err(|e| e.to_string())?;
            let (mut s2, _) = l2.accept().map_err(|e| e.to_string())?;
            // Established callbacks have run once accept returned; give sockops a moment.
            std::thread::sleep(Duration::from_millis(50));
            c1.write_all(b"redirected-ping")
                .map_err(|e| e.to_string())?;
            s2.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 64];
            let got = s2.read(&mut buf).unwrap_or(0);
            s1.set_nonblocking(true).map_err(|e| e.to_string())?;
            let s1_got = s1.read(&mut [0u8; 64]).unwrap_or(0);
            println!(
                "RESULT s2={} s1_bytes={s1_got}",
                String::from_utf8_lossy(&buf[..got])
            );
        }
        Some("hold") => {
            let p1: u16 = arg(args, 1, "port1")?;
            let p2: u16 = arg(args, 2, "port2")?;
            let mut keep = Vec::new();
            for p in [p1, p2] {
                let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p))
                    .map_err(|e| format!("bind {p}: {e}"))?;
                let c = TcpStream::connect((Ipv4Addr::LOCALHOST, p)).map_err(|e| e.to_string())?;
                let (s, _) = l.accept().map_err(|e| e.to_string())?;
                keep.push((l, c, s));
            }
            println!("READY");
            std::io::stdout().flush().map_err(|e| e.to_string())?;
            let mut done = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut done)
                .map_err(|e| e.to_string())?;
            drop(keep);
            println!("RESULT held");
        }
        Some("origdst") => {
            let s = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| e.to_string())?;
            match nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::OriginalDst) {
                Ok(sin) => {
                    let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    println!("RESULT origdst={ip}:{}", u16::from_be(sin.sin_port));
                }
                Err(e) => println!("RESULT error={e:?}"),
            }
        }
        _ => return Err("unknown role (see the file header)".into()),
    }
    std::io::stdout().flush().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mb-test-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
