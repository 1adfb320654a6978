//! Kubernetes API client for the pods of one node: configuration (in-cluster or kubeconfig),
//! a small HTTP/1.1 client over TCP or rustls, the watch-stream decoder and the list+watch loop.
//!
//! The output is a stream of [`PodEvent`]s: `Upsert` for every pod seen (first list, watch
//! events, relists), `Delete` for every pod that went away (also those deleted while the
//! watch was down: a relist is diffed against what was reported before), and one `Synced`
//! after the first complete list.

pub mod config;
pub mod decode;
pub mod http;
pub mod pod;
mod tls;
pub mod watcher;

pub use config::{node_name, ClientConfig, ConfigError};
pub use decode::{DecodeError, WatchDecoder, WatchEvent};
pub use pod::{ContainerInfo, ContainerPort, PodInfo, PodRef};
pub use watcher::{PodEvent, PodWatcher, StopHandle, WatchOptions, WatcherStats};
