//! Per-process splice verdicts (issue 15): which meshed applications may have their own legs
//! to and from their sidecar spliced, decided process by process from the host's `/proc`.
//!
//! A socket in a sockhash answers a blocking `recv()` that was woken without data with
//! `EAGAIN` (docs/splice-hazard.md), so an application leg is spliced only for a process known
//! to be event-driven:
//! - every TCP socket fd it holds carries `O_NONBLOCK`, seen in at least
//!   [`NON_BLOCKING_SAMPLES`] scans; or
//! - its runtime reads only through non-blocking sockets ([`runtime`]: Go, JVM ≥ 13, Node,
//!   Envoy, linkerd2-proxy), and no blocking TCP fd was ever seen.
//!
//! A process once seen with a blocking TCP socket fd is never spliced again (sticky). A process
//! with no TCP socket yet, or one that cannot be read, is unknown: never spliced. Sidecar
//! processes (the pod's proxy UID or GID) are not classified: their legs are spliced anyway.
//!
//! The verdicts go to two maps the data path reads under `--splice sidecars`: `splice_procs`
//! (cgroup id, tgid) for the application's connects, and `splice_ports` (pod, port) for the
//! sidecar's connection to a listening application. Entries go when the process goes. The pod
//! annotation `merbridge.io/splice-app` overrides both ways in the data path itself.
//!
//! What cannot be closed from user space: a process that turns a socket blocking after a scan
//! marked it keeps its verdict until the next scan sees the blocking fd.

pub mod procfs;
pub mod runtime;

use crate::run::NetnsScanner;
use mb_loader::datapath::PinLayout;
use mb_maps::datapath::{MAP_POD_IPS, MAP_SPLICE_PORTS, MAP_SPLICE_PROCS};
use mb_maps::layout::{
    addr_from_bytes, PodEntry, SplicePortKey, SpliceProcKey, SpliceVerdict, SPLICE_VERDICT_NO,
    SPLICE_VERDICT_YES,
};
use mb_maps::{HashMap as BpfHashMap, MapError};
use procfs::{ProcError, SocketSample};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Scans in a row that must find every TCP socket fd non-blocking before a process without
/// a known runtime is spliced.
pub const NON_BLOCKING_SAMPLES: u32 = 2;

/// The verdict on one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Event-driven: its application legs are spliced.
    Splice,
    /// Seen with a blocking TCP socket: never spliced.
    Blocking,
    /// Not known (yet): not spliced.
    Unknown,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Splice => "splice",
            Verdict::Blocking => "blocking",
            Verdict::Unknown => "unknown",
        }
    }
}

mb_sys::coded_enum! {
    /// Why a verdict was given; the number is what the maps store.
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Reason {
        /// Every TCP socket fd non-blocking in [`NON_BLOCKING_SAMPLES`] scans.
        NonBlockingSockets = 1 => "non_blocking_sockets",
        GoRuntime = 2 => "go_runtime",
        Jvm = 3 => "jvm",
        Node = 4 => "node",
        Envoy = 5 => "envoy",
        Linkerd2Proxy = 6 => "linkerd2_proxy",
        /// A TCP socket fd without `O_NONBLOCK` was seen (sticky).
        BlockingSocket = 7 => "blocking_socket",
        /// No TCP socket fd yet.
        NoSockets = 8 => "no_sockets",
        /// Non-blocking so far, but seen in fewer than [`NON_BLOCKING_SAMPLES`] scans.
        TooFewSamples = 9 => "too_few_samples",
        /// Its `/proc` files could not be read.
        Unreadable = 10 => "unreadable",
        /// Its cgroup v2 id could not be found (the data path could not recognise it).
        NoCgroup = 11 => "no_cgroup",
    }
}

/// A meshed pod whose processes are classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTarget {
    pub pod_id: u32,
    /// Inode of the pod's network namespace: its processes are the ones in it.
    pub netns_inode: u64,
    /// Processes of this UID, or of this GID when non-zero, are its sidecar.
    pub proxy_uid: u32,
    pub proxy_gid: u32,
}

/// The verdict on one process of a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessVerdict {
    pub pod_id: u32,
    pub pid: u32,
    pub cgroup_id: Option<u64>,
    pub comm: String,
    pub verdict: Verdict,
    pub reason: Reason,
    /// Ports it listens on (TCP).
    pub listen_ports: BTreeSet<u16>,
}

/// What the classifier remembers of a process between scans.
#[derive(Debug)]
struct ProcState {
    pod_id: u32,
    cgroup_id: Option<u64>,
    comm: String,
    runtime: Option<Reason>,
    non_blocking_samples: u32,
    blocking: bool,
    unreadable: bool,
    listen_ports: BTreeSet<u16>,
    /// Its socket inodes at the last sample -> is TCP (spares sockfs questions next time).
    tcp_inodes: HashMap<u64, bool>,
}

impl ProcState {
    fn verdict(&self) -> (Verdict, Reason) {
        if self.blocking {
            (Verdict::Blocking, Reason::BlockingSocket)
        } else if self.cgroup_id.is_none() {
            (Verdict::Unknown, Reason::NoCgroup)
        } else if let Some(runtime) = self.runtime {
            (Verdict::Splice, runtime)
        } else if self.non_blocking_samples >= NON_BLOCKING_SAMPLES {
            (Verdict::Splice, Reason::NonBlockingSockets)
        } else if self.unreadable {
            (Verdict::Unknown, Reason::Unreadable)
        } else if self.non_blocking_samples > 0 {
            (Verdict::Unknown, Reason::TooFewSamples)
        } else {
            (Verdict::Unknown, Reason::NoSockets)
        }
    }

    fn observe(&mut self, sample: &SocketSample) {
        if sample.blocking_fds > 0 {
            self.blocking = true;
        } else if sample.tcp_fds > 0 {
            self.non_blocking_samples += 1;
        }
        self.listen_ports = sample.listen_ports.clone();
    }
}

/// Classifies the processes of meshed pods, scan after scan.
pub struct Classifier {
    proc_root: PathBuf,
    cgroup_root: PathBuf,
    /// By (pid, start time): a reused pid is a new process.
    procs: HashMap<(u32, u64), ProcState>,
    last_cost: ScanCost,
}

/// The cgroup2 mount: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
/// hybrid one.
pub fn default_cgroup_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup");
    if unified.join("cgroup.controllers").exists() {
        unified.to_path_buf()
    } else {
        unified.join("unified")
    }
}

impl Classifier {
    pub fn new(proc_root: &Path, cgroup_root: &Path) -> Classifier {
        Classifier {
            proc_root: proc_root.to_path_buf(),
            cgroup_root: cgroup_root.to_path_buf(),
            procs: HashMap::new(),
            last_cost: ScanCost::default(),
        }
    }

    /// One scan of the host's processes: samples the application processes of `pods` and
    /// returns a verdict for each; forgets processes that are gone, and those of pods no
    /// longer among `live_pods`. A process this scan could not read (or whose pod's namespace
    /// was not found this time) keeps its state: a blocking verdict must never be lost to a
    /// transient read error, nor an event-driven one flap.
    pub fn scan(&mut self, pods: &[PodTarget], live_pods: &HashSet<u32>) -> Vec<ProcessVerdict> {
        let by_netns: HashMap<u64, &PodTarget> = pods.iter().map(|p| (p.netns_inode, p)).collect();
        let started = std::time::Instant::now();
        // Each namespace's listeners, asked once per scan and only if a process there is
        // sampled.
        let mut listeners_by_netns: HashMap<u64, HashMap<u64, u16>> = HashMap::new();
        let mut sampled = 0;
        let mut seen = HashSet::new();
        let Ok(entries) = fs::read_dir(&self.proc_root) else {
            self.procs.clear();
            return Vec::new();
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(inode) = procfs::netns_inode(&self.proc_root, pid) else {
                continue;
            };
            let Some(pod) = by_netns.get(&inode) else {
                continue;
            };
            let dir = self.proc_root.join(pid.to_string());
            let Some((uid, gid)) = fs::read_to_string(dir.join("status"))
                .ok()
                .and_then(|s| procfs::parse_uid_gid(&s))
            else {
                continue;
            };
            if uid == pod.proxy_uid || (pod.proxy_gid != 0 && gid == pod.proxy_gid) {
                continue;
            }
            let Some(start) = fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|s| procfs::parse_start_time(&s))
            else {
                continue;
            };
            seen.insert((pid, start));
            let state = self.procs.entry((pid, start)).or_insert_with(|| ProcState {
                pod_id: pod.pod_id,
                cgroup_id: None,
                comm: fs::read_to_string(dir.join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_default(),
                runtime: runtime::detect(&self.proc_root, pid),
                non_blocking_samples: 0,
                blocking: false,
                unreadable: false,
                listen_ports: BTreeSet::new(),
                tcp_inodes: HashMap::new(),
            });
            // Blocking is for good: nothing a later sample finds can change the verdict, so
            // such a process costs only the reads that tell it is still there.
            if state.blocking {
                continue;
            }
            sampled += 1;
            // A process may move between cgroups; re-read each scan (one read, one stat).
            state.cgroup_id = procfs::cgroup_id(&self.proc_root, &self.cgroup_root, pid);
            let listeners = match listeners_by_netns.get(&inode) {
                Some(l) => Ok(l),
                None => procfs::namespace_listeners(&self.proc_root, pid)
                    .map(|l| &*listeners_by_netns.entry(inode).or_insert(l)),
            };
            let sample = listeners.and_then(|l| {
                procfs::sample_sockets(&self.proc_root, pid, l, &mut state.tcp_inodes)
            });
            match sample {
                Ok(sample) => {
                    state.unreadable = false;
                    state.observe(&sample);
                }
                Err(ProcError::Gone) => {
                    seen.remove(&(pid, start));
                }
                Err(e) => {
                    log::debug!("splice: pid {pid}: {e}");
                    state.unreadable = true;
                }
            }
        }
        let proc_root = self.proc_root.clone();
        self.procs.retain(|&(pid, start), state| {
            seen.contains(&(pid, start))
                || (live_pods.contains(&state.pod_id)
                    && fs::read_to_string(proc_root.join(format!("{pid}/stat")))
                        .ok()
                        .and_then(|s| procfs::parse_start_time(&s))
                        == Some(start))
        });
        let mut out: Vec<ProcessVerdict> = self
            .procs
            .iter()
            .map(|(&(pid, _), s)| {
                let (verdict, reason) = s.verdict();
                ProcessVerdict {
                    pod_id: s.pod_id,
                    pid,
                    cgroup_id: s.cgroup_id,
                    comm: s.comm.clone(),
                    verdict,
                    reason,
                    listen_ports: s.listen_ports.clone(),
                }
            })
            .collect();
        out.sort_by_key(|v| (v.pod_id, v.pid));
        self.last_cost = ScanCost {
            sampled,
            namespaces: listeners_by_netns.len(),
            elapsed: started.elapsed(),
        };
        out
    }

    /// What the last [`Classifier::scan`] cost.
    pub fn last_cost(&self) -> ScanCost {
        self.last_cost
    }
}

/// What one scan read: processes whose sockets were sampled (those already blocking are not:
/// their verdict cannot change), namespaces whose listeners were asked for, and the time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanCost {
    pub sampled: usize,
    pub namespaces: usize,
    pub elapsed: std::time::Duration,
}

/// Errors of the splice maps.
#[derive(Debug)]
pub enum SpliceError {
    /// A map could not be opened (data path not loaded, or loaded by an older version).
    Open { map: &'static str, source: MapError },
    /// A map write or read failed.
    Map { map: &'static str, source: MapError },
}

impl std::fmt::Display for SpliceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpliceError::Open { map, source } => write!(
                f,
                "map {map}: {source} (load the data path with this version of merbridge: older \
                 ones have no per-process splice maps)"
            ),
            SpliceError::Map { map, source } => write!(f, "map {map}: {source}"),
        }
    }
}

impl std::error::Error for SpliceError {}

/// The verdict maps as the agent keeps them: it writes what changed and removes the entries of
/// processes that are gone.
pub struct SpliceMaps {
    procs: BpfHashMap<SpliceProcKey, SpliceVerdict>,
    ports: BpfHashMap<SplicePortKey, SpliceVerdict>,
    pod_ips: BpfHashMap<[u8; 16], PodEntry>,
    written_procs: HashMap<SpliceProcKey, SpliceVerdict>,
    written_ports: HashMap<SplicePortKey, SpliceVerdict>,
}

/// What one [`SpliceMaps::apply`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub written: usize,
    pub removed: usize,
}

fn map_value(v: &ProcessVerdict) -> Option<SpliceVerdict> {
    let verdict = match v.verdict {
        Verdict::Splice => SPLICE_VERDICT_YES,
        Verdict::Blocking => SPLICE_VERDICT_NO,
        Verdict::Unknown => return None,
    };
    Some(SpliceVerdict {
        verdict,
        reason: v.reason as u32,
    })
}

impl SpliceMaps {
    /// Opens the pinned maps; entries already there (a previous agent's) are adopted, so the
    /// first [`SpliceMaps::apply`] removes those of processes that are gone.
    pub fn open(pin_dir: &Path) -> Result<SpliceMaps, SpliceError> {
        let layout = PinLayout::new(pin_dir);
        let procs = BpfHashMap::open_pinned(&layout.map(MAP_SPLICE_PROCS)).map_err(|source| {
            SpliceError::Open {
                map: MAP_SPLICE_PROCS,
                source,
            }
        })?;
        let ports = BpfHashMap::open_pinned(&layout.map(MAP_SPLICE_PORTS)).map_err(|source| {
            SpliceError::Open {
                map: MAP_SPLICE_PORTS,
                source,
            }
        })?;
        let pod_ips = BpfHashMap::open_pinned(&layout.map(MAP_POD_IPS)).map_err(|source| {
            SpliceError::Open {
                map: MAP_POD_IPS,
                source,
            }
        })?;
        let written_procs = procs
            .dump()
            .map_err(|source| SpliceError::Map {
                map: MAP_SPLICE_PROCS,
                source,
            })?
            .into_iter()
            .collect();
        let written_ports = ports
            .dump()
            .map_err(|source| SpliceError::Map {
                map: MAP_SPLICE_PORTS,
                source,
            })?
            .into_iter()
            .collect();
        Ok(SpliceMaps {
            procs,
            ports,
            pod_ips,
            written_procs,
            written_ports,
        })
    }

    /// The meshed pods in `pod_ips`, with their network namespace found by `scanner` (which
    /// the caller has scanned; pods whose namespace is not found are left out), and the ids of
    /// every pod there: both from one read of the map.
    pub fn pod_targets(
        &self,
        scanner: &mut NetnsScanner,
        default_proxy_uid: u32,
    ) -> Result<(Vec<PodTarget>, HashSet<u32>), SpliceError> {
        let entries = self.pod_ips.dump().map_err(|source| SpliceError::Map {
            map: MAP_POD_IPS,
            source,
        })?;
        let mut pods: BTreeMap<u32, PodEntry> = BTreeMap::new();
        for (_, entry) in entries {
            pods.insert(entry.pod_id, entry);
        }
        let ids = pods.keys().copied().collect();
        let mut out = Vec::new();
        for entry in pods.values() {
            let ips: Vec<IpAddr> = [entry.ipv4, entry.ipv6]
                .into_iter()
                .filter(|b| b.iter().any(|&x| x != 0))
                .map(addr_from_bytes)
                .collect();
            let Some(netns_inode) = scanner.inode_for_pod(&ips, entry.netns) else {
                continue;
            };
            out.push(PodTarget {
                pod_id: entry.pod_id,
                netns_inode,
                proxy_uid: if entry.proxy_uid != 0 {
                    entry.proxy_uid
                } else {
                    default_proxy_uid
                },
                proxy_gid: entry.proxy_gid,
            });
        }
        Ok((out, ids))
    }

    /// Makes the maps hold exactly `verdicts` (unknown processes have no entry).
    pub fn apply(&mut self, verdicts: &[ProcessVerdict]) -> Result<ApplyStats, SpliceError> {
        let mut want_procs = HashMap::new();
        let mut want_ports: HashMap<SplicePortKey, SpliceVerdict> = HashMap::new();
        for v in verdicts {
            let Some(value) = map_value(v) else {
                continue;
            };
            if let Some(cgroup_id) = v.cgroup_id {
                let key = SpliceProcKey {
                    cgroup_id,
                    tgid: v.pid,
                };
                // An old process's state and a new one with its pid: a blocking one wins.
                let slot = want_procs.entry(key).or_insert(value);
                if value.verdict != SPLICE_VERDICT_YES {
                    *slot = value;
                }
            }
            for &port in &v.listen_ports {
                let key = SplicePortKey {
                    pod_id: v.pod_id,
                    port: port.to_be(),
                };
                // Two processes on one port (SO_REUSEPORT): a blocking one wins.
                let slot = want_ports.entry(key).or_insert(value);
                if value.verdict != SPLICE_VERDICT_YES {
                    *slot = value;
                }
            }
        }
        let mut stats = ApplyStats::default();
        sync_map(
            &self.procs,
            MAP_SPLICE_PROCS,
            &mut self.written_procs,
            want_procs,
            &mut stats,
        )?;
        sync_map(
            &self.ports,
            MAP_SPLICE_PORTS,
            &mut self.written_ports,
            want_ports,
            &mut stats,
        )?;
        Ok(stats)
    }

    /// The entries of `splice_procs` (for `pod show` and tests).
    pub fn proc_entries(&self) -> Result<Vec<(SpliceProcKey, SpliceVerdict)>, SpliceError> {
        self.procs.dump().map_err(|source| SpliceError::Map {
            map: MAP_SPLICE_PROCS,
            source,
        })
    }

    /// The entries of `splice_ports`.
    pub fn port_entries(&self) -> Result<Vec<(SplicePortKey, SpliceVerdict)>, SpliceError> {
        self.ports.dump().map_err(|source| SpliceError::Map {
            map: MAP_SPLICE_PORTS,
            source,
        })
    }
}

/// One classified process of a pod, as `pod show` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessEntry {
    pub pid: u32,
    pub comm: String,
    pub verdict: &'static str,
    pub reason: &'static str,
}

/// One application port of a pod with a verdict (the sidecar-to-application leg).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortEntry {
    pub port: u16,
    pub verdict: &'static str,
    pub reason: &'static str,
}

/// The per-process splice decisions of one pod, read back from the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodSplice {
    /// Processes with a verdict; unknown ones (not spliced) have no entry and are not listed.
    pub processes: Vec<ProcessEntry>,
    pub ports: Vec<PortEntry>,
}

fn verdict_name(code: u32) -> &'static str {
    match code {
        SPLICE_VERDICT_YES => Verdict::Splice.name(),
        SPLICE_VERDICT_NO => Verdict::Blocking.name(),
        _ => "invalid",
    }
}

fn reason_name(code: u32) -> &'static str {
    Reason::from_code(code).map_or("invalid", Reason::name)
}

/// Reads the verdict maps once, and one pod's verdicts after another (`pod show`, `pod list`).
pub struct PodSpliceReader {
    procs: Vec<(SpliceProcKey, SpliceVerdict)>,
    ports: Vec<(SplicePortKey, SpliceVerdict)>,
    scanner: NetnsScanner,
}

impl PodSpliceReader {
    pub fn open(pin_dir: &Path) -> Result<PodSpliceReader, SpliceError> {
        let maps = SpliceMaps::open(pin_dir)?;
        let mut scanner = NetnsScanner::new();
        scanner.scan();
        Ok(PodSpliceReader {
            procs: maps.proc_entries()?,
            ports: maps.port_entries()?,
            scanner,
        })
    }

    /// The verdicts the maps hold for pod `entry`: its ports from `splice_ports`, its
    /// processes from `splice_procs` (a process belongs to the pod when it is in the pod's
    /// network namespace, found from the pod's addresses as the agent finds it).
    pub fn pod(&mut self, entry: &PodEntry) -> PodSplice {
        let mut out = PodSplice::default();
        for (key, value) in &self.ports {
            if key.pod_id == entry.pod_id {
                out.ports.push(PortEntry {
                    port: u16::from_be(key.port),
                    verdict: verdict_name(value.verdict),
                    reason: reason_name(value.reason),
                });
            }
        }
        out.ports.sort_by_key(|p| p.port);
        let ips: Vec<IpAddr> = [entry.ipv4, entry.ipv6]
            .into_iter()
            .filter(|b| b.iter().any(|&x| x != 0))
            .map(addr_from_bytes)
            .collect();
        let Some(netns) = self.scanner.inode_for_pod(&ips, entry.netns) else {
            return out;
        };
        let proc_root = Path::new("/proc");
        for (key, value) in &self.procs {
            if procfs::netns_inode(proc_root, key.tgid) == Some(netns) {
                out.processes.push(ProcessEntry {
                    pid: key.tgid,
                    comm: fs::read_to_string(proc_root.join(format!("{}/comm", key.tgid)))
                        .map(|c| c.trim().to_owned())
                        .unwrap_or_default(),
                    verdict: verdict_name(value.verdict),
                    reason: reason_name(value.reason),
                });
            }
        }
        out.processes.sort_by_key(|p| p.pid);
        out
    }
}

/// One pod's verdicts (see [`PodSpliceReader::pod`]).
pub fn pod_splice(pin_dir: &Path, entry: &PodEntry) -> Result<PodSplice, SpliceError> {
    Ok(PodSpliceReader::open(pin_dir)?.pod(entry))
}

fn sync_map<K: mb_maps::Pod + Copy + Eq + std::hash::Hash>(
    map: &BpfHashMap<K, SpliceVerdict>,
    name: &'static str,
    written: &mut HashMap<K, SpliceVerdict>,
    want: HashMap<K, SpliceVerdict>,
    stats: &mut ApplyStats,
) -> Result<(), SpliceError> {
    let err = |source| SpliceError::Map { map: name, source };
    let gone: Vec<K> = written
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    for key in gone {
        map.remove(&key).map_err(err)?;
        written.remove(&key);
        stats.removed += 1;
    }
    for (key, value) in want {
        if written.get(&key) != Some(&value) {
            map.insert(&key, &value).map_err(err)?;
            written.insert(key, value);
            stats.written += 1;
        }
    }
    Ok(())
}

/// Classifier, maps and namespace scanner together: one [`SpliceAgent::scan_once`] per period
/// in `merbridge run`, or on demand in tests and the bench.
pub struct SpliceAgent {
    pub classifier: Classifier,
    pub maps: SpliceMaps,
    scanner: NetnsScanner,
    default_proxy_uid: u32,
    last: Vec<ProcessVerdict>,
}

/// What one scan found and did.
#[derive(Clone, Debug, Default)]
pub struct SpliceReport {
    pub verdicts: Vec<ProcessVerdict>,
    pub pods: usize,
    pub applied: ApplyStats,
    /// The classifier's part of the scan (the namespace walk and map writes excluded).
    pub cost: ScanCost,
}

impl SpliceReport {
    /// Processes by (verdict, reason).
    pub fn counts(&self) -> BTreeMap<(Verdict, Reason), usize> {
        let mut out = BTreeMap::new();
        for v in &self.verdicts {
            *out.entry((v.verdict, v.reason)).or_default() += 1;
        }
        out
    }
}

impl SpliceAgent {
    pub fn open(pin_dir: &Path, default_proxy_uid: u32) -> Result<SpliceAgent, SpliceError> {
        Ok(SpliceAgent {
            classifier: Classifier::new(Path::new("/proc"), &default_cgroup_root()),
            maps: SpliceMaps::open(pin_dir)?,
            scanner: NetnsScanner::new(),
            default_proxy_uid,
            last: Vec::new(),
        })
    }

    /// The verdicts of the last scan.
    pub fn last_verdicts(&self) -> &[ProcessVerdict] {
        &self.last
    }

    pub fn scan_once(&mut self) -> Result<SpliceReport, SpliceError> {
        self.scanner.scan();
        let (pods, live) = self
            .maps
            .pod_targets(&mut self.scanner, self.default_proxy_uid)?;
        let verdicts = self.classifier.scan(&pods, &live);
        let applied = self.maps.apply(&verdicts)?;
        self.last = verdicts.clone();
        Ok(SpliceReport {
            verdicts,
            pods: pods.len(),
            applied,
            cost: self.classifier.last_cost(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ProcState {
        ProcState {
            pod_id: 1,
            cgroup_id: Some(7),
            comm: "app".into(),
            runtime: None,
            non_blocking_samples: 0,
            blocking: false,
            unreadable: false,
            listen_ports: BTreeSet::new(),
            tcp_inodes: HashMap::new(),
        }
    }

    fn sample(tcp_fds: usize, blocking_fds: usize) -> SocketSample {
        SocketSample {
            tcp_fds,
            blocking_fds,
            listen_ports: BTreeSet::new(),
        }
    }

    #[test]
    fn non_blocking_takes_two_samples_and_blocking_is_sticky() {
        let mut s = state();
        assert_eq!(s.verdict(), (Verdict::Unknown, Reason::NoSockets));
        s.observe(&sample(0, 0));
        assert_eq!(s.verdict(), (Verdict::Unknown, Reason::NoSockets));
        s.observe(&sample(2, 0));
        assert_eq!(s.verdict(), (Verdict::Unknown, Reason::TooFewSamples));
        s.observe(&sample(1, 0));
        assert_eq!(s.verdict(), (Verdict::Splice, Reason::NonBlockingSockets));
        s.observe(&sample(3, 1));
        assert_eq!(s.verdict(), (Verdict::Blocking, Reason::BlockingSocket));
        for _ in 0..5 {
            s.observe(&sample(3, 0));
        }
        assert_eq!(s.verdict(), (Verdict::Blocking, Reason::BlockingSocket));
    }

    #[test]
    fn runtime_splices_at_once_but_never_over_a_blocking_fd_or_without_cgroup() {
        let mut s = state();
        s.runtime = Some(Reason::GoRuntime);
        assert_eq!(s.verdict(), (Verdict::Splice, Reason::GoRuntime));
        s.cgroup_id = None;
        assert_eq!(s.verdict(), (Verdict::Unknown, Reason::NoCgroup));
        s.cgroup_id = Some(7);
        s.observe(&sample(1, 1));
        assert_eq!(s.verdict(), (Verdict::Blocking, Reason::BlockingSocket));
    }

    #[test]
    fn reasons_round_trip_their_codes() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r as u32), Some(r));
        }
        assert_eq!(Reason::from_code(0), None);
        assert_eq!(Reason::from_code(999), None);
    }

    /// The classifier on the real /proc: this test process, in a "pod" made of its own network
    /// namespace, holds a blocking listener: it is found, with its port, and marked blocking.
    #[test]
    fn classifies_this_process_with_a_blocking_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        let netns = procfs::netns_inode(Path::new("/proc"), me).unwrap();
        let pods = [PodTarget {
            pod_id: 9,
            netns_inode: netns,
            // Nobody: every process of this namespace counts as an application.
            proxy_uid: u32::MAX - 1,
            proxy_gid: 0,
        }];
        let mut classifier = Classifier::new(Path::new("/proc"), &default_cgroup_root());
        let verdicts = classifier.scan(&pods, &HashSet::from([9]));
        let mine = verdicts.iter().find(|v| v.pid == me).expect("this process");
        assert_eq!(mine.pod_id, 9);
        // The listener is blocking (std's default).
        assert_eq!(mine.verdict, Verdict::Blocking, "{mine:?}");
        assert!(mine.listen_ports.contains(&port));
        assert!(mine.cgroup_id.is_some());

        // Blocking is for good, so a blocking process is not sampled again: a listener it
        // opens later is not read (its port is not in splice_ports, which splices nothing
        // either way).
        let later = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let later_port = later.local_addr().unwrap().port();
        let again = classifier.scan(&pods, &HashSet::from([9]));
        let mine = again.iter().find(|v| v.pid == me).expect("this process");
        assert_eq!(mine.verdict, Verdict::Blocking);
        assert!(mine.listen_ports.contains(&port));
        assert!(!mine.listen_ports.contains(&later_port), "{mine:?}");

        // A scan that misses the pod's namespace keeps the verdict (sticky blocking must
        // survive a transient miss); a pod gone from the maps takes its processes along.
        let kept = classifier.scan(&[], &HashSet::from([9]));
        assert!(
            kept.iter()
                .any(|v| v.pid == me && v.verdict == Verdict::Blocking),
            "{kept:?}"
        );
        let gone = classifier.scan(&[], &HashSet::new());
        assert!(gone.iter().all(|v| v.pid != me), "{gone:?}");
        drop(listener);
    }
}
