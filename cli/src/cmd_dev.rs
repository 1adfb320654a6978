//! `merbridge demo`, `bench`, `asm` and `disasm`: they live in the developer tool
//! `merbridge-dev` (crate mb-devtools, which alone links the test bed and the assembler's
//! text front end). This starts it in place of this
//! process, found next to this executable, through `$MB_DEV_BIN`, or on `$PATH`.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

const DEV_TOOL: &str = "merbridge-dev";

/// Replaces this process with `merbridge-dev SUBCOMMAND ARGS…`; returns only on failure.
pub fn run(subcommand: &str, args: Vec<OsString>) -> Result<ExitCode, String> {
    let tool = find_dev_tool().ok_or_else(|| {
        format!(
            "`merbridge {subcommand}` is a developer tool in the separate `{DEV_TOOL}` binary, \
             which is not next to this one, in $MB_DEV_BIN or on $PATH (the DaemonSet image \
             does not carry it): build it with `cargo build --release --workspace` and run \
             target/release/merbridge {subcommand}"
        )
    })?;
    let error = Command::new(&tool).arg(subcommand).args(args).exec();
    Err(format!("cannot run {}: {error}", tool.display()))
}

fn find_dev_tool() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MB_DEV_BIN") {
        return Some(path.into());
    }
    let beside = std::env::current_exe().ok()?.with_file_name(DEV_TOOL);
    if beside.is_file() {
        return Some(beside);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(DEV_TOOL))
            .find(|candidate| candidate.is_file())
    })
}
