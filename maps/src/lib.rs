//! `mb-maps`: typed BPF map handles (hash, LRU hash, array, per-CPU array, sockhash, LPM trie)
//! over `mb-sys`, with create / pin / re-open-pinned-with-shape-check, key iteration, and the
//! data path's `repr(C)` keys and values ([`layout`]).
#![forbid(unsafe_code)]
pub mod layout;
mod map;
mod pod;
mod typed;

pub use map::{unpin, Map, MapError, MapSpec, RawKeys, Shape};
pub use mb_sys::bpf::MapType;
pub use pod::{LpmKey, Pod};
pub use typed::{
    Array, ArrayKind, HashKind, HashMap, KvMap, LpmTrie, LpmTrieKind, LruHashKind, LruHashMap,
    MapKind, PerCpuArray, SockHash,
};
pub mod datapath;
