//! Test gate for tests that need root and the real kernel.
//!
//! Without root such a test is skipped with a line on stderr; with
//! `MB_REQUIRE_KERNEL_TESTS=1` (set by CI) a missing privilege is a failure, never a skip.

/// True if this process may load programs and build namespaces and cgroups.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns whether the kernel test `name` should run; panics when CI requires it and it can't.
pub fn kernel_tests_enabled(name: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("MB_REQUIRE_KERNEL_TESTS").is_some_and(|v| v != "0") {
        panic!("{name}: needs root, and MB_REQUIRE_KERNEL_TESTS is set: run the tests as root");
    }
    eprintln!("skipping {name}: needs root (it loads programs into the kernel)");
    false
}
