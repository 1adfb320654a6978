//! CI form of the API server faults and SIGTERM-unload of `merbridge bench --faults`
//! (issue 17): the whole suite at a low rate with a 3 s API outage. Checks from its JSON that
//! no connection failed or bypassed a sidecar during any fault, that the maps converged to
//! the API's view after each API fault (down, 410 storm, stalled watch, slow 10,000-pod
//! list), that the 410 storm did not turn into a relist loop, and that SIGTERM with the
//! DaemonSet gone left nothing attached or pinned while connections then went direct.

use std::process::Command;

#[test]
fn api_faults_and_unload_lose_nothing() {
    if !mb_sys::testing::kernel_tests_enabled("api_faults_and_unload_lose_nothing") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mb-faults-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json_path = dir.join("faults.json");
    let out = Command::new(env!("CARGO_BIN_EXE_merbridge-dev"))
        .args([
            "bench",
            "--faults",
            "--quick",
            "--rate",
            "100",
            "--seconds",
            "6",
        ])
        .args(["--api-outage-secs", "3", "--json"])
        .arg(&json_path)
        .output()
        .expect("run merbridge-dev bench --faults");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fault suite failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("JSON report"))
            .expect("JSON");
    let _ = std::fs::remove_dir_all(&dir);
    let faults = json["api_faults"].as_array().expect("api_faults");
    let names: Vec<&str> = faults.iter().filter_map(|f| f["fault"].as_str()).collect();
    for wanted in ["down", "410 storm", "stalls", "10,000 pods", "keep"] {
        assert!(
            names.iter().any(|n| n.contains(wanted)),
            "no {wanted:?} row: {names:?}"
        );
    }
    for f in faults {
        assert!(f["connects"].as_u64().unwrap_or(0) > 0, "no load: {f}");
        assert_eq!(f["failed"], 0, "{f}");
        assert_eq!(f["bypassed"], 0, "{f}");
        assert!(f["converged_ms"].is_u64(), "maps did not converge: {f}");
        if f["fault"].as_str().is_some_and(|n| n.contains("410 storm")) {
            // 3 s of 410s: a relist loop without backoff made ~100 lists a second.
            assert!(f["lists"].as_u64().unwrap_or(0) <= 10, "relist loop: {f}");
        }
    }
    let unload = &json["sigterm_daemonset_gone"];
    assert_eq!(unload["left"], serde_json::json!([]), "{unload}");
    assert_eq!(unload["after_failed"], 0, "{unload}");
    assert!(
        unload["after_connects"].as_u64().unwrap_or(0) > 0,
        "{unload}"
    );
    assert_eq!(
        unload["after_direct"], unload["after_connects"],
        "connections still went through a sidecar after unload: {unload}"
    );
}
