//! Nodes and pods built from real kernel parts.
//!
//! A [`Node`] is a private cgroup (`<cgroup2>/mb-node-…`) plus a network namespace holding a
//! bridge `br0` (the pod network's gateway) with IP forwarding on. A [`Pod`] is a network
//! namespace with `lo` up, a veth `eth0` whose peer is a port of the node's bridge, one IPv4
//! and one IPv6 address, default routes via the bridge, `::6` on `lo` (Istio's inbound
//! passthrough source), and a child cgroup of the node. Nothing touches the machine's root
//! namespace or root cgroup: every veth lives between namespaces this crate created.
//!
//! Everything is removed on drop, also during a panic's unwinding; names embed the process id
//! and a counter so parallel tests never collide.

use crate::cmd::{ip_batch, CommandFailure};
use mb_sys::cgroup::{remove_cgroup_tree, OwnedCgroup};
use mb_sys::netns::NamedNetns;
use mb_sys::process::{place, Placement};
use std::fmt;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static NEXT_NODE: AtomicU32 = AtomicU32::new(0);
static NEXT_LINK: AtomicU32 = AtomicU32::new(0);

/// What a pod looks like. Unset addresses are chosen from the node's subnets
/// (`10.<node>.0.<n>/24`, `fd00:10:<node>::<n>/64`).
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    /// Short name, unique within the node (letters, digits, `-`; at most 20 characters).
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl PodSpec {
    pub fn named(name: &str) -> PodSpec {
        PodSpec {
            name: name.to_owned(),
            ..PodSpec::default()
        }
    }
}

/// Guards a node keeps for interception modes (see [`Node::hold`]).
struct Held(Vec<Box<dyn std::any::Any + Send>>);

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} guards", self.0.len())
    }
}

/// A node: private cgroup + network namespace with the pod bridge.
#[derive(Debug)]
pub struct Node {
    name: String,
    subnet_index: u8,
    next_host: Mutex<u8>,
    pod_names: Mutex<Vec<String>>,
    // Dropped in this order: what interception modes attached, the cgroup (ends processes),
    // the namespace.
    held: Mutex<Held>,
    cgroup: OwnedCgroup,
    netns: NamedNetns,
}

impl Node {
    /// Creates a node. `name_hint` (e.g. the test name) becomes part of the namespace name so
    /// leftovers can be traced to their test.
    pub fn new(name_hint: &str) -> io::Result<Node> {
        let n = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
        // 1..=200: two nodes of one process never share a subnet (needed to route between).
        let subnet_index = (n % 200 + 1) as u8;
        let hint: String = name_hint
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(24)
            .collect();
        let name = format!("mb-{}-{n}-{hint}", std::process::id());
        let cgroup = OwnedCgroup::create_private("mb-node")?;
        let netns = NamedNetns::create(&name)?;
        let node = Node {
            name,
            subnet_index,
            next_host: Mutex::new(2),
            pod_names: Mutex::new(Vec::new()),
            held: Mutex::new(Held(Vec::new())),
            cgroup,
            netns,
        };
        set_sysctls(
            &node.netns,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv6/conf/all/forwarding", "1"),
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/all/accept_dad", "0"),
            ],
        )?;
        let (gw4, gw6) = (node.gateway_v4(), node.gateway_v6());
        ip_batch(
            Some(node.netns.name()),
            &[
                "link set lo up".to_owned(),
                "link add br0 type bridge forward_delay 0 stp_state 0".to_owned(),
                format!("addr add {gw4}/24 dev br0"),
                format!("addr add {gw6}/64 dev br0 nodad"),
                "link set br0 up".to_owned(),
            ],
        )?;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps `guard` (e.g. an attached data path) until the node goes; guards are dropped in
    /// the order they were given, before the node's cgroup and namespace are removed.
    pub fn hold(&self, guard: Box<dyn std::any::Any + Send>) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .push(guard);
    }

    /// The node's private cgroup. merbridge attaches its programs here, never to the root.
    pub fn cgroup_path(&self) -> &Path {
        self.cgroup.path()
    }

    /// The node's own network namespace (bridge, routes to other nodes).
    pub fn netns_path(&self) -> &Path {
        self.netns.path()
    }

    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }

    /// IPv4 pod subnet `10.<i>.0.0/24`.
    pub fn pod_cidr_v4(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, self.subnet_index, 0, 0), 24)
    }

    /// IPv6 pod subnet `fd00:10:<i>::/64`.
    pub fn pod_cidr_v6(&self) -> (Ipv6Addr, u8) {
        (
            Ipv6Addr::new(0xfd00, 0x10, self.subnet_index.into(), 0, 0, 0, 0, 0),
            64,
        )
    }

    /// The bridge's addresses: the pods' default gateway.
    pub fn gateway_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet_index, 0, 1)
    }

    pub fn gateway_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, self.subnet_index.into(), 0, 0, 0, 0, 1)
    }

    /// An IPv6 address in this node's subnet that no other process's test bed uses (they
    /// reuse the IPv4 subnets): `tag` keeps one test's addresses apart from another's, this
    /// process's pid is in the middle, `host` last. A scanner finding a pod by its addresses
    /// then finds ours, as pod IPs are unique on a real node.
    pub fn process_unique_v6(&self, tag: u16, host: u16) -> Ipv6Addr {
        let base = self.gateway_v6().segments();
        let pid = std::process::id();
        Ipv6Addr::new(
            base[0],
            base[1],
            base[2],
            0,
            tag,
            (pid >> 16) as u16,
            pid as u16,
            host,
        )
    }

    /// Creates a pod on this node. The pod may outlive the node value (its namespace then has
    /// no network); drop pods first for an orderly teardown.
    pub fn add_pod(&self, spec: PodSpec) -> io::Result<Pod> {
        let valid = !spec.name.is_empty()
            && spec.name.len() <= 20
            && spec
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "pod name {:?} must be 1-20 characters of letters, digits and '-'",
                    spec.name
                ),
            ));
        }
        let host = {
            let mut pods = self.pod_names.lock().unwrap_or_else(|p| p.into_inner());
            if pods.contains(&spec.name) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("node {} already has a pod named {}", self.name, spec.name),
                ));
            }
            let mut next = self.next_host.lock().unwrap_or_else(|p| p.into_inner());
            if *next == 255 {
                return Err(io::Error::other(format!(
                    "node {} is full (253 pods)",
                    self.name
                )));
            }
            let host = *next;
            *next += 1;
            pods.push(spec.name.clone());
            host
        };
        let ipv4 = spec
            .ipv4
            .unwrap_or(Ipv4Addr::new(10, self.subnet_index, 0, host));
        let ipv6 = spec.ipv6.unwrap_or(Ipv6Addr::new(
            0xfd00,
            0x10,
            self.subnet_index.into(),
            0,
            0,
            0,
            0,
            host.into(),
        ));
        let cgroup = self.cgroup.create_child(&spec.name)?;
        // From here on the guard removes what was made if a later step fails.
        let netns = match NamedNetns::create(&format!("{}-{}", self.name, spec.name)) {
            Ok(ns) => ns,
            Err(e) => {
                let _ = remove_cgroup_tree(&cgroup);
                return Err(e);
            }
        };
        let pod = Pod {
            name: spec.name,
            ipv4,
            ipv6,
            gateway_v4: self.gateway_v4(),
            gateway_v6: self.gateway_v6(),
            node_name: self.name.clone(),
            cgroup,
            netns,
        };
        set_sysctls(
            &pod.netns,
            &[
                ("net/ipv6/conf/default/accept_dad", "0"),
                ("net/ipv6/conf/all/accept_dad", "0"),
            ],
        )?;
        let port = format!("v{host}");
        ip_batch(
            Some(self.netns.name()),
            &[
                format!(
                    "link add {port} type veth peer name eth0 netns {}",
                    pod.netns.name()
                ),
                format!("link set {port} master br0"),
                format!("link set {port} up"),
            ],
        )?;
        ip_batch(
            Some(pod.netns.name()),
            &[
                "link set lo up".to_owned(),
                "addr add ::6/128 dev lo nodad".to_owned(),
                format!("addr add {ipv4}/24 dev eth0"),
                format!("addr add {ipv6}/64 dev eth0 nodad"),
                "link set eth0 up".to_owned(),
                format!("route add default via {}", pod.gateway_v4),
                format!("route add default via {}", pod.gateway_v6),
            ],
        )?;
        Ok(pod)
    }

    /// Joins two nodes with a routed veth link (`10.254.<l>.0/24`, `fd00:254:<l>::/64`) and
    /// routes for each other's pod subnets, so pods on `a` reach pods on `b` and back.
    pub fn join(a: &Node, b: &Node) -> io::Result<()> {
        let l = NEXT_LINK.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let (a_if, b_if) = (
            format!("to{}", b.subnet_index),
            format!("to{}", a.subnet_index),
        );
        let (a4, b4) = (format!("10.254.{l}.1"), format!("10.254.{l}.2"));
        let (a6, b6) = (format!("fd00:254:{l:x}::1"), format!("fd00:254:{l:x}::2"));
        // One end of the link: its addresses, up, and routes to the peer node's pods.
        let end = |iface: &str, v4: &str, v6: &str, peer: &Node, peer4: &str, peer6: &str| {
            let (pods4, bits4) = peer.pod_cidr_v4();
            let (pods6, bits6) = peer.pod_cidr_v6();
            vec![
                format!("addr add {v4}/24 dev {iface}"),
                format!("addr add {v6}/64 dev {iface} nodad"),
                format!("link set {iface} up"),
                format!("route add {pods4}/{bits4} via {peer4}"),
                format!("route add {pods6}/{bits6} via {peer6}"),
            ]
        };
        let create = format!(
            "link add {a_if} type veth peer name {b_if} netns {}",
            b.netns.name()
        );
        let mut a_side = vec![create];
        a_side.extend(end(&a_if, &a4, &a6, b, &b4, &b6));
        ip_batch(Some(a.netns.name()), &a_side)?;
        ip_batch(Some(b.netns.name()), &end(&b_if, &b4, &b6, a, &a4, &a6))?;
        Ok(())
    }
}

/// A pod: network namespace + child cgroup of its node.
#[derive(Debug)]
pub struct Pod {
    name: String,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    gateway_v4: Ipv4Addr,
    gateway_v6: Ipv6Addr,
    node_name: String,
    cgroup: PathBuf,
    netns: NamedNetns,
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    pub fn gateway_v4(&self) -> Ipv4Addr {
        self.gateway_v4
    }

    pub fn gateway_v6(&self) -> Ipv6Addr {
        self.gateway_v6
    }

    /// `/run/netns/<name>`.
    pub fn netns_path(&self) -> &Path {
        self.netns.path()
    }

    /// The name `ip -n` and `ip netns exec` accept.
    pub fn netns_name(&self) -> &str {
        self.netns.name()
    }

    /// The pod's cgroup (a child of the node's).
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup
    }

    /// The pod's network namespace cookie (what merbridge keys its pod map by).
    pub fn netns_cookie(&self) -> io::Result<u64> {
        self.netns.cookie()
    }

    /// Starts `cmd` in this pod (its netns and cgroup) as `uid` (gid = uid; 0 = root).
    /// The returned guard kills the process when dropped. The process is also killed when the
    /// *thread* that called `spawn` ends (`PR_SET_PDEATHSIG`), so nothing outlives a crashed
    /// test: spawn from a thread that lives as long as the process should.
    pub fn spawn(&self, mut cmd: Command, uid: u32) -> io::Result<Spawned> {
        place(
            &mut cmd,
            &Placement {
                netns: Some(self.netns.path()),
                cgroup: Some(&self.cgroup),
                uid: (uid != 0).then_some(uid),
                gid: None,
                die_with_parent: true,
            },
        )?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd.spawn().map_err(|e| {
            let hint = if e.kind() == io::ErrorKind::PermissionDenied && uid != 0 {
                format!(
                    " (UID {uid} must be able to execute it: every directory above it needs o+x, \
                     e.g. a target dir under /root does not work; set CARGO_TARGET_DIR elsewhere)"
                )
            } else {
                String::new()
            };
            io::Error::new(
                e.kind(),
                format!("start {program} in pod {}: {e}{hint}", self.name),
            )
        })?;
        Ok(Spawned {
            child: Some(child),
            what: format!("{program} in pod {}", self.name),
        })
    }

    /// Runs `cmd` in the pod to completion (as root) and returns its stdout; a non-zero exit is
    /// an error carrying stderr.
    pub fn output(&self, mut cmd: Command) -> io::Result<String> {
        place(
            &mut cmd,
            &Placement {
                netns: Some(self.netns.path()),
                cgroup: Some(&self.cgroup),
                die_with_parent: true,
                ..Placement::default()
            },
        )?;
        crate::cmd::output_of(cmd)
    }

    /// Runs `work` on a helper thread inside the pod's network namespace (not its cgroup:
    /// sockets opened there belong to the test process's cgroup).
    pub fn run_in_netns<T: Send>(&self, work: impl FnOnce() -> T + Send) -> io::Result<T> {
        self.netns.run(work)
    }

    /// Number of conntrack entries in the pod's namespace right now
    /// (`net.netfilter.nf_conntrack_count`, per namespace). 0 while nothing needs conntrack.
    pub fn conntrack_count(&self) -> io::Result<u64> {
        self.netns.run(|| {
            let text = fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")?;
            text.trim()
                .parse::<u64>()
                .map_err(|e| io::Error::other(format!("nf_conntrack_count {:?}: {e}", text.trim())))
        })?
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Processes first (they may hold sockets), then the cgroup, then the namespace.
        if let Err(e) = remove_cgroup_tree(&self.cgroup) {
            eprintln!("mb-testbed: pod {}: {e}", self.name);
        }
    }
}

/// A process started in a pod. Dropping the guard kills it (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Spawned {
    child: Option<Child>,
    what: String,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The child, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until drop")
    }

    /// Waits at most `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let what = self.what.clone();
        let child = self.child_mut();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} still running after {timeout:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for the exit and collects stdout (if piped); non-zero exit is an error.
    pub fn finish(mut self, timeout: Duration) -> io::Result<String> {
        use std::io::Read;
        let mut out = String::new();
        let stdout = self.child_mut().stdout.take();
        let reader = stdout.map(|mut s| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                text
            })
        });
        let status = self.wait_timeout(timeout)?;
        if let Some(r) = reader {
            out = r.join().unwrap_or_default();
        }
        if !status.success() {
            return Err(CommandFailure::new(&self.what, status, &out).into());
        }
        Ok(out)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn set_sysctls(netns: &NamedNetns, settings: &[(&str, &str)]) -> io::Result<()> {
    netns.run(|| {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key);
            fs::write(&path, value)
                .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))?;
        }
        Ok(())
    })?
}
