//! [`Interception::Merbridge`](crate::Interception::Merbridge): drives the `merbridge` binary
//! the way an operator would — `merbridge load` on the node's private cgroup with pins in a
//! private bpffs, `merbridge pod add` per meshed pod, `merbridge unload` when the node goes.

use crate::interception::MeshPorts;
use crate::node::{Node, Pod};
use mb_sys::bpffs::PrivateBpffs;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Pin directories by node name, for `install_pod` (a pod knows its node's name).
static PIN_DIRS: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// Where the `merbridge` binary is: `$MB_MERBRIDGE_BIN`, else next to the running executable.
pub fn merbridge_binary() -> io::Result<PathBuf> {
    crate::find_binary("merbridge", "MB_MERBRIDGE_BIN")
}

fn run(args: &[&str]) -> io::Result<String> {
    let out = Command::new(merbridge_binary()?).args(args).output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "merbridge {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn ports(list: &[u16]) -> String {
    list.iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The data path of one node: unloaded, then its bpffs unmounted, when dropped.
struct Loaded {
    node: String,
    pin_dir: PathBuf,
    cgroup: PathBuf,
    _bpffs: PrivateBpffs,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let (pin, cgroup) = (
            self.pin_dir.display().to_string(),
            self.cgroup.display().to_string(),
        );
        if let Err(e) = run(&["unload", "--pin-dir", &pin, "--cgroup", &cgroup]) {
            eprintln!("mb-testbed: {e}");
        }
        if let Some(map) = PIN_DIRS.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            map.remove(&self.node);
        }
    }
}

pub(crate) fn install_node(node: &Node, mesh: &MeshPorts) -> io::Result<()> {
    let bpffs = PrivateBpffs::new("mb-pins")?;
    let pin_dir = bpffs.path().join("merbridge");
    let cgroup = node.cgroup_path().to_path_buf();
    let (pin, cg) = (pin_dir.display().to_string(), cgroup.display().to_string());
    let (out_port, in_port, uid) = (
        mesh.outbound_port.to_string(),
        mesh.inbound_port.to_string(),
        mesh.proxy_uid.to_string(),
    );
    let mut args = vec![
        "load",
        "--cgroup",
        &cg,
        "--pin-dir",
        &pin,
        "--ipv6",
        "--outbound-port",
        &out_port,
        "--inbound-port",
        &in_port,
        "--proxy-uid",
        &uid,
    ];
    let dns = mesh.dns_port.map(|p| p.to_string());
    if let Some(dns) = &dns {
        args.extend(["--dns-capture", "--dns-port", dns]);
    }
    run(&args)?;
    PIN_DIRS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(node.name().to_owned(), pin_dir.clone());
    node.hold(Box::new(Loaded {
        node: node.name().to_owned(),
        pin_dir,
        cgroup,
        _bpffs: bpffs,
    }));
    Ok(())
}

fn pin_dir_of(pod: &Pod) -> io::Result<PathBuf> {
    PIN_DIRS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(pod.node_name()).cloned())
        .ok_or_else(|| {
            io::Error::other(format!(
                "node {} has no merbridge data path: call Interception::install_node first",
                pod.node_name()
            ))
        })
}

pub(crate) fn install_pod(pod: &Pod, mesh: &MeshPorts) -> io::Result<()> {
    let pin_dir = pin_dir_of(pod)?;
    add_pod(&pin_dir, pod, mesh)
}

/// `merbridge pod add` with the mesh's exclusions, as the scenarios set them.
pub fn add_pod(pin_dir: &Path, pod: &Pod, mesh: &MeshPorts) -> io::Result<()> {
    let ips = format!("{},{}", pod.ipv4(), pod.ipv6());
    let (pin, netns) = (
        pin_dir.display().to_string(),
        pod.netns_path().display().to_string(),
    );
    // The pod's own sidecar UID (it may differ from the node's `load --proxy-uid`).
    let uid = mesh.proxy_uid.to_string();
    let mut args = vec![
        "pod",
        "add",
        &ips,
        "--netns",
        &netns,
        "--pin-dir",
        &pin,
        "--proxy-uid",
        &uid,
    ];
    let (inbound, outbound) = (
        ports(&mesh.exclude_inbound_ports),
        ports(&mesh.exclude_outbound_ports),
    );
    if !inbound.is_empty() {
        args.extend(["--exclude-inbound-ports", &inbound]);
    }
    if !outbound.is_empty() {
        args.extend(["--exclude-outbound-ports", &outbound]);
    }
    if mesh.dns_port.is_some() {
        args.push("--dns-capture");
    }
    run(&args).map(|_| ())
}
