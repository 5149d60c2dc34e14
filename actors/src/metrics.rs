//! Prometheus series of the actor runtime, registered in the node's registry.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Metrics shared by every actor of a node.
#[derive(Clone, Debug)]
pub struct ActorMetrics {
    /// Restarts of a supervised actor after it crashed or stopped unexpectedly.
    pub restarts: IntCounterVec,
    /// Actors currently running.
    pub running: IntGaugeVec,
    /// Children a supervisor failed to spawn (and will retry).
    pub spawn_failures: IntCounterVec,
    /// Audit events committed.
    pub audit_committed: IntCounter,
    /// Audit commits that failed.
    pub audit_commit_failures: IntCounter,
    /// Events per audit group commit.
    pub audit_batch_size: Histogram,
    /// Requests refused by a rate limit.
    pub rate_limited: IntCounterVec,
    /// Active version of each policy bundle on this node.
    pub policy_version: IntGaugeVec,
    /// Policy versions that failed to compile when loaded.
    pub policy_load_failures: IntCounterVec,
    /// Policy evaluations that failed (and therefore denied).
    pub policy_evaluation_errors: IntCounterVec,
    /// Policy evaluations stopped at the time limit.
    pub policy_limit_exceeded: IntCounterVec,
    /// Decision-cache lookups, by bundle and `hit` / `miss`.
    pub policy_cache: IntCounterVec,
    /// Sessions that were logged into.
    pub sessions_created: IntCounter,
    /// Refresh tokens presented a second time (each revoked a session).
    pub refresh_reuse: IntCounter,
    /// Time for a broadcast to be acknowledged by, or fenced from, every member.
    pub broadcast_propagation: Histogram,
}

impl ActorMetrics {
    /// Creates the series and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            restarts: IntCounterVec::new(
                Opts::new(
                    "sark_actor_restarts_total",
                    "Supervised actors restarted after a crash or an unexpected stop",
                ),
                &["kind"],
            )?,
            running: IntGaugeVec::new(
                Opts::new("sark_actor_running", "Supervised actors currently running"),
                &["kind"],
            )?,
            spawn_failures: IntCounterVec::new(
                Opts::new(
                    "sark_actor_spawn_failures_total",
                    "Attempts to start a supervised actor that failed and will be retried",
                ),
                &["kind"],
            )?,
            audit_committed: IntCounter::new(
                "sark_audit_events_committed_total",
                "Audit events committed to the store",
            )?,
            audit_commit_failures: IntCounter::new(
                "sark_audit_commit_failures_total",
                "Audit group commits that failed",
            )?,
            audit_batch_size: Histogram::with_opts(
                HistogramOpts::new("sark_audit_batch_size", "Audit events per group commit")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "sark_rate_limited_total",
                    "Requests refused by a rate limit",
                ),
                &["scope"],
            )?,
            policy_version: IntGaugeVec::new(
                Opts::new(
                    "sark_policy_active_version",
                    "Active version of each policy bundle on this node",
                ),
                &["bundle"],
            )?,
            policy_load_failures: IntCounterVec::new(
                Opts::new(
                    "sark_policy_load_failures_total",
                    "Stored policy versions that failed to compile when loaded",
                ),
                &["bundle"],
            )?,
            policy_evaluation_errors: IntCounterVec::new(
                Opts::new(
                    "sark_policy_evaluation_errors_total",
                    "Policy evaluations that failed and therefore denied",
                ),
                &["bundle"],
            )?,
            policy_limit_exceeded: IntCounterVec::new(
                Opts::new(
                    "sark_policy_evaluation_limit_exceeded_total",
                    "Policy evaluations stopped at the time limit (a denial, or a 400 for tests)",
                ),
                &["bundle"],
            )?,
            policy_cache: IntCounterVec::new(
                Opts::new(
                    "sark_policy_decision_cache_total",
                    "Decision-cache lookups of cacheable bundles",
                ),
                &["bundle", "result"],
            )?,
            sessions_created: IntCounter::new(
                "sark_sessions_created_total",
                "Sessions created by a login",
            )?,
            refresh_reuse: IntCounter::new(
                "sark_refresh_token_reuse_total",
                "Refresh tokens presented again after use; each revoked its session",
            )?,
            broadcast_propagation: Histogram::with_opts(
                HistogramOpts::new(
                    "sark_broadcast_propagation_seconds",
                    "Time until every cluster member acknowledged a revocation or policy \
                     activation, or had its lease waited out",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
            )?,
        };
        registry.register(Box::new(metrics.restarts.clone()))?;
        registry.register(Box::new(metrics.running.clone()))?;
        registry.register(Box::new(metrics.spawn_failures.clone()))?;
        registry.register(Box::new(metrics.audit_committed.clone()))?;
        registry.register(Box::new(metrics.audit_commit_failures.clone()))?;
        registry.register(Box::new(metrics.audit_batch_size.clone()))?;
        registry.register(Box::new(metrics.rate_limited.clone()))?;
        registry.register(Box::new(metrics.policy_version.clone()))?;
        registry.register(Box::new(metrics.policy_load_failures.clone()))?;
        registry.register(Box::new(metrics.policy_evaluation_errors.clone()))?;
        registry.register(Box::new(metrics.policy_limit_exceeded.clone()))?;
        registry.register(Box::new(metrics.policy_cache.clone()))?;
        registry.register(Box::new(metrics.sessions_created.clone()))?;
        registry.register(Box::new(metrics.refresh_reuse.clone()))?;
        registry.register(Box::new(metrics.broadcast_propagation.clone()))?;
        Ok(metrics)
    }
}
