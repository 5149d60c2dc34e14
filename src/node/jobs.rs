//! The node's background jobs: catching up after gaps, credential and policy
//! anti-entropy, housekeeping, recording membership changes, and sampling the gauges of
//! the store's pools and the actors' mailboxes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use tracing::{debug, warn};

use sark_actors::audit::AuditHandle;
use sark_actors::clock::SharedClock;
use sark_actors::policy::PolicyRegistry;
use sark_actors::supervisor::ChildInfo;
use sark_cluster::membership::MembershipEvent;

use crate::core::{Core, PolicyControl};
use crate::hashing_keys::KeyCustody;
use crate::store::{PoolStats, Store};

/// How often the membership view is asked whether a catch-up is due.
pub(super) const CATCH_UP_POLL: Duration = Duration::from_millis(25);

/// Session ids per handover notice (a notice must stay under the 64 KiB payload limit).
/// Catches up with the store whenever this node may have missed a broadcast (it regained
/// its lease after a pause or a cut, or a member joined): until then its lease does not
/// count as fresh, so tokens and policy versions are checked against the store.
pub(super) async fn catch_up_after_gaps(node: std::sync::Weak<Core>) {
    loop {
        tokio::time::sleep(CATCH_UP_POLL).await;
        let Some(node) = node.upgrade() else { return };
        let Some(epoch) = node.membership.needs_sync() else {
            continue;
        };
        if !node.store_initialized() {
            continue;
        }
        match node.catch_up().await {
            Ok(()) => {
                node.membership.synced(epoch);
                debug!(epoch, "caught up with the store after a membership change");
            }
            Err(err) => warn!(error = %err, "could not catch up with the store"),
        }
    }
}

/// Keeps revocations and signing keys in step with the store (anti-entropy for what other
/// nodes and `sark admin` changed).
pub(super) async fn credential_sync(node: std::sync::Weak<Core>) {
    loop {
        let Some(node) = node.upgrade() else { return };
        let every = Duration::from_secs(node.config.auth.sync_seconds);
        if node.store_initialized() {
            let now = node.clock.now();
            if let Err(err) = node.revocations.load(node.store.as_ref(), now).await {
                warn!(error = %err, "could not reload revocations");
            }
            if let Some(tokens) = node.tokens()
                && let Err(err) = tokens.reload(node.store.as_ref(), now).await
            {
                warn!(error = %err, "could not reload signing keys");
            }
        }
        drop(node);
        tokio::time::sleep(every).await;
    }
}

/// How long housekeeping keeps what.
pub(super) struct Retention {
    pub(super) lockout_window: chrono::Duration,
    pub(super) time_series: chrono::Duration,
}

/// Hourly removal of expired lockout counters, challenges and sessions (so the tables hold
/// what is live plus a day of history), of SIEM outbox rows delivered a day ago, and of
/// audit events, request rows and set-aside outbox rows past the retention period.
pub(super) async fn housekeeping(
    store: Arc<dyn Store>,
    clock: SharedClock,
    store_ready: Arc<AtomicBool>,
    keys: Arc<KeyCustody>,
    keep: Retention,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        if !store_ready.load(Ordering::Acquire) {
            continue;
        }
        let now = clock.now();
        match store
            .prune_expired(
                now,
                now - keep.lockout_window,
                now - chrono::Duration::days(1),
            )
            .await
        {
            Ok(removed) => debug!(removed, "housekeeping pruned expired rows"),
            Err(err) => warn!(error = %err, "housekeeping could not prune expired rows"),
        }
        let pruned = match keys.keys().await {
            Ok(keys) => store
                .prune_time_series(now - keep.time_series, now, &keys.audit_chain)
                .await
                .map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match pruned {
            Ok(pruned) => debug!(
                audit_events = pruned.audit_events,
                api_requests = pruned.api_requests,
                "retention removed old rows"
            ),
            Err(err) => warn!(error = %err, "retention could not remove old rows"),
        }
        match store
            .prune_outbox(now - chrono::Duration::days(1), now - keep.time_series)
            .await
        {
            Ok(removed) => debug!(removed, "housekeeping pruned delivered SIEM outbox rows"),
            Err(err) => warn!(error = %err, "housekeeping could not prune the SIEM outbox"),
        }
    }
}

/// Records members coming up and going down as `node_joined` / `node_left` audit events.
pub(super) async fn record_membership(
    audit: AuditHandle,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<MembershipEvent>,
) {
    while let Some(change) = changes.recv().await {
        let (event_type, node_id, addr) = match change {
            MembershipEvent::Joined { node_id, addr } => ("node_joined", node_id, addr),
            MembershipEvent::Left { node_id, addr } => ("node_left", node_id, addr),
        };
        let event = audit
            .event(event_type, "success")
            .by("system")
            .on(format!("node:{node_id}"))
            .with_details(serde_json::json!({ "addr": addr }));
        if let Err(err) = audit.record(event).await {
            warn!(error = %err, node = node_id, "could not record a membership change");
        }
    }
}

/// Applies what other nodes broadcast: revocations go into this node's list; a policy
/// activation is loaded from the store before the answer.
/// Anti-entropy for policies: repairs any bundle whose compiled version on this node is
/// behind the stored active version.
pub(super) struct PolicySync {
    /// Set once every stored bundle was loaded at its active version.
    pub(super) loaded_once: Arc<AtomicBool>,
    pub(super) store: Arc<dyn Store>,
    pub(super) registry: Arc<PolicyRegistry>,
    pub(super) control: Arc<PolicyControl>,
    pub(super) store_ready: Arc<AtomicBool>,
}

impl PolicySync {
    pub(super) async fn run(self, every: Duration) {
        loop {
            // Until the bundles are first loaded, check often so start-up is not delayed.
            let loaded = self.store_ready.load(Ordering::Acquire) && self.sync().await;
            // Being behind the store later is a moment in a policy write, or a missed
            // broadcast that the lease check covers: it never takes the node out of rotation.
            if loaded {
                self.loaded_once.store(true, Ordering::Release);
            }
            tokio::time::sleep(if loaded {
                every
            } else {
                Duration::from_millis(250)
            })
            .await;
        }
    }

    /// Returns whether every stored bundle is loaded at its active version.
    pub(super) async fn sync(&self) -> bool {
        let Ok(active) = self.store.active_policies().await else {
            return false;
        };
        let loaded = self.registry.versions();
        let mut in_step = true;
        for bundle in active {
            if loaded.get(&bundle.bundle) == Some(&bundle.version) {
                continue;
            }
            in_step = false;
            if !self.control.bring_up(&bundle.bundle).await {
                warn!(
                    bundle = bundle.bundle,
                    "could not load the policy version; retrying at the next sync"
                );
            }
        }
        in_step
    }
}

/// How often the sampled gauges are read.
const GAUGE_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Gauges read from the store's pools and the actor tree every few seconds.
pub(super) struct SampledGauges {
    pool_connections: IntGaugeVec,
    pool_max: IntGauge,
    pool_acquire_timeouts: IntCounter,
    mailbox_depth: IntGaugeVec,
}

impl SampledGauges {
    /// Creates the series and registers them.
    pub(super) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let gauges = Self {
            pool_connections: IntGaugeVec::new(
                Opts::new(
                    "sark_db_pool_connections",
                    "Database connections by state: handed out (in_use) or waiting in the pool (idle)",
                ),
                &["state"],
            )?,
            pool_max: IntGauge::new(
                "sark_db_pool_max_connections",
                "Database connections the pools may open at most",
            )?,
            pool_acquire_timeouts: IntCounter::new(
                "sark_db_pool_acquire_timeouts_total",
                "Requests for a database connection that waited database.acquire_timeout_ms in vain",
            )?,
            mailbox_depth: IntGaugeVec::new(
                Opts::new(
                    "sark_actor_mailbox_depth",
                    "Messages waiting, summed over the running actors of a kind",
                ),
                &["kind"],
            )?,
        };
        registry.register(Box::new(gauges.pool_connections.clone()))?;
        registry.register(Box::new(gauges.pool_max.clone()))?;
        registry.register(Box::new(gauges.pool_acquire_timeouts.clone()))?;
        registry.register(Box::new(gauges.mailbox_depth.clone()))?;
        Ok(gauges)
    }

    /// Samples until the node is gone.
    pub(super) async fn run(self, node: std::sync::Weak<Core>) {
        let mut tick = tokio::time::interval(GAUGE_SAMPLE_EVERY);
        let mut kinds = std::collections::BTreeMap::<&'static str, usize>::new();
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else { return };
            self.observe_pools(node.store.pool_stats());
            kinds.values_mut().for_each(|depth| *depth = 0);
            add_mailboxes(&node.actor_tree().await, &mut kinds);
            for (kind, depth) in &kinds {
                self.mailbox_depth
                    .with_label_values(&[kind])
                    .set(i64::try_from(*depth).unwrap_or(i64::MAX));
            }
        }
    }

    fn observe_pools(&self, stats: PoolStats) {
        self.pool_connections
            .with_label_values(&["in_use"])
            .set(i64::from(stats.in_use));
        self.pool_connections
            .with_label_values(&["idle"])
            .set(i64::from(stats.idle));
        self.pool_max.set(i64::from(stats.max));
        let counted = self.pool_acquire_timeouts.get();
        self.pool_acquire_timeouts
            .inc_by(stats.acquire_timeouts.saturating_sub(counted));
    }
}

/// Adds the mailbox lengths of `children` and their descendants to `kinds`.
fn add_mailboxes(
    children: &[ChildInfo],
    kinds: &mut std::collections::BTreeMap<&'static str, usize>,
) {
    for child in children {
        *kinds.entry(child.kind).or_default() += child.mailbox;
        add_mailboxes(&child.children, kinds);
    }
}
