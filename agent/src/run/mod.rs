//! `merbridge run`: the node agent. Watches the pods of this node, keeps the data path's maps
//! equal to the API's view, finds each meshed pod's network namespace, serves metrics.

pub mod agent;
pub mod metrics;
pub mod netns_scan;
pub mod sync;

pub use agent::{run, AgentConfig, OnExit};
pub use netns_scan::NetnsScanner;
pub use sync::{BpfPodStore, Change, MemoryStore, PodStore, PodSync};
