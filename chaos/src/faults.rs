//! Faults injected into node processes and between their addresses.

use std::net::Ipv4Addr;
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

/// A network partition: every packet between `cut` and `others` is dropped (iptables rules
/// on the loopback addresses) while it lives; dropping it removes exactly the rules it added.
#[derive(Debug)]
pub struct Partition {
    rules: Vec<[String; 2]>,
}

impl Partition {
    /// Cuts `cut` off from each of `others`, both ways.
    pub fn cut(cut: Ipv4Addr, others: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let mut partition = Self { rules: Vec::new() };
        for other in others {
            for (from, to) in [(cut, *other), (*other, cut)] {
                let rule = [from.to_string(), to.to_string()];
                iptables("-I", &rule)?;
                partition.rules.push(rule);
            }
        }
        Ok(partition)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            if let Err(err) = iptables("-D", &rule) {
                eprintln!("could not remove a partition rule: {err:#}");
            }
        }
    }
}

fn iptables(action: &str, [from, to]: &[String; 2]) -> anyhow::Result<()> {
    let status = Command::new("iptables")
        .args([action, "OUTPUT", "-s", from, "-d", to, "-j", "DROP"])
        .status()
        .context("running iptables (installed by scripts/install-deps)")?;
    if !status.success() {
        bail!("iptables {action} OUTPUT -s {from} -d {to} -j DROP failed: {status}");
    }
    Ok(())
}
