//! The command line: `sark serve` and its flags, which override every other layer.

use std::path::PathBuf;

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
