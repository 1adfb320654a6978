//! `mb-agent`: merbridge's node agent as a library, shared by the `merbridge` binary (cli/),
//! the developer tools (devtools/) and the tests. It links no test bed.
//!
//! - [`cni`]: `merbridge cni`, the chained CNI plugin, its install step and `validate`.
//! - [`inbound`]: each meshed pod's sk_lookup link and sidecar listener (inbound capture).
//! - [`k8s`]: a list+watch client for the pods of one node (HTTP/1.1 over TCP or rustls).
//! - [`mesh`]: which pods are meshed, and their interception policy from annotations.
//! - [`pin_lock`]: who may write the pinned maps (one agent per node; short write locks).
//! - [`pods`]: local pods in the pinned maps (what `merbridge pod` reads and writes).
//! - [`run`]: the node agent's loop (`merbridge run`): watch, sync, netns scan, metrics.
//! - [`splice`]: per-process splice verdicts (event-driven or blocking) for the data path.
#![forbid(unsafe_code)]

pub mod cni;
pub mod inbound;
pub mod k8s;
pub mod mesh;
pub mod pin_lock;
pub mod pods;
pub mod run;
pub mod splice;
