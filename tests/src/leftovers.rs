//! Finding (and removing) what a crashed test process left behind.
//!
//! Everything the test bed creates is named `mb-…-<pid>-…` (network namespaces under
//! `/run/netns`, cgroups at the cgroup2 root), and removed on drop. Only a process that dies
//! without unwinding (SIGKILL, `panic = "abort"`) leaves something; its pid is then gone.
//! A name is a leftover when it starts with `mb-` and the first number in it (the creating
//! process's id, in every name the test bed and `mb-sys` tests make) is not a running process. Veths and iptables rules live inside those namespaces and go with them.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What was found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub netns: Vec<PathBuf>,
    pub cgroups: Vec<PathBuf>,
    /// Private bpffs mounts (`PrivateBpffs`) in the temporary directory: pinned maps live on
    /// in them until they are unmounted.
    pub bpffs: Vec<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty() && self.cgroups.is_empty() && self.bpffs.is_empty()
    }

    /// Everything listed, namespaces first.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.netns.iter().chain(&self.cgroups).chain(&self.bpffs)
    }
}

/// True if `name` is one of ours and no process named in it is alive.
pub fn is_orphan_name(name: &str, alive: impl Fn(u32) -> bool) -> bool {
    if !name.starts_with("mb-") {
        return false;
    }
    match name.split('-').find_map(|part| part.parse::<u32>().ok()) {
        Some(pid) => !alive(pid),
        // No pid in the name: not made by us, never touched.
        None => false,
    }
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

fn orphans_in(dir: &Path, want_dirs: bool, alive: &impl Fn(u32) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() == want_dirs))
        .filter(|e| is_orphan_name(&e.file_name().to_string_lossy(), alive))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

fn find_where(alive: impl Fn(u32) -> bool) -> Leftovers {
    let cgroups = mb_sys::cgroup::cgroup2_root()
        .map(|root| orphans_in(&root, true, &alive))
        .unwrap_or_default();
    let bpffs = orphans_in(&std::env::temp_dir(), true, &alive)
        .into_iter()
        .filter(|dir| mb_sys::bpffs::is_bpffs(dir))
        .collect();
    Leftovers {
        netns: orphans_in(Path::new(mb_sys::netns::NETNS_RUN_DIR), false, &alive),
        cgroups,
        bpffs,
    }
}

/// Lists leftovers of dead test processes.
pub fn find() -> Leftovers {
    find_where(pid_alive)
}

/// Removes everything the test bed made for process `pid` (the caller's own, when it is
/// interrupted and cannot unwind): its cgroups with the processes in them, its network
/// namespaces and its private bpffs mounts in the temporary directory (its staged binaries go
/// at exit, see [`crate::stage`]).
pub fn remove_owned_by(pid: u32) -> io::Result<Leftovers> {
    let owned = find_where(|p| p != pid);
    remove_these(&owned)?;
    Ok(owned)
}

/// Removes what [`find`] lists: ends processes in leftover cgroups, unmounts leftover
/// namespaces and bpffs mounts. Returns what was removed.
pub fn remove() -> io::Result<Leftovers> {
    let found = find();
    remove_these(&found)?;
    Ok(found)
}

/// Removes the given leftovers (e.g. [`find`]'s result filtered by the caller).
pub fn remove_these(found: &Leftovers) -> io::Result<()> {
    for cg in &found.cgroups {
        mb_sys::cgroup::remove_cgroup_tree(cg)?;
    }
    for ns in &found.netns {
        // Not mounted (half-made) is fine: only the file remains then.
        let _ = nix::mount::umount2(ns, nix::mount::MntFlags::MNT_DETACH);
        fs::remove_file(ns)
            .map_err(|e| io::Error::new(e.kind(), format!("remove {}: {e}", ns.display())))?;
    }
    for mount in &found.bpffs {
        let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
        fs::remove_dir(mount)
            .map_err(|e| io::Error::new(e.kind(), format!("remove {}: {e}", mount.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphan_names_need_our_prefix_and_a_dead_pid() {
        let alive = |pid: u32| pid == 42;
        assert!(is_orphan_name("mb-7-0-test", alive));
        assert!(is_orphan_name("mb-node-7-3", alive));
        assert!(!is_orphan_name("mb-42-0-test-pod", alive));
        assert!(!is_orphan_name("mb-node-42-1", alive));
        // Only the first number is the pid: a counter of 42 does not keep it alive.
        assert!(is_orphan_name("mb-node-7-42", alive));
        assert!(!is_orphan_name("mb-agent", alive));
        assert!(!is_orphan_name("other-7-0", alive));
        assert!(!is_orphan_name("system.slice", alive));
    }

    #[test]
    fn own_live_names_are_not_leftovers() {
        assert!(!is_orphan_name(
            &format!("mb-{}-0-x", std::process::id()),
            pid_alive
        ));
    }
}
