//! `merbridge probe` end to end: the binary, as root and as an unprivileged user.

use mb_loader::probe::{probe_all, verdict, Support, Verdict};
use std::os::unix::process::CommandExt;
use std::process::Command;

fn merbridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_merbridge"))
}

/// What the CLI must report on this kernel, asked of the probe library in this process: the
/// verdict word and each item's status. (Whether the probe itself is right on this kernel is
/// loader/tests/proof.rs's job: it holds the probe to the version table both ways.) Never
/// "cannot-run" or "unknown" as root: every matrix kernel runs merbridge.
fn expected_on_this_kernel() -> (&'static str, Vec<String>, Vec<(String, &'static str)>) {
    let probes = probe_all();
    let (word, details) = match verdict(probes) {
        Verdict::Full => ("full", Vec::new()),
        Verdict::Reduced(off) => ("reduced", off),
        other => panic!("as root, the probe says {other:?}"),
    };
    let items = probes
        .iter()
        .map(|p| {
            let status = match p.support {
                Support::Yes => "yes",
                Support::No(_) => "no",
                Support::Unknown(_) => "unknown",
            };
            (p.name.clone(), status)
        })
        .collect();
    (word, details, items)
}

#[test]
fn probe_as_root_reports_no_unknowns_and_the_kernels_verdict() {
    if !mb_sys::testing::kernel_tests_enabled(
        "probe_as_root_reports_no_unknowns_and_the_kernels_verdict",
    ) {
        return;
    }
    let (word, details, _) = expected_on_this_kernel();
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
    // The STATUS column (7 wide, two spaces each side); a "why:" line may say "unknown func".
    assert!(!text.contains("  unknown  "), "an item is unknown:\n{text}");
    assert!(text.contains(&format!("verdict: {word}")), "{text}");
    for line in details {
        assert!(text.contains(&format!("  - {line}")), "{line}:\n{text}");
    }
}

#[test]
fn probe_json_lists_every_item_with_status_and_needs() {
    if !mb_sys::testing::kernel_tests_enabled("probe_json_lists_every_item_with_status_and_needs") {
        return;
    }
    let (word, details, expected_items) = expected_on_this_kernel();
    let out = merbridge().args(["probe", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["verdict"], word);
    assert_eq!(v["verdict_details"], serde_json::json!(details));
    assert_eq!(v["root"], true);
    let items = v["items"].as_array().unwrap();
    assert!(items.len() > 40, "{} items", items.len());
    assert_eq!(items.len(), expected_items.len());
    for (item, (name, status)) in items.iter().zip(&expected_items) {
        assert_eq!(item["name"], name.as_str(), "{item}");
        assert_eq!(item["status"], *status, "{item}");
        // Whatever this kernel lacks is optional (the verdict would be cannot-run otherwise),
        // and says why.
        if *status == "no" {
            assert_eq!(item["required"], false, "{item}");
            assert!(
                item["reason"].as_str().is_some_and(|s| !s.is_empty()),
                "{item}"
            );
        }
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
