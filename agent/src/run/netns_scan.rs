//! Pod identity: which network namespace on this host has a pod's addresses, and its cookie.
//!
//! The host's namespaces are found through `/proc/<pid>/ns/net` (deduplicated by inode) and,
//! for namespaces no process holds open yet, the bind mounts under `/run/netns`. Addresses are
//! read without entering a namespace where possible: `/proc/<pid>/net/fib_trie` (its `/32 host
//! LOCAL` leaves are the namespace's IPv4 addresses) and `/proc/<pid>/net/if_inet6`. Only a
//! namespace that matches a wanted pod is entered, once, to read its cookie
//! (`SO_NETNS_COOKIE`). Results are cached by inode, so a periodic re-scan costs one `stat`
//! per process plus the reads for namespaces not seen before.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The IPv4 addresses assigned in a namespace, from the text of its `/proc/<pid>/net/fib_trie`.
///
/// Each leaf (`|-- 10.1.0.5`) is followed by one line per route of that key; an address is a
/// leaf with a `/32 host LOCAL` route. Loopback addresses are left out.
pub fn parse_fib_trie_local(text: &str) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("|-- ") {
            leaf = rest.trim().parse().ok();
        } else if trimmed.starts_with("+--") || !trimmed.starts_with('/') {
            // An inner node or a table header ends the previous leaf.
            leaf = None;
        } else if let Some(ip) = leaf {
            let mut words = trimmed.split_whitespace();
            let prefix = words.next();
            let is_local = words.any(|w| w == "LOCAL");
            if prefix == Some("/32") && is_local && !ip.is_loopback() && !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// The IPv6 addresses of a namespace, from the text of its `/proc/<pid>/net/if_inet6`
/// (`<32 hex digits> <ifindex> <prefix> <scope> <flags> <name>` per line). Loopback and
/// link-local addresses are left out: no pod is known by them.
pub fn parse_if_inet6(text: &str) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        if hex.len() != 32 {
            continue;
        }
        let Ok(value) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        let ip = Ipv6Addr::from(value);
        let link_local = ip.segments()[0] & 0xffc0 == 0xfe80;
        if !ip.is_loopback() && !link_local && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// One network namespace seen on the host.
#[derive(Clone, Debug)]
struct Namespace {
    /// A path that opens it (`/proc/<pid>/ns/net` or `/run/netns/<name>`).
    path: PathBuf,
    addrs: Vec<IpAddr>,
    /// Read on first need; `None` until then.
    cookie: Option<u64>,
    /// The scan that last saw it.
    seen: u64,
}

/// What one scan did, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Namespaces on the host (without our own).
    pub namespaces: usize,
    /// Namespaces read for the first time in this scan.
    pub new_namespaces: usize,
    /// Namespaces gone since the previous scan.
    pub gone: usize,
    pub elapsed: Duration,
}

/// Finds pods' network namespaces by address. Cheap to call repeatedly: namespaces are cached
/// by inode and only new ones are read.
pub struct NetnsScanner {
    proc_root: PathBuf,
    /// Directories of namespace bind mounts (`/run/netns`), scanned after the processes.
    mount_dirs: Vec<PathBuf>,
    own_inode: Option<u64>,
    by_inode: HashMap<u64, Namespace>,
    /// Address → namespaces that have it (more than one only on odd hosts: test beds,
    /// a dying sandbox whose address was already reused).
    by_addr: HashMap<IpAddr, Vec<u64>>,
    generation: u64,
}

impl NetnsScanner {
    /// True when namespace `inode` needs no reading in this scan: our own, met already in
    /// this scan (`seen_now`), or known from an earlier scan (then marked seen by this one).
    fn already_known(&mut self, inode: u64, seen_now: &mut HashSet<u64>) -> bool {
        if Some(inode) == self.own_inode || !seen_now.insert(inode) {
            return true;
        }
        if let Some(ns) = self.by_inode.get_mut(&inode) {
            ns.seen = self.generation;
            return true;
        }
        false
    }

    /// Records a namespace met for the first time in this scan.
    fn add(&mut self, inode: u64, path: PathBuf, addrs: Vec<IpAddr>) {
        let ns = Namespace {
            path,
            addrs,
            cookie: None,
            seen: self.generation,
        };
        self.by_inode.insert(inode, ns);
    }

    /// A scanner of the host's `/proc` and `/run/netns`.
    pub fn new() -> NetnsScanner {
        NetnsScanner::with_roots(Path::new("/proc"), vec![PathBuf::from("/run/netns")])
    }

    pub fn with_roots(proc_root: &Path, mount_dirs: Vec<PathBuf>) -> NetnsScanner {
        let own_inode = fs::metadata(proc_root.join("self/ns/net"))
            .ok()
            .map(|m| m.ino());
        NetnsScanner {
            proc_root: proc_root.to_path_buf(),
            mount_dirs,
            own_inode,
            by_inode: HashMap::new(),
            by_addr: HashMap::new(),
            generation: 0,
        }
    }

    /// Walks the host's namespaces; reads the addresses of those not seen before and forgets
    /// those that are gone. Unreadable entries (processes that exit meanwhile) are skipped.
    pub fn scan(&mut self) -> ScanStats {
        let started = Instant::now();
        self.generation += 1;
        let generation = self.generation;
        let mut stats = ScanStats::default();
        let mut seen_now = HashSet::new();
        if let Ok(entries) = fs::read_dir(&self.proc_root) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                else {
                    continue;
                };
                let ns_path = self.proc_root.join(pid).join("ns/net");
                let Ok(meta) = fs::metadata(&ns_path) else {
                    continue;
                };
                let inode = meta.ino();
                if self.already_known(inode, &mut seen_now) {
                    continue;
                }
                let net = self.proc_root.join(pid).join("net");
                let addrs = read_addrs(&net.join("fib_trie"), &net.join("if_inet6"));
                self.add(inode, ns_path, addrs);
                stats.new_namespaces += 1;
            }
        }
        for dir in self.mount_dirs.clone() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = fs::metadata(&path) else {
                    continue;
                };
                let inode = meta.ino();
                if self.already_known(inode, &mut seen_now) {
                    continue;
                }
                // No process to read through: enter the namespace on a helper thread and read
                // this thread's view of /proc.
                let addrs = mb_sys::netns::run_in_netns(&path, || {
                    let net = Path::new("/proc/thread-self/net");
                    read_addrs(&net.join("fib_trie"), &net.join("if_inet6"))
                })
                .unwrap_or_default();
                self.add(inode, path, addrs);
                stats.new_namespaces += 1;
            }
        }
        let before = self.by_inode.len();
        self.by_inode.retain(|_, ns| ns.seen == generation);
        stats.gone = before - self.by_inode.len();
        stats.namespaces = self.by_inode.len();
        self.by_addr.clear();
        for (&inode, ns) in &self.by_inode {
            for &addr in &ns.addrs {
                self.by_addr.entry(addr).or_default().push(inode);
            }
        }
        stats.elapsed = started.elapsed();
        stats
    }

    /// The namespace that has the most of `ips` (as of the last scan); `None` when none has
    /// any, or when two have equally many (ambiguous: better no cookie than a wrong one).
    fn best_match(&self, ips: &[IpAddr]) -> Option<u64> {
        let mut score: HashMap<u64, usize> = HashMap::new();
        for ip in ips {
            for &inode in self.by_addr.get(ip).map_or(&[][..], Vec::as_slice) {
                *score.entry(inode).or_default() += 1;
            }
        }
        let best = score.values().copied().max()?;
        let mut winners = score.iter().filter(|(_, &s)| s == best).map(|(&i, _)| i);
        let inode = winners.next()?;
        if winners.next().is_some() {
            log::debug!("addresses {ips:?} are in several network namespaces: not assigning one");
            return None;
        }
        Some(inode)
    }

    /// The cookie of the namespace that has `ips` (see `best_match`). Reads the cookie on
    /// first use; `None` when no single namespace has these addresses (or it vanished).
    pub fn cookie_for(&mut self, ips: &[IpAddr]) -> Option<u64> {
        let inode = self.best_match(ips)?;
        self.cookie_of(inode)
    }

    /// A path that opens the namespace that has `ips` (`/proc/<pid>/ns/net` or a bind mount),
    /// for attaching to it.
    pub fn path_for(&mut self, ips: &[IpAddr]) -> Option<PathBuf> {
        let inode = self.best_match(ips)?;
        self.by_inode.get(&inode).map(|ns| ns.path.clone())
    }

    /// The inode of the namespace of a pod registered with namespace `cookie` and addresses
    /// `ips`: among the namespaces that have one of `ips`, the one whose cookie is `cookie`
    /// (cookies read once per namespace); that is what `/proc/<pid>/ns/net` of its processes
    /// stats to, also after the process it was found through exited. Exact where matching by
    /// address alone must give up: the same address in two namespaces (a dying sandbox whose
    /// address was reused, two test beds). `cookie` 0 (not known yet) matches by address.
    pub fn inode_for_pod(&mut self, ips: &[IpAddr], cookie: u64) -> Option<u64> {
        if cookie == 0 {
            return self.best_match(ips);
        }
        let mut candidates: Vec<u64> = ips
            .iter()
            .flat_map(|ip| self.by_addr.get(ip).cloned().unwrap_or_default())
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .find(|&inode| self.cookie_of(inode) == Some(cookie))
    }

    /// The cookie of known namespace `inode`, read on first use.
    fn cookie_of(&mut self, inode: u64) -> Option<u64> {
        let ns = self.by_inode.get_mut(&inode)?;
        if ns.cookie.is_none() {
            match mb_loader::netns_cookie::netns_cookie(&ns.path) {
                Ok(cookie) => ns.cookie = Some(cookie),
                Err(e) => log::debug!("netns cookie of {}: {e}", ns.path.display()),
            }
        }
        ns.cookie
    }

    /// Namespaces known after the last scan.
    pub fn namespaces(&self) -> usize {
        self.by_inode.len()
    }
}

impl Default for NetnsScanner {
    fn default() -> Self {
        NetnsScanner::new()
    }
}

fn read_addrs(fib_trie: &Path, if_inet6: &Path) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = fs::read_to_string(fib_trie)
        .map(|t| parse_fib_trie_local(&t))
        .unwrap_or_default()
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    addrs.extend(
        fs::read_to_string(if_inet6)
            .map(|t| parse_if_inet6(&t))
            .unwrap_or_default()
            .into_iter()
            .map(IpAddr::V6),
    );
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    // A pod namespace with eth0 10.4.0.7/24 and lo, as /proc/<pid>/net/fib_trie shows it.
    const POD_FIB_TRIE: &str = include_str!("testdata/pod_fib_trie.txt");

    #[test]
    fn fib_trie_local_leaves_are_the_addresses() {
        assert_eq!(
            parse_fib_trie_local(POD_FIB_TRIE),
            vec![Ipv4Addr::new(10, 4, 0, 7)]
        );
    }

    #[test]
    fn fib_trie_routes_and_broadcasts_are_not_addresses() {
        // A /24 link route and a /32 BROADCAST leaf; a leaf with two routes where one is LOCAL.
        let text = "\
Main:
  +-- 10.0.0.0/8 2 0 2
     |-- 10.9.0.0
        /24 link UNICAST
     |-- 10.9.0.255
        /32 link BROADCAST
     |-- 10.9.0.3
        /24 link UNICAST
        /32 host LOCAL
";
        assert_eq!(parse_fib_trie_local(text), vec![Ipv4Addr::new(10, 9, 0, 3)]);
        assert!(parse_fib_trie_local("").is_empty());
        assert!(parse_fib_trie_local("garbage\n|-- not-an-ip\n   /32 host LOCAL\n").is_empty());
    }

    #[test]
    fn if_inet6_lists_global_addresses_only() {
        let text = "\
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000010000400000000000000000007 04 40 00 80     eth0
short 01 80 10 80 lo
";
        assert_eq!(
            parse_if_inet6(text),
            vec!["fd00:10:4::7".parse::<Ipv6Addr>().unwrap()]
        );
    }

    #[test]
    fn scan_finds_a_fake_proc_tree_by_address() {
        // A /proc-shaped tree whose ns/net links point at real namespace files: our own
        // namespace is skipped, so only the "pod" (a regular file standing in for a
        // namespace: the scanner only stats it) is found.
        let root = std::env::temp_dir().join(format!("mb-scan-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let pid_dir = root.join("4242");
        fs::create_dir_all(pid_dir.join("ns")).unwrap();
        fs::create_dir_all(pid_dir.join("net")).unwrap();
        fs::create_dir_all(root.join("self/ns")).unwrap();
        fs::write(root.join("self/ns/net"), "self").unwrap();
        fs::write(pid_dir.join("ns/net"), "pod").unwrap();
        fs::write(pid_dir.join("net/fib_trie"), POD_FIB_TRIE).unwrap();
        fs::write(
            pid_dir.join("net/if_inet6"),
            "fd000010000400000000000000000007 04 40 00 80     eth0\n",
        )
        .unwrap();
        fs::create_dir_all(root.join("self-is-not-a-pid")).unwrap();
        let mut scanner = NetnsScanner::with_roots(&root, vec![]);
        let stats = scanner.scan();
        assert_eq!((stats.namespaces, stats.new_namespaces), (1, 1));
        let inode = fs::metadata(pid_dir.join("ns/net")).unwrap().ino();
        let v6: IpAddr = "fd00:10:4::7".parse().unwrap();
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 4, 0, 7));
        assert_eq!(scanner.best_match(&[v4, v6]), Some(inode));
        assert_eq!(scanner.best_match(&[v4]), Some(inode));
        assert_eq!(scanner.best_match(&["10.4.0.8".parse().unwrap()]), None);

        // A second namespace with the same IPv4 but another IPv6: the pod's IPv6 decides;
        // the IPv4 alone is ambiguous.
        let other = root.join("4343");
        fs::create_dir_all(other.join("ns")).unwrap();
        fs::create_dir_all(other.join("net")).unwrap();
        fs::write(other.join("ns/net"), "other pod").unwrap();
        fs::write(other.join("net/fib_trie"), POD_FIB_TRIE).unwrap();
        fs::write(
            other.join("net/if_inet6"),
            "fd000010000400000000000000000099 04 40 00 80     eth0\n",
        )
        .unwrap();
        assert_eq!(scanner.scan().new_namespaces, 1);
        assert_eq!(scanner.best_match(&[v4, v6]), Some(inode));
        assert_eq!(scanner.best_match(&[v4]), None, "ambiguous");
        fs::remove_dir_all(&other).unwrap();
        // Cached: a second scan reads nothing new; a vanished process is forgotten.
        assert_eq!(scanner.scan().new_namespaces, 0);
        fs::remove_dir_all(&pid_dir).unwrap();
        let stats = scanner.scan();
        assert_eq!((stats.namespaces, stats.gone), (0, 1));
        assert!(scanner.by_addr.is_empty());
        let _ = fs::remove_dir_all(&root);
    }
}
