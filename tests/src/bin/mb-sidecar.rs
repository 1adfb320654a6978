//! `mb-sidecar`: the reference sidecar proxy (see `mb_testbed::sidecar`).
#![forbid(unsafe_code)]

use clap::Parser;

/// Reference sidecar: relays intercepted connections to their original destination like
/// Envoy does, and prints one line per connection.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: mb_testbed::sidecar::SidecarConfig,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = mb_testbed::sidecar::run(cli.config) {
        eprintln!("mb-sidecar: {e}");
        std::process::exit(1);
    }
}
