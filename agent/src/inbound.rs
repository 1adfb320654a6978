//! Inbound capture per pod, for `merbridge pod add/del` and the agent: attach the pinned
//! sk_lookup program to a meshed pod's network namespace (a pinned netns link named
//! `pod-<pod id>`, adopted if an earlier run left it), make sure the pod's sidecar inbound
//! listener is in `inbound_listeners`, and detach when the pod goes.
//!
//! How a listener reaches the map (docs/inbound.md has the whole story):
//! - sock_ops sees the sidecar's `listen()` (`TCP_LISTEN_CB`) and inserts the listener under
//!   its pod's id (netns cookie → pod, Linux 6.1+). A restarted sidecar's new listener
//!   replaces the old one with no agent action.
//! - A listener that existed before (the data path or the pod entry came later), or any
//!   listener on a kernel whose sock_ops lacks the netns cookie (5.10), is *adopted* here:
//!   the process in the pod's namespace that holds it is found through `/proc`, the socket
//!   is duplicated with `pidfd_getfd` and inserted from user space. The agent repeats this on
//!   every resync, so on 5.10 a restarted sidecar is picked up within one resync interval
//!   (until then its connections are refused, never delivered around it).
//!
//! Attaching stays within issue 12's 2 ms budget because the `/proc` walk (thousands of
//! processes on a busy node) runs only when there is something to adopt: the map is asked
//! first, then the pod's namespace itself (a `sock_diag` dump of its listeners, from a
//! thread inside it).

use mb_loader::datapath::PinLayout;
use mb_loader::inbound::{self as links, AttachOutcome, InboundLink};
use mb_maps::datapath::MAP_INBOUND_LISTENERS;
use mb_maps::layout::ListenerKey;
use mb_maps::SockHash;
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::Path;

const AF_INET: u32 = mb_sys::sockdiag::AF_INET as u32;
const AF_INET6: u32 = mb_sys::sockdiag::AF_INET6 as u32;

/// The pin name of pod `pod_id`'s link.
pub fn link_name(pod_id: u32) -> String {
    format!("pod-{pod_id}")
}

/// Which of a pod's listeners are in the map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Listeners {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl Listeners {
    pub fn any(&self) -> bool {
        self.ipv4 || self.ipv6
    }
}

/// What [`attach_pod`] did.
#[derive(Clone, Debug)]
pub struct PodInbound {
    pub link: InboundLink,
    pub outcome: AttachOutcome,
    /// Listeners in the map after adoption.
    pub listeners: Listeners,
    /// Listeners adopted from user space now.
    pub adopted: usize,
    /// Time to attach (or adopt) the link, without the listener adoption.
    pub attach_time: std::time::Duration,
}

fn listener_map(pin_dir: &Path) -> Result<SockHash<ListenerKey>, String> {
    let path = PinLayout::new(pin_dir).map(MAP_INBOUND_LISTENERS);
    SockHash::open_pinned(&path).map_err(|e| {
        format!(
            "map {MAP_INBOUND_LISTENERS} under {}: {e} (load the data path with this \
             version's `merbridge load` first)",
            pin_dir.display()
        )
    })
}

/// Which listeners of pod `pod_id` are in the map.
pub fn listeners(pin_dir: &Path, pod_id: u32) -> Result<Listeners, String> {
    let map = listener_map(pin_dir)?;
    let has = |family| {
        map.cookie(&ListenerKey { pod_id, family })
            .map(|c| c.is_some())
            .map_err(|e| format!("map {MAP_INBOUND_LISTENERS}: {e}"))
    };
    Ok(Listeners {
        ipv4: has(AF_INET)?,
        ipv6: has(AF_INET6)?,
    })
}

/// Attaches inbound capture to pod `pod_id` whose namespace is `netns` (or adopts its link),
/// then adopts its sidecar's listener on `inbound_port` if the map lacks it.
pub fn attach_pod(
    pin_dir: &Path,
    pod_id: u32,
    netns: &Path,
    inbound_port: u16,
) -> Result<PodInbound, String> {
    let layout = PinLayout::new(pin_dir);
    let started = std::time::Instant::now();
    let (link, outcome) =
        links::attach(&layout, &link_name(pod_id), netns).map_err(|e| e.to_string())?;
    let attach_time = started.elapsed();
    let adopted = adopt_after_attach(pin_dir, pod_id, netns, inbound_port)?;
    Ok(PodInbound {
        link,
        outcome,
        listeners: listeners(pin_dir, pod_id)?,
        adopted,
        attach_time,
    })
}

/// [`attach_pod`]'s second step, once pod `pod_id`'s link is attached: adopts its sidecar's
/// listener ([`adopt_listeners`]). If that fails because the namespace went since the link
/// was made, the link is detached too: it would stay pinned under a pod the caller does not
/// record (the error goes back, so the caller writes nothing for the pod). Any other failure
/// keeps the link: it refuses (fail closed) until a later adoption succeeds.
pub fn adopt_after_attach(
    pin_dir: &Path,
    pod_id: u32,
    netns: &Path,
    inbound_port: u16,
) -> Result<usize, String> {
    adopt_listeners(pin_dir, pod_id, netns, inbound_port).or_else(|e| {
        if !netns.exists() {
            detach_pod(pin_dir, pod_id)?;
        }
        Err(e)
    })
}

/// Detaches pod `pod_id`'s inbound capture and forgets its listeners. Returns false when it
/// had no link.
pub fn detach_pod(pin_dir: &Path, pod_id: u32) -> Result<bool, String> {
    let layout = PinLayout::new(pin_dir);
    let had = links::detach(&layout, &link_name(pod_id)).map_err(|e| e.to_string())?;
    if let Ok(map) = listener_map(pin_dir) {
        for family in [AF_INET, AF_INET6] {
            map.remove(&ListenerKey { pod_id, family })
                .map_err(|e| format!("map {MAP_INBOUND_LISTENERS}: {e}"))?;
        }
    }
    Ok(had)
}

/// Every pod link with the pod id it names (None for pins not made by this module).
pub fn list(pin_dir: &Path) -> Result<Vec<(Option<u32>, InboundLink)>, String> {
    let layout = PinLayout::new(pin_dir);
    Ok(links::list(&layout)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|l| {
            let id = l.name.strip_prefix("pod-").and_then(|n| n.parse().ok());
            (id, l)
        })
        .collect())
}

/// Puts the inbound listeners (TCP, LISTEN, local port `port`) that processes in the
/// namespace `netns` hold into the map under `pod_id`, for each family the map lacks.
/// Returns how many were adopted (0 when nothing listens yet: not an error).
///
/// Cheap unless there is something to adopt: the map is checked first, then the pod's
/// namespace's listeners (a `sock_diag` dump from a thread inside it, no `/proc` walk). Only a listener
/// that exists and is missing from the map (a sidecar that listened before the attach, or
/// any sidecar on 5.10) costs the walk over `/proc` to find the process holding it, which
/// stops at the first process that yields every missing listener.
pub fn adopt_listeners(
    pin_dir: &Path,
    pod_id: u32,
    netns: &Path,
    port: u16,
) -> Result<usize, String> {
    let have = listeners(pin_dir, pod_id)?;
    if have.ipv4 && have.ipv6 {
        return Ok(0);
    }
    let mut wanted = missing_listeners(netns, port, have)?;
    if wanted.is_empty() {
        return Ok(0);
    }
    let ino = mb_sys::netns::netns_inode(netns)
        .map_err(|e| format!("network namespace {}: {e}", netns.display()))?;
    let map = listener_map(pin_dir)?;
    let mut adopted = 0;
    for pid in pids_in_netns(ino) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| crate::splice::procfs::socket_inode(&t.to_string_lossy()))
            else {
                continue;
            };
            let Some(&family) = wanted.get(&inode) else {
                continue;
            };
            let Some(num) = fd.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            // The process may exit or close the fd meanwhile: skip it then.
            let Ok(pidfd) = mb_sys::pidfd::pidfd_open(pid) else {
                continue;
            };
            let socket = match mb_sys::pidfd::pidfd_getfd(pidfd.as_fd(), num) {
                Ok(s) => s,
                Err(e) if e.raw_os_error() == Some(libc_enosys()) => {
                    return Err(format!(
                        "adopting pod {pod_id}'s listener needs pidfd_getfd (Linux 5.6): {e}"
                    ))
                }
                Err(_) => continue,
            };
            map.insert(&ListenerKey { pod_id, family }, socket.as_fd())
                .map_err(|e| format!("map {MAP_INBOUND_LISTENERS}: {e}"))?;
            wanted.remove(&inode);
            adopted += 1;
        }
        if wanted.is_empty() {
            break;
        }
    }
    Ok(adopted)
}

/// Socket inode -> family of the listeners on `port` in the namespace at `netns` whose
/// family `have` lacks: a `NETLINK_SOCK_DIAG` dump (the listening hash only) through a
/// socket made in that namespace, or where the kernel has no `tcp_diag`, the namespace's own
/// `/proc/thread-self/net/tcp{,6}` read on a helper thread inside it (slower: that table
/// walks every TCP socket of the host).
fn missing_listeners(
    netns: &Path,
    port: u16,
    have: Listeners,
) -> Result<BTreeMap<u64, u32>, String> {
    let mut wanted = BTreeMap::new();
    let families: Vec<u8> = [(AF_INET, have.ipv4), (AF_INET6, have.ipv6)]
        .into_iter()
        .filter(|&(_, present)| !present)
        .map(|(family, _)| family as u8)
        .collect();
    let dumped = mb_sys::sockdiag::tcp_listeners_in(netns, &families)
        .map_err(|e| format!("network namespace {}: {e}", netns.display()))?;
    match dumped {
        Ok(found) => {
            for l in found.into_iter().filter(|l| l.port == port) {
                wanted.insert(l.inode, u32::from(l.family));
            }
            Ok(wanted)
        }
        Err(_) => listeners_from_proc(netns, port, have),
    }
}

/// [`missing_listeners`] where `sock_diag` fails: the `/proc` TCP tables of the namespace.
fn listeners_from_proc(
    netns: &Path,
    port: u16,
    have: Listeners,
) -> Result<BTreeMap<u64, u32>, String> {
    mb_sys::netns::run_in_netns(netns, || {
        let mut wanted = BTreeMap::new();
        for (family, file, present) in [(AF_INET, "tcp", have.ipv4), (AF_INET6, "tcp6", have.ipv6)]
        {
            if present {
                continue;
            }
            // No IPv6 in the kernel: no tcp6 table, nothing to adopt there.
            let table = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
                .unwrap_or_default();
            for inode in listening_inodes(&table, port) {
                wanted.insert(inode, family);
            }
        }
        wanted
    })
    .map_err(|e| format!("network namespace {}: {e}", netns.display()))
}

/// The agent's view of its pods' inbound links: attaches when a pod's namespace is known,
/// re-adopts listeners on every scan (the 5.10 path, and sidecars that listened before the
/// pod entry), detaches when the pod goes. Failures are returned for a warning that names
/// the pod; nothing is left half-attached.
#[derive(Debug)]
pub struct InboundPods {
    pin_dir: std::path::PathBuf,
    /// uid -> (pod id, namespace path) of each attached pod.
    attached: BTreeMap<String, (u32, std::path::PathBuf)>,
}

impl InboundPods {
    pub fn new(pin_dir: &Path) -> InboundPods {
        InboundPods {
            pin_dir: pin_dir.to_path_buf(),
            attached: BTreeMap::new(),
        }
    }

    /// Pods with a link.
    pub fn len(&self) -> usize {
        self.attached.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attached.is_empty()
    }

    /// Pod `uid` (id `pod_id`) lives in the namespace at `netns`: attach (or adopt its link)
    /// and adopt its listener if the map lacks it. Returns what was done the first time, None
    /// when it was attached already.
    pub fn ensure(
        &mut self,
        uid: &str,
        pod_id: u32,
        netns: &Path,
        inbound_port: u16,
    ) -> Result<Option<PodInbound>, String> {
        let same = self
            .attached
            .get(uid)
            .is_some_and(|(id, path)| *id == pod_id && path == netns);
        if same {
            adopt_listeners(&self.pin_dir, pod_id, netns, inbound_port)?;
            return Ok(None);
        }
        if let Some((old_id, _)) = self.attached.remove(uid) {
            if old_id != pod_id {
                detach_pod(&self.pin_dir, old_id)?;
            }
        }
        let done = attach_pod(&self.pin_dir, pod_id, netns, inbound_port)?;
        self.attached
            .insert(uid.to_string(), (pod_id, netns.to_path_buf()));
        Ok(Some(done))
    }

    /// Pod `uid` is gone or no longer meshed. Returns whether it had a link.
    pub fn remove(&mut self, uid: &str) -> Result<bool, String> {
        match self.attached.remove(uid) {
            Some((id, _)) => detach_pod(&self.pin_dir, id),
            None => Ok(false),
        }
    }

    /// After the first sync: links pinned by an earlier agent for pod ids that are not in
    /// `live_ids` (or whose namespace is gone) are detached. Returns their names.
    pub fn sweep_stale(&mut self, live_ids: &[u32]) -> Result<Vec<String>, String> {
        let mut gone = Vec::new();
        for (id, link) in list(&self.pin_dir)? {
            let stale = id.is_none_or(|id| !live_ids.contains(&id)) || link.is_defunct();
            if !stale {
                continue;
            }
            match id {
                Some(id) => {
                    detach_pod(&self.pin_dir, id)?;
                    self.attached.retain(|_, (a, _)| *a != id);
                }
                None => {
                    links::detach(&PinLayout::new(&self.pin_dir), &link.name)
                        .map_err(|e| e.to_string())?;
                }
            }
            gone.push(link.name);
        }
        Ok(gone)
    }
}

fn libc_enosys() -> i32 {
    nix::errno::Errno::ENOSYS as i32
}

/// Processes whose network namespace has inode `ino`, found lazily (the caller stops at the
/// first that holds what it looks for).
fn pids_in_netns(ino: u64) -> impl Iterator<Item = u32> {
    let want = format!("net:[{ino}]");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(move |pid: &u32| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|t| t.to_string_lossy() == want)
        })
}

/// `socket:[123]` -> 123.
/// Inodes of the sockets in a `/proc/net/tcp{,6}` table that listen on `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let mut sockets = std::collections::HashMap::new();
    crate::splice::procfs::parse_net_tcp(table, &mut sockets);
    let mut inodes: Vec<u64> = sockets
        .into_iter()
        .filter(|(_, s)| s.is_listening() && s.local_port == port)
        .map(|(inode, _)| inode)
        .collect();
    inodes.sort_unstable();
    inodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn proc_net_tcp_tables_give_listener_inodes() {
        let table = &crate::splice::procfs::net_tcp_table(&[
            ("00000000:3A9E", "00000000:0000", "0A", 4242),
            ("0100007F:3A9E", "0500007F:D431", "01", 4243),
            ("00000000:1F90", "00000000:0000", "0A", 4244),
        ]);
        assert_eq!(listening_inodes(table, 15006), vec![4242]);
        assert_eq!(listening_inodes(table, 8080), vec![4244]);
        assert!(listening_inodes(table, 15001).is_empty());
        assert!(listening_inodes("garbage\nmore garbage", 1).is_empty());
        assert_eq!(link_name(7), "pod-7");
    }

    /// Against the kernel: the `sock_diag` dump and the `/proc` fallback find the same
    /// listeners of a namespace on the port asked for, and only the families missing.
    #[test]
    fn sock_diag_and_proc_tables_find_the_same_listeners() {
        if !mb_sys::testing::kernel_tests_enabled(
            "sock_diag_and_proc_tables_find_the_same_listeners",
        ) {
            return;
        }
        let ns = mb_sys::netns::NamedNetns::create(&format!("mb-inlisten-{}", std::process::id()))
            .expect("netns");
        let _held = ns
            .run(|| {
                let v4 = std::net::TcpListener::bind("0.0.0.0:15006").unwrap();
                // A v6-only listener beside the v4 one, as a sidecar with two sockets has.
                use nix::sys::socket::{self as so, sockopt, SockaddrIn6};
                let v6 = so::socket(
                    so::AddressFamily::Inet6,
                    so::SockType::Stream,
                    so::SockFlag::SOCK_CLOEXEC,
                    None,
                )
                .unwrap();
                so::setsockopt(&v6, sockopt::Ipv6V6Only, &true).unwrap();
                let any = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, 15006, 0, 0);
                so::bind(v6.as_raw_fd(), &SockaddrIn6::from(any)).unwrap();
                so::listen(&v6, so::Backlog::new(8).unwrap()).unwrap();
                let other = std::net::TcpListener::bind("0.0.0.0:15001").unwrap();
                (v4, v6, other)
            })
            .unwrap();
        let none = Listeners::default();
        let dumped = missing_listeners(ns.path(), 15006, none).unwrap();
        let from_proc = listeners_from_proc(ns.path(), 15006, none).unwrap();
        assert_eq!(dumped, from_proc);
        let mut families: Vec<u32> = dumped.values().copied().collect();
        families.sort();
        assert_eq!(families, vec![AF_INET, AF_INET6]);
        let v4_known = Listeners {
            ipv4: true,
            ipv6: false,
        };
        let only_v6 = missing_listeners(ns.path(), 15006, v4_known).unwrap();
        assert_eq!(
            only_v6,
            listeners_from_proc(ns.path(), 15006, v4_known).unwrap()
        );
        assert_eq!(
            only_v6.values().copied().collect::<Vec<_>>(),
            vec![AF_INET6]
        );
        assert!(missing_listeners(ns.path(), 15020, none)
            .unwrap()
            .is_empty());
    }
}
