//! `merbridge demo --quick` checks every setup: the who-am-I answer and the sidecars' records
//! say the connections went through both sidecars. With interception broken on purpose it
//! names what it saw and exits non-zero.

use std::process::{Command, Output};

fn demo(broken: bool) -> (Output, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_merbridge-dev"));
    cmd.args(["demo", "--quick"]);
    if broken {
        cmd.env("MB_BENCH_BREAK_INTERCEPTION", "1");
    }
    let out = cmd.output().expect("run merbridge-dev demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

#[test]
fn demo_checks_interception_and_fails_without_it() {
    if !mb_sys::testing::kernel_tests_enabled("demo_checks_interception_and_fails_without_it") {
        return;
    }
    let (out, text) = demo(false);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("checked: not meshed (direct)"), "{text}");
    for setup in ["iptables", "merbridge"] {
        let section = text
            .split(&format!("== {setup} =="))
            .nth(1)
            .unwrap_or_else(|| panic!("no {setup} section: {text}"));
        let checked = section
            .lines()
            .find(|l| l.trim_start().starts_with("checked:"))
            .unwrap_or_else(|| panic!("{setup} not checked: {text}"));
        assert!(
            checked.contains("productpage sidecar") && checked.contains("reviews sidecar"),
            "{checked}"
        );
    }
    assert!(!text.contains("FAILED"), "{text}");

    let (out, text) = demo(true);
    assert!(!out.status.success(), "exit 0 without interception: {text}");
    assert!(
        text.contains("did not go through the sidecars"),
        "the who-am-I check names the problem: {text}"
    );
}

/// Removes a directory tree on drop, also when an assertion fails.
struct RemoveTree(std::path::PathBuf);

impl Drop for RemoveTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A checkout in a private directory (as under /root, mode 0700): the demo's sidecars run as
/// UID 1337 and its apps as UID 1000, who cannot reach the built binaries there. The test
/// bed copies them into a directory they can reach, and removes it when it exits.
#[test]
fn demo_runs_from_a_checkout_in_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    if !mb_sys::testing::kernel_tests_enabled("demo_runs_from_a_checkout_in_a_private_directory") {
        return;
    }
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_merbridge-dev"))
        .parent()
        .expect("the build directory")
        .to_path_buf();
    let private = std::env::temp_dir().join(format!("mb-private-home-{}", std::process::id()));
    let _remove = RemoveTree(private.clone());
    let bin_dir = private.join("merbridge/target/debug");
    std::fs::create_dir_all(&bin_dir).expect("create the private checkout");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    for name in ["merbridge-dev", "mb-sidecar", "mb-workload"] {
        std::fs::copy(built.join(name), bin_dir.join(name))
            .unwrap_or_else(|e| panic!("copy {name} (cargo build --workspace first): {e}"));
    }
    assert!(
        !mb_testbed::stage::runnable_by_others(&bin_dir.join("mb-sidecar")).unwrap(),
        "the copy must be out of other users' reach for this test to mean anything"
    );
    let child = Command::new(bin_dir.join("merbridge-dev"))
        .args(["demo", "--quick"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the private merbridge-dev");
    let stage = std::path::PathBuf::from(format!("/run/mb-bin-{}", child.id()));
    let out = child.wait_with_output().expect("wait for the demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("reviews sidecar"), "sidecars ran: {text}");
    assert!(
        !stage.exists(),
        "{} still there after the demo exited",
        stage.display()
    );
}
