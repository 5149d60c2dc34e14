//! The core of a running node: the handles every service shares (configuration, store,
//! actors, cluster membership, caches), and the cluster rules that go with them (fenced
//! writes, broadcasts, catching up). Built by `node` (the assembly); services take a
//! `&Core`.

pub mod fenced;
pub mod lockout;
pub mod revocation;

pub use fenced::{Change, Fence, Propagated, Published, unconfirmed};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::Registry;
use ractor::ActorRef;
use tracing::{error, warn};
use uuid::Uuid;

use sark_actors::audit::{AuditHandle, AuditMessage};
use sark_actors::clock::SharedClock;
use sark_actors::limiter::LimiterMessage;
use sark_actors::metrics::ActorMetrics;
use sark_actors::policy::{PolicyActors, PolicyMessage, PolicyRegistry, PolicySupervisorSpec};
use sark_actors::session::{SessionSupervisorMessage, Sessions};
use sark_actors::siem::SiemRegistry;
use sark_actors::supervisor::{ChildInfo, Slot, SupervisorMessage};
use sark_cluster::broadcast::{Propagation, broadcast};
use sark_cluster::membership::{MembershipMessage, MembershipView};
use sark_cluster::wire::Notice;

use crate::config::Config;
use crate::core::revocation::RevocationList;
use crate::hashing_keys::KeyCustody;
use crate::idp::jwt::TokenKeys;
use crate::idp::password::PasswordHasherPool;
use crate::policy::BUILTIN_POLICIES;
use crate::store::redis::Redis;
use crate::store::{Store, StoreError};

/// Handles on the supervised actors of this node.
#[derive(Clone, Debug, Default)]
pub struct ActorSlots {
    /// The AuditWriter.
    pub audit: Slot<AuditMessage>,
    /// The Limiter.
    pub limiter: Slot<LimiterMessage>,
    /// Membership.
    pub membership: Slot<MembershipMessage>,
    /// The SessionSupervisor.
    pub sessions: Slot<SessionSupervisorMessage>,
    /// The PolicySupervisor.
    pub policies: Slot<SupervisorMessage>,
    /// The SiemSupervisor.
    pub siem: Slot<SupervisorMessage>,
}

/// Everything a request handler may need.
pub struct Core {
    /// The configuration.
    pub config: Arc<Config>,
    /// This node's id.
    pub node_id: String,
    /// The machine's host name.
    pub hostname: String,
    /// The store behind every port.
    pub store: Arc<dyn Store>,
    /// Redis, when configured.
    pub redis: Option<Arc<Redis>>,
    /// The node's metrics registry.
    pub registry: Registry,
    /// Actor metrics.
    pub actor_metrics: ActorMetrics,
    /// Records audit events.
    pub audit: AuditHandle,
    /// Counts requests against rate-limit buckets, cluster-wide.
    pub rate_limiter: crate::limits::RateLimiter,
    /// Compiled policy bundles.
    pub policies: Arc<PolicyRegistry>,
    /// The PolicyActors.
    pub policy_actors: PolicyActors,
    /// Cluster membership.
    pub membership: Arc<MembershipView>,
    /// The supervised actors.
    pub slots: ActorSlots,
    /// The time source.
    pub clock: SharedClock,
    /// When the node started.
    pub started_at: tokio::time::Instant,
    /// Revoked sessions and API keys.
    pub revocations: Arc<RevocationList>,
    /// The session actors.
    pub sessions: Sessions,
    /// Argon2 hashing off the async runtime.
    pub passwords: PasswordHasherPool,
    /// The secrets keys, and the hashing keys of the audit chains and recovery codes.
    pub keys: Arc<KeyCustody>,
    pub(crate) tokens: Arc<std::sync::OnceLock<Arc<TokenKeys>>>,
    pub(crate) last_key_reload: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    pub(crate) api_key_touches:
        std::sync::Mutex<std::collections::HashMap<Uuid, tokio::time::Instant>>,
    /// The SIEM forwarders' state, for `/api/v1/siem/status`.
    pub siem: Arc<SiemRegistry>,
    /// One row per API request, written in batches.
    pub request_log: crate::request_log::RequestLog,
    /// Serializes credential checks per lockout key.
    pub(crate) attempt_locks: lockout::AttemptLocks,
    /// `sark_session_forwards_total`.
    pub(crate) session_forwards: prometheus::IntCounterVec,
    /// Lockout counters (Redis or the store).
    pub lockout: crate::core::lockout::Lockout,
    pub(crate) supervisor: ActorRef<SupervisorMessage>,
    pub(crate) store_ready: Arc<AtomicBool>,
    pub(crate) policies_loaded_once: Arc<AtomicBool>,
    pub(crate) policy_control: Arc<PolicyControl>,
    pub(crate) draining: AtomicBool,
    /// Set once this node announced its leave.
    pub(crate) left: AtomicBool,
    /// One place for compiling a policy source a caller sent (an upload or a draft).
    pub(crate) policy_compiles: tokio::sync::Semaphore,
    /// Held while this node records itself in the voting membership, and by its leave, so
    /// that a leave is never followed by a late record.
    pub(crate) voting: tokio::sync::Mutex<()>,
}

impl Core {
    /// Tells every member of the cluster about a write already committed to the store, and
    /// returns once each applied it or had its lease waited out (a leave is not fenced).
    pub(crate) async fn broadcast(&self, notice: Notice) -> Propagation {
        let fence = (notice != Notice::Leaving)
            .then(|| Duration::from_secs(self.config.cluster.lease_seconds));
        let within = Duration::from_millis(self.config.cluster.heartbeat_ms.saturating_mul(2))
            .max(Duration::from_millis(500));
        let propagation = broadcast(&self.membership, notice, within, fence).await;
        self.actor_metrics
            .broadcast_propagation
            .observe(propagation.elapsed.as_secs_f64());
        propagation
    }

    /// Whether this node owns `key` (a session's id) among the live members.
    pub fn owns(&self, key: &str) -> bool {
        let members = self.membership.live_members();
        sark_cluster::placement::owner(key, members.iter().map(String::as_str))
            .is_none_or(|owner| owner == self.node_id)
    }

    /// Whether this node may answer token and policy checks from memory: its cluster lease
    /// is fresh, so no broadcast can have missed it unnoticed.
    pub fn lease_fresh(&self) -> bool {
        // Once it announced its leave, nobody broadcasts to this node any more.
        !self.left.load(Ordering::Acquire)
            && self.membership.lease_fresh(tokio::time::Instant::now())
    }

    /// Brings `bundle` up to the version active in the store; `Ok(false)` when that version
    /// could not be loaded here.
    pub async fn catch_up_policy(&self, bundle: &str) -> Result<bool, StoreError> {
        let active = self.store.active_policies().await?;
        let Some(stored) = active.iter().find(|p| p.bundle == bundle) else {
            return Ok(true);
        };
        let current = || {
            self.policies
                .get(bundle)
                .is_some_and(|c| c.version >= stored.version)
        };
        Ok(current() || (self.policy_control.bring_up(bundle).await && current()))
    }

    /// Reloads revocations and brings every policy bundle up to its active version.
    pub(crate) async fn catch_up(&self) -> Result<(), StoreError> {
        self.revocations
            .load(self.store.as_ref(), self.clock.now())
            .await?;
        for policy in self.store.active_policies().await? {
            if !self.catch_up_policy(&policy.bundle).await? {
                return Err(StoreError::Unavailable(format!(
                    "policy {} v{} could not be loaded",
                    policy.bundle, policy.version
                )));
            }
        }
        Ok(())
    }

    /// Marks the node as shutting down: readiness fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the node is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The token keys, once loaded from the store.
    pub fn tokens(&self) -> Option<&Arc<TokenKeys>> {
        self.tokens.get()
    }

    /// Reloads the signing keys from the store, at most once every few seconds (a token
    /// with an unknown `kid` triggers it, and must not let a client hammer the store).
    pub async fn reload_token_keys(&self) {
        let Some(tokens) = self.tokens() else { return };
        let mut last = self.last_key_reload.lock().await;
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(5)) {
            return;
        }
        *last = Some(tokio::time::Instant::now());
        if let Err(err) = tokens.reload(self.store.as_ref(), self.clock.now()).await {
            warn!(error = %err, "could not reload signing keys");
        }
    }

    /// Whether a use of API key `id` should be written to the store: at most once a minute
    /// per key and node, so a busy key does not take the database's write lock per request.
    pub fn should_touch_api_key(&self, id: Uuid) -> bool {
        let now = tokio::time::Instant::now();
        let mut touches = self
            .api_key_touches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if touches
            .get(&id)
            .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(60))
        {
            return false;
        }
        if touches.len() > 100_000 {
            touches.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
        }
        touches.insert(id, now);
        true
    }

    /// Records an audit event and waits for its commit; a failure is logged and counted,
    /// not returned, because the audited action has already happened.
    pub async fn record_audit(&self, event: sark_actors::store::AuditEvent) {
        let event_type = event.event_type.clone();
        if let Err(err) = self.audit.record(event).await {
            error!(event_type, error = %err, "audit event not recorded");
        }
    }

    /// Whether the store was reached, migrated and bootstrapped since start-up.
    pub fn store_initialized(&self) -> bool {
        self.store_ready.load(Ordering::Acquire)
    }

    /// Whether every built-in bundle is compiled here and, once since start-up, every stored
    /// bundle was active here at its stored version.
    pub fn policies_loaded(&self) -> bool {
        let loaded = self.policies.versions();
        self.policies_loaded_once.load(Ordering::Acquire)
            && BUILTIN_POLICIES
                .iter()
                .all(|(name, _)| loaded.contains_key(*name))
    }

    /// The supervision tree below the NodeSupervisor.
    pub async fn actor_tree(&self) -> Vec<ChildInfo> {
        ractor::call_t!(self.supervisor, SupervisorMessage::GetChildren, 2_000).unwrap_or_default()
    }
}

/// Brings a bundle's PolicyActor in line with the store: reloads a running actor, or starts
/// one for a bundle that has none (its start loads the active version).
pub struct PolicyControl {
    pub(crate) actors: PolicyActors,
    pub(crate) supervisor: Slot<SupervisorMessage>,
    pub(crate) spec: Arc<PolicySupervisorSpec>,
}

impl PolicyControl {
    /// Returns whether the actor answered that it loaded the active version.
    pub(crate) async fn bring_up(&self, bundle: &str) -> bool {
        const BRING_UP_TIMEOUT: Duration = Duration::from_secs(5);
        if self.actors.get(bundle).is_some() {
            let reloaded = self
                .actors
                .slot(bundle)
                .call(PolicyMessage::Reload, BRING_UP_TIMEOUT)
                .await;
            return matches!(reloaded, Some(Ok(_)));
        }
        let child = self.spec.child(bundle);
        let added = self
            .supervisor
            .call(
                |reply| SupervisorMessage::AddChild(child, reply),
                BRING_UP_TIMEOUT,
            )
            .await;
        matches!(added, Some(Ok(())))
    }
}

/// Seconds as a chrono duration, saturating.
pub(crate) fn seconds(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 1000)
}

/// The names of the fields a change sets, for its audit event's `changed` detail.
pub fn changed_fields<'a>(fields: impl IntoIterator<Item = (&'a str, bool)>) -> Vec<&'a str> {
    fields
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect()
}
