//! HAProxy (Debian's `haproxy` package) as a sidecar: a real, event-driven proxy from outside
//! this project, asking for the original destination as Envoy's `original_dst` does.
//!
//! The configuration is generated from a [`SidecarConfig`] into a private directory (in the
//! test bed's staging directory; never `/etc/haproxy`, never the system service): `mode tcp`; an outbound frontend and an inbound
//! one whose backend is `server orig 0.0.0.0` — forward to the connection's destination, which
//! HAProxy takes from `getsockname()` then `getsockopt(SOL_IP, SO_ORIGINAL_DST)`; the inbound
//! one connects from the passthrough address; a connection whose destination is still a
//! sidecar port (no original destination found) is rejected, and logged, instead of looping.
//! HAProxy's own `splice()` stays off unless the relay mode asks for it.
//!
//! HAProxy writes one log line per finished connection to its stdout
//! (`log stdout format raw`); [`parse_log_line`] turns it into the same [`Record`] the
//! reference sidecar prints.
//!
//! Known limit (HAProxy 2.6): it asks `SO_ORIGINAL_DST` only on IPv4 sockets, so an
//! intercepted IPv6 connection has no original destination and is rejected.

use super::{Listener, Record, RelayMode, SidecarConfig};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where HAProxy is: `$MB_HAPROXY_BIN`, else Debian's `/usr/sbin/haproxy`.
pub fn haproxy_binary() -> io::Result<PathBuf> {
    let path: PathBuf =
        std::env::var_os("MB_HAPROXY_BIN").map_or_else(|| "/usr/sbin/haproxy".into(), Into::into);
    if path.is_file() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "HAProxy not found at {}: install Debian's package (apt-get install haproxy; \
                 its service need not run) or set MB_HAPROXY_BIN",
                path.display()
            ),
        ))
    }
}

/// Frontend name of the explicit-proxy listener on `port`.
fn forward_frontend(port: u16) -> String {
    format!("forward_{port}")
}

/// One line per connection; addresses and ports apart, since `%ci` prints IPv6 unbracketed.
const LOG_FORMAT: &str = "mbhap fe=%f ci=%ci cp=%cp dst=%[fc_dst] dport=%[fc_dst_port] \
                          bi=%bi bp=%bp up=%U down=%B ts=%ts";

/// The HAProxy configuration for `config` (see the module comment), with its runtime API on
/// the unix socket `stats_socket` (for [`runtime_state`]).
pub fn config_text(config: &SidecarConfig, stats_socket: &Path) -> Result<String, String> {
    if config.dns_port.is_some() {
        return Err(
            "HAProxy has no DNS proxy (it relays TCP only): run the DNS capture with the \
             reference sidecar"
                .into(),
        );
    }
    if config.workers == 0 || config.workers > 64 {
        return Err(format!(
            "HAProxy runs 1 to 64 threads, not {}",
            config.workers
        ));
    }
    let (out, inb) = (config.outbound_port, config.inbound_port);
    let mut c = String::new();
    let _ = writeln!(c, "global\n    log stdout format raw local0 info");
    let _ = writeln!(c, "    nbthread {}", config.workers);
    let _ = writeln!(
        c,
        "    stats socket {} mode 600 level operator",
        stats_socket.display()
    );
    let _ = writeln!(
        c,
        "defaults\n    mode tcp\n    log global\n    timeout connect 5s\n    \
         timeout client 1h\n    timeout server 1h\n    log-format \"{LOG_FORMAT}\""
    );
    if config.relay == RelayMode::Splice {
        let _ = writeln!(c, "    option splice-request\n    option splice-response");
    }
    let binds = |c: &mut String, port: u16| {
        let _ = writeln!(c, "    bind 0.0.0.0:{port}");
        if !config.no_ipv6 {
            let _ = writeln!(c, "    bind :::{port} v6only");
        }
    };
    // A destination that is still a sidecar port means no original destination was found:
    // reject (and log, which `tcp-request connection` would not) rather than loop.
    let no_loop = format!("    tcp-request content reject if {{ fc_dst_port {out} {inb} }}");
    let _ = writeln!(c, "frontend outbound");
    binds(&mut c, out);
    let _ = writeln!(c, "{no_loop}\n    default_backend original_dst");
    let _ = writeln!(c, "frontend inbound");
    binds(&mut c, inb);
    let _ = writeln!(c, "{no_loop}\n    default_backend passthrough");
    let _ = writeln!(c, "backend original_dst\n    server orig 0.0.0.0");
    let _ = writeln!(
        c,
        "backend passthrough\n    server orig 0.0.0.0 source {}",
        config.passthrough_v4
    );
    for f in &config.forward {
        let name = forward_frontend(f.port);
        let _ = writeln!(c, "frontend {name}");
        binds(&mut c, f.port);
        let _ = writeln!(c, "    default_backend {name}\nbackend {name}");
        // HAProxy reads `ADDR:PORT` splitting at the last colon; IPv6 needs its prefix.
        let to = match f.to {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("ipv6@{}:{}", a.ip(), a.port()),
        };
        let _ = writeln!(c, "    server to {to}");
    }
    Ok(c)
}

/// The record of one HAProxy log line; `None` for other lines. `local` is the listener's
/// bound address: HAProxy does not report `getsockname()` apart from the original
/// destination.
pub fn parse_log_line(line: &str, config: &SidecarConfig) -> Option<Record> {
    let rest = line.trim().strip_prefix("mbhap ")?;
    let m: std::collections::BTreeMap<&str, &str> = rest
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let ip = |k: &str| -> Option<Option<IpAddr>> {
        match *m.get(k)? {
            "-" => Some(None),
            v => v.parse().ok().map(Some),
        }
    };
    let port = |k: &str| -> Option<Option<u16>> {
        match *m.get(k)? {
            "-" => Some(None),
            v => v.parse().ok().map(Some),
        }
    };
    let addr = |i: &str, p: &str| -> Option<Option<SocketAddr>> {
        Some(match (ip(i)?, port(p)?) {
            (Some(i), Some(p)) => Some(SocketAddr::new(i, p)),
            _ => None,
        })
    };
    let fe = *m.get("fe")?;
    let (listener, listen_port) = match fe {
        "outbound" => (Listener::Outbound, config.outbound_port),
        "inbound" => (Listener::Inbound, config.inbound_port),
        _ => (
            Listener::Forward,
            fe.strip_prefix("forward_")?.parse().ok()?,
        ),
    };
    let peer = addr("ci", "cp")??;
    let dst = addr("dst", "dport")?;
    let original_dst = match (listener, dst) {
        (Listener::Forward, _) => None,
        (_, Some(d)) if d.port() == config.outbound_port || d.port() == config.inbound_port => None,
        (_, d) => d,
    };
    let wildcard: IpAddr = if peer.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let ts = *m.get("ts")?;
    Some(Record {
        listener,
        peer,
        local: SocketAddr::new(wildcard, listen_port),
        original_dst,
        upstream_local: addr("bi", "bp")?,
        bytes_up: m.get("up")?.parse().ok()?,
        bytes_down: m.get("down")?.parse().ok()?,
        // `--`: a normal end; otherwise HAProxy's two-letter termination state (e.g. `PR`
        // rejected by a rule, `SC` connection to the server failed).
        error: (ts != "--").then(|| format!("haproxy_termination_{ts}")),
    })
}

/// A private directory for one HAProxy: its configuration and its runtime API socket;
/// removed on drop.
#[derive(Debug)]
pub struct ConfigDir {
    dir: PathBuf,
}

impl ConfigDir {
    /// A new directory in the test bed's staging directory (under `/run`, where only root
    /// can create; swept by `mb-testbed-clean` after a crash) owned by `uid`, the proxy UID
    /// HAProxy runs as, so it can create its socket in it.
    pub fn create(uid: u32) -> io::Result<ConfigDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = crate::stage::ensure_stage_dir()?
            .join(format!("haproxy-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir(&dir)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
        let guard = ConfigDir { dir };
        fs::set_permissions(&guard.dir, fs::Permissions::from_mode(0o755))?;
        nix::unistd::chown(&guard.dir, Some(nix::unistd::Uid::from_raw(uid)), None)?;
        Ok(guard)
    }

    /// Writes the configuration, readable by HAProxy's user.
    pub fn write_config(&self, text: &str) -> io::Result<()> {
        let file = self.config_path();
        fs::write(&file, text)?;
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    pub fn stats_socket(&self) -> PathBuf {
        self.dir.join("runtime.sock")
    }
}

/// What HAProxy says about itself through its runtime API (`show info` counters that tell
/// whether it dropped log lines, and `show sess`: connections still open), for error
/// messages when records are missing.
pub fn runtime_state(stats_socket: &Path) -> io::Result<String> {
    use std::io::{Read, Write};
    let ask = |command: &str| -> io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(stats_socket)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        s.write_all(command.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let info = ask("show info\n")?;
    let counters: Vec<&str> = info
        .lines()
        .filter(|l| {
            ["DroppedLogs", "CurrConns", "CumConns"]
                .iter()
                .any(|k| l.starts_with(&format!("{k}:")))
        })
        .collect();
    let sessions = ask("show sess\n")?;
    Ok(format!(
        "HAProxy {}; open sessions:\n{}",
        counters.join(", "),
        sessions.trim_end()
    ))
}

/// Sessions HAProxy's frontend `frontend` (`outbound` or `inbound`) has accepted so far (`stot`
/// of its FRONTEND row in `show stat`): its own count, independent of log lines.
pub fn frontend_sessions(stats_socket: &Path, frontend: &str) -> io::Result<u64> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(stats_socket)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    s.write_all(b"show stat\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    out.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.len() > 7 && f[0] == frontend && f[1] == "FRONTEND")
        .and_then(|f| f[7].parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no FRONTEND row for {frontend} in HAProxy's show stat: {out}"),
            )
        })
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether the network namespace of process `pid` has TCP listeners on all `ports` (read
/// from `/proc/PID/net/tcp{,6}`; state `0A` is LISTEN).
pub fn listening(pid: u32, ports: &[u16]) -> bool {
    let mut found = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) != Some(&"0A") {
                continue;
            }
            if let Some(port) = cols
                .get(1)
                .and_then(|l| l.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                found.push(port);
            }
        }
    }
    ports.iter().all(|p| found.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_listeners_the_loop_guard_and_no_splice() {
        let config = SidecarConfig::for_mesh(&crate::MeshPorts::linkerd());
        let text = config_text(&config, Path::new("/run/x/runtime.sock")).unwrap();
        assert!(text.contains("bind 0.0.0.0:4140"), "{text}");
        assert!(text.contains("bind :::4143 v6only"), "{text}");
        assert!(text.contains("fc_dst_port 4140 4143"), "{text}");
        assert!(
            text.contains("server orig 0.0.0.0 source 127.0.0.6"),
            "{text}"
        );
        assert!(!text.contains("splice"), "{text}");
        let spliced = SidecarConfig {
            relay: RelayMode::Splice,
            ..config.clone()
        };
        assert!(config_text(&spliced, Path::new("s"))
            .unwrap()
            .contains("option splice-request"));
        let dns = SidecarConfig {
            dns_port: Some(15053),
            ..config
        };
        assert!(config_text(&dns, Path::new("s"))
            .unwrap_err()
            .contains("no DNS proxy"));
    }

    #[test]
    fn log_lines_become_records() {
        let config = SidecarConfig::default();
        let r = parse_log_line(
            "mbhap fe=inbound ci=10.1.0.2 cp=40000 dst=10.1.0.3 dport=9080 bi=127.0.0.6 \
             bp=41234 up=7 down=4 ts=--",
            &config,
        )
        .unwrap();
        assert_eq!(r.listener, Listener::Inbound);
        assert_eq!(r.peer, "10.1.0.2:40000".parse().unwrap());
        assert_eq!(r.local, "0.0.0.0:15006".parse().unwrap());
        assert_eq!(r.original_dst, Some("10.1.0.3:9080".parse().unwrap()));
        assert_eq!(r.upstream_local, Some("127.0.0.6:41234".parse().unwrap()));
        assert_eq!((r.bytes_up, r.bytes_down, r.error), (7, 4, None));
        // IPv6: no original destination, the destination is the listener itself: rejected.
        let r = parse_log_line(
            "mbhap fe=outbound ci=::1 cp=5000 dst=::1 dport=15001 bi=- bp=- up=0 down=0 ts=PR",
            &config,
        )
        .unwrap();
        assert_eq!(r.peer, "[::1]:5000".parse().unwrap());
        assert_eq!(r.original_dst, None);
        assert_eq!(r.upstream_local, None);
        assert_eq!(r.error.as_deref(), Some("haproxy_termination_PR"));
        let r = parse_log_line(
            "mbhap fe=forward_18080 ci=127.0.0.1 cp=1 dst=127.0.0.1 dport=18080 bi=10.0.0.1 \
             bp=2 up=1 down=1 ts=--",
            &config,
        )
        .unwrap();
        assert_eq!((r.listener, r.original_dst), (Listener::Forward, None));
        assert_eq!(parse_log_line("[WARNING] something", &config), None);
        assert_eq!(parse_log_line("mbhap fe=sideways ci=x", &config), None);
    }
}
