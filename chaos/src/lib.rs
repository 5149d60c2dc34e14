//! SARK's chaos harness: starts real `sark` processes on loopback addresses (127.0.0.2,
//! 127.0.0.3, …), injects faults into them and checks what the nodes report.
//!
//! - [`sandbox`]: [`sandbox::ClusterSandbox`] starts N nodes, waits until they are ready,
//!   restarts and stops them, and returns their exit statuses.
//! - [`faults`]: the faults: `kill -9`, pause (`SIGSTOP`) and resume (`SIGCONT`), and a
//!   partition of a node's address with iptables rules.
//! - [`receivers`]: a Splunk HEC and a Datadog logs intake to forward SIEM events to.
//! - [`load`]: a mixed load on every node, recorded in a [`history::History`], from which
//!   [`history::Report`] checks the invariants and measures each fault.
//! - [`balancer`]: [`balancer::Balancer`] runs a real HAProxy in front of the nodes, as a
//!   Kubernetes Service would be, health-checking their `/health/ready`.
//! - [`readiness`]: [`readiness::ReadinessMonitor`] records when each node was unready and
//!   when it was out of the balancer's rotation.
//!
//! The `sark` binary is taken from `CHAOS_SARK_BIN`, or from the workspace's target directory.

#![warn(missing_docs)]

pub mod balancer;
pub mod faults;
pub mod history;
pub mod load;
pub mod readiness;
pub mod receivers;
pub mod sandbox;
