//! Bad input to the data-path commands: a clear message naming what was wrong, a non-zero
//! exit, and nothing left attached.

#[path = "common/cli.rs"]
mod cli;

use cli::merbridge;

fn fails_with(args: &[&str], needle: &str) {
    let (ok, text) = merbridge(args);
    assert!(!ok, "merbridge {args:?} succeeded: {text}");
    assert!(
        text.contains(needle),
        "merbridge {args:?}: {text:?} lacks {needle:?}"
    );
}

/// `merbridge pod add IP` for this process's namespace into a pin directory that does not
/// exist, with `extra` flags.
fn pod_add<'a>(ip: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let args = [
        "pod",
        "add",
        ip,
        "--netns",
        "/proc/self/ns/net",
        "--pin-dir",
        "/nonexistent",
    ];
    [&args[..], extra].concat()
}

#[test]
fn bad_input_is_named() {
    fails_with(
        &["load", "--mesh", "consul", "--cgroup", "/tmp"],
        "unknown mesh \"consul\"",
    );
    fails_with(
        &[
            "load",
            "--mesh",
            "istio",
            "--outbound-port",
            "15006",
            "--cgroup",
            "/tmp",
        ],
        "both 15006",
    );
    fails_with(
        &["load", "--splice", "some", "--cgroup", "/tmp"],
        "--splice \"some\"",
    );
    fails_with(
        &["load", "--cgroup", "/tmp"],
        "/tmp is not a cgroup v2 directory",
    );
    fails_with(
        &pod_add("10.0.0.300", &[]),
        "\"10.0.0.300\" is not an IPv4 or IPv6 address",
    );
    fails_with(&pod_add("127.0.0.1", &[]), "cannot be a pod address");
    fails_with(
        &pod_add("10.0.0.3", &["--exclude-outbound-ports", "80,70000"]),
        "\"70000\" is not a port",
    );
    fails_with(
        &pod_add("10.0.0.3", &["--include-outbound-ip-ranges", "10.0.0.0/33"]),
        "10.0.0.0/33",
    );
    fails_with(&["status", "--pin-dir", "/nonexistent"], "nothing loaded");
    fails_with(&["dump", "connect5"], "no program named \"connect5\"");
}

#[test]
fn a_load_that_fails_leaves_nothing_attached() {
    if !mb_sys::testing::kernel_tests_enabled("a_load_that_fails_leaves_nothing_attached") {
        return;
    }
    let cg = mb_sys::cgroup::OwnedCgroup::create_private("mb-test-cli").unwrap();
    let cgroup = cg.path().to_str().unwrap();
    // A pin directory that is not on a bpf filesystem.
    let dir = std::env::temp_dir().join(format!("mb-not-bpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pin = dir.join("merbridge");
    fails_with(
        &[
            "load",
            "--cgroup",
            cgroup,
            "--pin-dir",
            pin.to_str().unwrap(),
        ],
        "is not a bpf filesystem",
    );
    std::fs::remove_dir_all(&dir).unwrap();
    for hook in mb_maps::datapath::Hook::ALL
        .iter()
        .filter(|h| h.attaches_to_cgroup())
    {
        let attached =
            mb_loader::attach::query_cgroup(cg.path(), hook.attach_type(), false).unwrap();
        assert!(attached.is_empty(), "{hook:?}: {attached:?}");
    }
}
