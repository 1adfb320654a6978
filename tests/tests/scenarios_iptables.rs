//! The scenarios under the iptables baseline (Istio's rules), and under no interception as a
//! control. The merbridge variant will add a file like this one with its own mode.

mod common;

use mb_testbed::scenarios;
use mb_testbed::sidecar::RelayMode;
use mb_testbed::{Interception, MeshPorts};

fn istio() -> Interception {
    Interception::Iptables(MeshPorts::istio())
}

scenario_tests! {
    iptables_app_to_service_v4 => |b| scenarios::app_to_service(&istio(), b, false, false);
    iptables_app_to_service_v6 => |b| scenarios::app_to_service(&istio(), b, true, false);
    iptables_app_to_service_cross_node_v4 => |b| scenarios::app_to_service(&istio(), b, false, true);
    iptables_app_to_service_cross_node_v6 => |b| scenarios::app_to_service(&istio(), b, true, true);
    iptables_sidecar_to_own_app_passthrough_v4 => |b| scenarios::sidecar_to_own_app_passthrough(&istio(), b, false);
    iptables_sidecar_to_own_app_passthrough_v6 => |b| scenarios::sidecar_to_own_app_passthrough(&istio(), b, true);
    iptables_excluded_ports_bypass_v4 => |b| scenarios::excluded_ports_bypass(&istio(), b, false);
    iptables_excluded_ports_bypass_v6 => |b| scenarios::excluded_ports_bypass(&istio(), b, true);
    iptables_loopback_untouched_v4 => |b| scenarios::loopback_untouched(&istio(), b, false);
    iptables_loopback_untouched_v6 => |b| scenarios::loopback_untouched(&istio(), b, true);
    iptables_pod_without_sidecar_untouched_v4 => |b| scenarios::pod_without_sidecar_untouched(&istio(), b, false);
    iptables_pod_without_sidecar_untouched_v6 => |b| scenarios::pod_without_sidecar_untouched(&istio(), b, true);
    iptables_bulk_and_rr_read_write_v4 => |b| scenarios::bulk_and_rr_through_sidecars(&istio(), b, false, RelayMode::ReadWrite);
    iptables_bulk_and_rr_splice_v6 => |b| scenarios::bulk_and_rr_through_sidecars(&istio(), b, true, RelayMode::Splice);
    iptables_bulk_and_rr_splice_v4 => |b| scenarios::bulk_and_rr_through_sidecars(&istio(), b, false, RelayMode::Splice);
    iptables_conntrack_entries_counted => |b| {
        let created = scenarios::conntrack_entries(&istio(), b, 50);
        eprintln!("iptables: {created} conntrack entries in the client pod for 50 connections");
    };
    linkerd_ports_app_to_service => |b| scenarios::app_to_service(&Interception::Iptables(MeshPorts::linkerd()), b, false, false);
    kuma_ports_app_to_service => |b| scenarios::app_to_service(&Interception::Iptables(MeshPorts::kuma()), b, false, false);
    osm_ports_app_to_service => |b| scenarios::app_to_service(&Interception::Iptables(MeshPorts::osm()), b, true, false);
    iptables_dns_captured_v4 => |b| scenarios::dns_captured_by_sidecar(&istio(), b, false);
    iptables_dns_captured_v6 => |b| scenarios::dns_captured_by_sidecar(&istio(), b, true);
    no_mesh_dns => |b| scenarios::dns_captured_by_sidecar(&Interception::None, b, false);
    no_mesh_dns_over_tcp => |b| scenarios::dns_over_tcp(&Interception::None, b, false);
    no_mesh_app_to_service => |b| scenarios::app_to_service(&Interception::None, b, false, true);
    no_mesh_excluded_ports => |b| scenarios::excluded_ports_bypass(&Interception::None, b, false);
    no_mesh_loopback => |b| scenarios::loopback_untouched(&Interception::None, b, false);
    no_mesh_pod_without_sidecar => |b| scenarios::pod_without_sidecar_untouched(&Interception::None, b, true);
    no_mesh_bulk_and_rr => |b| scenarios::bulk_and_rr_through_sidecars(&Interception::None, b, false, RelayMode::ReadWrite);
    no_mesh_needs_no_conntrack => |b| { scenarios::conntrack_entries(&Interception::None, b, 20); };
    iptables_inbound_from_outside_callers_v4 => |b| scenarios::inbound_from_outside_callers(&istio(), b, false);
    iptables_inbound_from_outside_callers_v6 => |b| scenarios::inbound_from_outside_callers(&istio(), b, true);
    iptables_kubelet_probes => |b| scenarios::kubelet_probes(&istio(), b);
    iptables_sidecar_restart_refused_then_steered => |b| scenarios::sidecar_restart(&istio(), b);
    iptables_cross_node_1000_connections_conntrack => |b| {
        let created = scenarios::cross_node_conntrack(&istio(), b, 1000);
        eprintln!("iptables: {created} conntrack entries for 1000 cross-node connections");
    };
    iptables_dns_over_tcp_v4 => |b| scenarios::dns_over_tcp(&istio(), b, false);
    iptables_dns_over_tcp_v6 => |b| scenarios::dns_over_tcp(&istio(), b, true);
    iptables_sidecar_with_own_uid => |b| scenarios::sidecar_with_own_uid(&istio(), b, 4242);
}
