//! `merbridge bench --quick` completes and its JSON and SVG are well-formed with every
//! measure for direct, iptables and merbridge in every topology. (The bench itself is not a
//! test: this only checks that it runs and reports.)

use std::process::Command;

#[test]
fn quick_bench_completes_with_every_measure() {
    if !mb_sys::testing::kernel_tests_enabled("quick_bench_completes_with_every_measure") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mb-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (json_path, svg_path) = (dir.join("bench.json"), dir.join("bench.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_merbridge-dev"))
        .args(["bench", "--quick", "--json"])
        .arg(&json_path)
        .arg("--svg")
        .arg(&svg_path)
        .output()
        .expect("run merbridge-dev bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("mb/ipt") && stdout.contains("== goals"),
        "{stdout}"
    );
    assert!(stderr.contains("round 1/1"), "no progress lines: {stderr}");

    let text = std::fs::read_to_string(&json_path).expect("JSON written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("well-formed JSON");
    let metrics: Vec<&str> = json["metrics"]
        .as_array()
        .expect("metrics list")
        .iter()
        .map(|m| m["key"].as_str().expect("metric key"))
        .collect();
    assert!(metrics.len() >= 20, "{metrics:?}");
    let data = json["data_path"].as_array().expect("data_path list");
    for topology in ["outbound", "same-node", "cross-node"] {
        for setup in ["direct", "iptables", "merbridge"] {
            let entry = data
                .iter()
                .find(|e| e["topology"] == topology && e["setup"] == setup)
                .unwrap_or_else(|| panic!("no {topology}/{setup} in the JSON"));
            assert_eq!(
                entry["errors"].as_array().map(Vec::len),
                Some(0),
                "{topology}/{setup}: {}",
                entry["errors"]
            );
            for key in &metrics {
                let v = entry["medians"][key].as_f64();
                assert!(
                    v.is_some_and(|v| v.is_finite() && v >= 0.0),
                    "{topology}/{setup}: {key} = {}",
                    entry["medians"][key]
                );
            }
            assert!(entry["medians"]["rr_p50_us"].as_f64() > Some(0.0));
            assert!(entry["medians"]["bulk_mbit_s"].as_f64() > Some(0.0));
            assert!(!entry["rr_histogram"]
                .as_array()
                .expect("histogram")
                .is_empty());
        }
        // What the goals rest on: merbridge creates no conntrack entries, iptables does.
        let conntrack = |setup: &str| {
            data.iter()
                .find(|e| e["topology"] == topology && e["setup"] == setup)
                .and_then(|e| e["medians"]["conntrack_entries"].as_f64())
        };
        assert_eq!(conntrack("merbridge"), Some(0.0), "{topology}");
        assert!(conntrack("iptables") > Some(0.0), "{topology}");
    }
    let many = data
        .iter()
        .find(|e| e["setup"] == "merbridge-many-pods")
        .expect("the many-pods setup");
    assert!(many["medians"]["crr_per_s"].as_f64() > Some(0.0));

    let checkpoints = json["control_plane"]["checkpoints"]
        .as_array()
        .expect("control-plane checkpoints");
    assert_eq!(
        checkpoints.last().map(|c| c["pods"].as_u64()),
        Some(Some(1000))
    );
    for c in checkpoints {
        assert!(c["merbridge_us"].as_f64() > Some(0.0), "{c}");
        assert!(c["iptables_node_table_us"].as_f64() > Some(0.0), "{c}");
    }
    assert!(json["control_plane"]["iptables_pod_netns_us"].as_f64() > Some(0.0));
    assert_eq!(json["goals"]["same-node"].as_array().map(Vec::len), Some(5));

    let svg = std::fs::read_to_string(&svg_path).expect("SVG written");
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<path d=\"M") && svg.contains("<rect x="));
    let opened = svg.matches("<text").count();
    assert_eq!(
        opened,
        svg.matches("</text>").count(),
        "unbalanced text tags"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
