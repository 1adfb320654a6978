//! RLIMIT_MEMLOCK: kernels before 5.11 charge BPF memory against it; newer ones use memcg.
//! We raise the limit only where the kernel still charges it.

use crate::probe::{self, Support};
use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};

/// What [`raise_memlock_if_needed`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Memlock {
    /// The kernel accounts BPF memory with memcg: nothing to do.
    NotNeeded,
    /// The limit was raised to infinity.
    Raised,
}

/// Raises RLIMIT_MEMLOCK to infinity when the kernel still charges it. Call once at start-up,
/// before other threads exist (rlimits are process-wide).
pub fn raise_memlock_if_needed() -> Result<Memlock, String> {
    if probe::memcg_accounting() == Support::Yes {
        return Ok(Memlock::NotNeeded);
    }
    setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY)
        .map(|()| Memlock::Raised)
        .map_err(|e| {
            format!(
                "this kernel charges BPF memory to RLIMIT_MEMLOCK and raising it failed ({e}): \
                 run as root or with CAP_SYS_RESOURCE, or raise the limit (ulimit -l unlimited)"
            )
        })
}
