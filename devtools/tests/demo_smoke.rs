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
