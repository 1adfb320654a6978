//! Replacing the `bpf(2)` entry point in unit tests (aya's pattern): a closure installed on
//! the current thread receives each command and its attr bytes, may write results into them,
//! and returns what the syscall would (a value or an errno). Compiled for this crate's tests
//! and, with the `fake-syscall` feature, for other crates' tests.

use super::Cmd;
use std::cell::RefCell;

type Handler = Box<dyn FnMut(Cmd, &mut [u8]) -> Result<i64, i32>>;

thread_local! {
    static HANDLER: RefCell<Option<Handler>> = const { RefCell::new(None) };
}

/// Removes the fake when dropped; the real syscall is used again.
#[must_use = "the fake is removed when the guard drops"]
pub struct FakeGuard(());

impl Drop for FakeGuard {
    fn drop(&mut self) {
        HANDLER.with(|h| h.borrow_mut().take());
    }
}

/// Sends every `bpf(2)` call of this thread to `handler` until the guard drops.
///
/// A handler that returns an fd must return one it owns (see [`dummy_fd`]): the wrapper takes
/// ownership and closes it.
pub fn override_syscall(
    handler: impl FnMut(Cmd, &mut [u8]) -> Result<i64, i32> + 'static,
) -> FakeGuard {
    HANDLER.with(|h| *h.borrow_mut() = Some(Box::new(handler)));
    FakeGuard(())
}

pub(crate) fn dispatch(cmd: Cmd, attr: &mut [u8]) -> Option<Result<i64, i32>> {
    HANDLER.with(|h| h.borrow_mut().as_mut().map(|f| f(cmd, attr)))
}

/// A fresh fd (on /dev/null) for a fake to hand out as if the kernel had created it.
pub fn dummy_fd() -> i32 {
    use std::os::fd::IntoRawFd;
    std::fs::File::open("/dev/null")
        .expect("/dev/null opens")
        .into_raw_fd()
}

/// Reads a little-endian u32 at `off` of captured attr bytes.
pub fn u32_at(bytes: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes"))
}

/// Reads a little-endian u64 at `off` of captured attr bytes.
pub fn u64_at(bytes: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes[off..off + 8].try_into().expect("8 bytes"))
}

/// Writes a little-endian u32 at `off` (a fake's way to return output fields).
pub fn put_u32(bytes: &mut [u8], off: usize, v: u32) {
    bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
