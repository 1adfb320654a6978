//! Signal dispositions a command-line tool wants.

/// Restores the default action for `SIGPIPE` (terminate quietly), which the Rust runtime sets
/// to "ignore": then `merbridge status | head` ends the way every Unix tool does instead of
/// failing on a broken pipe. Call it first in `main`, before any thread exists.
pub fn default_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE, no handler code is installed, and
    // this runs before other threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ignores `SIGPIPE` (the Rust runtime's own choice, undone by [`default_sigpipe`]): a write
/// to a closed pipe then fails with `EPIPE` instead of ending the process on the spot.
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE and installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// A do-nothing handler for one signal, installed with `SA_RESTART` so that a blocking call
/// the signal interrupts is restarted by the kernel (the way an application with handlers —
/// a Go runtime's preemption signal, a JVM, Python's — expects). The previous disposition is
/// restored on drop. Used to knock a blocked reader out of its wait without data arriving.
pub struct RestartingNoopHandler {
    signal: nix::sys::signal::Signal,
    previous: nix::sys::signal::SigAction,
}

extern "C" fn noop_handler(_: libc::c_int) {}

impl RestartingNoopHandler {
    pub fn install(signal: nix::sys::signal::Signal) -> std::io::Result<Self> {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
        let action = SigAction::new(
            SigHandler::Handler(noop_handler),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing (async-signal-safe by construction) and the
        // previous action is kept to be restored on drop.
        let previous = unsafe { sigaction(signal, &action) }
            .map_err(|e| std::io::Error::other(format!("sigaction({signal}): {e}")))?;
        Ok(RestartingNoopHandler { signal, previous })
    }
}

impl Drop for RestartingNoopHandler {
    fn drop(&mut self) {
        // SAFETY: restores the disposition that was in place before `install`.
        if let Err(e) = unsafe { nix::sys::signal::sigaction(self.signal, &self.previous) } {
            eprintln!("mb-sys: restoring the action of {}: {e}", self.signal);
        }
    }
}

/// A thread of this process that [`signal_thread`] can reach.
#[derive(Clone, Copy, Debug)]
pub struct ThreadId(libc::pthread_t);

// SAFETY: a pthread_t is an opaque handle (an integer with glibc, a pointer with musl) that
// this type only passes to pthread_kill; it is never dereferenced here, and naming a thread
// from another thread is what pthread_kill is for.
unsafe impl Send for ThreadId {}

/// The calling thread.
pub fn current_thread() -> ThreadId {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    ThreadId(unsafe { libc::pthread_self() })
}

/// Sends `signal` to `thread`, which must still be running: callers keep it alive (a scoped
/// thread not yet joined). Returns the errno on failure (`ESRCH`: it has exited).
pub fn signal_thread(thread: ThreadId, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
    // SAFETY: the caller keeps `thread` alive (not joined or detached-and-exited), so the
    // pthread_t is valid; pthread_kill reports ESRCH rather than faulting for an exited one
    // that is not yet joined.
    let rc = unsafe { libc::pthread_kill(thread.0, signal as libc::c_int) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}
