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
