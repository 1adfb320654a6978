//! Who may write the pinned maps, with `flock(2)` on the pin directories (bpffs holds no
//! regular files, but a directory's inode takes a lock like any other).
//!
//! Two locks, both released by the kernel when their holder exits, SIGKILL included:
//! - the **agent lock** on the pin directory itself: exclusive, taken by `merbridge run`
//!   before it loads or writes anything and held for its whole life. A rolling update briefly
//!   runs two agents on one node; the new one waits here (and says so) until the old one has
//!   exited, so two agents never both write the maps.
//! - the **write lock** on `<pin dir>/maps`: exclusive and short, taken around each write by
//!   the agent (one event), `merbridge pod add/del` and `merbridge cni` ADD/DEL. They run
//!   beside the agent, so they must not wait for its life-long lock; the write lock only keeps
//!   one pod's multi-map update from interleaving with another writer's.

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Held for the agent's life: dropping it (or exiting) lets the next agent in.
#[derive(Debug)]
pub struct AgentLock {
    _lock: Flock<File>,
    pub waited: Duration,
}

/// Held around one write to the maps.
#[derive(Debug)]
pub struct WriteLock {
    _lock: Flock<File>,
}

/// Opens a directory for locking; a symlink is refused (the pins must be where they say).
fn open_dir(dir: &Path) -> Result<File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP)
                || e.raw_os_error() == Some(nix::libc::ENOTDIR)
            {
                format!(
                    "{} is a symlink or not a directory: give the real pin directory",
                    dir.display()
                )
            } else {
                format!("cannot open {} to lock it: {e}", dir.display())
            }
        })
}

/// Pids holding a flock on the inode of `file`, from /proc/locks (best effort, for the log).
fn holders(file: &File) -> Vec<u32> {
    let Ok(meta) = file.metadata() else {
        return Vec::new();
    };
    let ino = meta.ino().to_string();
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("FLOCK") && !l.contains("->"))
        .filter_map(|l| {
            // "1: FLOCK  ADVISORY  WRITE 4242 00:2e:1234 0 EOF"
            let fields: Vec<&str> = l.split_whitespace().collect();
            let dev_ino = fields.iter().position(|f| f.matches(':').count() == 2)?;
            let inode = fields[dev_ino].rsplit(':').next()?;
            (inode == ino)
                .then(|| fields.get(dev_ino - 1)?.parse().ok())
                .flatten()
        })
        .collect()
}

fn pid_list(pids: &[u32]) -> String {
    if pids.is_empty() {
        "pid unknown".into()
    } else {
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        format!("pid {}", list.join(", "))
    }
}

/// Whether `file` is still the directory at `dir` (an unload may have removed it meanwhile).
fn still_there(file: &File, dir: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(dir)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Takes the agent lock on `pin_dir` (which must exist), waiting as long as another agent
/// holds it. Logs once, with the holder's pid, when it has to wait. The wait is plain
/// `flock`: SIGTERM's default action still ends a waiting agent (call this before blocking
/// signals).
pub fn agent_lock(
    pin_dir: &Path,
    prepare: impl Fn() -> Result<(), String>,
) -> Result<AgentLock, String> {
    let started = Instant::now();
    loop {
        prepare()?;
        let file = open_dir(pin_dir)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, Errno::EWOULDBLOCK)) => {
                log::warn!(
                    "another merbridge agent ({}) holds {}: waiting for it to exit before \
                     touching the data path (a rolling update runs two agents for a moment)",
                    pid_list(&holders(&file)),
                    pin_dir.display()
                );
                let lock = Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| format!("cannot lock {}: {e}", pin_dir.display()))?;
                log::info!(
                    "took over {} after waiting {:.1} s",
                    pin_dir.display(),
                    started.elapsed().as_secs_f64()
                );
                lock
            }
            Err((_, e)) => return Err(format!("cannot lock {}: {e}", pin_dir.display())),
        };
        // The previous agent may have unloaded and removed the directory while we waited:
        // then the lock is on a deleted inode; start again on the new one.
        if still_there(&lock, pin_dir) {
            return Ok(AgentLock {
                _lock: lock,
                waited: started.elapsed(),
            });
        }
        log::info!(
            "{} was removed while we waited for it: locking the new one",
            pin_dir.display()
        );
    }
}

/// The directory the write lock is taken on.
pub fn write_lock_dir(pin_dir: &Path) -> PathBuf {
    mb_loader::datapath::PinLayout::new(pin_dir).maps_dir()
}

/// Takes the write lock of `pin_dir`'s maps, waiting at most `timeout` (polling: a writer
/// holds it for a few map updates).
pub fn write_lock(pin_dir: &Path, timeout: Duration) -> Result<WriteLock, String> {
    let dir = write_lock_dir(pin_dir);
    let started = Instant::now();
    let mut file = open_dir(&dir).map_err(|e| {
        if !dir.exists() {
            format!(
                "{} does not exist: is the data path loaded with --pin-dir {}?",
                dir.display(),
                pin_dir.display()
            )
        } else {
            e
        }
    })?;
    let mut pause = Duration::from_millis(1);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(WriteLock { _lock: lock }),
            Err((back, Errno::EWOULDBLOCK)) => {
                if started.elapsed() >= timeout {
                    return Err(format!(
                        "the maps under {} stayed locked by another writer ({}) for {:?}: \
                         retry, or find what hangs holding it",
                        pin_dir.display(),
                        pid_list(&holders(&back)),
                        timeout
                    ));
                }
                file = back;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err((_, e)) => return Err(format!("cannot lock {}: {e}", dir.display())),
        }
    }
}

/// How long a short-lived writer (`pod add/del`, the CNI plugin) waits for the write lock.
pub const WRITE_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_directory_is_refused() {
        let base = std::env::temp_dir().join(format!("mb-lock-test-{}", std::process::id()));
        let real = base.join("real");
        std::fs::create_dir_all(&real).unwrap();
        let link = base.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = open_dir(&link).unwrap_err();
        let ok = open_dir(&real);
        std::fs::remove_dir_all(&base).unwrap();
        assert!(err.contains("symlink"), "{err}");
        ok.unwrap();
    }

    #[test]
    fn a_second_write_lock_waits_then_times_out_naming_the_holder() {
        // Any directory takes a flock; maps/ under a temporary "pin dir".
        let pin = std::env::temp_dir().join(format!("mb-lock-write-{}", std::process::id()));
        std::fs::create_dir_all(pin.join("maps")).unwrap();
        let first = write_lock(&pin, Duration::from_secs(1)).unwrap();
        let started = Instant::now();
        let err = write_lock(&pin, Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(err.contains("locked by another writer"), "{err}");
        assert!(
            err.contains(&std::process::id().to_string()),
            "holder pid missing: {err}"
        );
        drop(first);
        let again = write_lock(&pin, Duration::from_millis(200));
        std::fs::remove_dir_all(&pin).unwrap();
        again.unwrap();
    }

    #[test]
    fn a_missing_maps_directory_says_the_data_path_is_not_loaded() {
        let err = write_lock(Path::new("/nonexistent-mb-pin"), Duration::ZERO).unwrap_err();
        assert!(err.contains("is the data path loaded"), "{err}");
    }
}
