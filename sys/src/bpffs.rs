//! bpffs: recognise it (statfs magic), mount it where a host left none, and private per-test
//! instances that unmount themselves.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The usual bpffs mount point.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// True if `path` lies on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    matches!(statfs(path), Ok(s) if s.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `path` is a bpffs: does nothing if it is one; otherwise creates the directory
/// and mounts `bpf` there (many hosts leave `/sys/fs/bpf` unmounted). Needs root.
pub fn ensure_bpffs(path: &Path) -> io::Result<()> {
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", path.display())))?;
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| {
        io::Error::other(format!(
            "mount bpffs at {}: {e} (run as root, or mount it yourself: \
             `mount -t bpf bpf {}`)",
            path.display(),
            path.display()
        ))
    })?;
    if !is_bpffs(path) {
        return Err(io::Error::other(format!(
            "mounted bpf at {} but statfs does not see a bpffs there",
            path.display()
        )));
    }
    Ok(())
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bpffs mounted on a fresh temporary directory, for tests: unmounted (lazily, so open fds
/// don't block it) and removed on drop, also when the test panics.
#[derive(Debug)]
pub struct PrivateBpffs {
    path: PathBuf,
}

impl PrivateBpffs {
    /// Mounts a new bpffs at `$TMPDIR/<prefix>-<pid>-<n>`. Needs root.
    pub fn new(prefix: &str) -> io::Result<PrivateBpffs> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", path.display())))?;
        let fs = PrivateBpffs { path };
        mount(
            Some("bpf"),
            &fs.path,
            Some("bpf"),
            MsFlags::empty(),
            Some("mode=0700"),
        )
        .map_err(|e| io::Error::other(format!("mount bpffs at {}: {e}", fs.path.display())))?;
        Ok(fs)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if is_bpffs(&self.path) {
            if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
                eprintln!("mb-sys: could not unmount {}: {e}", self.path.display());
                return;
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmp_is_not_bpffs() {
        assert!(!is_bpffs(&std::env::temp_dir()));
        assert!(!is_bpffs(Path::new("/nonexistent-mb-path")));
    }

    #[test]
    fn private_bpffs_mounts_and_goes_away() {
        if !crate::testing::kernel_tests_enabled("private_bpffs_mounts_and_goes_away") {
            return;
        }
        let fs = PrivateBpffs::new("mb-test-bpffs").unwrap();
        let path = fs.path().to_path_buf();
        assert!(is_bpffs(&path));
        // ensure_bpffs on an existing bpffs is a no-op (and never mounts twice).
        ensure_bpffs(&path).unwrap();
        drop(fs);
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn ensure_bpffs_mounts_where_nothing_is_mounted() {
        if !crate::testing::kernel_tests_enabled("ensure_bpffs_mounts_where_nothing_is_mounted") {
            return;
        }
        // Never /sys/fs/bpf in tests: a fresh directory that does not exist yet.
        let dir = std::env::temp_dir().join(format!("mb-test-ensure-{}", std::process::id()));
        assert!(!is_bpffs(&dir));
        ensure_bpffs(&dir).unwrap();
        let mounted = is_bpffs(&dir);
        let _ = umount2(&dir, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&dir);
        assert!(
            mounted,
            "ensure_bpffs left {} without a bpffs",
            dir.display()
        );
        assert!(!dir.exists());
    }
}
