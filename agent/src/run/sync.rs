//! The agent's map sync: the desired state (meshed pods of this node by UID, from the API)
//! written into the data path's maps, with exact diffs.
//!
//! Every pod gets a small id (rules are keyed by it) that stays the same for its lifetime, so
//! connections in flight keep their policy when the pod changes. What was written for each
//! pod is remembered, so an update writes only new keys and removes exactly the keys the
//! previous version had and the new one lacks — no scan of the rule maps per event.
//! Write order as `merbridge pod add`: rules, then `pod_ips`, then `netns_pods`; removal the
//! other way round, so the programs never see a half-written pod.
//!
//! At the first sync the maps may hold what a previous agent wrote (an upgrade adopts the
//! pinned data path): pods still in the API keep their ids, everything else is removed.

use crate::k8s::{PodInfo, PodRef};
use crate::mesh::{intercepted, Mesh, PodPolicy};
pub use crate::pods::PodStore;
use crate::pods::{compile, PodMapError, PodMaps};
use mb_maps::layout::{addr_bytes, CidrRuleKey, PodEntry, PortRuleKey};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

type Addr = [u8; 16];

/// The agent's name for the one pod-map writer ([`PodMaps`]), kept so that code written
/// against it still builds.
pub type BpfPodStore = PodMaps;

/// What the API says one meshed pod needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Desired {
    pod_ref: PodRef,
    ips: Vec<IpAddr>,
    policy: PodPolicy,
}

/// What is in the maps for one pod.
#[derive(Clone, Debug, Default)]
struct Written {
    entry: PodEntry,
    port_rules: BTreeSet<PortRuleKey>,
    cidr_rules: BTreeSet<CidrRuleKey>,
}

/// What an event changed, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Not meshed (or not yet: no IP) and not in the maps.
    Ignored,
    /// Remembered; written at the first sync.
    Pending,
    Added,
    Updated,
    Unchanged,
    Removed,
}

/// Counts for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounts {
    pub pods: usize,
    pub without_netns: usize,
}

/// Keeps the pod maps equal to the desired state.
pub struct PodSync<S: PodStore> {
    store: S,
    mesh: Mesh,
    dns_capture: bool,
    synced: bool,
    desired: HashMap<String, Desired>,
    cookies: HashMap<String, u64>,
    written: HashMap<String, Written>,
    ids: HashMap<String, u32>,
    /// Ids in the maps, read once per event (the caller holds the maps' write lock for the
    /// event, so no other writer adds one meanwhile); `None` until an allocation needs it.
    ids_in_maps: Option<BTreeSet<u32>>,
    /// The store's `pod_map_changes` when `ids_in_maps` was read or last kept current: while
    /// it is unchanged no other writer added or removed a pod, and the copy holds.
    ids_in_maps_seen: Option<u64>,
    /// Which pod wrote each address / namespace key: an address reused by a new pod is not
    /// removed when the old one goes.
    ip_owner: HashMap<Addr, String>,
    netns_owner: HashMap<u64, String>,
    /// Desired pods whose write failed (a full map): not in the maps at all, retried when
    /// a pod leaves.
    unwritten: BTreeSet<String>,
}

impl<S: PodStore> PodSync<S> {
    pub fn new(store: S, mesh: Mesh, dns_capture: bool) -> PodSync<S> {
        PodSync {
            store,
            mesh,
            dns_capture,
            synced: false,
            desired: HashMap::new(),
            cookies: HashMap::new(),
            written: HashMap::new(),
            ids: HashMap::new(),
            ids_in_maps: None,
            ids_in_maps_seen: None,
            ip_owner: HashMap::new(),
            netns_owner: HashMap::new(),
            unwritten: BTreeSet::new(),
        }
    }

    /// Drops this agent's copy of the pod ids in use, so the next new pod reads them from the
    /// maps again. The copy is kept while `pod_map_changes` is unchanged; a writer that does not
    /// count (a CNI binary older than the counter, still installed during an upgrade) would
    /// otherwise leave it stale and let two pods share an id. Called on every full rescan, it
    /// bounds that window to one rescan interval at the cost of one map scan per interval.
    pub fn forget_ids_in_maps(&mut self) {
        self.ids_in_maps = None;
        self.ids_in_maps_seen = None;
    }

    /// Desired pods not in the maps because a write failed (e.g. a full map).
    pub fn unwritten(&self) -> usize {
        self.unwritten.len()
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store itself, for tests that play another writer.
    #[cfg(test)]
    fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The IPs of a meshed pod, if it is one.
    pub fn ips_of(&self, uid: &str) -> Option<&[IpAddr]> {
        self.desired.get(uid).map(|d| d.ips.as_slice())
    }

    /// A written pod's id and its sidecar's inbound port (for its inbound link).
    pub fn inbound_target(&self, uid: &str) -> Option<(u32, u16)> {
        let id = *self.ids.get(uid)?;
        self.desired.get(uid).map(|d| (id, d.policy.inbound_port))
    }

    /// The namespace/name of a meshed pod, for messages.
    pub fn pod_ref(&self, uid: &str) -> Option<&PodRef> {
        self.desired.get(uid).map(|d| &d.pod_ref)
    }

    /// Every meshed pod: `(uid, ips)`.
    pub fn all_pods(&self) -> Vec<(String, Vec<IpAddr>)> {
        self.desired
            .iter()
            .map(|(uid, d)| (uid.clone(), d.ips.clone()))
            .collect()
    }

    /// Meshed pods whose namespace is not known yet: `(uid, ips)`.
    pub fn without_netns(&self) -> Vec<(String, Vec<IpAddr>)> {
        self.desired
            .iter()
            .filter(|(uid, _)| !self.cookies.contains_key(*uid))
            .map(|(uid, d)| (uid.clone(), d.ips.clone()))
            .collect()
    }

    pub fn counts(&self) -> SyncCounts {
        SyncCounts {
            pods: self.desired.len(),
            without_netns: self
                .desired
                .keys()
                .filter(|uid| !self.cookies.contains_key(*uid))
                .count(),
        }
    }

    /// A pod as the API reports it. Logs its annotation warnings.
    pub fn upsert(&mut self, pod: &PodInfo) -> Result<Change, PodMapError> {
        let Some(decision) = intercepted(pod, self.mesh) else {
            return self.delete(&pod.uid);
        };
        let pod_ref = pod.pod_ref();
        for warning in &decision.warnings {
            log::warn!("pod {pod_ref}: {warning}");
        }
        let desired = Desired {
            pod_ref,
            ips: pod.pod_ips.clone(),
            policy: decision.policy,
        };
        if self.desired.get(&pod.uid) == Some(&desired) {
            return Ok(Change::Unchanged);
        }
        if let Some(old) = self.desired.get(&pod.uid) {
            if old.ips != desired.ips {
                // A new address may mean a new sandbox: find its namespace again.
                self.cookies.remove(&pod.uid);
            }
        }
        let is_new = self.desired.insert(pod.uid.clone(), desired).is_none();
        if !self.synced {
            return Ok(Change::Pending);
        }
        self.apply(&pod.uid)?;
        Ok(if is_new {
            Change::Added
        } else {
            Change::Updated
        })
    }

    /// A pod is gone (deleted, finished, moved off the node, no longer meshed).
    pub fn delete(&mut self, uid: &str) -> Result<Change, PodMapError> {
        let was_desired = self.desired.remove(uid).is_some();
        self.cookies.remove(uid);
        self.unwritten.remove(uid);
        let removed = self.erase(uid)?;
        if let Some(id) = self.ids.remove(uid) {
            if removed {
                self.count_pod_change(Some(id));
            }
        }
        if removed {
            self.retry_unwritten();
        }
        Ok(if removed || was_desired {
            Change::Removed
        } else {
            Change::Ignored
        })
    }

    /// The cookie of a pod's namespace, found by the scanner. Rewrites the pod if it changed.
    pub fn set_cookie(&mut self, uid: &str, cookie: u64) -> Result<bool, PodMapError> {
        if !self.desired.contains_key(uid) || self.cookies.get(uid) == Some(&cookie) {
            return Ok(false);
        }
        self.cookies.insert(uid.to_string(), cookie);
        if self.synced {
            self.apply(uid)?;
        }
        Ok(true)
    }

    /// The first complete list has been seen: adopt what a previous agent left in the maps
    /// for pods that still exist, remove everything else, write the rest. Returns the number
    /// of stale pods removed.
    pub fn reconcile(&mut self) -> Result<usize, PodMapError> {
        self.ids_in_maps = None;
        let ip_entries = self.store.pod_ip_entries()?;
        let netns_entries = self.store.netns_entries()?;
        let mut port_by_id: HashMap<u32, BTreeSet<PortRuleKey>> = HashMap::new();
        for key in self.store.port_rule_keys()? {
            port_by_id.entry(key.scope >> 2).or_default().insert(key);
        }
        let mut cidr_by_id: HashMap<u32, BTreeSet<CidrRuleKey>> = HashMap::new();
        for key in self.store.cidr_rule_keys()? {
            cidr_by_id.entry(key.scope >> 2).or_default().insert(key);
        }
        let mut uid_by_ip: HashMap<Addr, &str> = HashMap::new();
        for (uid, d) in &self.desired {
            for ip in &d.ips {
                uid_by_ip.insert(addr_bytes(*ip), uid);
            }
        }
        // Adopt: an entry whose address belongs to a desired pod keeps its id.
        let mut adopted: HashMap<String, Written> = HashMap::new();
        let mut id_owner: HashMap<u32, String> = HashMap::new();
        for (addr, entry) in &ip_entries {
            let Some(uid) = uid_by_ip.get(addr).copied() else {
                continue;
            };
            if id_owner.contains_key(&entry.pod_id) || adopted.contains_key(uid) {
                continue;
            }
            id_owner.insert(entry.pod_id, uid.to_string());
            adopted.insert(
                uid.to_string(),
                Written {
                    entry: *entry,
                    port_rules: port_by_id.remove(&entry.pod_id).unwrap_or_default(),
                    cidr_rules: cidr_by_id.remove(&entry.pod_id).unwrap_or_default(),
                },
            );
        }
        let mut stale_ids = BTreeSet::new();
        // Addresses and namespaces of pods the API no longer has (or that moved).
        for (addr, entry) in &ip_entries {
            let owner = id_owner.get(&entry.pod_id);
            let kept = owner.is_some_and(|uid| uid_by_ip.get(addr).copied() == Some(uid.as_str()));
            if !kept {
                self.store.del_pod_ip(addr)?;
                if owner.is_none() {
                    stale_ids.insert(entry.pod_id);
                }
            }
        }
        for (cookie, entry) in &netns_entries {
            match id_owner.get(&entry.pod_id) {
                Some(uid) => {
                    // Keep the namespace the previous agent found, until a scan says otherwise.
                    self.cookies.entry(uid.clone()).or_insert(*cookie);
                    if let Some(w) = adopted.get_mut(uid) {
                        w.entry.netns = *cookie;
                    }
                }
                None => {
                    self.store.del_netns(*cookie)?;
                    stale_ids.insert(entry.pod_id);
                }
            }
        }
        for keys in port_by_id.values() {
            for key in keys {
                self.store.del_port_rule(key)?;
            }
        }
        for keys in cidr_by_id.values() {
            for key in keys {
                self.store.del_cidr_rule(key)?;
            }
        }
        for (uid, w) in adopted {
            self.ids.insert(uid.clone(), w.entry.pod_id);
            for addr in [w.entry.ipv4, w.entry.ipv6] {
                if addr != [0; 16] && uid_by_ip.get(&addr).copied() == Some(uid.as_str()) {
                    self.ip_owner.insert(addr, uid.clone());
                }
            }
            if w.entry.netns != 0 {
                self.netns_owner.insert(w.entry.netns, uid.clone());
            }
            self.written.insert(uid, w);
        }
        self.synced = true;
        let uids: Vec<String> = self.desired.keys().cloned().collect();
        // One pod that does not fit must not keep the others out (or the agent unready).
        for uid in uids {
            if let Err(e) = self.apply(&uid) {
                log::warn!("pod {}: {e}", self.desired[&uid].pod_ref);
            }
        }
        Ok(stale_ids.len())
    }

    /// Writes the pods a full map kept out, now that one left.
    fn retry_unwritten(&mut self) {
        for uid in std::mem::take(&mut self.unwritten) {
            match self.apply(&uid) {
                Ok(()) => log::info!(
                    "pod {}: written to the maps now that they have room",
                    self.desired[&uid].pod_ref
                ),
                Err(e) => log::debug!("pod uid {uid}: still not written: {e}"),
            }
        }
    }

    /// The pod's id: the one it has, else the one another writer gave it (the CNI plugin
    /// at sandbox creation, `merbridge pod add`: an entry for its address or namespace is
    /// adopted, rules included, so its id, rules and inbound link stay), else the lowest id
    /// that neither this agent nor any entry in the maps uses — the same rule as
    /// [`PodMaps::upsert`] follows, under the same write lock, so two pods never share one.
    fn allocate_id(&mut self, uid: &str) -> Result<u32, PodMapError> {
        if let Some(&id) = self.ids.get(uid) {
            return Ok(id);
        }
        let Some(desired) = self.desired.get(uid) else {
            return Err(PodMapError::NoPodId {
                pod: uid.to_string(),
            });
        };
        let addrs: Vec<Addr> = desired.ips.iter().map(|ip| addr_bytes(*ip)).collect();
        let mut found = None;
        for addr in &addrs {
            found = self.store.pod_ip_entry(addr)?;
            if found.is_some() {
                break;
            }
        }
        if found.is_none() {
            if let Some(&cookie) = self.cookies.get(uid) {
                found = self.store.netns_entry(cookie)?;
            }
        }
        let taken = |id: u32, ids: &HashMap<String, u32>| ids.values().any(|&i| i == id);
        if let Some(entry) = found.filter(|e| e.pod_id != 0 && !taken(e.pod_id, &self.ids)) {
            let (port_rules, cidr_rules) = self.store.rule_keys_of(entry.pod_id)?;
            for addr in [entry.ipv4, entry.ipv6] {
                if addr != [0; 16] && addrs.contains(&addr) {
                    self.ip_owner.insert(addr, uid.to_string());
                }
            }
            if entry.netns != 0 {
                self.netns_owner.insert(entry.netns, uid.to_string());
                // Keep the namespace the other writer registered until a scan says otherwise.
                self.cookies.entry(uid.to_string()).or_insert(entry.netns);
            }
            self.written.insert(
                uid.to_string(),
                Written {
                    entry,
                    port_rules,
                    cidr_rules,
                },
            );
            self.ids.insert(uid.to_string(), entry.pod_id);
            return Ok(entry.pod_id);
        }
        let changes = self.store.pod_changes();
        if changes.is_none() || changes != self.ids_in_maps_seen {
            // Another writer added or removed a pod since (or nobody counts): read them.
            let mut used = self.store.used_pod_ids()?;
            used.extend(self.ids.values().copied());
            self.ids_in_maps = Some(used);
            self.ids_in_maps_seen = changes;
        }
        let used = self.ids_in_maps.as_mut().expect("read above");
        let Some(id) = crate::pods::lowest_unused_id(used) else {
            return Err(PodMapError::NoPodId {
                pod: uid.to_string(),
            });
        };
        used.insert(id);
        self.ids.insert(uid.to_string(), id);
        self.count_pod_change(None);
        Ok(id)
    }

    /// Counts a pod this agent added (`freed`: `None`, its id already in `ids_in_maps`) or
    /// removed (`freed`: its id) for the other writers, and keeps `ids_in_maps` current.
    fn count_pod_change(&mut self, freed: Option<u32>) {
        let before = self.store.pod_changes();
        let after = self.store.count_pod_change();
        if let (Some(id), Some(used)) = (freed, self.ids_in_maps.as_mut()) {
            used.remove(&id);
        }
        if after.is_some() && before.is_some() && before == self.ids_in_maps_seen {
            self.ids_in_maps_seen = after;
        } else {
            self.ids_in_maps = None;
            self.ids_in_maps_seen = None;
        }
    }

    /// Writes one desired pod, all or nothing: when a write fails (a full map), every key of
    /// the pod is removed again, so it is plainly not intercepted rather than half, and it
    /// is remembered for a retry.
    fn apply(&mut self, uid: &str) -> Result<(), PodMapError> {
        let previous = self.written.get(uid).cloned().unwrap_or_default();
        match self.write_pod(uid) {
            Ok(()) => {
                self.unwritten.remove(uid);
                Ok(())
            }
            Err(e) => {
                // Everything this pod may own now: the previous write and the attempted one.
                let mut all = previous;
                if let (Some(desired), Some(&pod_id)) = (self.desired.get(uid), self.ids.get(uid)) {
                    let compiled = compile(pod_id, &desired.policy, self.dns_capture);
                    all.port_rules.extend(compiled.port_rules);
                    all.cidr_rules.extend(compiled.cidr_rules);
                    for ip in &desired.ips {
                        let addr = addr_bytes(*ip);
                        if self.ip_owner.get(&addr).map(String::as_str) == Some(uid) {
                            match ip {
                                IpAddr::V4(_) => all.entry.ipv4 = addr,
                                IpAddr::V6(_) => all.entry.ipv6 = addr,
                            }
                        }
                    }
                    if let Some(&cookie) = self.cookies.get(uid) {
                        if self.netns_owner.get(&cookie).map(String::as_str) == Some(uid) {
                            all.entry.netns = cookie;
                        }
                    }
                }
                self.written.insert(uid.to_string(), all);
                let undone = self.erase(uid);
                // Not in the maps, so not its id any more: another writer may take it, and
                // the retry allocates afresh.
                if undone.is_ok() {
                    self.ids.remove(uid);
                }
                self.unwritten.insert(uid.to_string());
                Err(PodMapError::NotWritten {
                    source: Box::new(e),
                    undo: undone.err().map(Box::new),
                })
            }
        }
    }

    /// Writes one desired pod: new keys first, then removes what the previous write had.
    fn write_pod(&mut self, uid: &str) -> Result<(), PodMapError> {
        let Some(desired) = self.desired.get(uid).cloned() else {
            return Ok(());
        };
        let pod_id = self.allocate_id(uid)?;
        let compiled = compile(pod_id, &desired.policy, self.dns_capture);
        for note in &compiled.unsupported {
            log::warn!("pod {}: {note}", desired.pod_ref);
        }
        let mut entry = PodEntry {
            pod_id,
            flags: compiled.flags,
            netns: self.cookies.get(uid).copied().unwrap_or(0),
            proxy_uid: compiled.proxy_uid,
            proxy_gid: compiled.proxy_gid,
            ..PodEntry::default()
        };
        for ip in &desired.ips {
            match ip {
                IpAddr::V4(_) => entry.ipv4 = addr_bytes(*ip),
                IpAddr::V6(_) => entry.ipv6 = addr_bytes(*ip),
            }
        }
        let previous = self.written.remove(uid).unwrap_or_default();
        let same_entry = previous.entry == entry;
        for key in compiled.port_rules.difference(&previous.port_rules) {
            self.store.add_port_rule(key)?;
        }
        for key in compiled.cidr_rules.difference(&previous.cidr_rules) {
            self.store.add_cidr_rule(key)?;
        }
        for addr in [entry.ipv4, entry.ipv6] {
            if addr == [0; 16] {
                continue;
            }
            let owned = self.ip_owner.get(&addr).map(String::as_str) == Some(uid);
            if !same_entry || !owned {
                self.store.set_pod_ip(&addr, &entry)?;
                if let Some(old) = self.ip_owner.insert(addr, uid.to_string()) {
                    if old != uid {
                        log::warn!(
                            "pod {}: address {} was pod {old}'s; it is this pod's now",
                            desired.pod_ref,
                            mb_maps::layout::addr_from_bytes(addr)
                        );
                    }
                }
            }
        }
        if entry.netns != 0 {
            let owned = self.netns_owner.get(&entry.netns).map(String::as_str) == Some(uid);
            if !same_entry || !owned {
                self.store.set_netns(entry.netns, &entry)?;
                self.netns_owner.insert(entry.netns, uid.to_string());
            }
        }
        // What the previous write had and this one does not.
        for old in [previous.entry.ipv4, previous.entry.ipv6] {
            if old != [0; 16] && old != entry.ipv4 && old != entry.ipv6 {
                self.release_ip(uid, &old)?;
            }
        }
        if previous.entry.netns != 0 && previous.entry.netns != entry.netns {
            self.release_netns(uid, previous.entry.netns)?;
        }
        for key in previous.port_rules.difference(&compiled.port_rules) {
            self.store.del_port_rule(key)?;
        }
        for key in previous.cidr_rules.difference(&compiled.cidr_rules) {
            self.store.del_cidr_rule(key)?;
        }
        self.written.insert(
            uid.to_string(),
            Written {
                entry,
                port_rules: compiled.port_rules,
                cidr_rules: compiled.cidr_rules,
            },
        );
        Ok(())
    }

    fn release_ip(&mut self, uid: &str, addr: &Addr) -> Result<(), PodMapError> {
        if self.ip_owner.get(addr).map(String::as_str) == Some(uid) {
            self.ip_owner.remove(addr);
            self.store.del_pod_ip(addr)?;
        }
        Ok(())
    }

    fn release_netns(&mut self, uid: &str, cookie: u64) -> Result<(), PodMapError> {
        if self.netns_owner.get(&cookie).map(String::as_str) == Some(uid) {
            self.netns_owner.remove(&cookie);
            self.store.del_netns(cookie)?;
        }
        Ok(())
    }

    /// Removes everything written for `uid`; true if there was something.
    fn erase(&mut self, uid: &str) -> Result<bool, PodMapError> {
        let Some(w) = self.written.remove(uid) else {
            return Ok(false);
        };
        if w.entry.netns != 0 {
            self.release_netns(uid, w.entry.netns)?;
        }
        for addr in [w.entry.ipv4, w.entry.ipv6] {
            if addr != [0; 16] {
                self.release_ip(uid, &addr)?;
            }
        }
        for key in &w.port_rules {
            self.store.del_port_rule(key)?;
        }
        for key in &w.cidr_rules {
            self.store.del_cidr_rule(key)?;
        }
        Ok(true)
    }
}

/// The maps in memory, for tests of the diff logic (and to count writes).
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    pub pod_ips: std::collections::BTreeMap<Addr, PodEntry>,
    pub netns: std::collections::BTreeMap<u64, PodEntry>,
    pub port_rules: BTreeSet<PortRuleKey>,
    pub cidr_rules: BTreeSet<CidrRuleKey>,
    /// Number of writes and removals made.
    pub writes: usize,
    /// The `pod_map_changes` counter, when the test keeps one (`None`: not kept).
    pub changes: Option<u64>,
}

impl PodStore for MemoryStore {
    fn pod_ip_entries(&self) -> Result<Vec<(Addr, PodEntry)>, PodMapError> {
        Ok(self.pod_ips.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn netns_entries(&self) -> Result<Vec<(u64, PodEntry)>, PodMapError> {
        Ok(self.netns.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn port_rule_keys(&self) -> Result<Vec<PortRuleKey>, PodMapError> {
        Ok(self.port_rules.iter().copied().collect())
    }
    fn cidr_rule_keys(&self) -> Result<Vec<CidrRuleKey>, PodMapError> {
        Ok(self.cidr_rules.iter().copied().collect())
    }
    fn set_pod_ip(&mut self, addr: &Addr, entry: &PodEntry) -> Result<(), PodMapError> {
        self.writes += 1;
        self.pod_ips.insert(*addr, *entry);
        Ok(())
    }
    fn del_pod_ip(&mut self, addr: &Addr) -> Result<(), PodMapError> {
        self.writes += 1;
        self.pod_ips.remove(addr);
        Ok(())
    }
    fn set_netns(&mut self, cookie: u64, entry: &PodEntry) -> Result<(), PodMapError> {
        self.writes += 1;
        self.netns.insert(cookie, *entry);
        Ok(())
    }
    fn del_netns(&mut self, cookie: u64) -> Result<(), PodMapError> {
        self.writes += 1;
        self.netns.remove(&cookie);
        Ok(())
    }
    fn add_port_rule(&mut self, key: &PortRuleKey) -> Result<(), PodMapError> {
        self.writes += 1;
        self.port_rules.insert(*key);
        Ok(())
    }
    fn del_port_rule(&mut self, key: &PortRuleKey) -> Result<(), PodMapError> {
        self.writes += 1;
        self.port_rules.remove(key);
        Ok(())
    }
    fn add_cidr_rule(&mut self, key: &CidrRuleKey) -> Result<(), PodMapError> {
        self.writes += 1;
        self.cidr_rules.insert(*key);
        Ok(())
    }
    fn del_cidr_rule(&mut self, key: &CidrRuleKey) -> Result<(), PodMapError> {
        self.writes += 1;
        self.cidr_rules.remove(key);
        Ok(())
    }
    fn pod_changes(&self) -> Option<u64> {
        self.changes
    }
    fn count_pod_change(&mut self) -> Option<u64> {
        self.changes = self.changes.map(|n| n + 1);
        self.changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::ContainerInfo;
    use mb_maps::layout::POD_OUT_PORTS_EXCLUDE;

    fn istio_pod(uid: &str, ips: &[&str]) -> PodInfo {
        let mut pod = PodInfo {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "default".into(),
            phase: "Running".into(),
            pod_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            containers: vec![
                ContainerInfo {
                    name: "app".into(),
                    ..ContainerInfo::default()
                },
                ContainerInfo {
                    name: "istio-proxy".into(),
                    ..ContainerInfo::default()
                },
            ],
            ..PodInfo::default()
        };
        pod.annotations
            .insert("sidecar.istio.io/status".into(), "{}".into());
        pod
    }

    fn addr(ip: &str) -> Addr {
        addr_bytes(ip.parse().unwrap())
    }

    fn synced() -> PodSync<MemoryStore> {
        let mut sync = PodSync::new(MemoryStore::default(), Mesh::Istio, false);
        assert_eq!(sync.reconcile().unwrap(), 0);
        sync
    }

    #[test]
    fn nothing_is_written_before_the_first_sync() {
        let mut sync = PodSync::new(MemoryStore::default(), Mesh::Istio, false);
        let pod = istio_pod("a", &["10.0.0.5", "fd00::5"]);
        assert_eq!(sync.upsert(&pod).unwrap(), Change::Pending);
        assert_eq!(sync.store().writes, 0);
        sync.reconcile().unwrap();
        let store = sync.store();
        assert_eq!(store.pod_ips.len(), 2);
        let entry = store.pod_ips[&addr("10.0.0.5")];
        assert_eq!(entry, store.pod_ips[&addr("fd00::5")]);
        assert_eq!(entry.ipv4, addr("10.0.0.5"));
        assert_eq!(entry.netns, 0, "no namespace known yet");
        assert!(store.netns.is_empty());
        assert!(
            !store.port_rules.is_empty(),
            "istio's own ports excluded inbound"
        );
        assert!(store
            .port_rules
            .iter()
            .all(|k| k.scope >> 2 == entry.pod_id));
    }

    /// A writer that does not count its pods (a CNI binary older than `pod_map_changes`,
    /// still installed during an upgrade) leaves the agent's copy of the ids stale; the full
    /// rescan's `forget_ids_in_maps` makes the next pod read them again, so no id is shared.
    #[test]
    fn a_writer_that_does_not_count_is_seen_after_a_rescan() {
        let store = MemoryStore {
            changes: Some(0),
            ..MemoryStore::default()
        };
        let mut sync = PodSync::new(store, Mesh::Istio, false);
        sync.reconcile().unwrap();
        assert_eq!(
            sync.upsert(&istio_pod("a", &["10.0.0.1"])).unwrap(),
            Change::Added
        );
        let a = sync.store().pod_ips[&addr("10.0.0.1")].pod_id;
        assert_eq!(sync.store().changes, Some(1), "the agent counts its add");
        // The old writer takes the next free id without counting it.
        let taken = PodEntry {
            pod_id: a + 1,
            ..sync.store().pod_ips[&addr("10.0.0.1")]
        };
        PodStore::set_pod_ip(sync.store_mut(), &addr("10.0.0.2"), &taken).unwrap();
        sync.forget_ids_in_maps();
        assert_eq!(
            sync.upsert(&istio_pod("b", &["10.0.0.3"])).unwrap(),
            Change::Added
        );
        let b = sync.store().pod_ips[&addr("10.0.0.3")].pod_id;
        assert!(b != a && b != a + 1, "pod b got id {b}, already in use");
    }

    #[test]
    fn unmeshed_terminal_and_ipless_pods_stay_out() {
        let mut sync = synced();
        let mut plain = istio_pod("p", &["10.0.0.9"]);
        plain.containers.truncate(1);
        assert_eq!(sync.upsert(&plain).unwrap(), Change::Ignored);
        let no_ip = istio_pod("n", &[]);
        assert_eq!(sync.upsert(&no_ip).unwrap(), Change::Ignored);
        let mut done = istio_pod("d", &["10.0.0.8"]);
        assert_eq!(sync.upsert(&done).unwrap(), Change::Added);
        done.phase = "Succeeded".into();
        assert_eq!(sync.upsert(&done).unwrap(), Change::Removed);
        let store = sync.store();
        assert!(store.pod_ips.is_empty() && store.port_rules.is_empty());
    }

    #[test]
    fn an_unchanged_pod_costs_no_writes_and_a_change_only_its_diff() {
        let mut sync = synced();
        let mut pod = istio_pod("a", &["10.0.0.5"]);
        sync.upsert(&pod).unwrap();
        let after_add = sync.store().writes;
        assert_eq!(sync.upsert(&pod).unwrap(), Change::Unchanged);
        assert_eq!(sync.store().writes, after_add);
        let rules_before = sync.store().port_rules.clone();
        let id = sync.store().pod_ips[&addr("10.0.0.5")].pod_id;

        // Exclude outbound 5432: new rules appear, the id stays, nothing else is rewritten.
        pod.annotations.insert(
            "traffic.sidecar.istio.io/excludeOutboundPorts".into(),
            "5432".into(),
        );
        assert_eq!(sync.upsert(&pod).unwrap(), Change::Updated);
        let store = sync.store();
        let entry = store.pod_ips[&addr("10.0.0.5")];
        assert_eq!(entry.pod_id, id, "id kept across updates");
        assert_ne!(entry.flags & POD_OUT_PORTS_EXCLUDE, 0);
        assert!(store.port_rules.is_superset(&rules_before));
        let added = store.port_rules.len() - rules_before.len();
        assert_eq!(added, 1, "5432 is one exact-port key");
        // One rule insert and one pod_ips rewrite (flags changed).
        assert_eq!(store.writes, after_add + 2);

        // Annotation removed again: exactly that key goes.
        pod.annotations
            .remove("traffic.sidecar.istio.io/excludeOutboundPorts");
        sync.upsert(&pod).unwrap();
        assert_eq!(sync.store().port_rules, rules_before);
    }

    #[test]
    fn new_address_drops_the_old_key_and_the_namespace() {
        let mut sync = synced();
        let mut pod = istio_pod("a", &["10.0.0.5"]);
        sync.upsert(&pod).unwrap();
        assert!(sync.set_cookie("a", 77).unwrap());
        assert!(!sync.set_cookie("a", 77).unwrap(), "same cookie: no write");
        assert_eq!(sync.store().netns[&77].pod_id, sync.ids["a"]);
        assert_eq!(sync.store().pod_ips[&addr("10.0.0.5")].netns, 77);
        pod.pod_ips = vec!["10.0.0.6".parse().unwrap()];
        sync.upsert(&pod).unwrap();
        let store = sync.store();
        assert!(!store.pod_ips.contains_key(&addr("10.0.0.5")));
        assert_eq!(store.pod_ips[&addr("10.0.0.6")].netns, 0);
        assert!(store.netns.is_empty(), "a new address may be a new sandbox");
        assert_eq!(sync.without_netns().len(), 1);
    }

    #[test]
    fn delete_removes_every_key_and_frees_the_id() {
        let mut sync = synced();
        sync.upsert(&istio_pod("a", &["10.0.0.5", "fd00::5"]))
            .unwrap();
        sync.set_cookie("a", 5).unwrap();
        let id = sync.ids["a"];
        assert_eq!(sync.delete("a").unwrap(), Change::Removed);
        let store = sync.store();
        assert!(store.pod_ips.is_empty() && store.netns.is_empty());
        assert!(store.port_rules.is_empty() && store.cidr_rules.is_empty());
        assert_eq!(sync.delete("a").unwrap(), Change::Ignored);
        sync.upsert(&istio_pod("b", &["10.0.0.7"])).unwrap();
        assert_eq!(sync.ids["b"], id, "freed ids are reused");
    }

    #[test]
    fn a_reused_address_is_not_removed_with_its_old_pod() {
        let mut sync = synced();
        sync.upsert(&istio_pod("old", &["10.0.0.5"])).unwrap();
        sync.upsert(&istio_pod("new", &["10.0.0.5"])).unwrap();
        let new_id = sync.ids["new"];
        sync.delete("old").unwrap();
        let store = sync.store();
        assert_eq!(store.pod_ips[&addr("10.0.0.5")].pod_id, new_id);
        assert!(store.port_rules.iter().all(|k| k.scope >> 2 == new_id));
    }

    #[test]
    fn first_sync_adopts_live_pods_and_removes_the_rest() {
        // A previous agent wrote pods a (still there) and gone (deleted meanwhile).
        let mut first = synced();
        first.upsert(&istio_pod("a", &["10.0.0.5"])).unwrap();
        first.set_cookie("a", 11).unwrap();
        first.upsert(&istio_pod("gone", &["10.0.0.6"])).unwrap();
        first.set_cookie("gone", 12).unwrap();
        let a_id = first.ids["a"];
        let mut store = first.store().clone();
        store.writes = 0;

        let mut second = PodSync::new(store, Mesh::Istio, false);
        second.upsert(&istio_pod("a", &["10.0.0.5"])).unwrap();
        assert_eq!(second.reconcile().unwrap(), 1, "one stale pod");
        let store = second.store();
        assert_eq!(store.pod_ips.len(), 1);
        let entry = store.pod_ips[&addr("10.0.0.5")];
        assert_eq!(entry.pod_id, a_id, "adopted with its id");
        assert_eq!(
            entry.netns, 11,
            "namespace kept until a scan says otherwise"
        );
        assert_eq!(store.netns.keys().copied().collect::<Vec<_>>(), vec![11]);
        assert!(store.port_rules.iter().all(|k| k.scope >> 2 == a_id));
        assert_eq!(
            second.counts(),
            SyncCounts {
                pods: 1,
                without_netns: 0
            }
        );
        // Adopting an identical pod rewrites nothing of it.
        let removals_only = store.writes;
        let stale_keys = 1 + 1 + first.written["gone"].port_rules.len();
        assert_eq!(removals_only, stale_keys);
        // A new pod gets an id the adopted one does not have.
        second.upsert(&istio_pod("c", &["10.0.0.9"])).unwrap();
        assert_ne!(second.ids["c"], a_id);
    }
}
