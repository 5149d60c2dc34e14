//! Rate limits that hold across the cluster.
//!
//! With Redis configured, every bucket is one Redis key updated by an atomic GCRA script
//! (the same rule as the in-process table), so all nodes count together. Redis sits behind
//! a circuit breaker: after a failure the node counts on each key's owner node for
//! `BREAKER_OPEN` (5 s), then tries Redis again. Without Redis, or while it is out, each key is
//! counted by its owner (rendezvous hashing over the live members), asked over the cluster:
//! never no limit, and never a limit per node that N nodes multiply. Checks of keys this
//! node owns also update its own table while Redis answers, so a Redis outage does not hand
//! out a fresh allowance for them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::warn;

use sark_actors::limiter::{RateDecision, RateTable, gcra, gcra_params};
use sark_cluster::membership::MembershipView;
use sark_cluster::placement::{Counted, owner, owner_rate_check};

use crate::store::redis::Redis;

/// How long counting stays on the owner nodes after Redis failed.
const BREAKER_OPEN: Duration = Duration::from_secs(5);
/// How long a check waits for Redis or for an owner node.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// The rate-limit key of a client address: IPv4 per address, IPv6 per /64 (one
/// subscriber's allocation), so rotating addresses within a prefix buys no extra quota.
pub fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// GCRA on one Redis key, on Redis' clock, in microseconds (a limit of a million a minute
/// still has a 60 µs interval). ARGV: interval and window in µs. Returns `{allowed,
/// ahead_us}`, where `ahead_us` is how far the bucket's arrival time was ahead of now before
/// this request (the caller derives the headers from it, as the local table does). The key
/// expires with the bucket, never sooner than a millisecond.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ahead = tat - now
if ahead + interval > window then
  return {0, ahead}
end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.max(1, math.ceil((ahead + interval) / 1000)))
return {1, ahead}
";

/// Counts requests against rate-limit buckets, cluster-wide.
pub struct RateLimiter {
    redis: Option<Arc<Redis>>,
    open_until: Mutex<Option<Instant>>,
    table: Arc<RateTable>,
    membership: Arc<MembershipView>,
    checks: IntCounterVec,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter on `redis` when given, on the owner nodes otherwise.
    pub fn new(
        redis: Option<Arc<Redis>>,
        table: Arc<RateTable>,
        membership: Arc<MembershipView>,
        registry: &Registry,
    ) -> prometheus::Result<Self> {
        let checks = IntCounterVec::new(
            Opts::new(
                "sark_rate_limit_checks_total",
                "Rate-limit checks by where they were counted (redis, owner_node, or here \
                 because the owner did not answer: owner_unreachable) and Redis failures \
                 (redis_error)",
            ),
            &["backend"],
        )?;
        registry.register(Box::new(checks.clone()))?;
        Ok(Self {
            redis,
            open_until: Mutex::new(None),
            table,
            membership,
            checks,
        })
    }

    /// Counts one request against `key`, allowed `limit` requests per minute.
    pub async fn check(&self, key: &str, limit: u32) -> RateDecision {
        if let Some(redis) = &self.redis
            && self.redis_closed().await
        {
            match self.redis_check(redis, key, limit).await {
                Ok(decision) => {
                    self.checks.with_label_values(&["redis"]).inc();
                    return decision;
                }
                Err(err) => {
                    self.checks.with_label_values(&["redis_error"]).inc();
                    warn!(error = %err, "Redis rate limiting failed; counting on the owner nodes");
                    redis.reset().await;
                    *self.open_until.lock().await = Some(Instant::now() + BREAKER_OPEN);
                }
            }
        }
        let (decision, counted) =
            owner_rate_check(&self.membership, &self.table, key, limit, CHECK_TIMEOUT).await;
        let backend = match counted {
            Counted::Here | Counted::Owner => "owner_node",
            Counted::OwnerUnreachable => "owner_unreachable",
        };
        self.checks.with_label_values(&[backend]).inc();
        decision
    }

    async fn redis_closed(&self) -> bool {
        let mut open_until = self.open_until.lock().await;
        match *open_until {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *open_until = None;
                true
            }
            None => true,
        }
    }

    async fn redis_check(
        &self,
        redis: &Redis,
        key: &str,
        limit: u32,
    ) -> Result<RateDecision, String> {
        let (interval, window) = gcra_params(limit);
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let call = async {
            let mut conn = redis.connection().await?;
            // Redis keeps EVAL'd scripts in its script cache: the text is compiled once.
            redis::cmd("EVAL")
                .arg(GCRA_SCRIPT)
                .arg(1)
                // `rate2`: microseconds; the millisecond buckets of older nodes stay apart.
                .arg(format!("sark:rate2:{key}"))
                .arg(micros(interval))
                .arg(micros(window))
                .query_async::<(i64, u64)>(&mut conn)
                .await
        };
        let (allowed, ahead_us) = tokio::time::timeout(CHECK_TIMEOUT, call)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        // Redis decided; the same arithmetic here only derives the headers.
        let (mut decision, _) = gcra(Duration::from_micros(ahead_us), limit);
        if allowed != 1 {
            decision.allowed = false;
            decision.remaining = 0;
            decision.retry_after_secs = decision.retry_after_secs.max(1);
            return Ok(decision);
        }
        decision.allowed = true;
        decision.retry_after_secs = 0;
        let members = self.membership.live_members();
        if owner(key, members.iter().map(String::as_str)) == Some(self.membership.node_id()) {
            self.table.check(key, limit, Instant::now());
        }
        Ok(decision)
    }
}
