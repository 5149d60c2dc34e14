//! Memory of live sessions: `--sessions` session actors under a SessionSupervisor, the
//! same actors a node runs one per active session, in this process; resident memory is
//! read before and after. The baseline is as many actors that do nothing, which is what
//! ractor itself takes per actor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use prometheus::Registry;
use ractor::Actor;
use uuid::Uuid;

use sark::store::{SessionRecord, SessionStore};
use sark_actors::clock::{SharedClock, SystemClock};
use sark_actors::metrics::ActorMetrics;
use sark_actors::session::{
    SessionLimits, SessionSupervisor, SessionSupervisorArguments, SessionSupervisorMessage,
};

use crate::audit::BenchStore;

/// What holding many sessions cost.
#[derive(Clone, Copy, Debug)]
pub struct SessionMemory {
    /// Session actors started.
    pub sessions: usize,
    /// Resident memory they added, in bytes.
    pub added_bytes: u64,
    /// Resident memory as many actors that do nothing added, in bytes.
    pub noop_bytes: u64,
    /// How long starting them took.
    pub started_in: Duration,
}

/// Starts `count` session actors and measures the resident memory they add. Passivation
/// is set beyond the measurement, so every actor is alive when memory is read.
pub async fn session_memory(count: usize) -> anyhow::Result<SessionMemory> {
    let store = BenchStore::sqlite().await?;
    let sessions: Arc<dyn SessionStore> = store.store();
    let clock: SharedClock = Arc::new(SystemClock);
    let now = clock.now();
    let args = SessionSupervisorArguments {
        store: sessions,
        clock,
        limits: SessionLimits {
            idle: chrono::Duration::hours(1),
            passivate_after: Duration::from_secs(3600),
        },
        metrics: ActorMetrics::register(&Registry::new())?,
    };
    let (supervisor, handle) = Actor::spawn(None, SessionSupervisor, args)
        .await
        .map_err(|e| anyhow!("spawning the session supervisor: {e}"))?;
    let before = resident_bytes()?;
    let started = Instant::now();
    for _ in 0..count {
        let record = SessionRecord {
            id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            refresh_hash: format!("{:064x}", rand_u128()),
            auth_method: "password".into(),
            ip: Some("127.0.0.1".into()),
            mfa_verified: false,
            created_at: now,
            last_seen_at: now,
            expires_at: now + chrono::Duration::days(7),
            revoked_at: None,
            revoked_reason: None,
            node_id: "bench".into(),
        };
        supervisor
            .call(
                |reply| SessionSupervisorMessage::Activate(Box::new(record), reply),
                None,
            )
            .await
            .context("activating a session")?
            .success_or(anyhow!("the supervisor did not answer"))?
            .map_err(|e| anyhow!("activating a session: {e}"))?;
    }
    let started_in = started.elapsed();
    let running = supervisor
        .call(SessionSupervisorMessage::Count, None)
        .await
        .context("counting sessions")?
        .success_or(anyhow!("the supervisor did not answer"))?;
    ensure!(running == count, "{running} of {count} session actors run");
    let after = resident_bytes()?;
    supervisor.stop(None);
    handle.await.context("session supervisor")?;
    Ok(SessionMemory {
        sessions: count,
        added_bytes: after.saturating_sub(before),
        noop_bytes: noop_actor_memory(count).await?,
        started_in,
    })
}

/// An actor that does nothing.
struct Noop;

impl Actor for Noop {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<()>,
        _args: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

/// The resident memory `count` actors that do nothing add.
async fn noop_actor_memory(count: usize) -> anyhow::Result<u64> {
    let before = resident_bytes()?;
    let mut actors = Vec::with_capacity(count);
    for _ in 0..count {
        let (actor, handle) = Actor::spawn(None, Noop, ())
            .await
            .map_err(|e| anyhow!("spawning an actor: {e}"))?;
        actors.push((actor, handle));
    }
    let after = resident_bytes()?;
    for (actor, handle) in actors {
        actor.stop(None);
        handle.await.context("an actor")?;
    }
    Ok(after.saturating_sub(before))
}

/// A refresh hash's worth of randomness (its value does not matter here, its size does).
fn rand_u128() -> u128 {
    Uuid::new_v4().as_u128()
}

/// This process's resident memory.
fn resident_bytes() -> anyhow::Result<u64> {
    rss_of("self")
}

/// The resident memory of process `pid` (`self` for this one), from /proc.
pub fn rss_of(pid: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?
        .parse()
        .context("VmRSS")?;
    Ok(kib * 1024)
}
