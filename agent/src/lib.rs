//! `merbridge` as a library: the parts of the node agent that the binary (and the tests) share.
//!
//! - [`k8s`]: a list+watch client for the pods of one node (HTTP/1.1 over TCP or rustls).
//! - [`mesh`]: which pods are meshed, and their interception policy from annotations.
#![forbid(unsafe_code)]

pub mod k8s;
pub mod mesh;
pub mod pods;
pub mod run;
