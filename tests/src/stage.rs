//! Binaries the test bed starts as other users — sidecars as the proxy UID, applications as
//! an app UID — must be executable by them, and that needs o+x on every directory above
//! them. A checkout in a private directory (root's home is mode 0700) breaks that, so such
//! binaries are copied into a staging directory anyone may enter but not list (mode 0711,
//! in `/run`, which only root can write) and started from there. The directory is removed
//! when the process exits; one left by a process that died without exiting is named
//! `mb-bin-<pid>` and [`remove_orphans`] (run by `mb-testbed-clean`) removes it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where staging directories go: root-only writable, so no one can plant one.
const STAGE_PARENT: &str = "/run";
const STAGE_PREFIX: &str = "mb-bin-";

/// This process's staging directory and the copies in it, by source path.
struct Stage {
    dir: PathBuf,
    copies: BTreeMap<PathBuf, PathBuf>,
}

static STAGE: Mutex<Option<Stage>> = Mutex::new(None);

/// True when any user may execute `path`: the file has o+x and every directory above it
/// o+x (what execve checks for a user who is neither owner nor group).
pub fn runnable_by_others(path: &Path) -> io::Result<bool> {
    let path = fs::canonicalize(path)?;
    let others_x = |p: &Path| -> io::Result<bool> { Ok(fs::metadata(p)?.mode() & 0o001 != 0) };
    if !others_x(&path)? {
        return Ok(false);
    }
    for dir in path.ancestors().skip(1) {
        if !others_x(dir)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `path` itself when other users can execute it, else a copy of it they can execute
/// (made once per process, removed when the process exits).
pub fn runnable_by_anyone(path: &Path) -> io::Result<PathBuf> {
    if runnable_by_others(path)? {
        return Ok(path.to_path_buf());
    }
    let source = fs::canonicalize(path)?;
    let mut guard = STAGE.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(Stage {
            dir: create_stage_dir()?,
            copies: BTreeMap::new(),
        });
    }
    let stage = guard.as_mut().expect("created above");
    if let Some(copy) = stage.copies.get(&source) {
        return Ok(copy.clone());
    }
    let name = source
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} has no file name", source.display())))?;
    // Two sources of the same name (e.g. two checkouts) get their own copies.
    let copy = stage
        .dir
        .join(format!("{}-{}", stage.copies.len(), name.to_string_lossy()));
    fs::copy(&source, &copy).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("copy {} to {}: {e}", source.display(), copy.display()),
        )
    })?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
    stage.copies.insert(source, copy.clone());
    Ok(copy)
}

/// This process's staging directory, made if needed: a place for other private files the
/// test bed hands to processes it starts (e.g. an HAProxy configuration), removed with it
/// (at exit, or by `mb-testbed-clean` after a crash).
pub fn ensure_stage_dir() -> io::Result<PathBuf> {
    let mut guard = STAGE.lock().unwrap_or_else(|p| p.into_inner());
    if guard.is_none() {
        *guard = Some(Stage {
            dir: create_stage_dir()?,
            copies: BTreeMap::new(),
        });
    }
    Ok(guard.as_ref().expect("created above").dir.clone())
}

/// A fresh `/run/mb-bin-<pid>` (0711), removed when the process exits.
fn create_stage_dir() -> io::Result<PathBuf> {
    let dir = Path::new(STAGE_PARENT).join(format!("{STAGE_PREFIX}{}", std::process::id()));
    if dir.exists() {
        // Ours from an earlier life of this pid number: stale, since we never make two.
        fs::remove_dir_all(&dir)?;
    }
    fs::DirBuilder::new()
        .mode(0o711)
        .create(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
    // The mode passed to mkdir is masked by the umask; set it exactly.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))?;
    mb_sys::process::remove_at_exit(&dir)?;
    Ok(dir)
}

/// This process's staging directory, if it made one.
pub fn stage_dir() -> Option<PathBuf> {
    STAGE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|s| s.dir.clone())
}

/// Staging directories of processes that are gone.
pub fn orphans() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(STAGE_PARENT) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(STAGE_PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Removes [`orphans`]; returns what was removed.
pub fn remove_orphans() -> io::Result<Vec<PathBuf>> {
    let found = orphans();
    for dir in &found {
        fs::remove_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("remove {}: {e}", dir.display())))?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_binaries_are_staged_once_and_orphans_swept() {
        if !mb_sys::testing::kernel_tests_enabled(
            "unreachable_binaries_are_staged_once_and_orphans_swept",
        ) {
            return;
        }
        let private = std::env::temp_dir().join(format!("mb-stage-test-{}", std::process::id()));
        fs::create_dir_all(private.join("bin")).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        let tool = private.join("bin/true");
        fs::copy("/bin/true", &tool).unwrap();
        struct RemoveTree(PathBuf);
        impl Drop for RemoveTree {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let _remove = RemoveTree(private.clone());
        assert!(!runnable_by_others(&tool).unwrap());
        let staged = runnable_by_anyone(&tool).unwrap();
        assert_ne!(staged, tool);
        assert!(runnable_by_others(&staged).unwrap(), "{}", staged.display());
        assert_eq!(runnable_by_anyone(&tool).unwrap(), staged, "copied once");
        let dir = stage_dir().unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o711);
        // A reachable binary is used where it is.
        assert_eq!(runnable_by_anyone(&staged).unwrap(), staged);

        // A staging directory whose process is gone is an orphan; ours is not.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let orphan = Path::new(STAGE_PARENT).join(format!("{STAGE_PREFIX}{dead}"));
        fs::create_dir_all(&orphan).unwrap();
        assert!(orphans().contains(&orphan));
        assert!(!orphans().contains(&stage_dir().unwrap()));
        assert!(remove_orphans().unwrap().contains(&orphan));
        assert!(!orphan.exists());
    }
}
