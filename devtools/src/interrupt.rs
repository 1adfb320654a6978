//! Leaving nothing behind when the demo or the bench is stopped early.
//!
//! The test bed removes its namespaces, cgroups (with the sidecars and applications in them)
//! and bpffs mounts on drop. Drops do not run when a signal ends the process (Ctrl-C, `kill`,
//! a closed terminal) or when a panic aborts it (release builds use `panic = "abort"`; a
//! write to a closed pipe, `merbridge bench | head`, panics in `println!`). So these commands
//! take SIGINT, SIGTERM and SIGHUP on a thread of their own, and abort-mode panics in a hook.
//! Either starts a cleaner (`merbridge-dev clean-after PID`, this binary) and ends the process
//! at once: cleaning from inside would race the threads that go on building the test bed;
//! the cleaner waits until the process is gone, then removes everything named after it.

use nix::sys::signal::{SigSet, Signal};
use std::time::{Duration, Instant};

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread, and so in every thread started after it
/// (call it first in `main`; children the test bed starts get a clean mask from `Command`),
/// and starts the thread that waits for them. SIGPIPE is ignored, so that a closed stdout
/// ends the command through the panic hook instead of killing it outright.
pub fn remove_test_bed_when_stopped() {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("merbridge-dev: cannot block termination signals ({e}): stopping it early may leave its namespaces behind (mb-testbed-clean --remove)");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || match signals.wait() {
            Ok(signal) => {
                eprintln!("merbridge-dev: {signal}: removing the test bed");
                start_cleaner();
                std::process::exit(128 + signal as i32);
            }
            Err(e) => eprintln!("merbridge-dev: waiting for termination signals: {e}"),
        });
    if let Err(e) = spawned {
        eprintln!("merbridge-dev: cannot start the signal thread ({e})");
    }
    mb_sys::signal::ignore_sigpipe();
    #[cfg(panic = "abort")]
    {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            eprintln!("merbridge-dev: aborting: removing the test bed");
            start_cleaner();
        }));
    }
}

/// Starts `merbridge-dev clean-after <this pid>` in the background.
fn start_cleaner() {
    let started = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .arg("clean-after")
            .arg(std::process::id().to_string())
            .stdin(std::process::Stdio::null())
            .spawn()
    });
    if let Err(e) = started {
        eprintln!(
            "merbridge-dev: cannot start the cleaner ({e}): run mb-testbed-clean --remove once this process is gone"
        );
    }
}

/// `merbridge-dev clean-after PID`: waits (up to 30 s) until process `pid` is gone, then
/// removes its namespaces, cgroups (and the processes in them) and bpffs mounts.
pub fn clean_after(pid: u32) -> Result<std::process::ExitCode, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "process {pid} is still running after 30 s; nothing removed"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let removed = mb_testbed::leftovers::remove_owned_by(pid)
        .map_err(|e| format!("removing the test bed of process {pid}: {e}"))?;
    for p in removed.paths() {
        eprintln!("merbridge-dev: removed {}", p.display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}
