//! Lockout counters: in Redis when it is configured, otherwise in the store.
//!
//! Both keep one counter per name, changed by one atomic step (a Lua script, a single
//! statement), so failures on every node are counted exactly and survive any node's death.
//! While Redis fails, counting moves to the store for a few seconds (never to no count);
//! reads take the stronger of both, so a lock set in either place holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;
use tracing::warn;

use crate::store::redis::Redis;
use crate::store::{LockState, LockoutRule, Store, StoreResult};

/// How long counting stays in the store after Redis failed.
const BREAKER_OPEN: Duration = Duration::from_secs(5);
/// How long a lockout step waits for Redis.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// One failure, in ms of the node clock. ARGV: now, window, lock_for, threshold. A window
/// that ended starts over at this failure; reaching the threshold locks (again) for
/// `lock_for`. The key lives as long as its window or its lock.
const RECORD_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local lock_for = tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'f', 's', 'u')
local f = tonumber(v[1]) or 0
local s = tonumber(v[2]) or now
local u = tonumber(v[3]) or 0
if s <= now - window then
  f = 0
  s = now
end
f = f + 1
if f >= threshold then u = now + lock_for end
redis.call('HSET', KEYS[1], 'f', f, 's', s, 'u', u)
redis.call('PEXPIRE', KEYS[1], math.max(1, math.max(s + window, u) - now))
return {f, u}
";

/// Removes a counter; returns its lock end (0 when it had none).
const CLEAR_SCRIPT: &str = r"
local u = tonumber(redis.call('HGET', KEYS[1], 'u') or 0)
redis.call('DEL', KEYS[1])
return u
";

/// The lockout counters of the cluster.
pub struct Lockout {
    redis: Option<Arc<Redis>>,
    store: Arc<dyn Store>,
    open_until: Mutex<Option<Instant>>,
    steps: IntCounterVec,
}

fn key(name: &str) -> String {
    format!("sark:lockout:{name}")
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn lock_state(failures: i64, until_ms: i64) -> LockState {
    LockState {
        failures: u32::try_from(failures.max(0)).unwrap_or(u32::MAX),
        locked_until: (until_ms > 0)
            .then(|| DateTime::from_timestamp_millis(until_ms))
            .flatten(),
    }
}

/// The stronger of two states: the later lock, the higher count.
fn stronger(a: Option<LockState>, b: Option<LockState>) -> Option<LockState> {
    match (a, b) {
        (Some(a), Some(b)) => Some(LockState {
            failures: a.failures.max(b.failures),
            locked_until: a.locked_until.max(b.locked_until),
        }),
        (a, b) => a.or(b),
    }
}

impl Lockout {
    /// Counters in Redis when `redis` is given, in `store` otherwise;
    /// `sark_lockout_steps_total{backend}` counts where each step went.
    pub fn new(
        redis: Option<Arc<Redis>>,
        store: Arc<dyn Store>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let steps = IntCounterVec::new(
            Opts::new(
                "sark_lockout_steps_total",
                "Lockout counter reads and updates by backend: redis, or store (no Redis, or Redis failing)",
            ),
            &["backend"],
        )?;
        registry.register(Box::new(steps.clone()))?;
        Ok(Self {
            redis,
            store,
            open_until: Mutex::new(None),
            steps,
        })
    }

    /// Redis, unless it is not configured or failed a moment ago.
    fn redis(&self) -> Option<&Redis> {
        let open = self
            .open_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until);
        self.redis.as_deref().filter(|_| !open)
    }

    fn trip(&self, error: &str) {
        warn!(
            error,
            "Redis lockout counting failed; counting in the store"
        );
        *self
            .open_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + BREAKER_OPEN);
    }

    fn counted(&self, backend: &str) {
        self.steps.with_label_values(&[backend]).inc();
    }

    async fn eval(
        redis: &Redis,
        script: &str,
        name: &str,
        args: &[i64],
    ) -> Result<redis::Value, String> {
        let call = async {
            let mut conn = redis.connection().await?;
            let mut command = redis::cmd("EVAL");
            command.arg(script).arg(1).arg(key(name));
            for arg in args {
                command.arg(*arg);
            }
            command.query_async::<redis::Value>(&mut conn).await
        };
        tokio::time::timeout(REDIS_TIMEOUT, call)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// The counter of `name`, if it has one.
    pub async fn state(&self, name: &str) -> StoreResult<Option<LockState>> {
        let stored = self.store.lock_state(name).await?;
        let Some(redis) = self.redis() else {
            self.counted("store");
            return Ok(stored);
        };
        let read = async {
            let mut conn = redis.connection().await?;
            redis::cmd("HMGET")
                .arg(key(name))
                .arg("f")
                .arg("u")
                .query_async::<(Option<i64>, Option<i64>)>(&mut conn)
                .await
        };
        match tokio::time::timeout(REDIS_TIMEOUT, read).await {
            Ok(Ok((failures, until))) => {
                self.counted("redis");
                let cached = failures.map(|f| lock_state(f, until.unwrap_or(0)));
                Ok(stronger(stored, cached))
            }
            Ok(Err(err)) => {
                self.trip(&err.to_string());
                Ok(stored)
            }
            Err(_) => {
                self.trip("timed out");
                Ok(stored)
            }
        }
    }

    /// Counts one failure of `name` at `now`.
    pub async fn record_failure(
        &self,
        name: &str,
        rule: LockoutRule,
        now: DateTime<Utc>,
    ) -> StoreResult<LockState> {
        if let Some(redis) = self.redis() {
            let args = [
                millis(now),
                rule.window.num_milliseconds(),
                rule.lock_for.num_milliseconds(),
                i64::from(rule.threshold),
            ];
            match Self::eval(redis, RECORD_SCRIPT, name, &args).await {
                Ok(value) => match redis::from_redis_value::<(i64, i64)>(value) {
                    Ok((failures, until)) => {
                        self.counted("redis");
                        return Ok(lock_state(failures, until));
                    }
                    Err(err) => self.trip(&err.to_string()),
                },
                Err(err) => self.trip(&err),
            }
        }
        self.counted("store");
        self.store.record_failure(name, rule, now).await
    }

    /// Clears the counter of `name` everywhere; returns whether it was locked at `now`.
    pub async fn clear(&self, name: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let stored = self.store.clear_failures(name, now).await?;
        let Some(redis) = self.redis.as_deref() else {
            return Ok(stored);
        };
        match Self::eval(redis, CLEAR_SCRIPT, name, &[]).await {
            Ok(value) => {
                let until = redis::from_redis_value::<i64>(value).unwrap_or(0);
                Ok(stored || until > millis(now))
            }
            Err(err) => {
                self.trip(&err);
                Ok(stored)
            }
        }
    }
}

/// One credential check at a time per lockout key on this node: parallel guesses at one
/// name are checked in turn, each after the failures before it are counted, so they
/// cannot outrun the lockout. (Across nodes each node may have one check in flight; the
/// cluster-wide lock comes with the shared limiter.)
#[derive(Default)]
pub struct AttemptLocks {
    inner: std::sync::Mutex<AttemptLocksInner>,
}

#[derive(Default)]
struct AttemptLocksInner {
    keys: HashMap<String, Weak<tokio::sync::Mutex<()>>>,
    /// Dead entries are swept when the map reaches this size, which then doubles, so
    /// sweeping costs amortized constant time per attempt.
    sweep_at: usize,
}

impl AttemptLocks {
    const MIN_SWEEP: usize = 1024;

    pub(crate) async fn turn(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            match inner.keys.get(key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    if inner.keys.len() >= inner.sweep_at.max(Self::MIN_SWEEP) {
                        inner.keys.retain(|_, lock| lock.strong_count() > 0);
                        inner.sweep_at = (inner.keys.len() * 2).max(Self::MIN_SWEEP);
                    }
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    inner.keys.insert(key.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stronger_state_keeps_the_later_lock_and_the_higher_count() {
        let at = |ms| DateTime::from_timestamp_millis(ms);
        let a = LockState {
            failures: 2,
            locked_until: at(5_000),
        };
        let b = LockState {
            failures: 4,
            locked_until: None,
        };
        let both = stronger(Some(a), Some(b)).unwrap();
        assert_eq!(both.failures, 4);
        assert_eq!(both.locked_until, at(5_000));
        assert_eq!(stronger(None, Some(b)), Some(b));
        assert_eq!(lock_state(3, 0).locked_until, None);
    }

    #[tokio::test]
    async fn attempt_locks_take_turns_per_key_and_forget_idle_keys() {
        let locks = AttemptLocks::default();
        let held = locks.turn("alice").await;
        let other = tokio::time::timeout(std::time::Duration::from_secs(5), locks.turn("bob"));
        assert!(other.await.is_ok(), "another key is not blocked");
        let same = tokio::time::timeout(std::time::Duration::from_millis(50), locks.turn("alice"));
        assert!(same.await.is_err(), "the same key waits for its turn");
        drop(held);
        drop(locks.turn("alice").await);
        for i in 0..5000 {
            drop(locks.turn(&format!("user{i}")).await);
        }
        let size = locks.inner.lock().unwrap().keys.len();
        assert!(size <= 2 * AttemptLocks::MIN_SWEEP, "{size} idle keys kept");
    }
}
