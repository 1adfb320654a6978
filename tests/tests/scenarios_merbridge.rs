//! The same scenarios as `scenarios_iptables.rs`, with merbridge instead of iptables: the
//! `merbridge` binary loads the data path on each node's cgroup and adds each meshed pod.

mod common;

use mb_testbed::scenarios;
use mb_testbed::sidecar::RelayMode;
use mb_testbed::{Interception, MeshPorts};

fn istio() -> Interception {
    Interception::Merbridge(MeshPorts::istio())
}

scenario_tests! {
    merbridge_app_to_service_v4 => |b| scenarios::app_to_service(&istio(), b, false, false);
    merbridge_app_to_service_v6 => |b| scenarios::app_to_service(&istio(), b, true, false);
    merbridge_app_to_service_cross_node_v4 => |b| scenarios::app_to_service(&istio(), b, false, true);
    merbridge_app_to_service_cross_node_v6 => |b| scenarios::app_to_service(&istio(), b, true, true);
    merbridge_sidecar_to_own_app_passthrough_v4 => |b| scenarios::sidecar_to_own_app_passthrough(&istio(), b, false);
    merbridge_sidecar_to_own_app_passthrough_v6 => |b| scenarios::sidecar_to_own_app_passthrough(&istio(), b, true);
    merbridge_excluded_ports_bypass_v4 => |b| scenarios::excluded_ports_bypass(&istio(), b, false);
    merbridge_excluded_ports_bypass_v6 => |b| scenarios::excluded_ports_bypass(&istio(), b, true);
    merbridge_loopback_untouched_v4 => |b| scenarios::loopback_untouched(&istio(), b, false);
    merbridge_loopback_untouched_v6 => |b| scenarios::loopback_untouched(&istio(), b, true);
    merbridge_pod_without_sidecar_untouched_v4 => |b| scenarios::pod_without_sidecar_untouched(&istio(), b, false);
    merbridge_pod_without_sidecar_untouched_v6 => |b| scenarios::pod_without_sidecar_untouched(&istio(), b, true);
    merbridge_bulk_and_rr_read_write_v4 => |b| scenarios::bulk_and_rr_through_sidecars(&istio(), b, false, RelayMode::ReadWrite);
    merbridge_bulk_and_rr_read_write_v6 => |b| scenarios::bulk_and_rr_through_sidecars(&istio(), b, true, RelayMode::ReadWrite);
    merbridge_creates_no_conntrack_entries => |b| {
        assert_eq!(scenarios::conntrack_entries(&istio(), b, 50), 0);
    };
    merbridge_linkerd_ports_app_to_service => |b| scenarios::app_to_service(&Interception::Merbridge(MeshPorts::linkerd()), b, false, false);
    merbridge_kuma_ports_app_to_service => |b| scenarios::app_to_service(&Interception::Merbridge(MeshPorts::kuma()), b, false, false);
    merbridge_osm_ports_app_to_service => |b| scenarios::app_to_service(&Interception::Merbridge(MeshPorts::osm()), b, true, false);
    merbridge_dns_captured_v4 => |b| scenarios::dns_captured_by_sidecar(&istio(), b, false);
    merbridge_dns_captured_v6 => |b| scenarios::dns_captured_by_sidecar(&istio(), b, true);
    merbridge_inbound_from_outside_callers_v4 => |b| scenarios::inbound_from_outside_callers(&istio(), b, false);
    merbridge_inbound_from_outside_callers_v6 => |b| scenarios::inbound_from_outside_callers(&istio(), b, true);
    merbridge_kubelet_probes => |b| scenarios::kubelet_probes(&istio(), b);
    merbridge_sidecar_restart_refused_then_steered => |b| scenarios::sidecar_restart(&istio(), b);
    merbridge_cross_node_1000_connections_conntrack => |b| {
        let created = scenarios::cross_node_conntrack(&istio(), b, 1000);
        eprintln!("merbridge: {created} conntrack entries for 1000 cross-node connections");
    };
    merbridge_dns_over_tcp_v4 => |b| scenarios::dns_over_tcp(&istio(), b, false);
    merbridge_dns_over_tcp_v6 => |b| scenarios::dns_over_tcp(&istio(), b, true);
    merbridge_sidecar_with_own_uid => |b| scenarios::sidecar_with_own_uid(&istio(), b, 4242);
}
