//! cgroup v2: find the unified hierarchy without trusting `mount` output blindly, and private
//! cgroups that remove themselves (and end their processes) when dropped.
//!
//! Hybrid hosts mount cgroup v2 at `/sys/fs/cgroup/unified`; pure v2 hosts at `/sys/fs/cgroup`.
//! Every candidate is confirmed with `statfs` (CGROUP2_SUPER_MAGIC) before use.

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// True if `path` is the root of a cgroup v2 hierarchy or a cgroup inside one.
pub fn is_cgroup2(path: &Path) -> bool {
    matches!(statfs(path), Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// The mount point of the cgroup v2 hierarchy.
///
/// Reads `/proc/self/mountinfo` for `cgroup2` mounts and confirms each with `statfs`;
/// falls back to the two usual places. Errors say what to do when there is none.
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        candidates.extend(cgroup2_mounts_from_mountinfo(&info));
    }
    candidates.push(PathBuf::from("/sys/fs/cgroup"));
    candidates.push(PathBuf::from("/sys/fs/cgroup/unified"));
    candidates
        .into_iter()
        .find(|p| is_cgroup2(p))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup v2 hierarchy is mounted (cgroup v1 only?): mount one with \
             `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot with \
             systemd.unified_cgroup_hierarchy=1",
            )
        })
}

/// Mount points of type `cgroup2` in a `/proc/self/mountinfo` text, in order.
/// Field 5 is the mount point; the filesystem type follows the ` - ` separator.
pub fn cgroup2_mounts_from_mountinfo(info: &str) -> Vec<PathBuf> {
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            if fstype != "cgroup2" {
                return None;
            }
            let mount_point = left.split_whitespace().nth(4)?;
            Some(PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A cgroup this process created. Dropping it ends the processes left in it and its
/// children, then removes the directories, deepest first. It never touches a cgroup it
/// did not create.
#[derive(Debug)]
pub struct OwnedCgroup {
    path: PathBuf,
}

impl OwnedCgroup {
    /// Creates `<cgroup2 root>/<prefix>-<pid>-<n>`, unique per process and call.
    pub fn create_private(prefix: &str) -> io::Result<OwnedCgroup> {
        let root = cgroup2_root()?;
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("{prefix}-{}-{n}", std::process::id()));
        fs::create_dir(&path).map_err(|e| annotate(e, "create cgroup", &path))?;
        Ok(OwnedCgroup { path })
    }

    /// Creates a child cgroup `name` inside this one; it is removed with its parent.
    pub fn create_child(&self, name: &str) -> io::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cgroup child name {name:?} must be a plain, non-empty name"),
            ));
        }
        let child = self.path.join(name);
        fs::create_dir(&child).map_err(|e| annotate(e, "create cgroup", &child))?;
        Ok(child)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OwnedCgroup {
    fn drop(&mut self) {
        if let Err(e) = remove_cgroup_tree(&self.path) {
            log_drop_error(&self.path, &e);
        }
    }
}

fn log_drop_error(path: &Path, e: &io::Error) {
    eprintln!("mb-sys: could not remove cgroup {}: {e}", path.display());
}

/// Moves process `pid` into the cgroup at `path`.
pub fn move_pid(path: &Path, pid: u32) -> io::Result<()> {
    let procs = path.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).map_err(|e| annotate(e, "write", &procs))
}

/// Process ids currently in the cgroup at `path` (not its children).
pub fn pids(path: &Path) -> io::Result<Vec<u32>> {
    let text = fs::read_to_string(path.join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Ends every process in the tree and removes it, deepest cgroups first. Bounded in time.
pub fn remove_cgroup_tree(path: &Path) -> io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    let kill = path.join("cgroup.kill");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(annotate(e, "remove cgroup", path));
            }
            Err(_) => {
                // Busy: processes remain. cgroup.kill (5.14+) ends the whole subtree;
                // older kernels get a SIGKILL per pid.
                if fs::write(&kill, "1").is_err() {
                    for pid in pids(path).unwrap_or_default() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing_finds_hybrid_unified_mount() {
        let info = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
40 30 0:26 / /mnt/with\\040space rw - cgroup2 none rw";
        assert_eq!(
            cgroup2_mounts_from_mountinfo(info),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space")
            ]
        );
    }

    #[test]
    fn mountinfo_without_cgroup2_is_empty() {
        let info = "27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\ngarbage";
        assert!(cgroup2_mounts_from_mountinfo(info).is_empty());
    }

    #[test]
    fn child_names_are_checked() {
        let cg = OwnedCgroup {
            path: PathBuf::from("/nonexistent-mb-test"),
        };
        assert!(cg.create_child("../escape").is_err());
        assert!(cg.create_child("").is_err());
        std::mem::forget(cg);
    }

    #[test]
    fn private_cgroup_ends_its_processes_and_disappears() {
        if !crate::testing::kernel_tests_enabled("private_cgroup_ends_its_processes_and_disappears")
        {
            return;
        }
        let cg = OwnedCgroup::create_private("mb-test-cg").unwrap();
        let child = cg.create_child("pod").unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        move_pid(&child, sleeper.id()).unwrap();
        assert_eq!(pids(&child).unwrap(), vec![sleeper.id()]);
        let path = cg.path().to_path_buf();
        drop(cg);
        assert!(!path.exists(), "cgroup {} left behind", path.display());
        // The sleeper was ended by the drop, not by us.
        let status = sleeper.wait().unwrap();
        assert!(!status.success());
    }
}
