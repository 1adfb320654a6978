//! `merbridge probe` end to end: the binary, as root and as an unprivileged user.

use std::os::unix::process::CommandExt;
use std::process::Command;

fn merbridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_merbridge"))
}

#[test]
fn probe_as_root_reports_no_unknowns_and_a_full_verdict() {
    if !mb_sys::testing::kernel_tests_enabled(
        "probe_as_root_reports_no_unknowns_and_a_full_verdict",
    ) {
        return;
    }
    let out = merbridge().arg("probe").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("running as root"), "{text}");
    assert!(text.contains("program cgroup/connect4"), "{text}");
    assert!(text.contains("helper sock_ops/sock_hash_update"), "{text}");
    assert!(text.contains("map sockhash"), "{text}");
    assert!(!text.contains(" unknown "), "an item is unknown:\n{text}");
    assert!(text.contains("verdict: full"), "{text}");
}

#[test]
fn probe_json_lists_every_item_with_status_and_needs() {
    if !mb_sys::testing::kernel_tests_enabled("probe_json_lists_every_item_with_status_and_needs") {
        return;
    }
    let out = merbridge().args(["probe", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["verdict"], "full");
    assert_eq!(v["root"], true);
    let items = v["items"].as_array().unwrap();
    assert!(items.len() > 40, "{} items", items.len());
    for item in items {
        assert_eq!(item["status"], "yes", "{item}");
        assert!(item["first_kernel"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(item["needed_for"].as_str().is_some_and(|s| !s.is_empty()));
    }
    assert!(items
        .iter()
        .any(|i| i["name"] == "cgroup bpf_link" && i["required"] == false));
    // As root the splice-hazard probe decides, and `--splice auto` follows it.
    let hazard = &v["splice_hazard"];
    match hazard["status"].as_str() {
        Some("present") => assert_eq!(hazard["auto_splice"], "sidecars", "{hazard}"),
        Some("absent") => assert_eq!(hazard["auto_splice"], "all", "{hazard}"),
        _ => panic!("the splice-hazard probe did not decide: {hazard}"),
    }
}

#[test]
fn probe_as_an_ordinary_user_says_what_root_would_unlock() {
    if !mb_sys::testing::kernel_tests_enabled(
        "probe_as_an_ordinary_user_says_what_root_would_unlock",
    ) {
        return;
    }
    // Run the binary as `nobody` (uid/gid 65534): no CAP_BPF.
    let out = merbridge()
        .args(["probe", "--json"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["root"], false);
    assert_eq!(v["verdict"], "unknown");
    assert!(
        v["verdict_text"].as_str().unwrap().contains("run as root"),
        "{}",
        v["verdict_text"]
    );
    let connect4 = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "program cgroup/connect4")
        .unwrap();
    assert_eq!(connect4["status"], "unknown");
    assert!(connect4["reason"].as_str().unwrap().contains("root"));
    let table = merbridge()
        .arg("probe")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("running unprivileged"), "{text}");
}
