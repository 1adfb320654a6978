//! Start a child process inside a chosen network namespace and cgroup, as a chosen user.
//!
//! The placement happens in the child between `fork` and `exec`, so the new program never runs
//! a single instruction outside its pod: no window in which it could open a socket in the
//! wrong namespace or cgroup (cgroup-attached eBPF programs see the cgroup at socket creation).
//! The order matters: namespace and cgroup first (they need root), then the user switch.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Where and as whom a child runs.
#[derive(Debug, Default, Clone)]
pub struct Placement<'a> {
    /// A network namespace file (`/run/netns/<name>`); `None` keeps the parent's.
    pub netns: Option<&'a Path>,
    /// A cgroup v2 directory; `None` keeps the parent's.
    pub cgroup: Option<&'a Path>,
    /// User id to run as (its group id is `gid`, supplementary groups are dropped).
    pub uid: Option<u32>,
    /// Group id; defaults to `uid` when only `uid` is given.
    pub gid: Option<u32>,
    /// Kill the child when the thread that spawned it ends (`PR_SET_PDEATHSIG`), so nothing
    /// outlives a test process that died without running its destructors.
    pub die_with_parent: bool,
}

/// Makes `cmd` start in `placement`. The files it needs are opened now (errors name them);
/// the switch itself happens in the child before `exec`. Errors there make `spawn` fail.
pub fn place(cmd: &mut Command, placement: &Placement<'_>) -> io::Result<()> {
    let netns: Option<File> = match placement.netns {
        Some(path) => Some(crate::netns::open_netns(path)?),
        None => None,
    };
    let cgroup_procs: Option<File> =
        match placement.cgroup {
            Some(dir) => {
                let procs = dir.join("cgroup.procs");
                Some(OpenOptions::new().write(true).open(&procs).map_err(|e| {
                    io::Error::new(e.kind(), format!("open {}: {e}", procs.display()))
                })?)
            }
            None => None,
        };
    let ids = placement.uid.map(|uid| (uid, placement.gid.unwrap_or(uid)));
    let die_with_parent = placement.die_with_parent;

    let in_child = move || -> io::Result<()> {
        // Only async-signal-safe calls from here on: this runs in the forked child.
        if die_with_parent {
            // SAFETY: prctl with PR_SET_PDEATHSIG takes an integer signal number; no memory
            // is passed.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(ns) = &netns {
            // SAFETY: `ns` is an open namespace fd owned by this closure; setns reads nothing
            // else from our memory.
            if unsafe { libc::setns(crate::netns::raw(ns), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(procs) = &cgroup_procs {
            // Writing "0" moves the writing process itself.
            let zero = b"0";
            // SAFETY: `zero` is a valid buffer of 1 byte that outlives the call; the fd is
            // owned by this closure and open for writing.
            let written =
                unsafe { libc::write(procs.as_raw_fd(), zero.as_ptr().cast(), zero.len()) };
            if written != zero.len() as isize {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((uid, gid)) = ids {
            // SAFETY: setgroups with a count of 0 reads no memory; setgid/setuid take integers.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(gid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls (prctl, setns, write,
    // setgroups, setgid, setuid) on fds it owns and allocates nothing, as `pre_exec` requires
    // of code that runs between fork and exec in a possibly multi-threaded parent.
    unsafe {
        cmd.pre_exec(in_child);
    }
    Ok(())
}

/// Directories [`remove_at_exit`] removes when the process exits normally.
static REMOVE_AT_EXIT: std::sync::Mutex<Vec<std::path::PathBuf>> =
    std::sync::Mutex::new(Vec::new());

extern "C" fn remove_registered_dirs() {
    let dirs = std::mem::take(&mut *REMOVE_AT_EXIT.lock().unwrap_or_else(|p| p.into_inner()));
    for dir in dirs {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Removes directory `dir` (and everything in it) when the process exits through `exit`
/// (returning from `main`, `std::process::exit`; a test harness finishing). A process killed
/// by a signal cannot: callers name such directories so a sweeper can find them.
pub fn remove_at_exit(dir: &Path) -> io::Result<()> {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let mut failed = false;
    REGISTERED.call_once(|| {
        // SAFETY: `remove_registered_dirs` is an `extern "C" fn()` with no arguments, as
        // atexit(3) requires; it runs once, from exit(), on the exiting thread.
        failed = unsafe { libc::atexit(remove_registered_dirs) } != 0;
    });
    if failed {
        return Err(io::Error::other("atexit: no room to register a handler"));
    }
    REMOVE_AT_EXIT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_cgroup_is_reported_by_path() {
        let mut cmd = Command::new("true");
        let err = place(
            &mut cmd,
            &Placement {
                cgroup: Some(Path::new("/nonexistent/mb-cgroup")),
                ..Placement::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/mb-cgroup"), "{err}");
    }

    #[test]
    fn child_runs_in_namespace_cgroup_and_uid() {
        if !crate::testing::kernel_tests_enabled("child_runs_in_namespace_cgroup_and_uid") {
            return;
        }
        let ns = crate::netns::NamedNetns::create(&format!("mb-test-proc-{}", std::process::id()))
            .unwrap();
        let cg = crate::cgroup::OwnedCgroup::create_private("mb-test-proc").unwrap();
        let pod = cg.create_child("pod").unwrap();
        let mut cmd = Command::new("sh");
        // Prints: uid, gid, own cgroup line, own netns link.
        cmd.args([
            "-c",
            "id -u; id -g; cat /proc/self/cgroup; readlink /proc/self/ns/net",
        ]);
        cmd.stdout(std::process::Stdio::piped());
        place(
            &mut cmd,
            &Placement {
                netns: Some(ns.path()),
                cgroup: Some(&pod),
                uid: Some(4321),
                gid: None,
                die_with_parent: true,
            },
        )
        .unwrap();
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "4321");
        assert_eq!(lines[1], "4321");
        let rel = pod
            .strip_prefix(crate::cgroup::cgroup2_root().unwrap())
            .unwrap();
        let want_cgroup = format!("0::/{}", rel.display());
        assert!(lines.contains(&want_cgroup.as_str()), "{text}");
        let want_ns = format!("net:[{}]", crate::netns::netns_inode(ns.path()).unwrap());
        assert_eq!(*lines.last().unwrap(), want_ns);
    }
}
