//! A one-for-one supervisor: restarts each crashed child from durable state with bounded,
//! exponential back-off, counts every restart, and escalates a crash loop to its own parent.
//!
//! Children are described by [`ChildSpec`]s. A spec spawns a fresh actor each time; the actor's
//! `pre_start` reloads whatever it needs from the store, so a restart never resumes from the
//! memory of the instance that crashed.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::mailbox::{Counted, Mailbox};
use crate::metrics::ActorMetrics;

/// How long a stopping supervisor waits for each child to stop gracefully.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a supervisor waits for a nested supervisor to describe its children.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a supervisor restarts its children.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// Delay before the first restart.
    pub initial_backoff: Duration,
    /// Upper bound of the delay; it doubles per recent crash up to this.
    pub max_backoff: Duration,
    /// More crashes than this within `window` escalate to the supervisor's own parent.
    pub max_restarts: usize,
    /// The sliding window for `max_restarts`.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_restarts: 10,
            window: Duration::from_secs(60),
        }
    }
}

impl RestartPolicy {
    /// The delay before restarting a child that crashed `recent` times within the window.
    fn backoff(&self, recent: usize) -> Duration {
        let exponent = u32::try_from(recent.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(16);
        self.initial_backoff
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.max_backoff)
    }
}

/// Describes a supervised child and how to start a fresh instance of it.
#[async_trait]
pub trait ChildSpec: Send + Sync + 'static {
    /// The kind of actor, used as the `kind` label of the restart metric.
    fn kind(&self) -> &'static str;
    /// Identifies the child among its siblings (for singletons, the kind).
    fn id(&self) -> String {
        self.kind().to_owned()
    }
    /// Spawns a fresh instance linked to `supervisor`.
    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr>;
    /// The gauge its instances' messages are counted in (its slot's).
    fn mailbox(&self) -> Mailbox;
    /// Whether the child is itself a [`Supervisor`], so the tree can be walked.
    fn is_supervisor(&self) -> bool {
        false
    }
}

/// Where a running actor can be found; the supervisor refills it on every restart.
pub struct Slot<M: Message> {
    inner: Arc<RwLock<Option<ActorRef<M>>>>,
    /// The mailbox gauge of the current instance.
    mailbox: Arc<RwLock<Mailbox>>,
}

impl<M: Message> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            mailbox: self.mailbox.clone(),
        }
    }
}

impl<M: Message> Default for Slot<M> {
    fn default() -> Self {
        Self {
            inner: Arc::new(RwLock::new(None)),
            mailbox: Arc::default(),
        }
    }
}

impl<M: Message> fmt::Debug for Slot<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.get().map(|actor| actor.get_id());
        f.debug_struct("Slot").field("actor", &id).finish()
    }
}

impl<M: Message> Slot<M> {
    /// The current instance, if one was started.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes a new instance.
    pub fn set(&self, actor: ActorRef<M>) {
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = Some(actor);
    }

    /// The mailbox gauge of the current instance.
    pub fn mailbox(&self) -> Mailbox {
        self.mailbox
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A fresh gauge for the instance about to start, made the current one.
    fn next_mailbox(&self) -> Mailbox {
        let fresh = Mailbox::default();
        *self.mailbox.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        fresh
    }

    /// Sends a request built by `build` to the current instance and waits up to `timeout`;
    /// `None` when no instance runs or it did not answer in time.
    pub async fn call<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<T>) -> M,
        timeout: Duration,
    ) -> Option<T> {
        let actor = self.get()?;
        self.mailbox().call(&actor, build, timeout).await
    }
}

/// A child's state as reported to operators.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChildInfo {
    /// Actor kind.
    pub kind: &'static str,
    /// Id among its siblings.
    pub id: String,
    /// `running` or `restarting`.
    pub status: &'static str,
    /// Restarts since the supervisor started.
    pub restarts: u64,
    /// Messages waiting in its mailbox.
    pub mailbox: usize,
    /// The child's own children, when it is a supervisor.
    pub children: Vec<ChildInfo>,
}

/// Messages of a [`Supervisor`].
pub enum SupervisorMessage {
    /// Starts and supervises another child; the reply says whether it started.
    AddChild(Arc<dyn ChildSpec>, RpcReplyPort<Result<(), String>>),
    /// Stops a child and stops supervising it.
    RemoveChild(String),
    /// Spawns a child again once its back-off has elapsed.
    RestartChild(String),
    /// Reports the children and, recursively, theirs.
    GetChildren(RpcReplyPort<Vec<ChildInfo>>),
}

impl Message for SupervisorMessage {}

/// The supervisor actor.
#[derive(Debug, Default)]
pub struct Supervisor {
    /// Where its own restart timers count their messages in.
    pub mailbox: Mailbox,
}

/// What a supervisor starts with.
pub struct SupervisorArguments {
    /// The supervisor's own kind (used in logs).
    pub kind: &'static str,
    /// Children to start right away.
    pub children: Vec<Arc<dyn ChildSpec>>,
    /// Restart behaviour.
    pub policy: RestartPolicy,
    /// Where restarts are counted.
    pub metrics: ActorMetrics,
}

struct Child {
    spec: Arc<dyn ChildSpec>,
    cell: Option<ActorCell>,
    /// Counts the child in `sark_actor_running` while it runs; dropping it (also when the
    /// supervisor's state is dropped after a failure) takes the count back.
    running: Option<RunningGuard>,
    restarts: u64,
    recent_crashes: VecDeque<Instant>,
    spawn_attempts: usize,
    started_order: u64,
}

impl Child {
    fn new(spec: Arc<dyn ChildSpec>) -> Self {
        Self {
            spec,
            cell: None,
            running: None,
            restarts: 0,
            recent_crashes: VecDeque::new(),
            spawn_attempts: 0,
            started_order: 0,
        }
    }
}

struct RunningGuard(prometheus::IntGauge);

impl RunningGuard {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The supervisor's state.
pub struct SupervisorState {
    kind: &'static str,
    children: BTreeMap<String, Child>,
    policy: RestartPolicy,
    metrics: ActorMetrics,
    starts: u64,
    mailbox: Mailbox,
}

impl SupervisorState {
    fn child_by_cell(&mut self, cell: &ActorCell) -> Option<(&String, &mut Child)> {
        let id = cell.get_id();
        self.children
            .iter_mut()
            .find(|(_, child)| child.cell.as_ref().is_some_and(|c| c.get_id() == id))
    }
}

impl Supervisor {
    /// Spawns the child now; on failure schedules another attempt with back-off.
    async fn start_child(
        myself: &ActorRef<SupervisorMessage>,
        state: &mut SupervisorState,
        id: &str,
    ) {
        let Some(child) = state.children.get_mut(id) else {
            return;
        };
        match child.spec.spawn(myself.get_cell()).await {
            Ok(cell) => {
                child.cell = Some(cell);
                child.spawn_attempts = 0;
                state.starts += 1;
                child.started_order = state.starts;
                let gauge = state
                    .metrics
                    .running
                    .with_label_values(&[child.spec.kind()]);
                child.running = Some(RunningGuard::new(gauge));
                // Creates the series at zero, so dashboards see every kind before a crash.
                state
                    .metrics
                    .restarts
                    .with_label_values(&[child.spec.kind()]);
            }
            Err(err) => {
                child.spawn_attempts += 1;
                let delay = state.policy.backoff(child.spawn_attempts);
                state
                    .metrics
                    .spawn_failures
                    .with_label_values(&[child.spec.kind()])
                    .inc();
                warn!(
                    supervisor = state.kind,
                    kind = child.spec.kind(),
                    id,
                    error = %err,
                    retry_in_ms = delay.as_millis() as u64,
                    "supervised actor failed to start"
                );
                let id = id.to_owned();
                let mailbox = state.mailbox.clone();
                myself.send_after(delay, move || {
                    mailbox.post(SupervisorMessage::RestartChild(id))
                });
            }
        }
    }

    /// Handles the death of a child: counts it, and restarts it or escalates.
    fn child_died(
        myself: &ActorRef<SupervisorMessage>,
        state: &mut SupervisorState,
        cell: &ActorCell,
        reason: &str,
    ) -> Result<(), ActorProcessingErr> {
        let policy = state.policy.clone();
        let supervisor = state.kind;
        let metrics = state.metrics.clone();
        let mailbox = state.mailbox.clone();
        let Some((id, child)) = state.child_by_cell(cell) else {
            return Ok(());
        };
        let id = id.clone();
        let kind = child.spec.kind();
        child.cell = None;
        child.running = None;
        let now = Instant::now();
        while child
            .recent_crashes
            .front()
            .is_some_and(|at| now.duration_since(*at) > policy.window)
        {
            child.recent_crashes.pop_front();
        }
        child.recent_crashes.push_back(now);
        if child.recent_crashes.len() > policy.max_restarts {
            error!(
                supervisor,
                kind,
                id,
                reason,
                crashes = child.recent_crashes.len(),
                window_s = policy.window.as_secs(),
                "supervised actor keeps crashing; escalating"
            );
            return Err(format!("child {kind}/{id} crashed too often: {reason}").into());
        }
        child.restarts += 1;
        metrics.restarts.with_label_values(&[kind]).inc();
        let delay = policy.backoff(child.recent_crashes.len());
        warn!(
            supervisor,
            kind,
            id,
            reason,
            restart_in_ms = delay.as_millis() as u64,
            "supervised actor stopped; restarting"
        );
        myself.send_after(delay, move || {
            mailbox.post(SupervisorMessage::RestartChild(id))
        });
        Ok(())
    }

    async fn describe(state: &SupervisorState) -> Vec<ChildInfo> {
        let mut out = Vec::with_capacity(state.children.len());
        for (id, child) in &state.children {
            let mailbox = child.spec.mailbox();
            let mut children = Vec::new();
            if let (true, Some(cell)) = (child.spec.is_supervisor(), child.cell.as_ref()) {
                let actor: ActorRef<SupervisorMessage> = cell.clone().into();
                let nested = mailbox
                    .call(&actor, SupervisorMessage::GetChildren, DESCRIBE_TIMEOUT)
                    .await;
                children = nested.unwrap_or_default();
            }
            out.push(ChildInfo {
                kind: child.spec.kind(),
                id: id.clone(),
                status: if child.cell.is_some() {
                    "running"
                } else {
                    "restarting"
                },
                restarts: child.restarts,
                mailbox: mailbox.len(),
                children,
            });
        }
        out
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMessage;
    type State = SupervisorState;
    type Arguments = SupervisorArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            kind: args.kind,
            children: BTreeMap::new(),
            policy: args.policy,
            metrics: args.metrics,
            starts: 0,
            mailbox: self.mailbox.clone(),
        };
        let mut ids = Vec::with_capacity(args.children.len());
        for spec in args.children {
            let id = spec.id();
            ids.push(id.clone());
            state.children.insert(id, Child::new(spec));
        }
        for id in ids {
            Self::start_child(&myself, &mut state, &id).await;
        }
        info!(
            supervisor = state.kind,
            children = state.children.len(),
            "supervisor started"
        );
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Stop children gracefully, newest first, so each runs its post_stop (the
        // AuditWriter commits what is pending) while the ones it may use still run.
        // Whatever remains afterwards is killed by ractor when this supervisor exits.
        let mut running: Vec<&mut Child> = state
            .children
            .values_mut()
            .filter(|c| c.cell.is_some())
            .collect();
        running.sort_by_key(|c| std::cmp::Reverse(c.started_order));
        for child in running {
            if let Some(cell) = child.cell.take() {
                child.running = None;
                let reason = Some("supervisor stopping".to_owned());
                let _ = cell.stop_and_wait(reason, Some(STOP_TIMEOUT)).await;
            }
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
            SupervisorMessage::AddChild(spec, reply) => {
                let id = spec.id();
                if state.children.contains_key(&id) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                state.children.insert(id.clone(), Child::new(spec));
                Self::start_child(&myself, state, &id).await;
                let started = state.children.get(&id).is_some_and(|c| c.cell.is_some());
                let _ = reply.send(if started {
                    Ok(())
                } else {
                    Err(format!("{id} failed to start; retrying"))
                });
            }
            SupervisorMessage::RemoveChild(id) => {
                if let Some(child) = state.children.remove(&id)
                    && let Some(cell) = child.cell
                {
                    cell.stop(Some("removed by supervisor".into()));
                }
            }
            SupervisorMessage::RestartChild(id) => {
                if state.children.get(&id).is_some_and(|c| c.cell.is_none()) {
                    Self::start_child(&myself, state, &id).await;
                    if let Some(child) = state.children.get(&id)
                        && child.cell.is_some()
                    {
                        info!(
                            supervisor = state.kind,
                            kind = child.spec.kind(),
                            id,
                            restarts = child.restarts,
                            "supervised actor restarted"
                        );
                    }
                }
            }
            SupervisorMessage::GetChildren(reply) => {
                let _ = reply.send(Self::describe(state).await);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                Self::child_died(&myself, state, &cell, &format!("failed: {err}"))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let reason = reason.unwrap_or_else(|| "stopped".into());
                Self::child_died(&myself, state, &cell, &reason)
            }
            _ => Ok(()),
        }
    }
}

/// Spawns a supervisor whose children are added later (sessions, SIEM forwarders).
pub struct SupervisorSpec {
    /// The supervisor's kind.
    pub kind: &'static str,
    /// Its children, started in order.
    pub children: Vec<Arc<dyn ChildSpec>>,
    /// Restart behaviour of its children.
    pub policy: RestartPolicy,
    /// Where the running instance is published.
    pub slot: Slot<SupervisorMessage>,
    /// Metrics.
    pub metrics: ActorMetrics,
}

#[async_trait]
impl ChildSpec for SupervisorSpec {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn mailbox(&self) -> Mailbox {
        self.slot.mailbox()
    }

    fn is_supervisor(&self) -> bool {
        true
    }

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = SupervisorArguments {
            kind: self.kind,
            children: self.children.clone(),
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
        };
        spawn_supervisor(args, supervisor, &self.slot).await
    }
}

/// Spawns an actor, made by `make` with its instance's mailbox gauge (for its own timers),
/// as a linked child and publishes it in `slot`.
pub async fn spawn_into<A: Actor>(
    make: impl FnOnce(Mailbox) -> A,
    args: A::Arguments,
    supervisor: ActorCell,
    slot: &Slot<A::Msg>,
) -> Result<ActorCell, SpawnErr> {
    let mailbox = slot.next_mailbox();
    let counted = Counted {
        actor: make(mailbox.clone()),
        mailbox,
    };
    let (actor_ref, _handle) = Actor::spawn_linked(None, counted, args, supervisor).await?;
    let cell = actor_ref.get_cell();
    slot.set(actor_ref);
    Ok(cell)
}

/// Spawns a [`Supervisor`] as a linked child and publishes it in `slot`.
pub async fn spawn_supervisor(
    args: SupervisorArguments,
    supervisor: ActorCell,
    slot: &Slot<SupervisorMessage>,
) -> Result<ActorCell, SpawnErr> {
    spawn_into(|mailbox| Supervisor { mailbox }, args, supervisor, slot).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A child that counts its starts and graceful stops, and crashes when told to.
    struct Flaky;

    struct Crash;
    impl Message for Crash {}

    impl Actor for Flaky {
        type Msg = Crash;
        type State = Arc<AtomicUsize>;
        type Arguments = (Arc<AtomicUsize>, Arc<AtomicUsize>);

        async fn pre_start(
            &self,
            _: ActorRef<Crash>,
            (starts, stops): (Arc<AtomicUsize>, Arc<AtomicUsize>),
        ) -> Result<Arc<AtomicUsize>, ActorProcessingErr> {
            starts.fetch_add(1, Ordering::SeqCst);
            Ok(stops)
        }

        async fn post_stop(
            &self,
            _: ActorRef<Crash>,
            stops: &mut Arc<AtomicUsize>,
        ) -> Result<(), ActorProcessingErr> {
            stops.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        async fn handle(
            &self,
            _: ActorRef<Crash>,
            _: Crash,
            _: &mut Arc<AtomicUsize>,
        ) -> Result<(), ActorProcessingErr> {
            Err("told to crash".into())
        }
    }

    struct FlakySpec {
        starts: Arc<AtomicUsize>,
        stops: Arc<AtomicUsize>,
        slot: Slot<Crash>,
    }

    #[async_trait]
    impl ChildSpec for FlakySpec {
        fn kind(&self) -> &'static str {
            "flaky"
        }

        fn mailbox(&self) -> Mailbox {
            self.slot.mailbox()
        }

        async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
            spawn_into(
                |_| Flaky,
                (self.starts.clone(), self.stops.clone()),
                supervisor,
                &self.slot,
            )
            .await
        }
    }

    fn metrics() -> ActorMetrics {
        ActorMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_crashed_child_is_restarted_counted_and_republished() {
        let starts = Arc::new(AtomicUsize::new(0));
        let slot = Slot::default();
        let metrics = metrics();
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(1),
            ..RestartPolicy::default()
        };
        let spec = Arc::new(FlakySpec {
            starts: starts.clone(),
            stops: Arc::default(),
            slot: slot.clone(),
        });
        let args = SupervisorArguments {
            kind: "test",
            children: vec![spec],
            policy,
            metrics: metrics.clone(),
        };
        let (supervisor, handle) = Actor::spawn(None, Supervisor::default(), args)
            .await
            .unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        let first = slot.get().unwrap();
        first.cast(Crash).unwrap();
        until("a restart", || starts.load(Ordering::SeqCst) == 2).await;
        until("the new instance to be published", || {
            slot.get().is_some_and(|a| a.get_id() != first.get_id())
        })
        .await;
        assert_eq!(metrics.restarts.with_label_values(&["flaky"]).get(), 1);
        assert_eq!(metrics.running.with_label_values(&["flaky"]).get(), 1);
        let children = ractor::call_t!(supervisor, SupervisorMessage::GetChildren, 1_000).unwrap();
        assert_eq!(children[0].restarts, 1);
        assert_eq!(children[0].status, "running");
        supervisor.stop(None);
        handle.await.unwrap();
        assert_eq!(metrics.running.with_label_values(&["flaky"]).get(), 0);
    }

    #[tokio::test]
    async fn stopping_a_supervisor_stops_its_children_gracefully() {
        let stops = Arc::new(AtomicUsize::new(0));
        let metrics = metrics();
        let children: Vec<Arc<dyn ChildSpec>> = vec![Arc::new(FlakySpec {
            starts: Arc::default(),
            stops: stops.clone(),
            slot: Slot::default(),
        })];
        let args = SupervisorArguments {
            kind: "test",
            children,
            policy: RestartPolicy::default(),
            metrics: metrics.clone(),
        };
        let (supervisor, handle) = Actor::spawn(None, Supervisor::default(), args)
            .await
            .unwrap();
        supervisor.stop(None);
        handle.await.unwrap();
        assert_eq!(
            stops.load(Ordering::SeqCst),
            1,
            "the child ran its post_stop"
        );
        assert_eq!(metrics.running.with_label_values(&["flaky"]).get(), 0);
        assert_eq!(
            metrics.restarts.with_label_values(&["flaky"]).get(),
            0,
            "a requested stop is no crash"
        );
    }

    #[tokio::test]
    async fn a_crash_loop_escalates_to_the_supervisors_parent() {
        let starts = Arc::new(AtomicUsize::new(0));
        let slot: Slot<Crash> = Slot::default();
        let metrics = metrics();
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            max_restarts: 3,
            window: Duration::from_secs(60),
        };
        let spec = Arc::new(FlakySpec {
            starts: starts.clone(),
            stops: Arc::default(),
            slot: slot.clone(),
        });
        let args = SupervisorArguments {
            kind: "test",
            children: vec![spec],
            policy,
            metrics: metrics.clone(),
        };
        let (supervisor, handle) = Actor::spawn(None, Supervisor::default(), args)
            .await
            .unwrap();
        for crash in 1..=4 {
            until("the next instance", || {
                starts.load(Ordering::SeqCst) == crash
            })
            .await;
            until("it to be published", || {
                slot.get()
                    .is_some_and(|a| a.get_status() == ractor::ActorStatus::Running)
            })
            .await;
            slot.get().unwrap().cast(Crash).unwrap();
            if crash < 4 {
                until("the crash to be seen", || {
                    metrics.restarts.with_label_values(&["flaky"]).get() == crash as u64
                })
                .await;
            }
        }
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("supervisor gave up")
            .unwrap();
        assert_eq!(supervisor.get_status(), ractor::ActorStatus::Stopped);
        assert_eq!(metrics.restarts.with_label_values(&["flaky"]).get(), 3);
    }

    /// A child whose handler waits for a permit per message, so messages queue up.
    struct Gated;

    impl Actor for Gated {
        type Msg = Crash;
        type State = Arc<tokio::sync::Semaphore>;
        type Arguments = Arc<tokio::sync::Semaphore>;

        async fn pre_start(
            &self,
            _: ActorRef<Crash>,
            gate: Arc<tokio::sync::Semaphore>,
        ) -> Result<Arc<tokio::sync::Semaphore>, ActorProcessingErr> {
            Ok(gate)
        }

        async fn handle(
            &self,
            _: ActorRef<Crash>,
            _: Crash,
            gate: &mut Arc<tokio::sync::Semaphore>,
        ) -> Result<(), ActorProcessingErr> {
            gate.acquire().await?.forget();
            Ok(())
        }
    }

    struct GatedSpec {
        gate: Arc<tokio::sync::Semaphore>,
        slot: Slot<Crash>,
    }

    #[async_trait]
    impl ChildSpec for GatedSpec {
        fn kind(&self) -> &'static str {
            "gated"
        }

        fn mailbox(&self) -> Mailbox {
            self.slot.mailbox()
        }

        async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
            spawn_into(|_| Gated, self.gate.clone(), supervisor, &self.slot).await
        }
    }

    #[tokio::test]
    async fn the_tree_reports_each_childs_mailbox_length() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let slot = Slot::default();
        let spec = Arc::new(GatedSpec {
            gate: gate.clone(),
            slot: slot.clone(),
        });
        let args = SupervisorArguments {
            kind: "test",
            children: vec![spec],
            policy: RestartPolicy::default(),
            metrics: metrics(),
        };
        let (supervisor, _) = Actor::spawn(None, Supervisor::default(), args)
            .await
            .unwrap();
        let child = slot.get().unwrap();
        for _ in 0..4 {
            assert!(slot.mailbox().cast(&child, Crash));
        }
        let mailbox = || async {
            let tree = ractor::call_t!(supervisor, SupervisorMessage::GetChildren, 1_000).unwrap();
            assert_eq!(tree.len(), 1);
            tree[0].mailbox
        };
        // The first message is being handled (blocked on the gate); three wait behind it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while mailbox().await != 3 {
            assert!(Instant::now() < deadline, "mailbox never settled at 3");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gate.add_permits(2);
        while mailbox().await != 1 {
            assert!(Instant::now() < deadline, "two messages were never taken");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A message that cannot be delivered is not counted.
        child.kill();
        until("the child to stop", || {
            child.get_status() == ractor::ActorStatus::Stopped
        })
        .await;
        assert!(!slot.mailbox().cast(&child, Crash));
        // The restarted instance starts with an empty mailbox: the old queue died with it.
        until("the restart", || {
            slot.get().is_some_and(|a| a.get_id() != child.get_id())
        })
        .await;
        assert_eq!(mailbox().await, 0);
        supervisor.stop(None);
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_restarts: 5,
            window: Duration::from_secs(60),
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(4), Duration::from_millis(800));
        assert_eq!(policy.backoff(5), Duration::from_secs(1));
        assert_eq!(policy.backoff(1_000), Duration::from_secs(1));
    }
}
