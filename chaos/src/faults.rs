//! Faults injected into node processes.

use std::process::Command;

use anyhow::{Context, bail};

/// A signal to send to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Immediate death, no clean-up (`kill -9`).
    Kill,
    /// Graceful shutdown.
    Term,
    /// Freezes the process: it keeps its sockets but answers nothing (a hung node).
    Stop,
    /// Resumes a stopped process.
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Term => "TERM",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// Sends `signal` to process `pid` with the system's `kill`.
pub fn send(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{}", signal.name()))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{} {pid} failed: {status}", signal.name());
    }
    Ok(())
}
