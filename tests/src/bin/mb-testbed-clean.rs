//! `mb-testbed-clean`: lists (default) or removes (`--remove`) namespaces and cgroups left by
//! test processes that died without cleaning up. Exit status 1 when leftovers were found and
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
    let found = if cli.remove {
        match mb_testbed::leftovers::remove() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("mb-testbed-clean: {e}");
                std::process::exit(1);
            }
        }
    } else {
        mb_testbed::leftovers::find()
    };
    for p in found.netns.iter().chain(&found.cgroups) {
        println!(
            "{} {}",
            if cli.remove { "removed" } else { "leftover" },
            p.display()
        );
    }
    if !cli.remove && !found.is_empty() {
        std::process::exit(1);
    }
}
