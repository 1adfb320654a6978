//! The `merbridge` binary under test, run to completion: whether it succeeded and what it
//! printed (stdout then stderr). A panic inside it fails the calling test. And the data path
//! it loads for a test, unloaded when the test ends.
#![allow(dead_code)]

use mb_sys::bpffs::PrivateBpffs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `merbridge ARGS`.
pub fn merbridge(args: &[&str]) -> (bool, String) {
    merbridge_with(&[], args)
}

/// Runs `PREFIX... merbridge ARGS` (e.g. under `setpriv` or `sh -c`); no prefix runs it directly.
pub fn merbridge_with(prefix: &[&str], args: &[&str]) -> (bool, String) {
    let mut command = match prefix.split_first() {
        None => Command::new(env!("CARGO_BIN_EXE_merbridge")),
        Some((program, prefix_args)) => {
            let mut c = Command::new(program);
            c.args(prefix_args).arg(env!("CARGO_BIN_EXE_merbridge"));
            c
        }
    };
    let out = command.args(args).output().expect("run merbridge");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("panicked"),
        "merbridge {args:?} panicked: {text}"
    );
    (out.status.success(), text)
}

/// `merbridge load --mesh istio EXTRA... --cgroup CGROUP --pin-dir PIN`, pinned under a private
/// bpffs; `merbridge unload` on drop, also when an assertion fails, before the bpffs goes.
pub struct LoadedIstio {
    pin: String,
    cgroup: String,
    _bpffs: PrivateBpffs,
}

impl LoadedIstio {
    /// Loads on `cgroup` (a test bed node's); `name` names the private bpffs.
    pub fn load(name: &str, cgroup: &Path, extra: &[&str]) -> LoadedIstio {
        let bpffs = PrivateBpffs::new(name).expect("private bpffs");
        let pin = bpffs.path().join("merbridge").to_str().unwrap().to_string();
        let cgroup = cgroup.to_str().unwrap().to_string();
        let mut args = vec!["load", "--mesh", "istio"];
        args.extend(extra);
        args.extend(["--cgroup", &cgroup, "--pin-dir", &pin]);
        let (loaded, text) = merbridge(&args);
        assert!(loaded, "merbridge {args:?} failed: {text}");
        LoadedIstio {
            pin,
            cgroup,
            _bpffs: bpffs,
        }
    }

    /// The pin directory, as the `--pin-dir` argument.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from(&self.pin)
    }
}

impl Drop for LoadedIstio {
    fn drop(&mut self) {
        let _ = merbridge(&["unload", "--pin-dir", &self.pin, "--cgroup", &self.cgroup]);
    }
}
