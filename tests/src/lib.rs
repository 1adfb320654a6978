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
#![forbid(unsafe_code)]

pub mod cmd;
pub mod node;

pub use node::{Node, Pod, PodSpec, Spawned};
