//! The `sark` binary: `sark serve` runs a node, `sark admin …` repairs its store.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    sark::install_crypto_provider();
    sark::cli::run(sark::cli::Cli::parse()).await
}
