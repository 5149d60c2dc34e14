//! Sessions as actors: one SessionActor per active session under the SessionSupervisor.
//!
//! A SessionActor is the live form of one session row. It is activated on demand (the
//! first request that needs the session after login, a restart, or its passivation) by
//! loading the row from the store, and it persists every change through the store before
//! answering. One-time rules (refresh-token rotation) are conditional writes in the store,
//! so they hold even if two instances existed for a moment. An actor that has not been
//! used for a while stops itself; the next request activates it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use tokio::time::Instant;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::mailbox::Mailbox;
use crate::metrics::ActorMetrics;
use crate::store::{RotateOutcome, SessionRecord, SessionStore, StoreError};
use crate::supervisor::{ChildSpec, Slot, spawn_into};

/// Session lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// A session not used for this long expires.
    pub idle: chrono::Duration,
    /// An actor with no message for this long stops itself (the session lives on).
    pub passivate_after: Duration,
}

/// The outcome of presenting a refresh token.
#[derive(Clone, Debug, PartialEq)]
pub enum RefreshOutcome {
    /// The token was current; the session now expects the replacement.
    Rotated(SessionRecord),
    /// The token was already used: the session has been revoked.
    Reused(SessionRecord),
    /// The session is revoked, expired or idle too long.
    Expired,
}

/// Why a session request failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session.
    #[error("no such session")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The session's actor did not answer.
    #[error("session actor unavailable")]
    Unavailable,
}

/// Messages of a [`SessionActor`].
pub enum SessionMessage {
    /// Rotates the refresh token: `presented` must be the current hash; `replacement`
    /// becomes the new one.
    Refresh {
        /// Hash of the presented refresh token.
        presented: String,
        /// Hash of the new refresh token.
        replacement: String,
        /// The answer.
        reply: RpcReplyPort<Result<RefreshOutcome, SessionError>>,
    },
    /// Revokes the session; replies whether it was live, then stops.
    Revoke {
        /// Why (`logout`, `revoked_by_admin`, …).
        reason: String,
        /// The answer.
        reply: RpcReplyPort<Result<bool, SessionError>>,
    },
    /// The session's current state.
    Get(RpcReplyPort<SessionRecord>),
    /// Stops the actor if it has been idle long enough (sent by its own timer).
    Passivate,
    /// Makes the actor panic, to prove a crashed session keeps working.
    #[cfg(feature = "fault-injection")]
    Panic,
}

impl Message for SessionMessage {}

/// The actor of one session.
#[derive(Debug, Default)]
pub struct SessionActor;

/// What a SessionActor starts with.
pub struct SessionArguments {
    /// The session, as just read from the store.
    pub session: SessionRecord,
    /// Where sessions are stored.
    pub store: Arc<dyn SessionStore>,
    /// Time.
    pub clock: SharedClock,
    /// Lifetimes.
    pub limits: SessionLimits,
}

/// The SessionActor's state.
pub struct SessionState {
    session: SessionRecord,
    store: Arc<dyn SessionStore>,
    clock: SharedClock,
    limits: SessionLimits,
    last_message: Instant,
    timer: ractor::concurrency::JoinHandle<()>,
}

impl SessionState {
    fn live(&self, now: DateTime<Utc>) -> bool {
        self.session.live(self.limits.idle, now)
    }
}

impl SessionActor {
    async fn refresh(
        state: &mut SessionState,
        presented: &str,
        replacement: &str,
    ) -> Result<RefreshOutcome, SessionError> {
        let now = state.clock.now();
        if !state.live(now) {
            return Ok(RefreshOutcome::Expired);
        }
        match state
            .store
            .rotate_refresh(state.session.id, presented, replacement, now)
            .await?
        {
            RotateOutcome::Rotated => {
                state.session.refresh_hash = replacement.to_owned();
                state.session.last_seen_at = now;
                Ok(RefreshOutcome::Rotated(state.session.clone()))
            }
            RotateOutcome::Reused => {
                // A used refresh token came back: someone holds a copy. The whole
                // session goes, whoever presented it.
                state
                    .store
                    .revoke_session(state.session.id, "refresh_token_reused", now)
                    .await?;
                state.session.revoked_at = Some(now);
                state.session.revoked_reason = Some("refresh_token_reused".into());
                Ok(RefreshOutcome::Reused(state.session.clone()))
            }
            RotateOutcome::NotFound => Ok(RefreshOutcome::Expired),
        }
    }
}

impl Actor for SessionActor {
    type Msg = SessionMessage;
    type State = SessionState;
    type Arguments = SessionArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let session = args.session;
        let tick = (args.limits.passivate_after / 2).max(Duration::from_millis(50));
        let timer = myself.send_interval(tick, || SessionMessage::Passivate);
        Ok(SessionState {
            session,
            store: args.store,
            clock: args.clock,
            limits: args.limits,
            last_message: Instant::now(),
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
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if !matches!(message, SessionMessage::Passivate) {
            state.last_message = Instant::now();
        }
        match message {
            SessionMessage::Refresh {
                presented,
                replacement,
                reply,
            } => {
                let outcome = Self::refresh(state, &presented, &replacement).await;
                let stop = matches!(
                    outcome,
                    Ok(RefreshOutcome::Reused(_) | RefreshOutcome::Expired)
                );
                let _ = reply.send(outcome);
                if stop {
                    myself.stop(Some("session ended".into()));
                }
            }
            SessionMessage::Revoke { reason, reply } => {
                let now = state.clock.now();
                let result = state
                    .store
                    .revoke_session(state.session.id, &reason, now)
                    .await
                    .map_err(SessionError::from);
                let ok = result.is_ok();
                let _ = reply.send(result);
                if ok {
                    myself.stop(Some("session revoked".into()));
                }
            }
            SessionMessage::Get(reply) => {
                let _ = reply.send(state.session.clone());
            }
            SessionMessage::Passivate => {
                if state.last_message.elapsed() >= state.limits.passivate_after {
                    debug!(session = %state.session.id, "session actor passivated");
                    myself.stop(Some("passivated".into()));
                }
            }
            #[cfg(feature = "fault-injection")]
            SessionMessage::Panic => {
                #[allow(clippy::panic)]
                {
                    panic!("fault injection: session actor panic");
                }
            }
        }
        Ok(())
    }
}

/// Messages of the [`SessionSupervisor`].
pub enum SessionSupervisorMessage {
    /// The running actor of a session, if any.
    Lookup(Uuid, RpcReplyPort<Option<ActorRef<SessionMessage>>>),
    /// Starts the actor of a session read from the store (unless one is running already).
    /// The caller reads the row, so the supervisor never waits on the store.
    Activate(
        Box<SessionRecord>,
        RpcReplyPort<Result<ActorRef<SessionMessage>, SessionError>>,
    ),
    /// Session actors running on this node.
    Count(RpcReplyPort<usize>),
    /// The sessions whose actors run on this node.
    Ids(RpcReplyPort<Vec<Uuid>>),
}

impl Message for SessionSupervisorMessage {}

/// Supervises the session actors of this node.
#[derive(Debug, Default)]
pub struct SessionSupervisor;

/// What the SessionSupervisor starts with.
pub struct SessionSupervisorArguments {
    /// Where sessions are stored.
    pub store: Arc<dyn SessionStore>,
    /// Time.
    pub clock: SharedClock,
    /// Lifetimes.
    pub limits: SessionLimits,
    /// Metrics.
    pub metrics: ActorMetrics,
}

/// The SessionSupervisor's state: the running session actors.
pub struct SessionSupervisorState {
    args: SessionSupervisorArguments,
    running: HashMap<Uuid, ActorRef<SessionMessage>>,
    /// The session of each running actor, so that an ended actor is forgotten without a
    /// search through every session of the node.
    sessions: HashMap<ractor::ActorId, Uuid>,
}

impl SessionSupervisorState {
    fn forget(&mut self, cell: &ActorCell) -> Option<Uuid> {
        let id = self.sessions.remove(&cell.get_id())?;
        self.running.remove(&id);
        self.args
            .metrics
            .running
            .with_label_values(&["session"])
            .dec();
        Some(id)
    }
}

impl Actor for SessionSupervisor {
    type Msg = SessionSupervisorMessage;
    type State = SessionSupervisorState;
    type Arguments = SessionSupervisorArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Creates the series at zero, so dashboards see the kind before a crash.
        args.metrics.restarts.with_label_values(&["session"]);
        args.metrics.running.with_label_values(&["session"]);
        Ok(SessionSupervisorState {
            args,
            running: HashMap::new(),
            sessions: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let running = std::mem::take(&mut state.running);
        state.sessions.clear();
        state
            .args
            .metrics
            .running
            .with_label_values(&["session"])
            .sub(running.len() as i64);
        for actor in running.into_values() {
            actor.stop(Some("supervisor stopping".into()));
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionSupervisorMessage::Lookup(id, reply) => {
                let running = state
                    .running
                    .get(&id)
                    .filter(|a| a.get_status() == ractor::ActorStatus::Running);
                let _ = reply.send(running.cloned());
            }
            SessionSupervisorMessage::Activate(session, reply) => {
                let id = session.id;
                if let Some(actor) = state.running.get(&id)
                    && actor.get_status() == ractor::ActorStatus::Running
                {
                    let _ = reply.send(Ok(actor.clone()));
                    return Ok(());
                }
                let args = SessionArguments {
                    session: *session,
                    store: state.args.store.clone(),
                    clock: state.args.clock.clone(),
                    limits: state.args.limits,
                };
                let result =
                    match Actor::spawn_linked(None, SessionActor, args, myself.get_cell()).await {
                        Ok((actor, _)) => {
                            state.sessions.insert(actor.get_id(), id);
                            match state.running.insert(id, actor.clone()) {
                                // An actor of this session that stopped and was not yet
                                // reported ended: replaced, so the count stays.
                                Some(ended) => {
                                    state.sessions.remove(&ended.get_id());
                                }
                                None => state
                                    .args
                                    .metrics
                                    .running
                                    .with_label_values(&["session"])
                                    .inc(),
                            }
                            Ok(actor)
                        }
                        Err(err) => {
                            warn!(session = %id, error = %err, "session actor failed to start");
                            Err(SessionError::Unavailable)
                        }
                    };
                let _ = reply.send(result);
            }
            SessionSupervisorMessage::Count(reply) => {
                let _ = reply.send(state.running.len());
            }
            SessionSupervisorMessage::Ids(reply) => {
                let _ = reply.send(state.running.keys().copied().collect());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(id) = state.forget(&cell) {
                    // Restarted on demand: the next request reactivates it from the store.
                    state
                        .args
                        .metrics
                        .restarts
                        .with_label_values(&["session"])
                        .inc();
                    warn!(session = %id, error = %err, "session actor crashed; it restarts from the store on next use");
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.forget(&cell);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Spawns the SessionSupervisor under the NodeSupervisor.
pub struct SessionSupervisorSpec {
    /// Where sessions are stored.
    pub store: Arc<dyn SessionStore>,
    /// Time.
    pub clock: SharedClock,
    /// Lifetimes.
    pub limits: SessionLimits,
    /// Where the running instance is published.
    pub slot: Slot<SessionSupervisorMessage>,
    /// Metrics.
    pub metrics: ActorMetrics,
}

#[async_trait]
impl ChildSpec for SessionSupervisorSpec {
    fn kind(&self) -> &'static str {
        "session_supervisor"
    }

    fn mailbox(&self) -> Mailbox {
        self.slot.mailbox()
    }

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = SessionSupervisorArguments {
            store: self.store.clone(),
            clock: self.clock.clone(),
            limits: self.limits,
            metrics: self.metrics.clone(),
        };
        spawn_into(|_| SessionSupervisor, args, supervisor, &self.slot).await
    }
}

/// Reaches the session actors of this node.
#[derive(Clone)]
pub struct Sessions {
    slot: Slot<SessionSupervisorMessage>,
    store: Arc<dyn SessionStore>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a request built by `build` and waits for the answer.
async fn ask<M: Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Result<T, SessionError> {
    match asked(actor, build).await {
        Asked::Answered(answer) => Ok(answer),
        Asked::Gone | Asked::TimedOut => Err(SessionError::Unavailable),
    }
}

/// How a request to an actor went.
enum Asked<T> {
    Answered(T),
    /// The actor ended before it answered: it stopped with the request still queued (a
    /// session ends after a reuse or a revocation), or was gone already.
    Gone,
    TimedOut,
}

async fn asked<M: Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Asked<T> {
    match actor.call(build, Some(CALL_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(answer)) => Asked::Answered(answer),
        Ok(ractor::rpc::CallResult::Timeout) => Asked::TimedOut,
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => Asked::Gone,
    }
}

impl Sessions {
    /// A handle on the supervisor published in `slot`.
    pub fn new(slot: Slot<SessionSupervisorMessage>, store: Arc<dyn SessionStore>) -> Self {
        Self { slot, store }
    }

    /// The running actor of a session, if any; `Unavailable` when the supervisor did not
    /// answer.
    async fn running_actor(
        &self,
        id: Uuid,
    ) -> Result<Option<ActorRef<SessionMessage>>, SessionError> {
        self.slot
            .call(
                |reply| SessionSupervisorMessage::Lookup(id, reply),
                CALL_TIMEOUT,
            )
            .await
            .ok_or(SessionError::Unavailable)
    }

    /// The running actor of a session, activated from the store if needed.
    pub async fn actor(&self, id: Uuid) -> Result<ActorRef<SessionMessage>, SessionError> {
        if let Some(actor) = self.running_actor(id).await? {
            return Ok(actor);
        }
        let session = self
            .store
            .session(id)
            .await?
            .ok_or(SessionError::NotFound)?;
        let session = Box::new(session);
        self.slot
            .call(
                |reply| SessionSupervisorMessage::Activate(session, reply),
                CALL_TIMEOUT,
            )
            .await
            .ok_or(SessionError::Unavailable)?
    }

    /// Asks the session's actor, activated from the store if needed. When that actor ended
    /// before it took the request (a concurrent request ended the session a moment ago), the
    /// request was never handled, so the next instance, loaded from the store, is asked (up
    /// to three instances in all).
    async fn ask_session<T: Send + 'static>(
        &self,
        id: Uuid,
        build: impl Fn(RpcReplyPort<T>) -> SessionMessage,
    ) -> Result<T, SessionError> {
        for _ in 0..3 {
            let actor = self.actor(id).await?;
            match asked(&actor, &build).await {
                Asked::Answered(answer) => return Ok(answer),
                Asked::TimedOut => return Err(SessionError::Unavailable),
                Asked::Gone => {}
            }
        }
        Err(SessionError::Unavailable)
    }

    /// Rotates a session's refresh token.
    pub async fn refresh(
        &self,
        id: Uuid,
        presented: String,
        replacement: String,
    ) -> Result<RefreshOutcome, SessionError> {
        let asked = self
            .ask_session(id, |reply| SessionMessage::Refresh {
                presented: presented.clone(),
                replacement: replacement.clone(),
                reply,
            })
            .await;
        match asked {
            // Its instances kept ending under concurrent requests: the store says why.
            Err(SessionError::Unavailable) if self.ended(id).await => Ok(RefreshOutcome::Expired),
            other => other?,
        }
    }

    /// Whether the store holds session `id` as revoked (or holds it no more).
    async fn ended(&self, id: Uuid) -> bool {
        matches!(
            self.store.session(id).await,
            Ok(None)
                | Ok(Some(SessionRecord {
                    revoked_at: Some(_),
                    ..
                }))
        )
    }

    /// Revokes a session through its actor; returns whether it was live.
    pub async fn revoke(&self, id: Uuid, reason: &str) -> Result<bool, SessionError> {
        let revoked = self
            .ask_session(id, |reply| SessionMessage::Revoke {
                reason: reason.to_owned(),
                reply,
            })
            .await;
        match revoked {
            Ok(result) => result,
            Err(SessionError::NotFound) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// The state of each of `ids` whose actor runs on this node, as the actor holds it.
    pub async fn running_states(&self, ids: &[Uuid]) -> HashMap<Uuid, SessionRecord> {
        let mut states = HashMap::new();
        for &id in ids {
            if let Ok(Some(actor)) = self.running_actor(id).await
                && let Ok(session) = ask(&actor, SessionMessage::Get).await
            {
                states.insert(id, session);
            }
        }
        states
    }

    /// The sessions whose actors run on this node.
    pub async fn running_ids(&self) -> Vec<Uuid> {
        self.slot
            .call(SessionSupervisorMessage::Ids, CALL_TIMEOUT)
            .await
            .unwrap_or_default()
    }

    /// Session actors running on this node.
    pub async fn running(&self) -> usize {
        self.slot
            .call(SessionSupervisorMessage::Count, CALL_TIMEOUT)
            .await
            .unwrap_or(0)
    }
}
