//! A running node: its store, its supervision tree and the state the front door reads.
//!
//! Start-up order: data directory and secrets key, then the store, then the
//! NodeSupervisor. With PostgreSQL down the node still starts: a background task keeps
//! trying to connect, migrate and bootstrap, and until it succeeds the node reports
//! `database` in /health/ready and answers 503 where it needs the store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;

use sark_actors::supervisor::SupervisorMessage;
use sark_cluster::wire::Notice;

use crate::core::Core;
use crate::secrets;
use crate::store::{Backend, OpenError};

mod bootstrap;
mod jobs;
mod start;
mod voters;

pub use start::start;

/// Name of the file that receives a generated bootstrap password.
pub const BOOTSTRAP_PASSWORD_FILE: &str = "bootstrap-admin-password";

/// Why a node could not start, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be opened or initialised.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The secrets key could not be loaded.
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Something else went wrong at start-up.
    #[error("{0}")]
    Startup(String),
}

/// What stops a node: owned by whoever runs it, not shared with request handlers.
pub struct NodeControl {
    node_id: String,
    supervisor: ActorRef<SupervisorMessage>,
    supervisor_done: watch::Receiver<bool>,
    backend: Backend,
    fatal: watch::Receiver<Option<String>>,
    background: Vec<JoinHandle<()>>,
    /// The names this node's SIEM forwarders lease outbox rows under.
    siem_owners: Vec<String>,
    /// Tells the SIEM forwarders the node is stopping.
    siem_stopping: watch::Sender<bool>,
}

impl NodeControl {
    /// Resolves when the node must stop on its own: the supervision tree gave up, or the
    /// background bootstrap hit a permanent error. Returns the reason.
    pub async fn failed(&mut self) -> String {
        let mut fatal = self.fatal.clone();
        tokio::select! {
            () = wait_until_true(&mut self.supervisor_done) => {
                "the node supervisor stopped after repeated actor crashes".to_owned()
            }
            reason = async {
                loop {
                    if let Some(reason) = fatal.borrow_and_update().clone() {
                        return reason;
                    }
                    if fatal.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            } => reason,
        }
    }

    /// Stops the actors (committing pending audit events) and closes the store.
    pub async fn shutdown(mut self) {
        for task in &self.background {
            task.abort();
        }
        // A forwarder waiting on a hung sink would hold the stop up for the grace period.
        self.siem_stopping.send_replace(true);
        self.supervisor.stop(Some("node shutting down".into()));
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            wait_until_true(&mut self.supervisor_done),
        )
        .await;
        self.hand_over_siem_leases().await;
        // A request still stuck after the grace period must not keep the process alive.
        if tokio::time::timeout(Duration::from_secs(5), self.backend.close())
            .await
            .is_err()
        {
            warn!("database connections still busy at shutdown; closing anyway");
        }
        info!(node_id = self.node_id, "node stopped");
    }

    /// Gives up the outbox leases this node's forwarders still hold (a delivery that did
    /// not finish within the stop grace period), so other nodes deliver those rows now
    /// rather than when the leases expire. Receivers drop a duplicate by event id.
    async fn hand_over_siem_leases(&self) {
        let store = self.backend.store();
        for owner in &self.siem_owners {
            match store.hand_over_outbox(owner).await {
                Ok(0) => {}
                Ok(rows) => info!(owner, rows, "SIEM outbox leases handed over"),
                Err(err) => {
                    warn!(owner, error = %err, "could not hand SIEM outbox leases over; they expire instead");
                }
            }
        }
    }
}

const HANDOVER_BATCH: usize = 1000;

/// Tells the other members this node is leaving, so they drop it at once instead of
/// after its lease (a rolling restart is then not a string of failures), and takes it
/// out of the voting membership, so that it no longer counts toward the majority.
pub async fn leave_cluster(node: &Core) {
    // Sessions first: their new owners activate them from the store before this node
    // stops, so a rolling restart is not a string of failovers.
    let ids = node.sessions.running_ids().await;
    for batch in ids.chunks(HANDOVER_BATCH) {
        node.broadcast(Notice::Handover {
            from: node.node_id.clone(),
            sessions: batch.iter().map(Uuid::to_string).collect(),
        })
        .await;
    }
    info!(sessions = ids.len(), "handed this node's sessions over");
    node.left.store(true, Ordering::Release);
    voters::withdraw(node).await;
    let propagation = node.broadcast(Notice::Leaving).await;
    info!(
        elapsed_ms = propagation.elapsed.as_millis(),
        "announced this node's leave to the cluster"
    );
}

/// Resolves once the flag is true (or its sender is gone).
pub(crate) async fn wait_until_true(flag: &mut watch::Receiver<bool>) {
    loop {
        let done = *flag.borrow_and_update();
        if done || flag.changed().await.is_err() {
            return;
        }
    }
}
