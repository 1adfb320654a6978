//! A test process killed with SIGKILL cannot clean up; `leftovers` finds and removes what it
//! left, and never touches what a live process owns.

use mb_sys::testing::kernel_tests_enabled;
use mb_testbed::{leftovers, Node, PodSpec};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "MB_TESTBED_CRASH_CHILD";

#[test]
fn killed_test_process_leftovers_are_found_and_removed() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // Child: build a node with a pod, report the paths, then wait to be killed.
        let node = Node::new("crash").unwrap();
        let pod = node.add_pod(PodSpec::named("p")).unwrap();
        let bpffs = mb_sys::bpffs::PrivateBpffs::new("mb-crash-bpffs").unwrap();
        println!("path {}", bpffs.path().display());
        println!("path {}", node.netns_path().display());
        println!("path {}", node.cgroup_path().display());
        println!("path {}", pod.netns_path().display());
        println!("done");
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    if !kernel_tests_enabled("killed_test_process_leftovers_are_found_and_removed") {
        return;
    }
    // A live node of this process must survive the cleanup.
    let live = Node::new("live").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_test_process_leftovers_are_found_and_removed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut paths = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest may print "test <name> ... " on the same line before our output.
        if let Some((_, p)) = line.split_once("path ") {
            paths.push(PathBuf::from(p));
        }
        if line.ends_with("done") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(paths.len(), 4);
    assert!(
        paths.iter().all(|p| p.exists()),
        "SIGKILL should leave things behind"
    );

    let found = leftovers::find();
    for p in &paths {
        assert!(
            found.paths().any(|f| f == p),
            "{} not found in {found:?}",
            p.display()
        );
    }
    assert!(
        !found.netns.iter().any(|p| p == live.netns_path()),
        "a live node counted as leftover"
    );
    // Remove only the child's: other orphans on a shared machine are not this test's business.
    let mine = leftovers::Leftovers {
        netns: found
            .netns
            .into_iter()
            .filter(|p| paths.contains(p))
            .collect(),
        cgroups: found
            .cgroups
            .into_iter()
            .filter(|p| paths.contains(p))
            .collect(),
        bpffs: found
            .bpffs
            .into_iter()
            .filter(|p| paths.contains(p))
            .collect(),
    };
    leftovers::remove_these(&mine).unwrap();
    assert!(
        paths.iter().all(|p| !p.exists()),
        "leftovers remain: {paths:?}"
    );
    assert!(
        live.netns_path().exists() && live.cgroup_path().exists(),
        "a live node was removed"
    );
}
