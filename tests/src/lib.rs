//! `mb-testbed`: nodes (private cgroups + bridges) and pods (network namespaces) on one machine,
//! a reference sidecar, workload tools and the iptables baseline.
#![forbid(unsafe_code)]
