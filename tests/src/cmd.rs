//! Running the system tools the test bed drives (`ip`, `iptables-restore`), with errors that
//! name the command, its input and what it printed.

use std::fmt;
use std::io::{self, Write};
use std::process::{Command, ExitStatus, Stdio};

/// A command that ran and failed.
#[derive(Debug)]
pub struct CommandFailure {
    pub what: String,
    pub status: ExitStatus,
    pub output: String,
}

impl CommandFailure {
    pub fn new(what: &str, status: ExitStatus, output: &str) -> CommandFailure {
        CommandFailure {
            what: what.to_owned(),
            status,
            output: output.trim().to_owned(),
        }
    }
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed ({}): {}", self.what, self.status, self.output)
    }
}

impl std::error::Error for CommandFailure {}

impl From<CommandFailure> for io::Error {
    fn from(e: CommandFailure) -> io::Error {
        io::Error::other(e)
    }
}

fn spawn_error(program: &str, e: io::Error) -> io::Error {
    let hint = if e.kind() == io::ErrorKind::NotFound {
        " (not installed? the test bed needs iproute2 and iptables: apt-get install iproute2 iptables)"
    } else {
        ""
    };
    io::Error::new(e.kind(), format!("start {program}: {e}{hint}"))
}

/// Runs `cmd`, feeding `stdin`; returns stdout, or an error with stderr if it failed.
pub fn run_with_input(mut cmd: Command, stdin: &str) -> io::Result<String> {
    let what = format!("{cmd:?}");
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| spawn_error(&program, e))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(CommandFailure::new(
            &format!("{what} with input:\n{stdin}"),
            out.status,
            &text,
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion; returns stdout, or an error with stderr if it failed.
pub fn output_of(mut cmd: Command) -> io::Result<String> {
    let what = format!("{cmd:?}");
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| spawn_error(&program, e))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(CommandFailure::new(&what, out.status, &text).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip` commands (one per line, without the leading `ip`) in one `ip -batch` process,
/// inside the named namespace if given. One process for many commands keeps node and pod
/// setup fast.
pub fn ip_batch(netns: Option<&str>, commands: &[String]) -> io::Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    run_with_input(cmd, &(commands.join("\n") + "\n")).map(|_| ())
}

/// Runs one `ip` command (arguments as separate strings) in the named namespace; returns stdout.
pub fn ip(netns: Option<&str>, args: &[&str]) -> io::Result<String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(args);
    output_of(cmd)
}
