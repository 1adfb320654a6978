//! Local pods in the data path's maps: who a pod is (network-namespace cookie, addresses) and
//! its interception policy, written so that the programs never see a half-written pod.
//!
//! Order of writes: rules first, then `pod_ips` (where sidecars connect), then `netns_pods`
//! (which turns the pod's own interception on). Removal goes the other way round.
//!
//! [`PodMaps`] is the one writer of these four maps: `merbridge pod add/del/list`, the agent's
//! map sync (through [`PodStore`]), the demo and the bench all use it. Its errors are
//! [`PodMapError`]s, told apart by errno (a full map says so, and what to do).

use crate::mesh::{CidrSelection, PodPolicy, PortRanges, PortSelection};
use mb_loader::datapath::PinLayout;
use mb_maps::datapath::{
    MAP_CIDR_RULES, MAP_COUNTERS, MAP_NETNS_PODS, MAP_POD_IPS, MAP_PORT_RULES,
};
use mb_maps::layout::Counter;
use mb_maps::layout::{
    addr_bytes, addr_from_bytes, rule_scope, CidrRuleKey, PodEntry, PortRuleKey, POD_DNS_CAPTURE,
    POD_IN_CIDRS_EXCLUDE, POD_IN_PORTS_ALL, POD_IN_PORTS_EXCLUDE, POD_OUT_CIDRS_ALL,
    POD_OUT_CIDRS_EXCLUDE, POD_OUT_PORTS_EXCLUDE, POD_OUT_PORTS_INCLUDE, POD_SPLICE_APP,
    POD_SPLICE_APP_DENY, RULE_EXCLUDE, RULE_INBOUND, RULE_INCLUDE,
};
use mb_maps::{HashMap, KvMap, LpmTrie, MapError, MapKind, PerCpuArray, Pod};
use mb_sys::bpf::BpfError;
use nix::errno::Errno;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A pod of this node as the data path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    /// Its addresses (one IPv4 and/or one IPv6 are kept).
    pub ips: Vec<IpAddr>,
    /// The cookie of its network namespace (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
    pub policy: PodPolicy,
    /// Send its UDP DNS queries to the sidecar's DNS proxy.
    pub dns_capture: bool,
}

/// The rules and switches a policy becomes in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub flags: u32,
    pub port_rules: BTreeSet<PortRuleKey>,
    pub cidr_rules: BTreeSet<CidrRuleKey>,
    /// Parts of the policy the data path cannot express, for a warning.
    pub unsupported: Vec<String>,
    /// The pod entry's sidecar identity (`PodEntry::proxy_uid` / `proxy_gid`).
    pub proxy_uid: u32,
    pub proxy_gid: u32,
}

/// Turns a pod's policy into map rules for pod id `pod_id`; `dns_capture` is the default
/// for pods whose policy does not say.
pub fn compile(pod_id: u32, policy: &PodPolicy, dns_capture: bool) -> CompiledPolicy {
    let mut c = CompiledPolicy::default();
    let mut ports = |rule: u32, set: &PortRanges| {
        for &(first, last) in set.ranges() {
            c.port_rules.extend(PortRuleKey::cover_range(
                rule_scope(pod_id, rule),
                first,
                last,
            ));
        }
    };
    ports(RULE_EXCLUDE, &policy.outbound_exclude_ports);
    ports(RULE_INCLUDE, &policy.outbound_include_ports);
    ports(RULE_INBOUND | RULE_EXCLUDE, &policy.inbound_exclude_ports);
    if let PortSelection::Only(set) = &policy.inbound_include_ports {
        ports(RULE_INBOUND | RULE_INCLUDE, set);
    }
    if !policy.outbound_exclude_ports.is_empty() {
        c.flags |= POD_OUT_PORTS_EXCLUDE;
    }
    if !policy.outbound_include_ports.is_empty() {
        c.flags |= POD_OUT_PORTS_INCLUDE;
    }
    if !policy.inbound_exclude_ports.is_empty() {
        c.flags |= POD_IN_PORTS_EXCLUDE;
    }
    if policy.inbound_include_ports == PortSelection::All {
        c.flags |= POD_IN_PORTS_ALL;
    }
    for cidr in &policy.outbound_exclude_cidrs {
        c.cidr_rules.insert(CidrRuleKey::new(
            rule_scope(pod_id, RULE_EXCLUDE),
            cidr.network(),
            cidr.prefix_len(),
        ));
        c.flags |= POD_OUT_CIDRS_EXCLUDE;
    }
    match &policy.outbound_include_cidrs {
        CidrSelection::All => c.flags |= POD_OUT_CIDRS_ALL,
        CidrSelection::Only(list) => {
            for cidr in list {
                c.cidr_rules.insert(CidrRuleKey::new(
                    rule_scope(pod_id, RULE_INCLUDE),
                    cidr.network(),
                    cidr.prefix_len(),
                ));
            }
        }
    }
    if policy.dns_capture.unwrap_or(dns_capture) && policy.dns_port.is_some() {
        c.flags |= POD_DNS_CAPTURE;
    }
    match policy.splice_app {
        Some(true) => c.flags |= POD_SPLICE_APP,
        Some(false) => c.flags |= POD_SPLICE_APP_DENY,
        None => {}
    }
    c.proxy_uid = policy.proxy_uid;
    // istio-iptables' `-g` defaults to its `-u`: processes of that group are the proxy too.
    c.proxy_gid = match (policy.proxy_gid, policy.mesh) {
        (Some(gid), _) => gid,
        (None, crate::mesh::Mesh::Istio) => policy.proxy_uid,
        (None, _) => 0,
    };
    // Callers the sidecar never sees (Kuma's exclude-inbound-ips): sk_lookup lets them pass.
    for cidr in &policy.inbound_exclude_sources {
        c.cidr_rules.insert(CidrRuleKey::new(
            rule_scope(pod_id, RULE_INBOUND | RULE_EXCLUDE),
            cidr.network(),
            cidr.prefix_len(),
        ));
        c.flags |= POD_IN_CIDRS_EXCLUDE;
    }
    c
}

/// Why reading or writing the pod maps failed. Built from the kernel's errno (never from an
/// error's text), so callers and messages can tell a full map from any other refusal.
#[derive(Debug)]
pub enum PodMapError {
    /// A pinned map could not be opened: most often no data path is loaded under `pin_dir`.
    Open {
        map: &'static str,
        pin_dir: PathBuf,
        source: MapError,
    },
    /// An insert was refused because the map already holds `max_entries` entries (E2BIG from
    /// hash maps, ENOSPC from LPM tries).
    MapFull {
        map: &'static str,
        max_entries: u32,
        source: BpfError,
    },
    /// Any other failure of a map command.
    Map { map: &'static str, source: MapError },
    /// Every pod id (2^30, shared with 2 bits of rule kind in the rule keys) is in use.
    NoPodId { pod: String },
    /// A pod could not be written whole (`source`), so every entry of it was removed again:
    /// it is not intercepted at all rather than half (`undo`: removing failed too).
    NotWritten {
        source: Box<PodMapError>,
        undo: Option<Box<PodMapError>>,
    },
}

impl PodMapError {
    /// Classifies a failed write of map `map` (of `max_entries` entries) by its errno.
    fn from_write(map: &'static str, max_entries: u32, error: MapError) -> PodMapError {
        match error {
            MapError::Kernel(source) if source.is(Errno::E2BIG) || source.is(Errno::ENOSPC) => {
                PodMapError::MapFull {
                    map,
                    max_entries,
                    source,
                }
            }
            source => PodMapError::Map { map, source },
        }
    }

    /// True when a map ran out of room (the agent keeps running; the next pods may fit again
    /// once others are gone).
    pub fn is_map_full(&self) -> bool {
        match self {
            PodMapError::MapFull { .. } => true,
            PodMapError::NotWritten { source, .. } => source.is_map_full(),
            _ => false,
        }
    }
}

impl fmt::Display for PodMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PodMapError::Open {
                map,
                pin_dir,
                source,
            } => write!(
                f,
                "map {map} under {}: {source} (is the data path loaded? run `merbridge load` \
                 with the same --pin-dir first)",
                pin_dir.display()
            ),
            PodMapError::MapFull {
                map,
                max_entries,
                source,
            } => write!(
                f,
                "map {map} is full ({max_entries} entries; {source}): remove pods that are gone \
                 (`merbridge pod list`, `merbridge pod del`), or size the maps anew with \
                 `--max-pods`/`--max-connections` (`merbridge unload`, then `load` or restart \
                 the agent with the larger size)"
            ),
            PodMapError::Map { map, source } => write!(f, "map {map}: {source}"),
            PodMapError::NoPodId { pod } => {
                write!(f, "no pod id left for pod {pod} (2^30 in use)")
            }
            PodMapError::NotWritten { source, undo: None } => write!(
                f,
                "{source}; this pod is NOT intercepted (its entries were removed; it is written \
                 when another pod leaves)"
            ),
            PodMapError::NotWritten {
                source,
                undo: Some(undo),
            } => write!(
                f,
                "{source}; this pod is NOT intercepted, and removing its partial entries failed \
                 too: {undo}"
            ),
        }
    }
}

impl std::error::Error for PodMapError {}

/// Callers whose errors are still text (the CLI commands, the bench) keep using `?`.
impl From<PodMapError> for String {
    fn from(e: PodMapError) -> String {
        e.to_string()
    }
}

type Addr = [u8; 16];

/// The four pod maps as primitive reads and writes, in the programs' write order (rules, then
/// `pod_ips`, then `netns_pods`; removal the other way round). [`PodMaps`] is the one kernel
/// implementation; the agent's map sync also runs against an in-memory copy in unit tests of
/// its diff logic (`run::MemoryStore`).
pub trait PodStore {
    fn pod_ip_entries(&self) -> Result<Vec<(Addr, PodEntry)>, PodMapError>;
    fn netns_entries(&self) -> Result<Vec<(u64, PodEntry)>, PodMapError>;
    fn port_rule_keys(&self) -> Result<Vec<PortRuleKey>, PodMapError>;
    fn cidr_rule_keys(&self) -> Result<Vec<CidrRuleKey>, PodMapError>;
    fn set_pod_ip(&mut self, addr: &Addr, entry: &PodEntry) -> Result<(), PodMapError>;
    fn del_pod_ip(&mut self, addr: &Addr) -> Result<(), PodMapError>;
    fn set_netns(&mut self, cookie: u64, entry: &PodEntry) -> Result<(), PodMapError>;
    fn del_netns(&mut self, cookie: u64) -> Result<(), PodMapError>;
    fn add_port_rule(&mut self, key: &PortRuleKey) -> Result<(), PodMapError>;
    fn del_port_rule(&mut self, key: &PortRuleKey) -> Result<(), PodMapError>;
    fn add_cidr_rule(&mut self, key: &CidrRuleKey) -> Result<(), PodMapError>;
    fn del_cidr_rule(&mut self, key: &CidrRuleKey) -> Result<(), PodMapError>;

    /// The entry of address `addr` (a direct lookup).
    fn pod_ip_entry(&self, addr: &Addr) -> Result<Option<PodEntry>, PodMapError> {
        Ok(self
            .pod_ip_entries()?
            .into_iter()
            .find(|(a, _)| a == addr)
            .map(|(_, e)| e))
    }
    /// The entry of network namespace `cookie` (a direct lookup).
    fn netns_entry(&self, cookie: u64) -> Result<Option<PodEntry>, PodMapError> {
        Ok(self
            .netns_entries()?
            .into_iter()
            .find(|(c, _)| *c == cookie)
            .map(|(_, e)| e))
    }
    /// How many times any writer added or removed a pod (the `pod_map_changes` counter);
    /// `None` where it is not kept: pod ids are then read from the maps for every new pod.
    fn pod_changes(&self) -> Option<u64> {
        None
    }
    /// Counts one pod added or removed by this writer; the new count (`None`: not kept).
    fn count_pod_change(&mut self) -> Option<u64> {
        None
    }
    /// Every pod id some writer has in the maps (an entry in `pod_ips` or `netns_pods`).
    fn used_pod_ids(&self) -> Result<BTreeSet<u32>, PodMapError> {
        let mut ids: BTreeSet<u32> = self
            .pod_ip_entries()?
            .iter()
            .map(|(_, e)| e.pod_id)
            .collect();
        ids.extend(self.netns_entries()?.iter().map(|(_, e)| e.pod_id));
        Ok(ids)
    }
    /// The rule keys stored for `pod_id` (a scan of the rule maps: for adopting a pod another
    /// writer registered, not for every event).
    fn rule_keys_of(
        &self,
        pod_id: u32,
    ) -> Result<(BTreeSet<PortRuleKey>, BTreeSet<CidrRuleKey>), PodMapError> {
        let ports = self
            .port_rule_keys()?
            .into_iter()
            .filter(|k| k.scope >> 2 == pod_id);
        let cidrs = self
            .cidr_rule_keys()?
            .into_iter()
            .filter(|k| k.scope >> 2 == pod_id);
        Ok((ports.collect(), cidrs.collect()))
    }
}

/// The lowest pod id not in `used` (ids share the rule keys' scope word with 2 bits of rule
/// kind, so there are 2^30 - 1 of them; 0 means "no pod").
pub fn lowest_unused_id(used: &BTreeSet<u32>) -> Option<u32> {
    let mut id = 1;
    for &u in used.range(1..) {
        if u != id {
            break;
        }
        id += 1;
    }
    (id < (1u32 << 30)).then_some(id)
}

/// The pod-related maps of a loaded data path: the one writer of these maps, for
/// `merbridge pod`, the agent's map sync (through [`PodStore`]), the demo and the bench.
pub struct PodMaps {
    netns_pods: HashMap<u64, PodEntry>,
    pod_ips: HashMap<Addr, PodEntry>,
    port_rules: LpmTrie<PortRuleKey, u32>,
    cidr_rules: LpmTrie<CidrRuleKey, u32>,
    /// What this handle knows of the maps, built by one scan at the first write and kept up
    /// to date by its own writes: adding or updating a pod then costs O(its own rules), not
    /// O(all pods' rules) (`None` until needed, and again after a failed write).
    index: Mutex<Option<Index>>,
    /// The data path's counters, whose `pod_map_changes` every writer bumps when it adds or
    /// removes a pod (`None`: a data path without it; ids are then read from the maps on
    /// every add).
    counters: Option<PerCpuArray<u64>>,
    /// The pod ids in the maps as this handle last read or wrote them, with the
    /// `pod_map_changes` count they go with: valid while no other writer changed the pods.
    ids: Mutex<Option<(u64, BTreeSet<u32>)>>,
}

/// The rule keys stored per pod id.
#[derive(Default)]
struct Index {
    port_rules: BTreeMap<u32, BTreeSet<PortRuleKey>>,
    cidr_rules: BTreeMap<u32, BTreeSet<CidrRuleKey>>,
}

impl Index {
    fn release(&mut self, id: u32) {
        self.port_rules.remove(&id);
        self.cidr_rules.remove(&id);
    }
}

/// Sets `key` in map `name`; a full map is [`PodMapError::MapFull`].
fn put<K: Pod, V: Pod, T: MapKind>(
    name: &'static str,
    map: &KvMap<K, V, T>,
    key: &K,
    value: &V,
) -> Result<(), PodMapError> {
    map.insert(key, value)
        .map_err(|e| PodMapError::from_write(name, map.map().info().max_entries, e))
}

/// Removes `key` from map `name` (absent is fine).
fn del<K: Pod, V: Pod, T: MapKind>(
    name: &'static str,
    map: &KvMap<K, V, T>,
    key: &K,
) -> Result<(), PodMapError> {
    map.remove(key)
        .map(drop)
        .map_err(|source| PodMapError::Map { map: name, source })
}

fn in_map(map: &'static str) -> impl Fn(MapError) -> PodMapError {
    move |source| PodMapError::Map { map, source }
}

impl PodMaps {
    /// Opens the pinned maps under `pin_dir` (as `merbridge load` left them).
    pub fn open(pin_dir: &Path) -> Result<PodMaps, PodMapError> {
        let layout = PinLayout::new(pin_dir);
        let opened = |map: &'static str| {
            move |source| PodMapError::Open {
                map,
                pin_dir: pin_dir.to_path_buf(),
                source,
            }
        };
        Ok(PodMaps {
            netns_pods: HashMap::open_pinned(&layout.map(MAP_NETNS_PODS))
                .map_err(opened(MAP_NETNS_PODS))?,
            pod_ips: HashMap::open_pinned(&layout.map(MAP_POD_IPS)).map_err(opened(MAP_POD_IPS))?,
            port_rules: LpmTrie::open_pinned(&layout.map(MAP_PORT_RULES))
                .map_err(opened(MAP_PORT_RULES))?,
            cidr_rules: LpmTrie::open_pinned(&layout.map(MAP_CIDR_RULES))
                .map_err(opened(MAP_CIDR_RULES))?,
            index: Mutex::new(None),
            counters: PerCpuArray::open_pinned(&layout.map(MAP_COUNTERS)).ok(),
            ids: Mutex::new(None),
        })
    }

    /// `pod_map_changes` now (`None` without the counters map or when it cannot be read).
    fn pod_changes(&self) -> Option<u64> {
        let counters = self.counters.as_ref()?;
        counters
            .get_sum(Counter::PodMapChanges as u32)
            .ok()
            .flatten()
    }

    /// The pod ids in the maps: this handle's copy while `pod_map_changes` says no other
    /// writer added or removed a pod since, else read from the maps (a scan of two maps,
    /// O(pods)). Call under the maps' write lock, as every writer does.
    fn with_used_ids<T>(&self, f: impl FnOnce(&BTreeSet<u32>) -> T) -> Result<T, PodMapError> {
        let now = self.pod_changes();
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        match (&*ids, now) {
            (Some((seen, used)), Some(now)) if *seen == now => return Ok(f(used)),
            _ => {}
        }
        let used = PodStore::used_pod_ids(self)?;
        let result = f(&used);
        *ids = now.map(|now| (now, used));
        Ok(result)
    }

    /// Adds one to `pod_map_changes`; the new count (`None`: not kept, or not written).
    fn bump_pod_changes(&self) -> Option<u64> {
        let after = self.pod_changes()?.wrapping_add(1);
        self.counters
            .as_ref()?
            .set_total(Counter::PodMapChanges as u32, &after)
            .ok()?;
        Some(after)
    }

    /// Records that this handle added (`added`) or removed pod id `pod_id`: bumps
    /// `pod_map_changes` for the other writers and keeps this handle's copy current.
    fn note_pod_change(&self, pod_id: u32, added: bool) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.pod_changes();
        let Some(after) = self.bump_pod_changes() else {
            *ids = None;
            return;
        };
        match ids.as_mut() {
            Some((seen, used)) if Some(*seen) == before => {
                if added {
                    used.insert(pod_id);
                } else {
                    used.remove(&pod_id);
                }
                *seen = after;
            }
            _ => *ids = None,
        }
    }

    /// The index, built by scanning the maps if this handle has none yet.
    fn index(&self) -> Result<MutexGuard<'_, Option<Index>>, PodMapError> {
        let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let mut index = Index::default();
            for key in PodStore::port_rule_keys(self)? {
                index
                    .port_rules
                    .entry(key.scope >> 2)
                    .or_default()
                    .insert(key);
            }
            for key in PodStore::cidr_rule_keys(self)? {
                index
                    .cidr_rules
                    .entry(key.scope >> 2)
                    .or_default()
                    .insert(key);
            }
            *guard = Some(index);
        }
        Ok(guard)
    }

    /// Every pod in the maps, by pod id.
    pub fn pods(&self) -> Result<Vec<PodEntry>, PodMapError> {
        let mut by_id = BTreeMap::new();
        for (_, entry) in PodStore::pod_ip_entries(self)? {
            by_id.insert(entry.pod_id, entry);
        }
        for (_, entry) in PodStore::netns_entries(self)? {
            by_id.insert(entry.pod_id, entry);
        }
        Ok(by_id.into_values().collect())
    }

    /// The pod that has address `ip`, if any.
    pub fn find(&self, ip: IpAddr) -> Result<Option<PodEntry>, PodMapError> {
        self.pod_ips
            .get(&addr_bytes(ip))
            .map_err(in_map(MAP_POD_IPS))
    }

    /// Adds `pod`, or updates it when one of its addresses is already known (its id is kept,
    /// so connections in flight keep their policy).
    ///
    /// Cost: a few map lookups and the pod's own rules, whatever the number of pods — the
    /// stale rules of an updated pod come from this handle's index, not from a scan. The
    /// index assumes this handle is the maps' only writer while it lives (the agent); a
    /// one-shot `merbridge pod add` builds it fresh, by one scan.
    pub fn upsert(&self, pod: &LocalPod) -> Result<(u32, CompiledPolicy), PodMapError> {
        // The pod's own entry, by address or by namespace: direct lookups.
        let mut existing = None;
        for ip in &pod.ips {
            existing = self.find(*ip)?;
            if existing.is_some() {
                break;
            }
        }
        if existing.is_none() && pod.netns_cookie != 0 {
            existing = PodStore::netns_entry(self, pod.netns_cookie)?;
        }
        let Some(previous) = existing else {
            return self.insert_new(pod);
        };
        // An update: its stale rules come from the index (one scan per handle).
        let mut guard = self.index()?;
        let index = guard.as_mut().expect("index() builds the index");
        let pod_id = previous.pod_id;
        let compiled = compile(pod_id, &pod.policy, pod.dns_capture);
        match self.write(pod_id, pod, &compiled, Some(&previous), Some(index)) {
            Ok(()) => Ok((pod_id, compiled)),
            Err(e) => {
                // The maps may now differ from the index: rebuild it next time.
                *guard = None;
                Err(e)
            }
        }
    }

    /// A pod none of whose keys is in the maps: it takes the lowest id that no writer has
    /// in the maps right now. Read from the maps, not from this handle's memory: the agent,
    /// `merbridge pod` and the CNI plugin all allocate this way, each under the maps' write
    /// lock ([`crate::pin_lock`]), so two pods never get one id. A fresh id has no rules to
    /// remove, so the rule maps are not scanned.
    fn insert_new(&self, pod: &LocalPod) -> Result<(u32, CompiledPolicy), PodMapError> {
        let pod_id = self
            .with_used_ids(lowest_unused_id)?
            .ok_or_else(|| PodMapError::NoPodId {
                pod: pod
                    .ips
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            })?;
        let compiled = compile(pod_id, &pod.policy, pod.dns_capture);
        let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
        // Counted before the write: a write that fails half-way may still have stored some
        // of the pod's keys, which other writers must then read back.
        self.note_pod_change(pod_id, true);
        match self.write(pod_id, pod, &compiled, None, guard.as_mut()) {
            Ok(()) => Ok((pod_id, compiled)),
            Err(e) => {
                *guard = None;
                Err(e)
            }
        }
    }

    fn write(
        &self,
        pod_id: u32,
        pod: &LocalPod,
        compiled: &CompiledPolicy,
        previous: Option<&PodEntry>,
        index: Option<&mut Index>,
    ) -> Result<(), PodMapError> {
        let mut entry = PodEntry {
            pod_id,
            flags: compiled.flags,
            netns: pod.netns_cookie,
            proxy_uid: compiled.proxy_uid,
            proxy_gid: compiled.proxy_gid,
            ..PodEntry::default()
        };
        for ip in &pod.ips {
            match ip {
                IpAddr::V4(_) => entry.ipv4 = addr_bytes(*ip),
                IpAddr::V6(_) => entry.ipv6 = addr_bytes(*ip),
            }
        }
        for key in &compiled.port_rules {
            put(MAP_PORT_RULES, &self.port_rules, key, &1)?;
        }
        for key in &compiled.cidr_rules {
            put(MAP_CIDR_RULES, &self.cidr_rules, key, &1)?;
        }
        for ip in &pod.ips {
            put(MAP_POD_IPS, &self.pod_ips, &addr_bytes(*ip), &entry)?;
        }
        if pod.netns_cookie != 0 {
            put(MAP_NETNS_PODS, &self.netns_pods, &pod.netns_cookie, &entry)?;
        }
        if let Some(prev) = previous {
            // Addresses and namespace the pod no longer has.
            for old in [prev.ipv4, prev.ipv6] {
                if old != [0; 16] && !pod.ips.iter().any(|ip| addr_bytes(*ip) == old) {
                    del(MAP_POD_IPS, &self.pod_ips, &old)?;
                }
            }
            if prev.netns != 0 && prev.netns != pod.netns_cookie {
                del(MAP_NETNS_PODS, &self.netns_pods, &prev.netns)?;
            }
        }
        match index {
            Some(index) => self.remove_rules(pod_id, Some(compiled), index),
            None => Ok(()),
        }
    }

    /// Removes the rules of `pod_id` that `keep` does not have (all, without `keep`), as the
    /// index knows them, and records what stays.
    fn remove_rules(
        &self,
        pod_id: u32,
        keep: Option<&CompiledPolicy>,
        index: &mut Index,
    ) -> Result<(), PodMapError> {
        let stored_ports = index.port_rules.remove(&pod_id).unwrap_or_default();
        for key in &stored_ports {
            if keep.is_none_or(|c| !c.port_rules.contains(key)) {
                del(MAP_PORT_RULES, &self.port_rules, key)?;
            }
        }
        let stored_cidrs = index.cidr_rules.remove(&pod_id).unwrap_or_default();
        for key in &stored_cidrs {
            if keep.is_none_or(|c| !c.cidr_rules.contains(key)) {
                del(MAP_CIDR_RULES, &self.cidr_rules, key)?;
            }
        }
        if let Some(c) = keep {
            if !c.port_rules.is_empty() {
                index.port_rules.insert(pod_id, c.port_rules.clone());
            }
            if !c.cidr_rules.is_empty() {
                index.cidr_rules.insert(pod_id, c.cidr_rules.clone());
            }
        }
        Ok(())
    }

    /// Removes the pod with address `ip` (all its addresses, its namespace, its rules).
    /// Returns false when no such pod is known.
    pub fn remove(&self, ip: IpAddr) -> Result<bool, PodMapError> {
        let Some(entry) = self.find(ip)? else {
            return Ok(false);
        };
        self.remove_entry(&entry)?;
        Ok(true)
    }

    /// Removes a pod by its entry.
    pub fn remove_entry(&self, entry: &PodEntry) -> Result<(), PodMapError> {
        let mut guard = self.index()?;
        let index = guard.as_mut().expect("index() builds the index");
        let result = self.remove_entry_indexed(entry, index);
        match &result {
            Ok(()) => self.note_pod_change(entry.pod_id, false),
            // Some of its keys may remain: read the ids from the maps next time.
            Err(_) => {
                self.bump_pod_changes();
                *self.ids.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        match &result {
            Ok(()) => index.release(entry.pod_id),
            Err(_) => *guard = None,
        }
        result
    }

    fn remove_entry_indexed(&self, entry: &PodEntry, index: &mut Index) -> Result<(), PodMapError> {
        if entry.netns != 0 {
            del(MAP_NETNS_PODS, &self.netns_pods, &entry.netns)?;
        }
        for addr in [entry.ipv4, entry.ipv6] {
            if addr != [0; 16] {
                del(MAP_POD_IPS, &self.pod_ips, &addr)?;
            }
        }
        self.remove_rules(entry.pod_id, None, index)
    }

    /// Rules currently stored for `pod_id` (for `pod list`).
    pub fn rule_counts(&self, pod_id: u32) -> (usize, usize) {
        let ports = self
            .port_rules
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.scope >> 2 == pod_id)
            .count();
        let cidrs = self
            .cidr_rules
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.scope >> 2 == pod_id)
            .count();
        (ports, cidrs)
    }
}

/// The agent's map sync writes through the same handle and the same error classification as
/// `merbridge pod` (it keeps its own record of what it wrote, so it never uses the index).
impl PodStore for PodMaps {
    fn pod_changes(&self) -> Option<u64> {
        PodMaps::pod_changes(self)
    }
    fn count_pod_change(&mut self) -> Option<u64> {
        self.bump_pod_changes()
    }
    // Batched reads (`BPF_MAP_LOOKUP_BATCH`, 256 entries a call): allocating a new pod's id
    // reads both hash maps, and must cost a few calls, not two per pod already there.
    fn pod_ip_entries(&self) -> Result<Vec<(Addr, PodEntry)>, PodMapError> {
        self.pod_ips.dump().map_err(in_map(MAP_POD_IPS))
    }
    fn netns_entries(&self) -> Result<Vec<(u64, PodEntry)>, PodMapError> {
        self.netns_pods.dump().map_err(in_map(MAP_NETNS_PODS))
    }
    fn port_rule_keys(&self) -> Result<Vec<PortRuleKey>, PodMapError> {
        self.port_rules
            .keys()
            .collect::<Result<_, _>>()
            .map_err(in_map(MAP_PORT_RULES))
    }
    fn cidr_rule_keys(&self) -> Result<Vec<CidrRuleKey>, PodMapError> {
        self.cidr_rules
            .keys()
            .collect::<Result<_, _>>()
            .map_err(in_map(MAP_CIDR_RULES))
    }
    fn pod_ip_entry(&self, addr: &Addr) -> Result<Option<PodEntry>, PodMapError> {
        self.pod_ips.get(addr).map_err(in_map(MAP_POD_IPS))
    }
    fn netns_entry(&self, cookie: u64) -> Result<Option<PodEntry>, PodMapError> {
        self.netns_pods.get(&cookie).map_err(in_map(MAP_NETNS_PODS))
    }
    fn set_pod_ip(&mut self, addr: &Addr, entry: &PodEntry) -> Result<(), PodMapError> {
        put(MAP_POD_IPS, &self.pod_ips, addr, entry)
    }
    fn del_pod_ip(&mut self, addr: &Addr) -> Result<(), PodMapError> {
        del(MAP_POD_IPS, &self.pod_ips, addr)
    }
    fn set_netns(&mut self, cookie: u64, entry: &PodEntry) -> Result<(), PodMapError> {
        put(MAP_NETNS_PODS, &self.netns_pods, &cookie, entry)
    }
    fn del_netns(&mut self, cookie: u64) -> Result<(), PodMapError> {
        del(MAP_NETNS_PODS, &self.netns_pods, &cookie)
    }
    fn add_port_rule(&mut self, key: &PortRuleKey) -> Result<(), PodMapError> {
        put(MAP_PORT_RULES, &self.port_rules, key, &1)
    }
    fn del_port_rule(&mut self, key: &PortRuleKey) -> Result<(), PodMapError> {
        del(MAP_PORT_RULES, &self.port_rules, key)
    }
    fn add_cidr_rule(&mut self, key: &CidrRuleKey) -> Result<(), PodMapError> {
        put(MAP_CIDR_RULES, &self.cidr_rules, key, &1)
    }
    fn del_cidr_rule(&mut self, key: &CidrRuleKey) -> Result<(), PodMapError> {
        del(MAP_CIDR_RULES, &self.cidr_rules, key)
    }
}

/// A pod entry's addresses, for display.
pub fn entry_ips(entry: &PodEntry) -> Vec<IpAddr> {
    [entry.ipv4, entry.ipv6]
        .into_iter()
        .filter(|a| *a != [0; 16])
        .map(addr_from_bytes)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::Mesh;

    #[test]
    fn istio_defaults_compile_to_flags_and_own_port_exclusions() {
        let policy = PodPolicy::defaults(Mesh::Istio);
        let c = compile(3, &policy, false);
        assert_eq!(
            c.flags & (POD_OUT_CIDRS_ALL | POD_IN_PORTS_ALL | POD_IN_PORTS_EXCLUDE),
            POD_OUT_CIDRS_ALL | POD_IN_PORTS_ALL | POD_IN_PORTS_EXCLUDE
        );
        assert_eq!(c.flags & POD_OUT_PORTS_INCLUDE, 0);
        assert_eq!(c.flags & POD_DNS_CAPTURE, 0);
        // 15020 (status) is excluded inbound; 8080 is not.
        let scope = rule_scope(3, RULE_INBOUND | RULE_EXCLUDE);
        let covers = |port: u16| {
            c.port_rules.iter().any(|k| {
                let shift = 16 - (k.prefixlen - 32);
                k.scope == scope
                    && (u32::from(port) >> shift) == (u32::from(u16::from_be(k.port)) >> shift)
            })
        };
        assert!(covers(15020) && covers(15006) && !covers(8080));
        assert!(c.cidr_rules.is_empty());
        assert!(compile(3, &policy, true).flags & POD_DNS_CAPTURE != 0);
        assert_eq!(c.flags & POD_SPLICE_APP, 0);
    }

    #[test]
    fn splice_app_annotation_sets_the_pod_flag_in_any_mesh() {
        for mesh in [Mesh::Istio, Mesh::Linkerd, Mesh::Kuma, Mesh::Osm] {
            for (value, flag, warned) in [
                ("true", POD_SPLICE_APP, false),
                (" false ", POD_SPLICE_APP_DENY, false),
                ("yes", 0, true),
            ] {
                let annotations = std::collections::BTreeMap::from([(
                    crate::mesh::SPLICE_APP_ANNOTATION.to_owned(),
                    value.to_owned(),
                )]);
                let (policy, warnings) = PodPolicy::from_annotations(mesh, &annotations);
                let flags = compile(1, &policy, false).flags;
                assert_eq!(flags & (POD_SPLICE_APP | POD_SPLICE_APP_DENY), flag);
                assert_eq!(
                    !warnings.is_empty(),
                    warned,
                    "{mesh:?} {value:?}: {warnings:?}"
                );
            }
        }
    }

    #[test]
    fn include_lists_become_rules_and_empty_means_nothing() {
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(
            "traffic.sidecar.istio.io/includeOutboundIPRanges".to_string(),
            "10.0.0.1/8,fd00::/8".to_string(),
        );
        annotations.insert(
            "traffic.sidecar.istio.io/includeInboundPorts".to_string(),
            String::new(),
        );
        let (policy, warnings) = PodPolicy::from_annotations(Mesh::Istio, &annotations);
        assert!(warnings.is_empty(), "{warnings:?}");
        let c = compile(9, &policy, false);
        assert_eq!(c.flags & POD_OUT_CIDRS_ALL, 0);
        assert_eq!(
            c.flags & POD_IN_PORTS_ALL,
            0,
            "empty include list = nothing"
        );
        let include = rule_scope(9, RULE_INCLUDE);
        let v4 = CidrRuleKey::new(include, "10.0.0.0".parse().unwrap(), 8);
        assert!(c.cidr_rules.contains(&v4), "host bits masked");
        assert_eq!(
            c.cidr_rules.iter().filter(|k| k.scope == include).count(),
            2
        );
    }

    #[test]
    fn a_full_map_is_told_by_its_errno_and_says_what_to_do() {
        use mb_sys::bpf::Cmd;
        let refused = |errno: Errno| {
            let e = MapError::Kernel(BpfError::new(Cmd::MapUpdateElem, errno as i32));
            PodMapError::from_write(MAP_POD_IPS, 4, e)
        };
        for errno in [Errno::E2BIG, Errno::ENOSPC] {
            let e = refused(errno);
            assert!(e.is_map_full(), "{errno:?}: {e:?}");
            let text = e.to_string();
            assert!(text.starts_with("map pod_ips is full (4 entries"), "{text}");
            assert!(
                text.contains("--max-pods") && text.contains("pod del"),
                "{text}"
            );
        }
        let other = refused(Errno::EPERM);
        assert!(!other.is_map_full());
        assert!(matches!(
            other,
            PodMapError::Map {
                map: MAP_POD_IPS,
                ..
            }
        ));
        assert!(other.to_string().starts_with("map pod_ips: bpf("));
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::mesh::Mesh;
    use mb_loader::datapath::{load_datapath, unload_datapath, LoadOptions};
    use mb_maps::datapath::SPLICE_SIDECARS;
    use mb_sys::bpffs::PrivateBpffs;
    use mb_sys::cgroup::OwnedCgroup;

    fn policy(exclude_outbound_ports: &str) -> PodPolicy {
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(
            "traffic.sidecar.istio.io/excludeOutboundPorts".to_string(),
            exclude_outbound_ports.to_string(),
        );
        PodPolicy::from_annotations(Mesh::Istio, &annotations).0
    }

    fn pod(last: u8, ports: &str) -> LocalPod {
        LocalPod {
            ips: vec![IpAddr::from([100, 65, 0, last])],
            netns_cookie: 0xfff1_0000_0000_0000 | u64::from(last),
            policy: policy(ports),
            dns_capture: false,
        }
    }

    /// The index-based upsert leaves exactly the rules a full scan would: updates drop stale
    /// rules, removal drops all, ids are reused, and a fresh handle (fresh scan) agrees.
    #[test]
    fn upsert_keeps_exactly_the_current_rules() {
        if !mb_sys::testing::kernel_tests_enabled("upsert_keeps_exactly_the_current_rules") {
            return;
        }
        let cgroup = OwnedCgroup::create_private("mb-test-pods").expect("cgroup");
        let bpffs = PrivateBpffs::new("mb-test-pods").expect("bpffs");
        let pin_dir = bpffs.path().join("merbridge");
        let constants = Mesh::Istio.defaults().constants(SPLICE_SIDECARS);
        load_datapath(&LoadOptions::for_mesh(cgroup.path(), &pin_dir, constants)).expect("load");
        struct Unload(std::path::PathBuf);
        impl Drop for Unload {
            fn drop(&mut self) {
                let _ = unload_datapath(&self.0, None);
            }
        }
        let _unload = Unload(pin_dir.clone());

        let maps = PodMaps::open(&pin_dir).expect("open");
        let (a, compiled_a) = maps.upsert(&pod(1, "1000-1010")).expect("add a");
        let (b, _) = maps.upsert(&pod(2, "80")).expect("add b");
        assert_ne!(a, b);
        let fresh = || PodMaps::open(&pin_dir).expect("reopen");
        assert_eq!(fresh().rule_counts(a).0, compiled_a.port_rules.len());
        // Update a: the 1000-1010 keys go, the 2000 key comes.
        let (a2, compiled_a2) = maps.upsert(&pod(1, "2000")).expect("update a");
        assert_eq!(a2, a, "an update keeps the pod id");
        assert_ne!(compiled_a.port_rules, compiled_a2.port_rules);
        assert_eq!(fresh().rule_counts(a).0, compiled_a2.port_rules.len());
        // Removal drops every rule; the id is reused by the next pod.
        assert!(maps
            .remove(IpAddr::from([100, 65, 0, 1]))
            .expect("remove a"));
        assert_eq!(fresh().rule_counts(a), (0, 0));
        assert!(fresh().rule_counts(b).0 > 0, "b keeps its rules");
        let (c, compiled_c) = maps.upsert(&pod(3, "9000")).expect("add c");
        assert_eq!(c, a, "the lowest free id is reused");
        assert_eq!(fresh().rule_counts(c).0, compiled_c.port_rules.len());
        // A second handle (another scan) continues where the first stopped.
        let other = fresh();
        let (d_id, _) = other.upsert(&pod(4, "")).expect("add d");
        assert!(d_id != b && d_id != c);
        let (c2, compiled_c2) = other.upsert(&pod(3, "9001")).expect("update c elsewhere");
        assert_eq!(c2, c);
        assert_eq!(fresh().rule_counts(c).0, compiled_c2.port_rules.len());
        // Each handle keeps its ids between adds, but another writer's add or removal (the
        // pod_map_changes counter) makes it read them again: no id is ever given twice.
        let changes = || maps.pod_changes().expect("pod_map_changes is kept");
        let before = changes();
        let (e, _) = maps.upsert(&pod(5, "")).expect("add e");
        assert!(![b, c, d_id].contains(&e), "{e} given twice");
        assert_eq!(changes(), before + 1, "an add is counted");
        let (f, _) = other.upsert(&pod(6, "")).expect("add f elsewhere");
        let (g, _) = maps.upsert(&pod(7, "")).expect("add g");
        let mut ids = vec![b, c, d_id, e, f, g];
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 6, "an id given twice: {ids:?}");
        assert!(other
            .remove(IpAddr::from([100, 65, 0, 2]))
            .expect("remove b elsewhere"));
        let (h, _) = maps.upsert(&pod(8, "")).expect("add h");
        assert_eq!(h, b, "the id another writer freed is seen and reused");
    }

    /// Small pinned maps of the data path's shapes: a full hash map (E2BIG) and a full LPM
    /// trie (ENOSPC) come back as `MapFull`, through `upsert` and through the agent's
    /// primitive writes alike, and the handle keeps working for what fits.
    #[test]
    fn full_maps_are_reported_as_full() {
        if !mb_sys::testing::kernel_tests_enabled("full_maps_are_reported_as_full") {
            return;
        }
        let bpffs = PrivateBpffs::new("mb-test-podfull").expect("bpffs");
        let layout = PinLayout::new(bpffs.path());
        std::fs::create_dir_all(layout.maps_dir()).expect("maps dir");
        let sizes = [
            (MAP_NETNS_PODS, 16),
            (MAP_POD_IPS, 2),
            (MAP_PORT_RULES, 2),
            (MAP_CIDR_RULES, 16),
        ];
        for (name, max_entries) in sizes {
            let decl = mb_maps::datapath::MapDecl::find(name).expect("declared");
            let map = mb_maps::Map::create(&decl.spec_with(max_entries)).expect("create");
            map.pin(&layout.map(name)).expect("pin");
        }
        let mut maps = PodMaps::open(bpffs.path()).expect("open");
        // Istio's defaults need more than 2 port rules: the trie fills up (ENOSPC).
        match maps.upsert(&pod(9, "")) {
            Err(PodMapError::MapFull {
                map, max_entries, ..
            }) => assert_eq!((map, max_entries), (MAP_PORT_RULES, 2)),
            other => panic!("expected port_rules to be full, got {other:?}"),
        }
        for key in PodStore::port_rule_keys(&maps).expect("keys") {
            PodStore::del_port_rule(&mut maps, &key).expect("clear");
        }
        // Without rules, pods take one pod_ips and one netns_pods entry each.
        let mut plain = pod(1, "");
        plain.policy.inbound_exclude_ports = PortRanges::new();
        plain.policy.inbound_include_ports = PortSelection::Only(PortRanges::new());
        maps.upsert(&plain).expect("pod 1 fits");
        let mut second = plain.clone();
        second.ips = vec![IpAddr::from([100, 65, 0, 2])];
        second.netns_cookie += 1;
        maps.upsert(&second).expect("pod 2 fits");
        // The hash map is full (E2BIG), for `merbridge pod add` and for the agent's writes.
        let mut third = second.clone();
        third.ips = vec![IpAddr::from([100, 65, 0, 3])];
        third.netns_cookie += 1;
        let err = maps.upsert(&third).expect_err("pod_ips holds 2");
        let PodMapError::MapFull {
            map,
            max_entries,
            source,
        } = &err
        else {
            panic!("expected pod_ips to be full, got {err:?}");
        };
        assert_eq!((*map, *max_entries), (MAP_POD_IPS, 2));
        assert!(source.is(Errno::E2BIG), "{source}");
        assert!(err.to_string().contains("map pod_ips is full"), "{err}");
        let agent_err = PodStore::set_pod_ip(&mut maps, &[7; 16], &PodEntry::default())
            .expect_err("still full");
        assert!(agent_err.is_map_full(), "{agent_err:?}");
        // Room again once a pod goes.
        assert!(maps.remove(IpAddr::from([100, 65, 0, 1])).expect("remove"));
        maps.upsert(&third).expect("pod 3 fits now");
        assert_eq!(maps.pods().expect("pods").len(), 2);
    }
}
