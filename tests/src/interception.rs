//! How a pod's traffic reaches its sidecar. Scenarios take an [`Interception`] so the same
//! tests run under the iptables baseline now and under merbridge (eBPF) later: add a variant
//! and handle it in [`Interception::install_node`] / [`Interception::install_pod`].

use crate::cmd::run_with_input;
use crate::node::{Node, Pod};
use mb_sys::process::{place, Placement};
use std::io;
use std::process::Command;

/// A mesh's interception settings (DESIGN.md §3 table) plus per-pod exclusions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPorts {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    /// Destination ports of inbound connections that skip the sidecar (Istio always adds its
    /// 15090, 15021 and the status port 15020).
    pub exclude_inbound_ports: Vec<u16>,
    /// Destination ports of outbound connections that skip the sidecar.
    pub exclude_outbound_ports: Vec<u16>,
    /// Istio's HBONE port 15008, never captured; `None` for other meshes.
    pub tunnel_port: Option<u16>,
    /// DNS capture: UDP to port 53 from apps goes to this port of the sidecar (Istio with
    /// `ISTIO_META_DNS_CAPTURE=true`, Kuma: 15053). `None`: DNS is not captured.
    pub dns_port: Option<u16>,
}

impl MeshPorts {
    /// Istio defaults as the injector writes them: `-p 15001 -z 15006 -u 1337
    /// -d 15090,15021,15020`.
    pub fn istio() -> MeshPorts {
        MeshPorts {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: 1337,
            exclude_inbound_ports: vec![15090, 15021, 15020],
            exclude_outbound_ports: vec![],
            tunnel_port: Some(15008),
            dns_port: None,
        }
    }

    /// Linkerd: outbound 4140, inbound 4143, proxy UID 2102; its admin/control ports
    /// 4190,4191 skip inbound.
    pub fn linkerd() -> MeshPorts {
        MeshPorts {
            outbound_port: 4140,
            inbound_port: 4143,
            proxy_uid: 2102,
            exclude_inbound_ports: vec![4190, 4191],
            exclude_outbound_ports: vec![],
            tunnel_port: None,
            dns_port: None,
        }
    }

    /// Kuma: outbound 15001, inbound 15006, proxy UID 5678.
    pub fn kuma() -> MeshPorts {
        MeshPorts {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uid: 5678,
            exclude_inbound_ports: vec![],
            exclude_outbound_ports: vec![],
            tunnel_port: None,
            dns_port: None,
        }
    }

    /// OSM: outbound 15001, inbound 15003, proxy UID 1500.
    pub fn osm() -> MeshPorts {
        MeshPorts {
            outbound_port: 15001,
            inbound_port: 15003,
            proxy_uid: 1500,
            exclude_inbound_ports: vec![],
            exclude_outbound_ports: vec![],
            tunnel_port: None,
            dns_port: None,
        }
    }

    /// The same with DNS capture to `port` (Istio's `ISTIO_META_DNS_CAPTURE`, Kuma's DNS).
    pub fn with_dns(mut self, port: u16) -> MeshPorts {
        self.dns_port = Some(port);
        self
    }

    /// The `nat` table `istio-iptables` installs in REDIRECT mode for these ports, in
    /// `iptables-restore` format, for IPv4 (`ipv6 == false`) or IPv6. Rule order and matches
    /// follow `tools/istio-iptables/pkg/capture/run.go`.
    pub fn nat_rules(&self, ipv6: bool) -> String {
        let (passthrough, localhost) = if ipv6 {
            ("::6/128", "::1/128")
        } else {
            ("127.0.0.6/32", "127.0.0.1/32")
        };
        let uid = self.proxy_uid;
        let mut r = vec![
            "*nat".to_owned(),
            ":PREROUTING ACCEPT [0:0]".to_owned(),
            ":INPUT ACCEPT [0:0]".to_owned(),
            ":OUTPUT ACCEPT [0:0]".to_owned(),
            ":POSTROUTING ACCEPT [0:0]".to_owned(),
            ":ISTIO_INBOUND - [0:0]".to_owned(),
            ":ISTIO_IN_REDIRECT - [0:0]".to_owned(),
            ":ISTIO_OUTPUT - [0:0]".to_owned(),
            ":ISTIO_REDIRECT - [0:0]".to_owned(),
            "-A PREROUTING -p tcp -j ISTIO_INBOUND".to_owned(),
            "-A OUTPUT -p tcp -j ISTIO_OUTPUT".to_owned(),
        ];
        if let Some(dns) = self.dns_port {
            // istio-iptables with DNS capture (all nameservers): the proxy's own queries go
            // out; everybody else's UDP/53 goes to the DNS proxy. Conntrack restores the
            // source of the answers.
            r.extend([
                format!("-A OUTPUT -p udp --dport 53 -m owner --uid-owner {uid} -j RETURN"),
                format!("-A OUTPUT -p udp --dport 53 -m owner --gid-owner {uid} -j RETURN"),
                format!("-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports {dns}"),
            ]);
        }
        if let Some(t) = self.tunnel_port {
            r.push(format!("-A ISTIO_INBOUND -p tcp --dport {t} -j RETURN"));
        }
        for p in &self.exclude_inbound_ports {
            r.push(format!("-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN"));
        }
        r.push("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".to_owned());
        r.push(format!(
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));
        r.push(format!("-A ISTIO_OUTPUT -s {passthrough} -o lo -j RETURN"));
        if let Some(dns) = self.dns_port {
            // DNS over TCP goes to the DNS proxy too, except the proxy's own.
            r.extend([
                format!("-A ISTIO_OUTPUT -p tcp --dport 53 -m owner --uid-owner {uid} -j RETURN"),
                format!("-A ISTIO_OUTPUT -p tcp --dport 53 -m owner --gid-owner {uid} -j RETURN"),
                format!("-A ISTIO_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports {dns}"),
            ]);
        }
        for p in &self.exclude_outbound_ports {
            r.push(format!("-A ISTIO_OUTPUT -p tcp --dport {p} -j RETURN"));
        }
        let not_tunnel = self
            .tunnel_port
            .map(|t| format!(" -p tcp ! --dport {t}"))
            .unwrap_or_default();
        r.extend([
            // The sidecar calling its own pod's IP (app calls itself through a service): inbound.
            format!("-A ISTIO_OUTPUT ! -d {localhost} -o lo{not_tunnel} -m owner --uid-owner {uid} -j ISTIO_IN_REDIRECT"),
            format!("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN"),
            format!("-A ISTIO_OUTPUT -m owner --uid-owner {uid} -j RETURN"),
            format!("-A ISTIO_OUTPUT ! -d {localhost} -o lo{not_tunnel} -m owner --gid-owner {uid} -j ISTIO_IN_REDIRECT"),
            format!("-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner {uid} -j RETURN"),
            format!("-A ISTIO_OUTPUT -m owner --gid-owner {uid} -j RETURN"),
            format!("-A ISTIO_OUTPUT -d {localhost} -j RETURN"),
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT".to_owned(),
            format!("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}", self.outbound_port),
            "COMMIT".to_owned(),
        ]);
        r.join("\n") + "\n"
    }
}

/// How traffic of meshed pods reaches their sidecars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interception {
    /// Nothing: apps talk to each other directly (the "no mesh" baseline).
    None,
    /// Istio's `istio-iptables` nat rules in every meshed pod (REDIRECT + conntrack).
    Iptables(MeshPorts),
    /// merbridge: the `merbridge` binary loads its programs on the node's cgroup (pins in a
    /// private bpffs) and adds each meshed pod with `merbridge pod add`; no iptables rules.
    Merbridge(MeshPorts),
}

impl Interception {
    /// The mesh settings, if traffic is intercepted at all.
    pub fn mesh(&self) -> Option<&MeshPorts> {
        match self {
            Interception::None => None,
            Interception::Iptables(m) | Interception::Merbridge(m) => Some(m),
        }
    }

    /// Node-wide setup: merbridge attaches to `node.cgroup_path()` (and is unloaded when the
    /// node goes). Nothing for iptables, whose rules live in each pod.
    pub fn install_node(&self, node: &Node) -> io::Result<()> {
        match self {
            Interception::Merbridge(mesh) => crate::merbridge::install_node(node, mesh),
            _ => Ok(()),
        }
    }

    /// Per-pod setup for a pod with a sidecar.
    pub fn install_pod(&self, pod: &Pod) -> io::Result<()> {
        match self {
            Interception::None => Ok(()),
            Interception::Iptables(mesh) => {
                restore(pod, "iptables-restore", &mesh.nat_rules(false))?;
                restore(pod, "ip6tables-restore", &mesh.nat_rules(true))
            }
            Interception::Merbridge(mesh) => crate::merbridge::install_pod(pod, mesh),
        }
    }
}

impl Interception {
    /// Called once the pod's sidecar listens. merbridge: `pod add` again, which adopts the
    /// inbound listener from user space (pidfd_getfd) if sock_ops did not put it in place
    /// (kernels whose sock_ops lack the netns cookie, 5.10) — what the agent's resync does.
    /// Nothing for the other modes.
    pub fn sidecar_started(&self, pod: &Pod) -> io::Result<()> {
        match self {
            Interception::Merbridge(mesh) => crate::merbridge::install_pod(pod, mesh),
            _ => Ok(()),
        }
    }
}

fn restore(pod: &Pod, tool: &str, rules: &str) -> io::Result<()> {
    let mut cmd = Command::new(tool);
    cmd.arg("--wait");
    place(
        &mut cmd,
        &Placement {
            netns: Some(pod.netns_path()),
            die_with_parent: true,
            ..Placement::default()
        },
    )?;
    run_with_input(cmd, rules).map(|_| ()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("install iptables rules in pod {}: {e}", pod.name()),
        )
    })
}

/// The pod's `nat` table as `iptables-save` prints it (IPv4 or IPv6).
pub fn saved_nat_rules(pod: &Pod, ipv6: bool) -> io::Result<String> {
    let mut cmd = Command::new(if ipv6 {
        "ip6tables-save"
    } else {
        "iptables-save"
    });
    cmd.args(["-t", "nat"]);
    pod.output(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_rules_match_istio_iptables_shape() {
        let v4 = MeshPorts::istio().nat_rules(false);
        for want in [
            "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
            "-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN",
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(v4.contains(want), "missing {want:?} in\n{v4}");
        }
        let v6 = MeshPorts::istio().nat_rules(true);
        assert!(v6.contains("-s ::6/128 -o lo -j RETURN"));
        assert!(!v6.contains("127.0.0"));
        let osm = MeshPorts::osm().nat_rules(false);
        assert!(osm.contains("--to-ports 15003") && osm.contains("--uid-owner 1500"));
        assert!(!osm.contains("15008"));
        assert!(!v4.contains("udp"), "DNS capture is off by default");
        let dns = MeshPorts::istio().with_dns(15053).nat_rules(false);
        assert!(dns.contains("-A OUTPUT -p udp --dport 53 -m owner --uid-owner 1337 -j RETURN"));
        assert!(dns.contains("-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports 15053"));
    }
}
