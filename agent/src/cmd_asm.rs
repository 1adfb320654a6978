//! `merbridge asm` and `merbridge disasm`.
use clap::Args;
use std::process::ExitCode;

#[derive(Args)]
pub struct AsmArgs {}

#[derive(Args)]
pub struct DisasmArgs {}

pub fn run_asm(_args: AsmArgs) -> Result<ExitCode, String> {
    Err("asm: not built yet (issue 2)".into())
}

pub fn run_disasm(_args: DisasmArgs) -> Result<ExitCode, String> {
    Err("disasm: not built yet (issue 2)".into())
}
