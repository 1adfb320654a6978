//! A pod's policy read back from the maps: the pod entry's switches and the rule tries'
//! prefixes decoded into the port ranges and address prefixes they cover. What `pod show`
//! and `pod list --json` print. The maps keep the compiled policy only, not the annotations
//! or flags it came from; the view says so instead of guessing.

use mb_agent::pods::entry_ips;
use mb_loader::datapath::PinLayout;
use mb_maps::datapath::{MAP_CIDR_RULES, MAP_PORT_RULES};
use mb_maps::layout::{
    addr_from_bytes, CidrRuleKey, PodEntry, PortRuleKey, POD_DNS_CAPTURE, POD_IN_PORTS_ALL,
    POD_OUT_CIDRS_ALL, POD_SPLICE_APP, POD_SPLICE_APP_DENY, RULE_EXCLUDE, RULE_INBOUND,
    RULE_INCLUDE, RULE_SCOPE_BITS,
};
use mb_maps::{LpmTrie, Pod};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// Said wherever a rule's origin would go: nothing in the maps records it.
pub const SOURCE_NOT_KEPT: &str = "not kept in the maps: they hold the compiled policy, not \
     the annotations or `pod add` flags it came from (the mesh's own ports are among the \
     exclusions)";

/// One pod as the data path sees it. Lists use the annotations' syntax: `80`, `8000-8100`,
/// `10.0.0.0/8`; `["*"]` means everything, `[]` nothing.
#[derive(Serialize, Debug)]
pub struct PodView {
    pub id: u32,
    pub addresses: Vec<IpAddr>,
    pub netns_cookie: u64,
    /// The pod entry's raw switches (POD_* bits).
    pub flags: u32,
    pub outbound: OutboundView,
    pub inbound: InboundView,
    pub dns_capture: bool,
    /// The application's own legs to and from its sidecar are spliced too (annotation
    /// `merbridge.io/splice-app: "true"`).
    pub splice_app: bool,
    /// Never spliced, whatever the per-process verdicts (`merbridge.io/splice-app: "false"`).
    pub splice_app_denied: bool,
    /// The agent's per-process verdicts for this pod (`None` when the data path has no
    /// per-process maps, e.g. loaded by an older version).
    pub splice: Option<mb_agent::splice::PodSplice>,
    /// The UID its sidecar runs as; `None` (null): the load's `--proxy-uid`.
    pub proxy_uid: Option<u32>,
    /// A GID whose processes also count as its sidecar; `None` (null): none.
    pub proxy_gid: Option<u32>,
    pub source: &'static str,
}

#[derive(Serialize, Debug)]
pub struct OutboundView {
    /// Redirected whatever the destination address.
    pub include_ports: Vec<String>,
    pub exclude_ports: Vec<String>,
    pub include_cidrs: Vec<String>,
    pub exclude_cidrs: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct InboundView {
    pub include_ports: Vec<String>,
    pub exclude_ports: Vec<String>,
}

/// Every rule in the two tries, grouped by pod id and rule kind (read once for all pods).
pub struct Rules {
    ports: BTreeMap<(u32, u32), Vec<(u16, u16)>>,
    cidrs: BTreeMap<(u32, u32), Vec<String>>,
}

/// The scope word is `pod_id << 2 | kind`.
fn split_scope(scope: u32) -> (u32, u32) {
    (scope >> 2, scope & 3)
}

impl Rules {
    /// Reads both rule tries under `pin_dir`; a key that cannot be read is an error.
    pub fn read(pin_dir: &Path) -> Result<Rules, String> {
        let layout = PinLayout::new(pin_dir);
        let mut rules = Rules {
            ports: read_trie(
                &layout,
                MAP_PORT_RULES,
                |k: &PortRuleKey| k.scope,
                port_range,
            )?,
            cidrs: read_trie(
                &layout,
                MAP_CIDR_RULES,
                |k: &CidrRuleKey| k.scope,
                cidr_text,
            )?,
        };
        for list in rules.cidrs.values_mut() {
            list.sort();
        }
        Ok(rules)
    }

    fn ports(&self, pod_id: u32, kind: u32) -> Vec<String> {
        let mut ranges = self.ports.get(&(pod_id, kind)).cloned().unwrap_or_default();
        merged_ranges(&mut ranges)
    }

    fn cidrs(&self, pod_id: u32, kind: u32) -> Vec<String> {
        self.cidrs.get(&(pod_id, kind)).cloned().unwrap_or_default()
    }

    /// How many port and prefix keys pod `pod_id` has in the tries.
    pub fn key_counts(&self, pod_id: u32) -> (usize, usize) {
        let ports = keys_of(&self.ports, pod_id);
        let cidrs = keys_of(&self.cidrs, pod_id);
        (ports, cidrs)
    }

    /// `entry`'s policy, decoded.
    pub fn view(&self, entry: &PodEntry) -> PodView {
        let id = entry.pod_id;
        let all_or = |flag: u32, list: Vec<String>| {
            if entry.flags & flag != 0 {
                vec!["*".to_string()]
            } else {
                list
            }
        };
        PodView {
            id,
            addresses: entry_ips(entry),
            netns_cookie: entry.netns,
            flags: entry.flags,
            outbound: OutboundView {
                include_ports: self.ports(id, RULE_INCLUDE),
                exclude_ports: self.ports(id, RULE_EXCLUDE),
                include_cidrs: all_or(POD_OUT_CIDRS_ALL, self.cidrs(id, RULE_INCLUDE)),
                exclude_cidrs: self.cidrs(id, RULE_EXCLUDE),
            },
            inbound: InboundView {
                include_ports: all_or(
                    POD_IN_PORTS_ALL,
                    self.ports(id, RULE_INBOUND | RULE_INCLUDE),
                ),
                exclude_ports: self.ports(id, RULE_INBOUND | RULE_EXCLUDE),
            },
            dns_capture: entry.flags & POD_DNS_CAPTURE != 0,
            splice_app: entry.flags & POD_SPLICE_APP != 0,
            splice_app_denied: entry.flags & POD_SPLICE_APP_DENY != 0,
            splice: None,
            proxy_uid: (entry.proxy_uid != 0).then_some(entry.proxy_uid),
            proxy_gid: (entry.proxy_gid != 0).then_some(entry.proxy_gid),
            source: SOURCE_NOT_KEPT,
        }
    }
}

/// Every key of the pinned rule trie `name`, turned into `item` and grouped by the pod id
/// and rule kind of its scope word.
fn read_trie<K: Pod, T>(
    layout: &PinLayout,
    name: &str,
    scope: impl Fn(&K) -> u32,
    item: impl Fn(&K) -> T,
) -> Result<BTreeMap<(u32, u32), Vec<T>>, String> {
    let trie: LpmTrie<K, u32> =
        LpmTrie::open_pinned(&layout.map(name)).map_err(|e| format!("map {name}: {e}"))?;
    let mut grouped: BTreeMap<(u32, u32), Vec<T>> = BTreeMap::new();
    for key in trie.keys() {
        let key = key.map_err(|e| format!("map {name}: {e}"))?;
        grouped
            .entry(split_scope(scope(&key)))
            .or_default()
            .push(item(&key));
    }
    Ok(grouped)
}

/// How many keys of `grouped` belong to pod `pod_id`.
fn keys_of<T>(grouped: &BTreeMap<(u32, u32), Vec<T>>, pod_id: u32) -> usize {
    grouped
        .iter()
        .filter(|((id, _), _)| *id == pod_id)
        .map(|(_, keys)| keys.len())
        .sum()
}

/// The inclusive port range one prefix covers.
fn port_range(key: &PortRuleKey) -> (u16, u16) {
    let port_bits = key.prefixlen.saturating_sub(RULE_SCOPE_BITS).min(16);
    let first = u16::from_be(key.port);
    let size = 1u32 << (16 - port_bits);
    let last = (u32::from(first) + size - 1).min(u32::from(u16::MAX)) as u16;
    (first, last)
}

/// `10.0.0.0/8` or `fd00::/8` (IPv4 prefixes are stored v4-mapped, 96 bits longer).
fn cidr_text(key: &CidrRuleKey) -> String {
    let bits = key.prefixlen.saturating_sub(RULE_SCOPE_BITS);
    match addr_from_bytes(key.addr) {
        IpAddr::V4(v4) if bits >= 96 => format!("{v4}/{}", bits - 96),
        _ => format!("{}/{bits}", std::net::Ipv6Addr::from(key.addr)),
    }
}

/// Sorted, adjacent and overlapping ranges joined, as `80` or `8000-8100`.
fn merged_ranges(ranges: &mut [(u16, u16)]) -> Vec<String> {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::new();
    for &(first, last) in ranges.iter() {
        match merged.last_mut() {
            Some(prev) if u32::from(first) <= u32::from(prev.1) + 1 => prev.1 = prev.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect()
}

/// The view as `pod show` prints it, one field per line.
pub fn print_view(v: &PodView) {
    let list = |items: &[String]| {
        if items.is_empty() {
            "(none)".to_string()
        } else {
            items.join(",")
        }
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    // One line per field, values aligned in one column.
    let field = |label: &str, value: &dyn std::fmt::Display| {
        println!("  {:<26}{value}", format!("{label}:"));
    };
    let addresses: Vec<String> = v.addresses.iter().map(|a| a.to_string()).collect();
    println!("pod {}", v.id);
    field("addresses", &addresses.join(","));
    field("netns cookie", &v.netns_cookie);
    for (label, items) in [
        ("outbound include ports", &v.outbound.include_ports),
        ("outbound exclude ports", &v.outbound.exclude_ports),
        ("outbound include CIDRs", &v.outbound.include_cidrs),
        ("outbound exclude CIDRs", &v.outbound.exclude_cidrs),
        ("inbound include ports", &v.inbound.include_ports),
        ("inbound exclude ports", &v.inbound.exclude_ports),
    ] {
        field(label, &list(items));
    }
    field("DNS capture", &yes_no(v.dns_capture));
    let splice_app = if v.splice_app {
        "yes (annotation)"
    } else if v.splice_app_denied {
        "no (annotation)"
    } else {
        "per process (below)"
    };
    field("splice application legs", &splice_app);
    // The per-process verdicts decide only without the annotation.
    if let Some(splice) = v
        .splice
        .as_ref()
        .filter(|_| !v.splice_app && !v.splice_app_denied)
    {
        for p in &splice.processes {
            field(
                "  process",
                &format!("{} {}: {} ({})", p.pid, p.comm, p.verdict, p.reason),
            );
        }
        for p in &splice.ports {
            field(
                "  port",
                &format!("{}: {} ({})", p.port, p.verdict, p.reason),
            );
        }
        if splice.processes.is_empty() {
            field("  process", &"(none classified: not spliced)");
        }
    }
    match v.proxy_uid {
        Some(uid) => field("sidecar UID", &uid),
        None => field("sidecar UID", &"the load's --proxy-uid"),
    }
    match v.proxy_gid {
        Some(gid) => field("sidecar GID", &gid),
        None => field("sidecar GID", &"(none)"),
    }
    field("flags", &format!("{:#06x}", v.flags));
    field("source", &v.source);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_prefixes_decode_back_to_the_ranges() {
        for (first, last) in [(80, 80), (8000, 8100), (1, 3), (0, 65535), (15000, 15001)] {
            let mut ranges: Vec<(u16, u16)> = PortRuleKey::cover_range(5, first, last)
                .iter()
                .map(port_range)
                .collect();
            let text = merged_ranges(&mut ranges);
            let want = if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            };
            assert_eq!(text, vec![want]);
        }
    }

    #[test]
    fn cidrs_decode_in_their_family() {
        let v4 = CidrRuleKey::new(4, "10.96.0.7".parse().unwrap(), 24);
        assert_eq!(cidr_text(&v4), "10.96.0.0/24");
        let v6 = CidrRuleKey::new(4, "fd00::1".parse().unwrap(), 8);
        assert_eq!(cidr_text(&v6), "fd00::/8");
        let all6 = CidrRuleKey::new(4, "::".parse().unwrap(), 0);
        assert_eq!(cidr_text(&all6), "::/0");
    }
}
