//! The `merbridge` binary under test, run to completion: whether it succeeded and what it
//! printed (stdout then stderr). A panic inside it fails the calling test.

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
