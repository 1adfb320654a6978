//! `merbridge asm` and `merbridge disasm`: the eBPF assembler as a command-line tool.
use clap::Args;
use mb_asm::text;
use mb_asm::Program;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct AsmArgs {
    /// LLVM-syntax eBPF assembly to read; `-` (the default) reads standard input.
    #[arg(default_value = "-")]
    pub input: PathBuf,
    /// Write raw little-endian bytecode here instead of printing hex lines.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Treat whole-program problems (jump outside the program, no final `exit`, write to r10)
    /// as errors instead of warnings.
    #[arg(long)]
    pub strict: bool,
    /// Read the kernel's syntax instead (a verifier log, `bpftool prog dump xlated`, or
    /// `merbridge disasm --kernel` output): `0: (61) r1 = *(u32 *)(r2 +8)`.
    #[arg(long)]
    pub kernel: bool,
}

#[derive(Args)]
pub struct DisasmArgs {
    /// Raw little-endian bytecode to read; `-` reads standard input.
    pub input: PathBuf,
    /// Print the kernel verifier's / bpftool's form (`0: (b7) r0 = 0`) instead of LLVM's.
    #[arg(long)]
    pub kernel: bool,
    /// Print jump targets as labels (`L5:` / `goto L5`) instead of numeric offsets.
    #[arg(long, conflicts_with = "kernel")]
    pub labels: bool,
    /// Print immediates and offsets in hex (`r1 += 0x2a`), as `llvm-objdump -d` does by default.
    #[arg(long, conflicts_with_all = ["kernel", "labels"])]
    pub hex: bool,
}

fn display_name(path: &std::path::Path) -> String {
    if path.as_os_str() == "-" {
        "<stdin>".into()
    } else {
        path.display().to_string()
    }
}

fn read_input(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .map_err(|e| format!("cannot read standard input: {e}"))?;
    } else {
        data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    }
    Ok(data)
}

/// One line per instruction: two-digit lowercase hex bytes separated by single spaces
/// (16 bytes on the line of a 64-bit immediate load).
pub fn hex_lines(program: &Program) -> String {
    let mut out = String::new();
    let mut at = 0;
    while at < program.insns.len() {
        let wide = program.insns[at].code == 0x18 && at + 1 < program.insns.len();
        let count = if wide { 2 } else { 1 };
        let bytes: Vec<u8> = program.insns[at..at + count]
            .iter()
            .flat_map(|i| i.to_bytes())
            .collect();
        out.push_str(&mb_asm::op::hex_bytes(&bytes));
        out.push('\n');
        at += count;
    }
    out
}

pub fn run_asm(args: AsmArgs) -> Result<ExitCode, String> {
    let name = display_name(&args.input);
    let data = read_input(&args.input)?;
    let source =
        String::from_utf8(data).map_err(|_| format!("{name}: the input is not UTF-8 text"))?;
    let parsed = if args.kernel {
        text::parse_kernel(&source)
    } else {
        text::parse_lenient(&source)
    };
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{name}:{}: {}", e.line, e.message);
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.strict {
        if let Some(e) = parsed.warnings.first() {
            eprintln!("{name}:{}: {}", e.line, e.message);
            return Ok(ExitCode::FAILURE);
        }
    }
    for w in &parsed.warnings {
        eprintln!("{name}:{}: warning: {}", w.line, w.message);
    }
    match &args.output {
        Some(out) => std::fs::write(out, parsed.program.to_bytes())
            .map_err(|e| format!("cannot write {}: {e}", out.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(hex_lines(&parsed.program).as_bytes())
                .map_err(|e| format!("cannot write standard output: {e}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_disasm(args: DisasmArgs) -> Result<ExitCode, String> {
    let name = display_name(&args.input);
    let data = read_input(&args.input)?;
    let program = Program::from_bytes(&data).map_err(|e| format!("{name}: {e}"))?;
    let printed = if args.kernel {
        text::fmt_kernel(&program)
    } else if args.labels {
        text::fmt_llvm_labeled(&program)
    } else if args.hex {
        text::fmt_llvm_hex(&program)
    } else {
        text::fmt_llvm(&program)
    };
    let printed = printed.map_err(|e| format!("{name}: {e}"))?;
    std::io::stdout()
        .lock()
        .write_all(printed.as_bytes())
        .map_err(|e| format!("cannot write standard output: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
