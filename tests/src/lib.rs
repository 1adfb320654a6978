//! `mb-testbed`: nodes (private cgroups + bridges) and pods (network namespaces) on one machine,
//! a reference sidecar, workload tools and the iptables baseline.
//!
//! - [`node`]: [`Node`], [`Pod`], [`PodSpec`], [`Spawned`] — the cluster made of namespaces.
//! - [`sidecar`]: the reference sidecar (`mb-sidecar`) and [`sidecar::Sidecar`], a handle that
//!   starts it in a pod and reads what it saw.
//! - [`workload`]: echo/RR, connect-request-close, bulk-with-checksum and a UDP DNS-like
//!   responder, as library functions and as the `mb-workload` binary.
//! - [`interception`]: how a pod's traffic reaches its sidecar ([`Interception::Iptables`] is
//!   the Istio baseline).
//! - [`scenarios`]: the end-to-end scenarios, written once and run per interception mode.
//! - [`stage`]: copies of binaries other users must run, for checkouts they cannot reach.
#![forbid(unsafe_code)]

pub mod cmd;
pub mod node;

pub use node::{Node, Pod, PodSpec, Spawned};
pub mod interception;
pub mod leftovers;
pub mod merbridge;
pub mod scenarios;
pub mod sidecar;
pub mod stage;
pub mod workload;

pub use interception::{Interception, MeshPorts};
pub use sidecar::{Sidecar, SidecarConfig};

/// Finds one of this crate's binaries: `$<env_var>`, else next to the running executable or
/// one directory up (Cargo puts test executables in `target/<profile>/deps/`).
pub fn find_binary(name: &str, env_var: &str) -> std::io::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent();
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("cannot find the {name} binary next to {}: build it (cargo build -p mb-testbed) or set {env_var}", exe.display()),
    ))
}

/// Where the `mb-workload` binary is (see [`find_binary`]; override with `MB_WORKLOAD_BIN`).
pub fn workload_binary() -> std::io::Result<std::path::PathBuf> {
    find_binary("mb-workload", "MB_WORKLOAD_BIN")
}
