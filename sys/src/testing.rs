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

/// The running kernel's (major, minor) release, e.g. (5, 10), from /proc/sys/kernel/osrelease.
pub fn kernel_release() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read /proc/sys/kernel/osrelease (is /proc mounted?)");
    parse_release(release.trim())
        .unwrap_or_else(|| panic!("cannot read a version from the kernel release {release:?}"))
}

/// "5.10.0-46-amd64" → (5, 10).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether this kernel answers `SO_NETNS_COOKIE` (Linux 5.14 added it). Tests of the socket
/// option assert it works where this is true and fails with the "needs Linux 5.14" error
/// where it is false, so they pass on older kernels for the right reason.
pub fn kernel_has_so_netns_cookie() -> bool {
    kernel_release() >= (5, 14)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(parse_release("5.10.0-46-amd64"), Some((5, 10)));
        assert_eq!(parse_release("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_release("7.3.4+deb13-arm64"), Some((7, 3)));
        assert_eq!(parse_release("garbage"), None);
        assert!(kernel_release() >= (3, 0));
    }
}
