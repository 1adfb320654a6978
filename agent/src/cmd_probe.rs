//! `merbridge probe`.
use clap::Args;
use std::process::ExitCode;

#[derive(Args)]
pub struct ProbeArgs {}

pub fn run(_args: ProbeArgs) -> Result<ExitCode, String> {
    Err("probe: not built yet (issue 3)".into())
}
