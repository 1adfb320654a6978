//! Helpers for tests: the gate for tests that need root and the real kernel, and the values
//! the installed UAPI header gives to C expressions (layout tests compare ours against them).
//!
//! Without root a kernel test is skipped with a line on stderr; with
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

/// The installed UAPI header the layout tests compare against (Debian's linux-libc-dev).
pub const UAPI_BPF_H: &str = "/usr/include/linux/bpf.h";

/// The values of C expressions (`offsetof(union bpf_attr, key)`, `sizeof(...)`, `BPF_ANY`, …)
/// as [`UAPI_BPF_H`] defines them: one C program printing each is compiled with the system's
/// `cc` and run. A test-time tool only; nothing ships from the C compiler. Panics, saying what
/// to install, when the header or the compiler is missing (CI has both).
pub fn uapi_values(exprs: &[String]) -> Vec<i64> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    assert!(
        std::path::Path::new(UAPI_BPF_H).exists(),
        "{UAPI_BPF_H} is missing: install Debian's linux-libc-dev"
    );
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/bpf.h>\nint main(void){\n",
    );
    for e in exprs {
        c += &format!("printf(\"%lld\\n\", (long long)({e}));\n");
    }
    c += "return 0;}\n";
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mb-uapi-probe-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory for the UAPI probe");
    let src = dir.join("probe.c");
    let bin = dir.join("probe");
    std::fs::write(&src, c).expect("write the UAPI probe");
    let compiled = std::process::Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .expect("the layout tests need a C compiler (cc) to read the UAPI header");
    let run = compiled
        .status
        .success()
        .then(|| std::process::Command::new(&bin).output());
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        compiled.status.success(),
        "compiling the UAPI probe against {UAPI_BPF_H} failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let out = run.expect("compiled").expect("run the UAPI probe");
    let values: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("the probe prints numbers"))
        .collect();
    assert_eq!(values.len(), exprs.len(), "one value per expression");
    values
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
