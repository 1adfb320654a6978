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
