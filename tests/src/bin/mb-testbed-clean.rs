//! `mb-testbed-clean`: lists (default) or removes (`--remove`) namespaces, cgroups, private
//! bpffs mounts and staged binary copies left by test processes that died without cleaning up. Exit status 1 when leftovers were found and
//! not removed, so CI can run it after `cargo test` as a check.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(about = "Find or remove test-bed leftovers of dead test processes")]
struct Cli {
    /// Remove what is found instead of only listing it.
    #[arg(long)]
    remove: bool,
}

fn main() {
    let cli = Cli::parse();
    let (found, staged) = if cli.remove {
        match mb_testbed::leftovers::remove()
            .and_then(|f| mb_testbed::stage::remove_orphans().map(|staged| (f, staged)))
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!("mb-testbed-clean: {e}");
                std::process::exit(1);
            }
        }
    } else {
        (mb_testbed::leftovers::find(), mb_testbed::stage::orphans())
    };
    for p in found.paths().chain(&staged) {
        println!(
            "{} {}",
            if cli.remove { "removed" } else { "leftover" },
            p.display()
        );
    }
    let nothing_left = found.is_empty() && staged.is_empty();
    if !cli.remove && !nothing_left {
        std::process::exit(1);
    }
}
