//! Fenced writes: a change every member must apply before it answers from memory again (a
//! revocation, a new active policy version). The sequence is owned here, one step per type,
//! so a new write cannot leave one out:
//!
//! 1. [`Core::fence`]: the node makes sure it can reach every member (it holds its lease,
//!    knows every member, is not leaving), or refuses before anything is written;
//! 2. the caller commits the write to the store, holding the [`Fence`];
//! 3. [`Fence::publish`]: the change is applied here and broadcast to every member;
//! 4. [`Published::audited`]: the audit event is recorded (knowing whether a majority
//!    confirmed), and only then is the caller told 503 `cluster_unavailable` when no
//!    majority did; [`Published::audited_standing`] is for a change that stands anyway
//!    (the event says it was not confirmed).
//!
//! A revocation the node makes on its own, in answer to an attack or a race (a reused
//! refresh token), skips step 1: refusing it would keep a stolen credential alive. It goes
//! through [`Core::publish_unfenced`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::warn;
use uuid::Uuid;

use sark_actors::policy::CompiledBundle;
use sark_actors::store::AuditEvent;
use sark_cluster::broadcast::Propagation;
use sark_cluster::membership::Fencing;
use sark_cluster::wire::Notice;

use super::Core;
use crate::error::Error;

/// How often a write waiting for this node to know every member looks again.
const ACQUAINT_POLL: Duration = Duration::from_millis(20);

/// Heartbeats a fenced write waits for a lapsed lease to come back before it is refused.
const LEASE_BLIP_HEARTBEATS: u32 = 3;

/// A change that every member applies.
#[derive(Debug)]
pub enum Change<'c> {
    /// Sessions and API keys revoked in the store.
    Revoked {
        /// The sessions.
        sessions: &'c [Uuid],
        /// The API keys.
        api_keys: &'c [Uuid],
    },
    /// A policy version stored as its bundle's active one.
    PolicyActivated(Box<CompiledBundle>),
}

/// Leave to write a change every member must apply: this node could reach them all when
/// it was granted. Consumed by [`Fence::publish`].
#[must_use = "a fenced write must publish its change"]
pub struct Fence<'a> {
    core: &'a Core,
    started: Instant,
}

/// A change applied here and broadcast; what is left is its audit event and telling the
/// caller whether a majority confirmed it.
#[must_use = "a published change must be audited, and an unconfirmed one reported"]
pub struct Published<'a> {
    core: &'a Core,
    propagated: Propagated,
}

/// How a fenced change reached the cluster.
#[derive(Clone, Debug, Serialize)]
pub struct Propagated {
    /// Time from the store write until every check on every node refuses what it changed.
    pub propagation_ms: u64,
    /// Cluster members that did not acknowledge and whose lease was waited out.
    pub waited_out: Vec<String>,
    /// Cluster members that acknowledged (this node aside).
    pub acknowledged_by: Vec<String>,
    /// Whether a majority of the cluster applied the change: the members that missed it
    /// apply it once they hear from this node or at their next check against the store.
    #[serde(skip)]
    pub confirmed: bool,
}

/// The refusal of a fenced write by a node that has left its cluster: nothing was
/// written, and a member that forwarded the write runs it itself.
pub const NODE_LEAVING: &str = "node_leaving";

impl Core {
    /// Step 1 of a fenced write: refuses, before anything is written, a change that must
    /// reach every member when this node cannot make sure it does: it has not joined its
    /// cluster yet, its lease lapsed (it is cut off: after waiting up to three heartbeats for
    /// it to come back), or it is leaving. While a member that
    /// others know is not known here yet (this node just joined), it waits for the
    /// introduction, at most one lease: after that the broadcast fences such a member by
    /// time, as those that answer report it.
    pub async fn fence(&self) -> Result<Fence<'_>, Error> {
        let lease = Duration::from_secs(self.config.cluster.lease_seconds);
        let started = tokio::time::Instant::now();
        let give_up = started + lease;
        // A lease that lapses for a moment (late heartbeats on a loaded machine, the
        // voting membership growing during a join) comes back within a few heartbeats.
        let lease_back_by = started
            + (Duration::from_millis(self.config.cluster.heartbeat_ms) * LEASE_BLIP_HEARTBEATS)
                .min(lease);
        loop {
            let now = tokio::time::Instant::now();
            if self.left.load(Ordering::Acquire) {
                return Err(Error::unavailable(
                    NODE_LEAVING,
                    "this node is leaving its cluster; retry, another node answers",
                ));
            }
            let ready = match self.membership.fencing(now) {
                Fencing::Ready => true,
                Fencing::Acquainting if now >= give_up => true,
                Fencing::Acquainting => {
                    tokio::time::sleep(ACQUAINT_POLL).await;
                    continue;
                }
                Fencing::NoLease if now < lease_back_by => {
                    tokio::time::sleep(ACQUAINT_POLL).await;
                    continue;
                }
                Fencing::NoLease => false,
            };
            if !ready {
                break;
            }
            return Ok(Fence {
                core: self,
                started: Instant::now(),
            });
        }
        Err(Error::unavailable(
            "cluster_unavailable",
            "this node cannot reach a majority of its cluster, so it cannot make this change take effect everywhere; retry (another node may answer)",
        ))
    }

    /// Applies and broadcasts a revocation this node makes on its own (a reused refresh
    /// token): not refused when the node is cut off, since that would keep the credential
    /// alive here. Members that miss it apply it at their next check against the store.
    pub async fn publish_unfenced(&self, change: Change<'_>) -> Propagation {
        self.apply_and_broadcast(change).await
    }

    async fn apply_and_broadcast(&self, change: Change<'_>) -> Propagation {
        match change {
            Change::Revoked { sessions, api_keys } => {
                if sessions.is_empty() && api_keys.is_empty() {
                    return Propagation::nothing_sent();
                }
                self.revocations.revoke_sessions(sessions);
                self.revocations.revoke_api_keys(api_keys);
                let ids = |ids: &[Uuid]| ids.iter().map(Uuid::to_string).collect();
                self.broadcast(Notice::Revoked {
                    sessions: ids(sessions),
                    api_keys: ids(api_keys),
                })
                .await
            }
            Change::PolicyActivated(compiled) => {
                let (bundle, version) = (compiled.bundle.clone(), compiled.version);
                self.load_policy_version(*compiled).await;
                self.broadcast(Notice::PolicyActivated { bundle, version })
                    .await
            }
        }
    }

    /// Makes a version that was just stored active on this node before the caller
    /// answers: the bundle's actor loads it from the store. If the actor cannot be reached,
    /// the compiled version is published directly (the registry never goes back) and
    /// anti-entropy brings the actor up later.
    async fn load_policy_version(&self, compiled: CompiledBundle) {
        let (bundle, version) = (compiled.bundle.clone(), compiled.version);
        let loaded = self.policy_control.bring_up(&bundle).await;
        if !loaded
            || self
                .policies
                .get(&bundle)
                .is_none_or(|c| c.version < version)
        {
            warn!(
                bundle,
                version, "the policy actor did not load the new version; publishing it directly"
            );
            self.policies.publish(Arc::new(compiled));
        }
    }
}

impl<'a> Fence<'a> {
    /// Step 3: applies the committed `change` here and broadcasts it; returns once every
    /// member applied it or had its lease waited out.
    pub async fn publish(self, change: Change<'_>) -> Published<'a> {
        let propagation = self.core.apply_and_broadcast(change).await;
        Published {
            core: self.core,
            propagated: Propagated {
                propagation_ms: u64::try_from(self.started.elapsed().as_millis())
                    .unwrap_or(u64::MAX),
                waited_out: propagation.waited_out,
                acknowledged_by: propagation.acknowledged_by,
                confirmed: propagation.confirmed,
            },
        }
    }
}

impl Published<'_> {
    /// Step 4: records the event `audit` builds (none: nothing to record), then answers 503
    /// `cluster_unavailable` when fewer than a majority of the cluster applied the change
    /// (this node is on the minority side of a cut it has not noticed yet): the change
    /// stays stored and reaches the others once they hear from this node or at their next
    /// check against the store, but it cannot be vouched for now.
    pub async fn audited(
        self,
        audit: impl FnOnce(&Propagated) -> Option<AuditEvent>,
    ) -> Result<Propagated, Error> {
        let propagated = self.audited_standing(audit).await;
        if propagated.confirmed {
            Ok(propagated)
        } else {
            Err(unconfirmed())
        }
    }

    /// Step 4 for a change that stands even when no majority confirmed it (the caller
    /// still answers, and the event says `confirmed: false`): records the event `audit`
    /// builds and returns the propagation.
    pub async fn audited_standing(
        self,
        audit: impl FnOnce(&Propagated) -> Option<AuditEvent>,
    ) -> Propagated {
        if !self.propagated.confirmed {
            warn!("a change is stored, but fewer than a majority of the cluster confirmed it");
        }
        if let Some(event) = audit(&self.propagated) {
            self.core.record_audit(event).await;
        }
        self.propagated
    }
}

/// 503 `cluster_unavailable` for a change that is stored but reached no majority.
pub fn unconfirmed() -> Error {
    Error::unavailable(
        "cluster_unavailable",
        "the change is stored, but fewer than a majority of the cluster confirmed it: the members that missed it apply it once they hear from this node or at their next check against the store (auth.sync_seconds for credentials, policy.sync_seconds for policies)",
    )
}
