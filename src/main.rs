//! The `sark` binary.

use std::process::ExitCode;

use clap::Parser;
use sark::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    sark::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = match args.load_config() {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("sark: {err}");
                    return ExitCode::from(2);
                }
            };
            sark::telemetry::init(&config.log);
            let result = match sark::Server::start(config).await {
                Ok(server) => server.run_until(sark::shutdown_signal()).await,
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %err, "sark stopped with an error");
                    eprintln!("sark: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
