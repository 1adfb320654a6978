//! `merbridge bench --quick` completes and its JSON and SVG are well-formed with every
//! measure for direct, iptables and merbridge in every topology, each mesh setup checked for
//! interception; and with interception broken on purpose it reports those setups failed,
//! shows no figure for them and exits non-zero. (The bench itself is not a test: this only
//! checks that it runs and reports honestly.)

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One bench at a time: two at once would only slow each other down.
static BENCH: Mutex<()> = Mutex::new(());

/// A fresh scratch directory for one test's JSON and SVG, removed when the test ends, also
/// when it fails.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(name: &str) -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("mb-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    ScratchDir(dir)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("JSON written"))
        .expect("well-formed JSON")
}

/// Runs `merbridge-dev bench --quick --topology same-node --pods 100 EXTRA...` with the pods
/// left out of merbridge's maps, and asserts that it exits non-zero and names the merbridge
/// setup's first round as not intercepted. Its stdout and stderr.
fn bench_without_interception(extra: &[&OsStr]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_merbridge-dev"))
        .args([
            "bench",
            "--quick",
            "--topology",
            "same-node",
            "--pods",
            "100",
        ])
        .args(extra)
        .env("MB_BENCH_BREAK_INTERCEPTION", "1")
        .output()
        .expect("run merbridge-dev bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "exit 0 despite no interception:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("same-node / merbridge FAILED: round 1: not intercepted"),
        "{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn quick_bench_completes_with_every_measure() {
    if !mb_sys::testing::kernel_tests_enabled("quick_bench_completes_with_every_measure") {
        return;
    }
    let _one = BENCH.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch_dir("smoke");
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
    // The cost of interception over an explicit proxy, at p50 and p99, in every topology.
    assert_eq!(
        stdout.matches("over explicit proxy p50").count(),
        3,
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("over explicit proxy p99").count(),
        3,
        "{stdout}"
    );
    assert!(stderr.contains("round 1/1"), "no progress lines: {stderr}");

    let json = read_json(&json_path);
    let metrics: Vec<&str> = json["metrics"]
        .as_array()
        .expect("metrics list")
        .iter()
        .map(|m| m["key"].as_str().expect("metric key"))
        .collect();
    assert!(metrics.len() >= 20, "{metrics:?}");
    let data = json["data_path"].as_array().expect("data_path list");
    for topology in ["outbound", "same-node", "cross-node"] {
        for setup in ["direct", "explicit-proxy", "iptables", "merbridge"] {
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
            assert_eq!(entry["status"], "ok", "{topology}/{setup}");
            let checks = entry["interception"]
                .as_array()
                .expect("interception checks");
            assert_eq!(checks.len(), 1, "one per round: {checks:?}");
            assert_eq!(checks[0]["ok"], true, "{topology}/{setup}: {}", checks[0]);
            if setup != "direct" {
                let seen = checks[0]["seen"].as_str().unwrap();
                let (out, inbound) = match setup {
                    "explicit-proxy" => (" forward", " forward"),
                    _ => (" outbound", " inbound"),
                };
                assert!(seen.contains(out), "{topology}/{setup}: {seen}");
                if topology != "outbound" {
                    assert!(
                        seen.contains("server sidecar") && seen.contains(inbound),
                        "{topology}/{setup}: {seen}"
                    );
                }
                if setup == "merbridge" {
                    assert!(seen.contains("redirected_outbound+"), "{seen}");
                    // Inbound from another node: the server node's sk_lookup program.
                    let inbound = match topology {
                        "cross-node" => Some("inbound_steered+"),
                        "same-node" => Some("redirected_inbound+"),
                        _ => None,
                    };
                    if let Some(counter) = inbound {
                        assert!(seen.contains(counter), "{topology}: {seen}");
                    }
                }
                if setup == "iptables" {
                    assert!(seen.contains("iptables outbound REDIRECT+"), "{seen}");
                }
            }
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
            if setup != "explicit-proxy" {
                let over = entry["over_explicit_proxy_us"]["rr_p50_us"].as_f64();
                assert!(over.is_some_and(f64::is_finite), "{topology}/{setup}");
            }
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
    // Both control-plane comparisons, each with the line that says what it means.
    let per_pod = &json["control_plane"]["per_pod"];
    assert!(
        per_pod["istio_init_restore_us"].as_f64() > Some(0.0),
        "{per_pod}"
    );
    assert!(
        per_pod["merbridge_agent_sync_us"].as_f64() > Some(0.0),
        "{per_pod}"
    );
    assert!(
        per_pod["istio_over_merbridge"].as_f64() > Some(0.0),
        "{per_pod}"
    );
    assert!(stdout.contains("control plane, per pod") && stdout.contains("\n  per pod: "));
    assert!(stdout.contains("control plane, per node") && stdout.contains("\n  per node: "));
    assert_eq!(json["goals"]["same-node"].as_array().map(Vec::len), Some(6));
    // Attaching pods' inbound programs into real namespaces: measured, and held to its budget
    // in the goals (not here: a timed test would measure the shared machine).
    let attach = &json["control_plane"]["inbound_attach"];
    for key in ["attach_us", "link_us", "detach_us"] {
        assert!(
            attach[key]["median"].as_f64() > Some(0.0),
            "{key}: {attach}"
        );
        assert!(
            attach[key]["p99"].as_f64() >= attach[key]["median"].as_f64(),
            "{attach}"
        );
    }
    assert!(stdout.contains("inbound capture:") && stdout.contains("== goals (cross-node"));

    let svg = std::fs::read_to_string(&svg_path).expect("SVG written");
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<path d=\"M") && svg.contains("<rect x="));
    let opened = svg.matches("<text").count();
    assert_eq!(
        opened,
        svg.matches("</text>").count(),
        "unbalanced text tags"
    );
}

/// With the pods left out of merbridge's maps, the merbridge setups carry direct traffic:
/// the bench must notice, mark them failed everywhere and exit non-zero.
#[test]
fn quick_bench_reports_a_setup_that_did_not_intercept() {
    if !mb_sys::testing::kernel_tests_enabled("quick_bench_reports_a_setup_that_did_not_intercept")
    {
        return;
    }
    let _one = BENCH.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch_dir("broken");
    let (json_path, svg_path) = (dir.join("bench.json"), dir.join("bench.svg"));
    let (stdout, _) = bench_without_interception(&[
        "--json".as_ref(),
        json_path.as_os_str(),
        "--svg".as_ref(),
        svg_path.as_os_str(),
    ]);
    // The p50 row, cell by cell under the header's column names.
    let header = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("unit"))
        .expect("a header row");
    let columns: Vec<&str> = header.split_whitespace().skip(1).collect();
    let p50 = stdout
        .lines()
        .find(|l| l.starts_with("RR 64 B p50"))
        .expect("a p50 row");
    // After the label (4 words) and the unit.
    let cells: Vec<&str> = p50.split_whitespace().skip(5).collect();
    let cell = |name: &str| cells[columns.iter().position(|c| *c == name).unwrap()];
    for failed in ["merbridge", "mb-many-pods"] {
        assert_eq!(cell(failed), "FAILED", "{header}\n{p50}");
    }
    for measured in ["direct", "explicit", "iptables"] {
        assert!(cell(measured).parse::<f64>().is_ok(), "{header}\n{p50}");
    }
    assert_eq!((cell("mb/ipt"), cell("mb/direct")), ("-", "-"), "no ratio");

    let json = read_json(&json_path);
    for entry in json["data_path"].as_array().expect("data_path list") {
        let setup = entry["setup"].as_str().unwrap();
        let meshed_by_merbridge = setup.starts_with("merbridge");
        assert_eq!(
            entry["status"],
            if meshed_by_merbridge { "failed" } else { "ok" },
            "{setup}: {}",
            entry["failure"]
        );
        if meshed_by_merbridge {
            assert!(
                entry["medians"]["rr_p50_us"].is_null(),
                "{setup} averaged in"
            );
            assert!(entry["rr_histogram"].as_array().unwrap().is_empty());
            assert_eq!(
                entry["rounds"],
                serde_json::json!([]),
                "{setup}: no figures"
            );
            assert_eq!(entry["interception"][0]["ok"], false);
        }
    }
    let svg = std::fs::read_to_string(&svg_path).expect("SVG written");
    assert!(svg.contains("merbridge (FAILED)"), "legend");
    assert!(svg.contains("FAILED (not intercepted"), "footer");
}

/// The same with HAProxy as the sidecar (`--sidecar haproxy`): the iptables and explicit-proxy
/// setups pass the per-round check through HAProxy, and the merbridge ones — loaded, but with
/// the pods left out of the maps, so HAProxy never sees a connection with an original
/// destination — are caught and reported failed. The JSON names the sidecar per setup.
#[test]
fn quick_bench_with_haproxy_catches_a_setup_that_did_not_intercept() {
    if !mb_sys::testing::kernel_tests_enabled("quick_bench_with_haproxy_catches_no_interception") {
        return;
    }
    let _one = BENCH.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch_dir("haproxy");
    let json_path = dir.join("bench.json");
    let (stdout, _) = bench_without_interception(&[
        "--sidecar".as_ref(),
        "haproxy".as_ref(),
        "--json".as_ref(),
        json_path.as_os_str(),
    ]);
    assert!(stdout.contains("sidecar: haproxy"), "{stdout}");
    let json = read_json(&json_path);
    assert_eq!(json["sidecar"], "haproxy");
    for entry in json["data_path"].as_array().expect("data_path list") {
        let setup = entry["setup"].as_str().unwrap();
        let expected_sidecar = if setup == "direct" {
            serde_json::Value::Null
        } else {
            "haproxy".into()
        };
        assert_eq!(entry["sidecar"], expected_sidecar, "{setup}");
        let broken = setup.starts_with("merbridge");
        assert_eq!(
            entry["status"],
            if broken { "failed" } else { "ok" },
            "{setup}: {}",
            entry["failure"]
        );
        assert_eq!(entry["interception"][0]["ok"], !broken, "{setup}");
        if setup == "iptables" {
            // HAProxy relayed every connection, original destinations checked.
            let seen = entry["interception"][0]["seen"].as_str().unwrap();
            assert!(
                seen.contains("outbound") && seen.contains("inbound"),
                "{seen}"
            );
        }
    }
}
