//! SIEM forwarding: one SiemForwarder per configured sink, under the SiemSupervisor.
//!
//! Audit events reach a sink only through the durable outbox: the AuditWriter writes an
//! outbox row per sink in the same transaction as the audit row. A forwarder leases a batch
//! of due rows, hands them to its [`SiemSink`], and marks them delivered only when the sink
//! accepted them. A failed attempt returns the rows with an exponential back-off (with
//! jitter); consecutive failures open a circuit breaker that lets one attempt through after
//! a pause. Rows a sink refuses as malformed are retried one by one, so one bad event never
//! holds back the others; an event the sink refuses on its own is set aside (dead-lettered,
//! counted and logged with its id). Nothing is lost when a sink or the node goes down: rows
//! stay in the outbox until a sink accepts them, and each event carries its audit id, chain,
//! seq and hash, so receivers can drop the duplicates that at-least-once delivery allows.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, SpawnErr};
use rand::Rng;
use serde::Serialize;
use tracing::{info, warn};

use crate::clock::SharedClock;
use crate::mailbox::Mailbox;
use crate::store::{ChainedEvent, OutboxEntry, SiemOutbox, StoreError};
use crate::supervisor::{ChildSpec, Slot, spawn_into};

/// Why a delivery attempt failed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct DeliveryError {
    /// Worth retrying later (timeouts, 408, 429, 5xx, a refused token) rather than a
    /// refusal of the events themselves.
    pub retryable: bool,
    /// What happened, without secrets.
    pub message: String,
}

impl DeliveryError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    /// A refusal of the events themselves.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

/// A SIEM that takes batches of audit events.
#[async_trait]
pub trait SiemSink: Send + Sync {
    /// The sink's name, which is also its outbox queue name (`splunk`, `datadog`).
    fn name(&self) -> &str;
    /// `splunk_hec` or `datadog`.
    fn kind(&self) -> &'static str;
    /// Events per request at most.
    fn max_batch(&self) -> usize;
    /// Delivers a batch; `Ok` only once the sink has accepted every event.
    async fn deliver(&self, events: &[ChainedEvent]) -> Result<(), DeliveryError>;
}

/// What `GET /api/v1/siem/status` shows of a sink.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SinkStatus {
    /// Sink name.
    pub name: String,
    /// `splunk_hec` or `datadog`.
    pub kind: String,
    /// `healthy`, `retrying` (the last attempt failed) or `open` (the breaker is open).
    pub state: String,
    /// Events accepted by the sink, since this node started.
    pub delivered_total: u64,
    /// Failed delivery attempts, since this node started.
    pub failed_attempts_total: u64,
    /// Events the sink refused on their own (set aside, not retried).
    pub dead_lettered_total: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// When the sink last accepted events.
    pub last_delivery_at: Option<DateTime<Utc>>,
}

/// The state of every forwarder of this node, shared with the status endpoint.
#[derive(Debug, Default)]
pub struct SiemRegistry {
    sinks: RwLock<BTreeMap<String, SinkStatus>>,
}

impl SiemRegistry {
    /// Every sink's status.
    pub fn statuses(&self) -> Vec<SinkStatus> {
        self.sinks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, name: &str, kind: &str, change: impl FnOnce(&mut SinkStatus)) {
        let mut sinks = self.sinks.write().unwrap_or_else(PoisonError::into_inner);
        let status = sinks.entry(name.to_owned()).or_insert_with(|| SinkStatus {
            name: name.to_owned(),
            kind: kind.to_owned(),
            state: "healthy".into(),
            ..SinkStatus::default()
        });
        change(status);
    }
}

/// Prometheus series of the forwarders.
#[derive(Clone, Debug)]
pub struct SiemMetrics {
    /// Events accepted by each sink.
    pub delivered: IntCounterVec,
    /// Failed delivery attempts per sink.
    pub failed_attempts: IntCounterVec,
    /// Events a sink refused on their own.
    pub dead_lettered: IntCounterVec,
    /// Events waiting per sink.
    pub queued: IntGaugeVec,
    /// Age in seconds of the oldest waiting event per sink.
    pub lag_seconds: IntGaugeVec,
}

impl SiemMetrics {
    /// Creates the series and registers them.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["sink"]);
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["sink"]);
        let metrics = Self {
            delivered: counter(
                "sark_siem_delivered_total",
                "Audit events accepted by a SIEM sink",
            )?,
            failed_attempts: counter(
                "sark_siem_failed_attempts_total",
                "Failed delivery attempts to a SIEM sink",
            )?,
            dead_lettered: counter(
                "sark_siem_dead_lettered_total",
                "Audit events a SIEM sink refused on their own; set aside and logged",
            )?,
            queued: gauge("sark_siem_queued", "Audit events waiting for a SIEM sink")?,
            lag_seconds: gauge(
                "sark_siem_lag_seconds",
                "Age of the oldest audit event waiting for a SIEM sink",
            )?,
        };
        registry.register(Box::new(metrics.delivered.clone()))?;
        registry.register(Box::new(metrics.failed_attempts.clone()))?;
        registry.register(Box::new(metrics.dead_lettered.clone()))?;
        registry.register(Box::new(metrics.queued.clone()))?;
        registry.register(Box::new(metrics.lag_seconds.clone()))?;
        Ok(metrics)
    }
}

/// How forwarders pace themselves.
#[derive(Clone, Copy, Debug)]
pub struct ForwarderSettings {
    /// Events claimed per attempt at most (further limited by the sink).
    pub batch: usize,
    /// How long a claim is held; another node may retry the rows after it.
    pub lease: Duration,
    /// Pause when nothing is due.
    pub poll: Duration,
    /// First retry delay; doubles per failed attempt of a row.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Consecutive failed attempts that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one attempt is let through.
    pub breaker_open: Duration,
}

impl Default for ForwarderSettings {
    fn default() -> Self {
        Self {
            batch: 500,
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(250),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            breaker_failures: 5,
            breaker_open: Duration::from_secs(30),
        }
    }
}

impl ForwarderSettings {
    /// The delay before a row that failed `attempts` times is due again, with ±20 % jitter.
    pub fn backoff(&self, attempts: i32) -> Duration {
        let exponent = u32::try_from(attempts.clamp(0, 20)).unwrap_or(0);
        let delay = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.backoff_max);
        delay.mul_f64(rand::thread_rng().gen_range(0.8..1.2))
    }
}

/// Messages of a SiemForwarder.
#[derive(Debug)]
pub enum SiemMessage {
    /// Forward what is due, then schedule the next round.
    Tick,
}

impl Message for SiemMessage {}

/// The actor that drains one sink's outbox queue.
#[derive(Debug, Default)]
pub struct SiemForwarder {
    /// Where its own timers count their messages in.
    pub mailbox: Mailbox,
}

/// What a forwarder starts with.
pub struct ForwarderArguments {
    /// The sink.
    pub sink: Arc<dyn SiemSink>,
    /// The outbox.
    pub store: Arc<dyn SiemOutbox>,
    /// Time.
    pub clock: SharedClock,
    /// Lease owner name (node and sink), unique in the cluster.
    pub owner: String,
    /// Pacing.
    pub settings: ForwarderSettings,
    /// Shared status.
    pub registry: Arc<SiemRegistry>,
    /// Metrics.
    pub metrics: SiemMetrics,
    /// Turns true when the node stops: a delivery under way is abandoned and its batch
    /// handed back to the queue at once, for another node.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The forwarder's state.
///
/// Rounds overlap: while one batch is in flight, the previous batch is marked delivered and
/// the next one is claimed, so the store's round trips hide behind the sink's.
pub struct ForwarderState {
    args: ForwarderArguments,
    consecutive_failures: u32,
    open_until: Option<tokio::time::Instant>,
    stats_due: tokio::time::Instant,
    /// The next batch, claimed while the previous one was in flight.
    claimed: Vec<OutboxEntry>,
    /// Rows the sink accepted that are not yet marked delivered in the store.
    unmarked: Vec<i64>,
}

/// The occasion of most hand-backs, as the log line says it.
const STOPPING: &str = "as the node stops";

/// How often the queue depth and lag gauges are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);

impl ForwarderState {
    fn name(&self) -> &str {
        self.args.sink.name()
    }

    fn status(&self, change: impl FnOnce(&mut SinkStatus)) {
        self.args
            .registry
            .update(self.args.sink.name(), self.args.sink.kind(), change);
    }

    async fn refresh_stats(&mut self) {
        if tokio::time::Instant::now() < self.stats_due {
            return;
        }
        self.stats_due = tokio::time::Instant::now() + STATS_EVERY;
        let Ok(stats) = self.args.store.outbox_stats(self.name()).await else {
            return;
        };
        let name = self.name().to_owned();
        self.args
            .metrics
            .queued
            .with_label_values(&[&name])
            .set(i64::try_from(stats.queued).unwrap_or(i64::MAX));
        let lag = stats.oldest_queued_at.map_or(0, |oldest| {
            (self.args.clock.now() - oldest).num_seconds().max(0)
        });
        self.args
            .metrics
            .lag_seconds
            .with_label_values(&[&name])
            .set(lag);
    }

    /// Delivers `events`, unless the node starts stopping first: then `None`, and the
    /// caller hands the batch back (a receiver that got it anyway drops the duplicate by
    /// event id).
    async fn deliver(&self, events: &[ChainedEvent]) -> Option<Result<(), DeliveryError>> {
        let mut stopping = self.args.stopping.clone();
        tokio::select! {
            // A delivery that finished counts, even if the stop came at the same moment.
            biased;
            result = self.args.sink.deliver(events) => Some(result),
            Ok(_) = stopping.wait_for(|stopping| *stopping) => None,
        }
    }

    /// Marks `delivered` and leases the next batch of due rows (empty when nothing is due).
    async fn claim(&self, delivered: &[i64]) -> Result<Vec<OutboxEntry>, StoreError> {
        let now = self.args.clock.now();
        let lease = chrono::Duration::from_std(self.args.settings.lease)
            .unwrap_or_else(|_| chrono::Duration::seconds(60));
        let limit = self
            .args
            .settings
            .batch
            .min(self.args.sink.max_batch())
            .max(1);
        self.args
            .store
            .complete_and_claim_outbox(
                &self.args.owner,
                delivered,
                self.name(),
                now,
                now + lease,
                u32::try_from(limit).unwrap_or(u32::MAX),
            )
            .await
    }

    /// Marks the rows the sink accepted as delivered in the store.
    async fn mark(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let now = self.args.clock.now();
        if let Err(err) = self
            .args
            .store
            .complete_outbox(&self.args.owner, ids, now)
            .await
        {
            // Delivered but not marked: the rows come back after the lease and are sent
            // again; receivers drop the duplicates by event id.
            warn!(sink = self.name(), error = %err, "could not mark SIEM rows delivered");
        }
    }

    /// Marks what is delivered and gives back a batch claimed ahead, without counting an
    /// attempt, so that it is due again at once (here or on another node).
    async fn settle(&mut self) {
        let unmarked = std::mem::take(&mut self.unmarked);
        self.mark(&unmarked).await;
        if !std::mem::take(&mut self.claimed).is_empty() {
            self.hand_back(STOPPING).await;
        }
    }

    /// Gives up every lease this forwarder holds, without counting an attempt; `why`
    /// completes the log line.
    async fn hand_back(&self, why: &str) {
        match self.args.store.hand_over_outbox(&self.args.owner).await {
            Ok(rows) => info!(sink = self.name(), rows, "SIEM batch handed back {why}"),
            Err(err) => {
                warn!(sink = self.name(), error = %err, "could not hand back claimed SIEM rows; their lease expires instead");
            }
        }
    }

    /// One round: deliver a batch while the previous one is marked and the next one
    /// claimed. Returns the pause before the next round.
    async fn round(&mut self) -> Duration {
        if *self.args.stopping.borrow() {
            self.settle().await;
            return self.args.settings.poll;
        }
        self.refresh_stats().await;
        if let Some(until) = self.open_until {
            let now = tokio::time::Instant::now();
            if now < until {
                return until - now;
            }
        }
        let batch = match std::mem::take(&mut self.claimed) {
            claimed if !claimed.is_empty() => claimed,
            _ => {
                let unmarked = std::mem::take(&mut self.unmarked);
                match self.claim(&unmarked).await {
                    Ok(batch) if batch.is_empty() => return self.args.settings.poll,
                    Ok(batch) => batch,
                    Err(err) => {
                        // Nothing was committed: the rows stay to be marked.
                        self.unmarked = unmarked;
                        warn!(sink = self.name(), error = %err, "could not claim SIEM outbox rows");
                        return self.args.settings.poll.max(Duration::from_secs(1));
                    }
                }
            }
        };
        let events: Vec<ChainedEvent> = batch.iter().map(|e| e.event.clone()).collect();
        let unmarked = std::mem::take(&mut self.unmarked);
        let (delivered, next) = tokio::join!(self.deliver(&events), self.claim(&unmarked));
        let next = next.unwrap_or_else(|err| {
            warn!(sink = self.name(), error = %err, "could not claim SIEM outbox rows ahead");
            self.unmarked.extend(&unmarked);
            Vec::new()
        });
        let pause = match delivered {
            Some(Ok(())) => {
                self.delivered(&batch);
                self.claimed = next;
                return Duration::ZERO;
            }
            // Stopping: the batch in flight and the one claimed ahead go back together.
            None => {
                self.hand_back(STOPPING).await;
                return self.args.settings.poll;
            }
            Some(Err(err)) => self.undelivered(&batch, &err).await,
        };
        // The batch claimed ahead goes back only after the failed one is settled, which
        // still holds its lease until then.
        if !next.is_empty() {
            self.hand_back("after a failed delivery").await;
        }
        pause
    }

    /// Settles a batch the sink did not take; returns the pause before the next round.
    async fn undelivered(&mut self, batch: &[OutboxEntry], err: &DeliveryError) -> Duration {
        if !err.retryable && batch.len() > 1 {
            // Find the event(s) the sink refuses, delivering the rest one by one.
            for entry in batch {
                let single = std::slice::from_ref(&entry.event);
                let Some(delivered) = self.deliver(single).await else {
                    self.hand_back(STOPPING).await;
                    return self.args.settings.poll;
                };
                match delivered {
                    Ok(()) => {
                        self.delivered(std::slice::from_ref(entry));
                        let unmarked = std::mem::take(&mut self.unmarked);
                        self.mark(&unmarked).await;
                    }
                    Err(err) if !err.retryable => self.dead_letter(entry, &err).await,
                    Err(err) => self.failed(std::slice::from_ref(entry), &err).await,
                }
            }
            return Duration::ZERO;
        }
        if !err.retryable {
            if let Some(entry) = batch.first() {
                self.dead_letter(entry, err).await;
            }
            return Duration::ZERO;
        }
        self.failed(batch, err).await;
        self.args.settings.poll
    }

    /// Counts rows the sink accepted; they are marked in the store with the next round.
    fn delivered(&mut self, entries: &[OutboxEntry]) {
        self.unmarked.extend(entries.iter().map(|e| e.id));
        let now = self.args.clock.now();
        let n = entries.len() as u64;
        let name = self.name().to_owned();
        self.args
            .metrics
            .delivered
            .with_label_values(&[&name])
            .inc_by(n);
        if self.consecutive_failures > 0 || self.open_until.is_some() {
            info!(sink = name, "SIEM sink accepts events again");
        }
        self.consecutive_failures = 0;
        self.open_until = None;
        self.status(|s| {
            s.state = "healthy".into();
            s.delivered_total += n;
            s.last_delivery_at = Some(now);
        });
    }

    async fn failed(&mut self, entries: &[OutboxEntry], err: &DeliveryError) {
        let name = self.name().to_owned();
        let attempts = entries.iter().map(|e| e.attempts).max().unwrap_or(0);
        let retry_at = self.args.clock.now()
            + chrono::Duration::from_std(self.args.settings.backoff(attempts))
                .unwrap_or_else(|_| chrono::Duration::seconds(1));
        let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
        if let Err(store_err) = self
            .args
            .store
            .release_outbox(&self.args.owner, &ids, &err.message, retry_at)
            .await
        {
            warn!(sink = name, error = %store_err, "could not release SIEM rows; their lease will expire");
        }
        self.args
            .metrics
            .failed_attempts
            .with_label_values(&[&name])
            .inc();
        self.consecutive_failures += 1;
        let open = self.consecutive_failures >= self.args.settings.breaker_failures;
        if open {
            self.open_until = Some(tokio::time::Instant::now() + self.args.settings.breaker_open);
            warn!(sink = name, error = %err, failures = self.consecutive_failures, "SIEM sink failing; breaker open");
        } else {
            warn!(sink = name, error = %err, "SIEM delivery failed; will retry");
        }
        self.status(|s| {
            s.state = if open { "open" } else { "retrying" }.into();
            s.failed_attempts_total += 1;
            s.last_error = Some(err.message.clone());
        });
    }

    async fn dead_letter(&mut self, entry: &OutboxEntry, err: &DeliveryError) {
        let name = self.name().to_owned();
        warn!(sink = name, audit_id = %entry.event.event.id, error = %err, "the SIEM sink refuses this event; set aside");
        let now = self.args.clock.now();
        let reason = format!("refused by the sink: {}", err.message);
        if let Err(store_err) = self
            .args
            .store
            .set_aside_outbox(&self.args.owner, entry.id, &reason, now)
            .await
        {
            warn!(sink = name, error = %store_err, "could not set a refused SIEM row aside");
        }
        self.args
            .metrics
            .dead_lettered
            .with_label_values(&[&name])
            .inc();
        self.status(|s| {
            s.dead_lettered_total += 1;
            s.last_error = Some(err.message.clone());
        });
    }
}

impl Actor for SiemForwarder {
    type Msg = SiemMessage;
    type State = ForwarderState;
    type Arguments = ForwarderArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.registry
            .update(args.sink.name(), args.sink.kind(), |_| {});
        myself.send_message(self.mailbox.post(SiemMessage::Tick))?;
        Ok(ForwarderState {
            args,
            consecutive_failures: 0,
            open_until: None,
            stats_due: tokio::time::Instant::now(),
            claimed: Vec::new(),
            unmarked: Vec::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.settle().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SiemMessage::Tick => {
                let pause = state.round().await;
                if pause.is_zero() {
                    myself.send_message(self.mailbox.post(SiemMessage::Tick))?;
                } else {
                    let mailbox = self.mailbox.clone();
                    myself.send_after(pause, move || mailbox.post(SiemMessage::Tick));
                }
            }
        }
        Ok(())
    }
}

/// The name under which `node_id`'s forwarder of `sink` leases outbox rows.
pub fn lease_owner(node_id: &str, sink: &str) -> String {
    format!("{node_id}/{sink}")
}

/// Spawns the forwarder of one sink.
pub struct SiemForwarderSpec {
    /// The sink.
    pub sink: Arc<dyn SiemSink>,
    /// The outbox.
    pub store: Arc<dyn SiemOutbox>,
    /// Time.
    pub clock: SharedClock,
    /// This node's id (the lease owner is `<node>/<sink>`).
    pub node_id: String,
    /// Pacing.
    pub settings: ForwarderSettings,
    /// Shared status.
    pub registry: Arc<SiemRegistry>,
    /// Metrics.
    pub metrics: SiemMetrics,
    /// Where the forwarder is published.
    pub slot: Slot<SiemMessage>,
    /// Turns true when the node stops.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl ChildSpec for SiemForwarderSpec {
    fn kind(&self) -> &'static str {
        "siem_forwarder"
    }

    fn mailbox(&self) -> Mailbox {
        self.slot.mailbox()
    }

    fn id(&self) -> String {
        self.sink.name().to_owned()
    }

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = ForwarderArguments {
            sink: self.sink.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            owner: lease_owner(&self.node_id, self.sink.name()),
            settings: self.settings,
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            stopping: self.stopping.clone(),
        };
        spawn_into(
            |mailbox| SiemForwarder { mailbox },
            args,
            supervisor,
            &self.slot,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let settings = ForwarderSettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..ForwarderSettings::default()
        };
        for (attempts, nominal) in [(0, 100u64), (1, 200), (3, 800), (10, 2000), (30, 2000)] {
            let delay = settings.backoff(attempts).as_millis() as u64;
            assert!(
                delay >= nominal * 8 / 10 && delay <= nominal * 12 / 10,
                "{attempts} attempts: {delay} ms"
            );
        }
    }
}
