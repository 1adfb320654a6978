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
    let accounting = probe::memcg_accounting();
    if accounting == Support::Yes {
        return Ok(Memlock::NotNeeded);
    }
    setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY)
        .map(|()| Memlock::Raised)
        .map_err(|e| match accounting {
            // The probe could not load its program: the real problem is not the rlimit.
            Support::Unknown(why) => format!(
                "cannot load BPF programs ({why}): grant CAP_BPF and CAP_NET_ADMIN (or \
                 CAP_SYS_ADMIN); raising RLIMIT_MEMLOCK failed too ({e})"
            ),
            _ => format!(
                "this kernel charges BPF memory to RLIMIT_MEMLOCK and raising it failed ({e}): \
                 run as root or with CAP_SYS_RESOURCE, or raise the limit (ulimit -l unlimited)"
            ),
        })
}
