//! The Limiter: rate-limit counting for this node.
//!
//! Requests check their bucket on the hot path through a sharded table that many tasks
//! use at once (no actor hop per request); the Limiter actor owns the table's upkeep and
//! evicts buckets that have refilled. Buckets use GCRA (the generic cell rate algorithm):
//! one timestamp per key, a burst of the full per-minute quota, and an exact refill rate.
//! Buckets are soft state: after a restart every client starts with a full bucket.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, SpawnErr};
use tokio::time::Instant;

use crate::mailbox::Mailbox;
use crate::supervisor::{ChildSpec, Slot, spawn_into};

const SHARDS: usize = 64;
const WINDOW: Duration = Duration::from_secs(60);

/// The outcome of one rate-limit check, with what the `RateLimit-*` headers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RateDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests per minute allowed for the key.
    pub limit: u32,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When refused, seconds until one more request is allowed.
    pub retry_after_secs: u64,
}

/// The spacing of requests and the burst window of a bucket allowed `limit` per minute.
pub fn gcra_params(limit: u32) -> (Duration, Duration) {
    (WINDOW / limit.max(1), WINDOW)
}

/// GCRA on one bucket whose theoretical arrival time lies `ahead` of now (zero: a full
/// bucket). Returns the decision and, when the request is allowed, how far ahead of now the
/// bucket's arrival time moves.
pub fn gcra(ahead: Duration, limit: u32) -> (RateDecision, Option<Duration>) {
    let limit = limit.max(1);
    let (interval, window) = gcra_params(limit);
    // A full bucket lets `limit` requests through at once.
    let tolerance = window.saturating_sub(interval);
    let used = ahead + interval;
    if used > window {
        let retry_after = used - window;
        let decision = RateDecision {
            allowed: false,
            limit,
            remaining: 0,
            reset_secs: ceil_secs(ahead),
            retry_after_secs: ceil_secs(retry_after).max(1),
        };
        return (decision, None);
    }
    let headroom = tolerance.saturating_sub(used.saturating_sub(interval));
    let remaining = (headroom.as_nanos() / interval.as_nanos().max(1)) as u32;
    let decision = RateDecision {
        allowed: true,
        limit,
        remaining: remaining.min(limit - 1),
        reset_secs: ceil_secs(used),
        retry_after_secs: 0,
    };
    (decision, Some(used))
}

/// Rate-limit buckets shared by every request task of the node.
#[derive(Debug)]
pub struct RateTable {
    shards: Vec<Mutex<HashMap<String, Instant>>>,
    hasher: RandomState,
}

impl Default for RateTable {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl RateTable {
    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Instant>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[index]
    }

    /// Counts one request against `key`, allowed `limit` requests per minute.
    pub fn check(&self, key: &str, limit: u32, now: Instant) -> RateDecision {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tat = shard.get(key).copied().unwrap_or(now).max(now);
        let (decision, ahead) = gcra(tat.duration_since(now), limit);
        if let Some(ahead) = ahead {
            shard.insert(key.to_owned(), now + ahead);
        }
        decision
    }

    /// Drops buckets that are full again; returns how many were dropped.
    pub fn evict_refilled(&self, now: Instant) -> usize {
        let mut evicted = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            shard.retain(|_, tat| *tat > now);
            evicted += before - shard.len();
        }
        evicted
    }

    /// Number of buckets held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Messages of the [`Limiter`].
pub enum LimiterMessage {
    /// Evicts refilled buckets (sent by the actor's own timer).
    Evict,
    /// Makes the limiter panic, to prove supervision restarts it.
    #[cfg(feature = "fault-injection")]
    Panic,
}

impl Message for LimiterMessage {}

/// The actor that owns the node's rate table.
#[derive(Debug, Default)]
pub struct Limiter {
    /// Where its own timers count their messages in.
    pub mailbox: Mailbox,
}

/// What the limiter starts with.
pub struct LimiterArguments {
    /// The table that request tasks check.
    pub table: Arc<RateTable>,
    /// How often refilled buckets are evicted.
    pub evict_every: Duration,
}

/// The limiter's state.
pub struct LimiterState {
    table: Arc<RateTable>,
    timer: ractor::concurrency::JoinHandle<()>,
}

impl Actor for Limiter {
    type Msg = LimiterMessage;
    type State = LimiterState;
    type Arguments = LimiterArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mailbox = self.mailbox.clone();
        let timer = myself.send_interval(args.evict_every, move || {
            mailbox.post(LimiterMessage::Evict)
        });
        Ok(LimiterState {
            table: args.table,
            timer,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            LimiterMessage::Evict => {
                state.table.evict_refilled(Instant::now());
            }
            #[cfg(feature = "fault-injection")]
            LimiterMessage::Panic => {
                #[allow(clippy::panic)]
                {
                    panic!("fault injection: limiter panic");
                }
            }
        }
        Ok(())
    }
}

/// Spawns the Limiter under the NodeSupervisor.
pub struct LimiterSpec {
    /// The table request tasks check.
    pub table: Arc<RateTable>,
    /// Where the running instance is published.
    pub slot: Slot<LimiterMessage>,
}

#[async_trait]
impl ChildSpec for LimiterSpec {
    fn kind(&self) -> &'static str {
        "limiter"
    }

    fn mailbox(&self) -> Mailbox {
        self.slot.mailbox()
    }

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = LimiterArguments {
            table: self.table.clone(),
            evict_every: Duration::from_secs(30),
        };
        spawn_into(|mailbox| Limiter { mailbox }, args, supervisor, &self.slot).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_the_whole_quota_then_refuses() {
        let table = RateTable::default();
        let now = Instant::now();
        for i in 0..10 {
            let d = table.check("ip:1", 10, now);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
        }
        let refused = table.check("ip:1", 10, now);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after_secs, 6);
        // Another key has its own bucket.
        assert!(table.check("ip:2", 10, now).allowed);
    }

    #[test]
    fn the_bucket_refills_at_the_configured_rate() {
        let table = RateTable::default();
        let now = Instant::now();
        for _ in 0..60 {
            assert!(table.check("k", 60, now).allowed);
        }
        assert!(!table.check("k", 60, now).allowed);
        let later = now + Duration::from_secs(1);
        assert!(table.check("k", 60, later).allowed);
        assert!(!table.check("k", 60, later).allowed);
    }

    #[test]
    fn refilled_buckets_are_evicted() {
        let table = RateTable::default();
        let now = Instant::now();
        table.check("a", 60, now);
        table.check("b", 60, now);
        assert_eq!(table.len(), 2);
        assert_eq!(table.evict_refilled(now), 0);
        assert_eq!(table.evict_refilled(now + Duration::from_secs(2)), 2);
        assert!(table.is_empty());
    }
}
