//! How large the data path's maps are: sized from two numbers a node operator can reason
//! about (`--max-pods`, `--max-connections`), with defaults equal to the declared sizes so
//! that maps pinned by earlier versions are re-used as they are.
//!
//! A pinned map keeps the size it was created with: asking for another size over existing
//! pins is refused with what to do, never silently ignored (the kernel cannot resize a map).

use mb_maps::datapath::{
    MapDecl, MAP_CIDR_RULES, MAP_COOKIE_ORIG, MAP_NETNS_PODS, MAP_PAIR_ORIG, MAP_POD_IPS,
    MAP_PORT_RULES, MAP_SOCK_PAIRS,
};
use mb_maps::{MapError, Shape};

/// Rule entries reserved per pod in `port_rules` and `cidr_rules` (Istio's defaults compile to
/// 5 port rules; annotations with many ports or ranges take more).
pub const RULES_PER_POD: u32 = 16;

/// Entries of the sized maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Meshed pods on the node: `netns_pods`, `pod_ips` (two addresses each), and
    /// [`RULES_PER_POD`] rules each.
    pub pods: u32,
    /// Concurrent redirected connections: `cookie_orig`, `pair_orig`, `sock_pairs`.
    pub connections: u32,
}

impl Default for MapSizes {
    /// 16,384 pods (Kubernetes' default is 110 per node) and 65,536 connections: a node at
    /// 110 pods has room for ~600 concurrent redirected connections per pod.
    fn default() -> MapSizes {
        MapSizes {
            pods: 16_384,
            connections: 65_536,
        }
    }
}

impl MapSizes {
    pub const MIN_PODS: u32 = 1;
    pub const MAX_PODS: u32 = 1 << 20;
    pub const MIN_CONNECTIONS: u32 = 16;
    pub const MAX_CONNECTIONS: u32 = 1 << 24;

    /// Checks both numbers, naming the flag that is out of range.
    pub fn checked(pods: u32, connections: u32) -> Result<MapSizes, String> {
        if !(Self::MIN_PODS..=Self::MAX_PODS).contains(&pods) {
            return Err(format!(
                "--max-pods {pods}: use {} to {}",
                Self::MIN_PODS,
                Self::MAX_PODS
            ));
        }
        if !(Self::MIN_CONNECTIONS..=Self::MAX_CONNECTIONS).contains(&connections) {
            return Err(format!(
                "--max-connections {connections}: use {} to {}",
                Self::MIN_CONNECTIONS,
                Self::MAX_CONNECTIONS
            ));
        }
        Ok(MapSizes { pods, connections })
    }

    /// `max_entries` for `decl`; maps these numbers do not size keep their declared size.
    pub fn max_entries(&self, decl: &MapDecl) -> u32 {
        match decl.name {
            MAP_NETNS_PODS => self.pods,
            MAP_POD_IPS => self.pods * 2,
            MAP_PORT_RULES | MAP_CIDR_RULES => self.pods * RULES_PER_POD,
            MAP_COOKIE_ORIG | MAP_PAIR_ORIG | MAP_SOCK_PAIRS => self.connections,
            _ => decl.max_entries,
        }
    }

    /// The flag that sizes `decl`, for messages.
    pub fn flag_for(decl: &MapDecl) -> Option<&'static str> {
        match decl.name {
            MAP_NETNS_PODS | MAP_POD_IPS | MAP_PORT_RULES | MAP_CIDR_RULES => Some("--max-pods"),
            MAP_COOKIE_ORIG | MAP_PAIR_ORIG | MAP_SOCK_PAIRS => Some("--max-connections"),
            _ => None,
        }
    }
}

/// The message for a pinned map whose size differs from the one asked for (and nothing
/// else), or `None` when the mismatch is of another kind.
pub fn size_mismatch(decl: &MapDecl, error: &MapError) -> Option<String> {
    let MapError::Mismatch {
        path,
        expected,
        found,
    } = error
    else {
        return None;
    };
    let same_but_size = Shape {
        max_entries: found.max_entries,
        ..*expected
    } == *found;
    if !same_but_size {
        return None;
    }
    let flag = MapSizes::flag_for(decl).unwrap_or("the map size");
    Some(format!(
        "map {} is pinned at {} with {} entries, {} asks for {}: a pinned map keeps its size. \
         Load with the size it has (the flag that gave it), or `merbridge unload` first (every \
         pod then needs adding again)",
        decl.name,
        path.display(),
        found.max_entries,
        flag,
        expected.max_entries
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mb_maps::datapath::MAPS;

    #[test]
    fn defaults_are_the_declared_sizes() {
        // Pins made before the flags existed stay compatible.
        let sizes = MapSizes::default();
        for decl in MAPS {
            assert_eq!(sizes.max_entries(decl), decl.max_entries, "{}", decl.name);
        }
    }

    #[test]
    fn flags_are_checked_and_scale_their_maps() {
        let sizes = MapSizes::checked(110, 4096).unwrap();
        let find = |name| MapDecl::find(name).unwrap();
        assert_eq!(sizes.max_entries(find(MAP_NETNS_PODS)), 110);
        assert_eq!(sizes.max_entries(find(MAP_POD_IPS)), 220);
        assert_eq!(sizes.max_entries(find(MAP_PORT_RULES)), 1760);
        assert_eq!(sizes.max_entries(find(MAP_SOCK_PAIRS)), 4096);
        assert!(MapSizes::checked(0, 4096)
            .unwrap_err()
            .contains("--max-pods 0"));
        assert!(MapSizes::checked(4, 8)
            .unwrap_err()
            .contains("--max-connections 8"));
    }
}
