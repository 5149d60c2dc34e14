//! The command line: `sark serve` and its flags, which override every other layer.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::config::{Config, ConfigError};

/// SARK: authentication, authorization, sessions and server inventory.
#[derive(Debug, Parser)]
#[command(name = "sark", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a node.
    Serve(ServeArgs),
    /// Break-glass operations on the store (audited).
    Admin(AdminArgs),
}

/// Flags of `sark admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// TOML configuration file (the same layering as `sark serve`).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (`data_dir`).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The operation.
    #[command(subcommand)]
    pub command: crate::admin::AdminCommand,
}

impl AdminArgs {
    /// Loads the configuration: defaults, file, environment, then these flags.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut overrides = Map::new();
        if let Some(dir) = &self.data_dir {
            overrides.insert("data_dir".into(), json!(dir));
        }
        Config::load(
            self.config.as_deref(),
            std::env::vars(),
            Value::Object(overrides),
        )
    }
}

/// Flags of `sark serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (layered over the defaults, under SARK_* variables).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP listen address (`http.bind`).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    /// Data directory (`data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter (`log.level`).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Cluster node name (`cluster.node_name`).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
}

impl ServeArgs {
    /// Loads the configuration: defaults, file, environment, then these flags.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut overrides = Map::new();
        if let Some(bind) = &self.bind {
            overrides.insert("http".into(), json!({"bind": bind}));
        }
        if let Some(dir) = &self.data_dir {
            overrides.insert("data_dir".into(), json!(dir));
        }
        if let Some(level) = &self.log_level {
            overrides.insert("log".into(), json!({"level": level}));
        }
        if let Some(name) = &self.node_name {
            overrides.insert("cluster".into(), json!({"node_name": name}));
        }
        Config::load(
            self.config.as_deref(),
            std::env::vars(),
            Value::Object(overrides),
        )
    }
}

/// Runs a command; exit code 2 for invalid configuration, 1 for a failure, 0 otherwise.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => {
            let config = match args.load_config() {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("sark: {err}");
                    return ExitCode::from(2);
                }
            };
            let _log = match crate::telemetry::init(&config.log) {
                Ok(guard) => guard,
                Err(err) => {
                    eprintln!("sark: the log writer could not be started: {err}");
                    return ExitCode::FAILURE;
                }
            };
            let server = match crate::Server::start(config).await {
                Ok(server) => server,
                Err(err) => {
                    // One plain line naming the key: nothing started that a log must explain.
                    eprintln!("sark: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match server.run_until(crate::shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %err, "sark stopped with an error");
                    eprintln!("sark: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Admin(args) => {
            let config = match args.load_config() {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("sark: {err}");
                    return ExitCode::from(2);
                }
            };
            match crate::admin::run(args.command, config).await {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("sark admin: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
