//! A data path the `merbridge` binary under test loaded onto a test bed node, pinned under a
//! private bpffs; `merbridge unload` on drop (also when an assertion fails), before the bpffs
//! goes. With the readers the data-path tests share: pods added, map fill levels and counters
//! from `status --json`.
#![allow(dead_code)]

use mb_sys::bpffs::PrivateBpffs;
use mb_testbed::{Node, Pod};
use std::path::PathBuf;
use std::process::Command;

/// Runs `merbridge ARGS`, which must succeed; its stdout.
pub fn merbridge(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_merbridge"))
        .args(args)
        .output()
        .expect("run merbridge");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "merbridge {args:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A loaded data path on a node.
pub struct Loaded {
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    /// What `merbridge load` printed.
    pub load_output: String,
    _bpffs: PrivateBpffs,
}

impl Loaded {
    /// `merbridge load --cgroup NODE'S --pin-dir PRIVATE EXTRA...`; `name` names the bpffs.
    pub fn new(node: &Node, name: &str, extra: &[&str]) -> Loaded {
        let bpffs = PrivateBpffs::new(name).expect("private bpffs");
        let pin_dir = bpffs.path().join("merbridge");
        let cgroup = node.cgroup_path().to_path_buf();
        let mut args = vec![
            "load",
            "--cgroup",
            cgroup.to_str().unwrap(),
            "--pin-dir",
            pin_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let load_output = merbridge(&args);
        Loaded {
            pin_dir,
            cgroup,
            load_output,
            _bpffs: bpffs,
        }
    }

    pub fn pin(&self) -> &str {
        self.pin_dir.to_str().unwrap()
    }

    /// `merbridge pod add V4,V6 --netns POD'S EXTRA...`.
    pub fn add_pod(&self, pod: &Pod, extra: &[&str]) {
        let ips = format!("{},{}", pod.ipv4(), pod.ipv6());
        let mut args = vec![
            "pod",
            "add",
            &ips,
            "--netns",
            pod.netns_path().to_str().unwrap(),
            "--pin-dir",
            self.pin(),
        ];
        args.extend_from_slice(extra);
        merbridge(&args);
    }

    /// `merbridge pod show POD'S-IPV4 --json`.
    pub fn pod_show_json(&self, pod: &Pod) -> String {
        merbridge(&[
            "pod",
            "show",
            &pod.ipv4().to_string(),
            "--json",
            "--pin-dir",
            self.pin(),
        ])
    }

    /// Entries in one of the data path's maps, from `status --json`.
    pub fn map_entries(&self, name: &str) -> u64 {
        let json = merbridge(&["status", "--json", "--pin-dir", self.pin()]);
        number_after(&json, &format!("{{\"name\":\"{name}\",\"entries\":"))
    }

    /// One of the data path's counters, from `status --json`.
    pub fn counter(&self, name: &str) -> u64 {
        let json = merbridge(&["status", "--json", "--pin-dir", self.pin()]);
        number_after(&json, &format!("\"{name}\":"))
    }

    pub fn unload(&self) {
        merbridge(&[
            "unload",
            "--pin-dir",
            self.pin(),
            "--cgroup",
            self.cgroup.to_str().unwrap(),
        ]);
    }
}

/// The number right after `key` in `json`.
fn number_after(json: &str, key: &str) -> u64 {
    let at = json
        .find(key)
        .unwrap_or_else(|| panic!("{key} not in {json}"));
    json[at + key.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key} in {json}"))
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            let _ = Command::new(env!("CARGO_BIN_EXE_merbridge"))
                .args(["unload", "--pin-dir"])
                .arg(&self.pin_dir)
                .arg("--cgroup")
                .arg(&self.cgroup)
                .output();
        }
    }
}

/// Python that the blocking-client checks start their scripts with. `connect(host, port,
/// rcvtimeo)` opens a plain blocking socket (no Python timeout, which would make it
/// non-blocking underneath), with `SO_RCVTIMEO` of `rcvtimeo` seconds when that is not 0;
/// `echo_rounds(s, n)` sends `n` messages of 16 KiB to an echo server and reads each one back
/// whole with blocking `recv`s, exiting with an error on a short or wrong echo.
pub const PYTHON_BLOCKING_PRELUDE: &str = r#"
import socket, struct, sys
def connect(host, port, rcvtimeo):
    s = socket.create_connection((host, port))
    if rcvtimeo:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", rcvtimeo, 0))
    return s
def echo_rounds(s, rounds):
    for i in range(rounds):
        msg = bytes([i % 251]) * 16384
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            chunk = s.recv(len(msg) - len(got))
            if not chunk:
                sys.exit("echo closed early after %d rounds" % i)
            got += chunk
        if got != msg:
            sys.exit("echo mismatch in round %d" % i)
"#;
