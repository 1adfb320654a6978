//! `mb-loader`: from assembled program images to running, attached programs over raw
//! `bpf(2)`: relocation, load with the verifier log, cgroup attach (bpf_link first, PROG_ATTACH
//! with ALLOW_MULTI as fallback), sk_msg attach to a sockhash, atomic replacement, detach,
//! pin, feature probing and RLIMIT_MEMLOCK handling.
#![forbid(unsafe_code)]

pub mod attach;
pub mod datapath;
pub mod image;
pub mod inbound;
pub mod load;
pub mod map_sizes;
pub mod memlock;
pub mod netns_cookie;
pub mod probe;
pub mod splice_hazard;

pub use attach::{
    detach_by_name, detach_pinned_link, query_cgroup, AttachError, AttachMode, AttachedProgram,
    CgroupAttachment, SkMsgAttachment,
};
pub use image::ProgramImage;
pub use load::{load, load_insns, relocate, LoadError, LoadedProgram};
pub use memlock::{raise_memlock_if_needed, Memlock};
