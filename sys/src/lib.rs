//! `mb-sys`: the only crate of the workspace with `unsafe`. Raw `bpf(2)` commands with one
//! `repr(C)` attr struct per command, owned close-on-exec fds, bpffs, cgroup v2 and network
//! namespace helpers. Every `unsafe` block carries a `// SAFETY:` line.

pub mod bpf;
pub mod bpffs;
pub mod cgroup;
pub mod netns;
pub mod pidfd;
pub mod process;
pub mod signal;
pub mod sockdiag;
pub mod sockopt;
pub mod testing;
pub mod xattr;
