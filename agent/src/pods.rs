//! Local pods in the data path's maps: who a pod is (network-namespace cookie, addresses) and
//! its interception policy, written so that the programs never see a half-written pod.
//!
//! Order of writes: rules first, then `pod_ips` (where sidecars connect), then `netns_pods`
//! (which turns the pod's own interception on). Removal goes the other way round.
//! `merbridge pod add/del/list` and the Kubernetes agent both use this module.

use crate::mesh::{CidrSelection, PodPolicy, PortRanges, PortSelection};
use mb_loader::datapath::PinLayout;
use mb_maps::datapath::{MAP_CIDR_RULES, MAP_NETNS_PODS, MAP_POD_IPS, MAP_PORT_RULES};
use mb_maps::layout::{
    addr_bytes, addr_from_bytes, rule_scope, CidrRuleKey, PodEntry, PortRuleKey, POD_DNS_CAPTURE,
    POD_IN_CIDRS_EXCLUDE, POD_IN_PORTS_ALL, POD_IN_PORTS_EXCLUDE, POD_OUT_CIDRS_ALL,
    POD_OUT_CIDRS_EXCLUDE, POD_OUT_PORTS_EXCLUDE, POD_OUT_PORTS_INCLUDE, POD_SPLICE_APP,
    RULE_EXCLUDE, RULE_INBOUND, RULE_INCLUDE,
};
use mb_maps::{HashMap, LpmTrie, MapError};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
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
    if policy.splice_app {
        c.flags |= POD_SPLICE_APP;
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

/// The pod-related maps of a loaded data path.
pub struct PodMaps {
    netns_pods: HashMap<u64, PodEntry>,
    pod_ips: HashMap<[u8; 16], PodEntry>,
    port_rules: LpmTrie<PortRuleKey, u32>,
    cidr_rules: LpmTrie<CidrRuleKey, u32>,
    /// What this handle knows of the maps, built by one scan at the first write and kept up
    /// to date by its own writes: adding or updating a pod then costs O(its own rules), not
    /// O(all pods' rules) (`None` until needed, and again after a failed write).
    index: Mutex<Option<Index>>,
}

/// Pod ids in use and the rule keys stored per pod id.
#[derive(Default)]
struct Index {
    used_ids: BTreeSet<u32>,
    /// Lowest id that may be free (every id below it is in use).
    free_from: u32,
    port_rules: BTreeMap<u32, BTreeSet<PortRuleKey>>,
    cidr_rules: BTreeMap<u32, BTreeSet<CidrRuleKey>>,
}

impl Index {
    /// The lowest unused id (ids share the rule keys' scope word with 2 bits of rule kind).
    fn unused_id(&mut self) -> Option<u32> {
        let mut id = self.free_from.max(1);
        while self.used_ids.contains(&id) {
            id += 1;
        }
        self.free_from = id;
        (id < (1u32 << 30)).then_some(id)
    }

    fn release(&mut self, id: u32) {
        self.used_ids.remove(&id);
        self.port_rules.remove(&id);
        self.cidr_rules.remove(&id);
        self.free_from = self.free_from.min(id);
    }
}

fn map_err(name: &str) -> impl Fn(MapError) -> String + '_ {
    move |e| format!("map {name}: {e}")
}

impl PodMaps {
    /// Opens the pinned maps under `pin_dir` (as `merbridge load` left them).
    pub fn open(pin_dir: &Path) -> Result<PodMaps, String> {
        let layout = PinLayout::new(pin_dir);
        let open_hint = |e: MapError, name: &str| {
            format!(
                "map {name} under {}: {e} (is the data path loaded? run `merbridge load` \
                 with the same --pin-dir first)",
                pin_dir.display()
            )
        };
        Ok(PodMaps {
            netns_pods: HashMap::open_pinned(&layout.map(MAP_NETNS_PODS))
                .map_err(|e| open_hint(e, MAP_NETNS_PODS))?,
            pod_ips: HashMap::open_pinned(&layout.map(MAP_POD_IPS))
                .map_err(|e| open_hint(e, MAP_POD_IPS))?,
            port_rules: LpmTrie::open_pinned(&layout.map(MAP_PORT_RULES))
                .map_err(|e| open_hint(e, MAP_PORT_RULES))?,
            cidr_rules: LpmTrie::open_pinned(&layout.map(MAP_CIDR_RULES))
                .map_err(|e| open_hint(e, MAP_CIDR_RULES))?,
            index: Mutex::new(None),
        })
    }

    /// The index, built by scanning the maps if this handle has none yet.
    fn index(&self) -> Result<MutexGuard<'_, Option<Index>>, String> {
        let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let mut index = Index {
                used_ids: self.pods()?.iter().map(|p| p.pod_id).collect(),
                ..Index::default()
            };
            for key in self.port_rules.keys() {
                let key = key.map_err(map_err(MAP_PORT_RULES))?;
                index
                    .port_rules
                    .entry(key.scope >> 2)
                    .or_default()
                    .insert(key);
            }
            for key in self.cidr_rules.keys() {
                let key = key.map_err(map_err(MAP_CIDR_RULES))?;
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
    pub fn pods(&self) -> Result<Vec<PodEntry>, String> {
        let mut by_id = std::collections::BTreeMap::new();
        for item in self.pod_ips.iter() {
            let (_, entry) = item.map_err(map_err(MAP_POD_IPS))?;
            by_id.insert(entry.pod_id, entry);
        }
        for item in self.netns_pods.iter() {
            let (_, entry) = item.map_err(map_err(MAP_NETNS_PODS))?;
            by_id.insert(entry.pod_id, entry);
        }
        Ok(by_id.into_values().collect())
    }

    /// The pod that has address `ip`, if any.
    pub fn find(&self, ip: IpAddr) -> Result<Option<PodEntry>, String> {
        self.pod_ips
            .get(&addr_bytes(ip))
            .map_err(map_err(MAP_POD_IPS))
    }

    /// Adds `pod`, or updates it when one of its addresses is already known (its id is kept,
    /// so connections in flight keep their policy).
    ///
    /// Cost: a few map lookups and the pod's own rules, whatever the number of pods — the
    /// stale rules of an updated pod come from this handle's index, not from a scan. The
    /// index assumes this handle is the maps' only writer while it lives (the agent); a
    /// one-shot `merbridge pod add` builds it fresh, by one scan.
    pub fn upsert(&self, pod: &LocalPod) -> Result<(u32, CompiledPolicy), String> {
        let existing = pod
            .ips
            .iter()
            .map(|&ip| self.find(ip))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .next();
        let mut guard = self.index()?;
        let index = guard.as_mut().expect("index() builds the index");
        let pod_id = match existing {
            Some(e) => e.pod_id,
            None => index
                .unused_id()
                .ok_or_else(|| "no pod id left".to_string())?,
        };
        let compiled = compile(pod_id, &pod.policy, pod.dns_capture);
        match self.write(pod_id, pod, &compiled, existing.as_ref(), index) {
            Ok(()) => Ok((pod_id, compiled)),
            Err(e) => {
                // The maps may now differ from the index: rebuild it next time.
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
        index: &mut Index,
    ) -> Result<(), String> {
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
            self.port_rules
                .insert(key, &1)
                .map_err(map_err(MAP_PORT_RULES))?;
        }
        for key in &compiled.cidr_rules {
            self.cidr_rules
                .insert(key, &1)
                .map_err(map_err(MAP_CIDR_RULES))?;
        }
        for ip in &pod.ips {
            self.pod_ips
                .insert(&addr_bytes(*ip), &entry)
                .map_err(map_err(MAP_POD_IPS))?;
        }
        if pod.netns_cookie != 0 {
            self.netns_pods
                .insert(&pod.netns_cookie, &entry)
                .map_err(map_err(MAP_NETNS_PODS))?;
        }
        if let Some(prev) = previous {
            // Addresses and namespace the pod no longer has.
            for old in [prev.ipv4, prev.ipv6] {
                if old != [0; 16] && !pod.ips.iter().any(|ip| addr_bytes(*ip) == old) {
                    self.pod_ips.remove(&old).map_err(map_err(MAP_POD_IPS))?;
                }
            }
            if prev.netns != 0 && prev.netns != pod.netns_cookie {
                self.netns_pods
                    .remove(&prev.netns)
                    .map_err(map_err(MAP_NETNS_PODS))?;
            }
        }
        index.used_ids.insert(pod_id);
        self.remove_rules(pod_id, Some(compiled), index)
    }

    /// Removes the rules of `pod_id` that `keep` does not have (all, without `keep`), as the
    /// index knows them, and records what stays.
    fn remove_rules(
        &self,
        pod_id: u32,
        keep: Option<&CompiledPolicy>,
        index: &mut Index,
    ) -> Result<(), String> {
        let stored_ports = index.port_rules.remove(&pod_id).unwrap_or_default();
        for key in &stored_ports {
            if keep.is_none_or(|c| !c.port_rules.contains(key)) {
                self.port_rules
                    .remove(key)
                    .map_err(map_err(MAP_PORT_RULES))?;
            }
        }
        let stored_cidrs = index.cidr_rules.remove(&pod_id).unwrap_or_default();
        for key in &stored_cidrs {
            if keep.is_none_or(|c| !c.cidr_rules.contains(key)) {
                self.cidr_rules
                    .remove(key)
                    .map_err(map_err(MAP_CIDR_RULES))?;
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
    pub fn remove(&self, ip: IpAddr) -> Result<bool, String> {
        let Some(entry) = self.find(ip)? else {
            return Ok(false);
        };
        self.remove_entry(&entry)?;
        Ok(true)
    }

    /// Removes a pod by its entry.
    pub fn remove_entry(&self, entry: &PodEntry) -> Result<(), String> {
        let mut guard = self.index()?;
        let index = guard.as_mut().expect("index() builds the index");
        let result = self.remove_entry_indexed(entry, index);
        match &result {
            Ok(()) => index.release(entry.pod_id),
            Err(_) => *guard = None,
        }
        result
    }

    fn remove_entry_indexed(&self, entry: &PodEntry, index: &mut Index) -> Result<(), String> {
        if entry.netns != 0 {
            self.netns_pods
                .remove(&entry.netns)
                .map_err(map_err(MAP_NETNS_PODS))?;
        }
        for addr in [entry.ipv4, entry.ipv6] {
            if addr != [0; 16] {
                self.pod_ips.remove(&addr).map_err(map_err(MAP_POD_IPS))?;
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
                (" false ", 0, false),
                ("yes", 0, true),
            ] {
                let annotations = std::collections::BTreeMap::from([(
                    crate::mesh::SPLICE_APP_ANNOTATION.to_owned(),
                    value.to_owned(),
                )]);
                let (policy, warnings) = PodPolicy::from_annotations(mesh, &annotations);
                assert_eq!(compile(1, &policy, false).flags & POD_SPLICE_APP, flag);
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
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use crate::mesh::Mesh;
    use mb_loader::attach::AttachMode;
    use mb_loader::datapath::{load_datapath, unload_datapath, LoadOptions, MeshConstants};
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
        let d = Mesh::Istio.defaults();
        load_datapath(&LoadOptions {
            cgroup: cgroup.path().to_path_buf(),
            pin_dir: pin_dir.clone(),
            constants: MeshConstants {
                outbound_port: d.outbound_port,
                inbound_port: d.inbound_port,
                proxy_uid: d.proxy_uid,
                dns_port: 15053,
                splice_mode: mb_maps::datapath::SPLICE_SIDECARS,
            },
            ipv6: false,
            dns_capture: false,
            bind4: false,
            mode: AttachMode::Auto,
            netns_keys: None,
        })
        .expect("load");
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
    }
}
