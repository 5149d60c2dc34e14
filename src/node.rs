//! A running node: its store, its supervision tree and the state the front door reads.
//!
//! Start-up order: data directory and secrets key, then the store, then the
//! NodeSupervisor. With PostgreSQL down the node still starts: a background task keeps
//! trying to connect, migrate and bootstrap, and until it succeeds the node reports
//! `database` in /health/ready and answers 503 where it needs the store.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::Registry;
use ractor::{Actor, ActorRef};
use rand::RngCore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;

use sark_actors::audit::{AuditHandle, AuditWriterSpec, ChainKey};
use sark_actors::clock::{SharedClock, SystemClock};
use sark_actors::limiter::{LimiterSpec, RateTable};
use sark_actors::metrics::ActorMetrics;
use sark_actors::policy::{PolicyActors, PolicyRegistry, PolicySupervisorSpec};
use sark_actors::session::{SessionLimits, SessionSupervisorSpec, Sessions};
use sark_actors::siem::{ForwarderSettings, SiemForwarderSpec, SiemMetrics, SiemRegistry};
use sark_actors::supervisor::{
    ChildSpec, RestartPolicy, Slot, Supervisor, SupervisorArguments, SupervisorMessage,
    SupervisorSpec,
};
use sark_cluster::membership::{
    ClusterMetrics, MembershipConfig, MembershipEvent, MembershipMessage, MembershipSpec,
    MembershipView, NoticeHandler, SessionHandler, SummarySource,
};
use sark_cluster::wire::{NodeSummary, Notice};

use crate::config::Config;
use crate::core::revocation::RevocationList;
use crate::idp::password::PasswordHasherPool;
use crate::secrets::{self, SecretBox, SecretsKey};
use crate::store::redis::Redis;
use crate::store::{Backend, OpenError};

mod bootstrap;
mod jobs;
mod voters;

use bootstrap::{Bootstrap, record_admin_created};
use jobs::{
    PolicySync, Retention, catch_up_after_gaps, credential_sync, housekeeping, record_membership,
};

use crate::core::{ActorSlots, Core, PolicyControl, seconds};

/// Name of the file that receives a generated bootstrap password.
pub const BOOTSTRAP_PASSWORD_FILE: &str = "bootstrap-admin-password";

/// Why a node could not start, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be opened or initialised.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// The secrets key could not be loaded.
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Something else went wrong at start-up.
    #[error("{0}")]
    Startup(String),
}

/// What stops a node: owned by whoever runs it, not shared with request handlers.
pub struct NodeControl {
    node_id: String,
    supervisor: ActorRef<SupervisorMessage>,
    supervisor_done: watch::Receiver<bool>,
    backend: Backend,
    fatal: watch::Receiver<Option<String>>,
    background: Vec<JoinHandle<()>>,
    /// The names this node's SIEM forwarders lease outbox rows under.
    siem_owners: Vec<String>,
    /// Tells the SIEM forwarders the node is stopping.
    siem_stopping: watch::Sender<bool>,
}

/// Starts a node: opens the store, loads keys, bootstraps and spawns the supervision tree.
/// `sessions` makes the handler of the session operations other members forward here,
/// given where the node will be once it exists.
pub async fn start(
    config: Arc<Config>,
    sessions: impl FnOnce(Arc<std::sync::OnceLock<std::sync::Weak<Core>>>) -> SessionHandler,
) -> Result<(Arc<Core>, NodeControl), NodeError> {
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let clock: SharedClock = Arc::new(SystemClock);
    let cluster_tls = crate::tls::cluster_tls(&config.cluster).map_err(NodeError::Startup)?;
    prepare_data_dir(&config)?;
    if let Some(addr) = config.cluster.listen_addr() {
        // The node server binds inside an actor, where a taken port would only be a
        // restart loop: find out here, and stop with the key and the address.
        std::net::TcpListener::bind(addr).map_err(|e| {
            crate::config::ConfigError::key("cluster.bind", format!("cannot listen on {addr}: {e}"))
        })?;
    }
    let node_id = resolve_node_id(&config, &hostname)?;
    let (key, generated) = SecretsKey::load_or_generate(
        config.secrets.key.as_ref().map(|s| s.expose()),
        &config.data_dir,
    )?;
    if generated {
        info!(path = %config.data_dir.join(secrets::KEY_FILE).display(), "generated the secrets key");
    }
    let backend = Backend::open(&config).await?;
    let store = backend.store();
    let redis = config
        .redis
        .url
        .as_ref()
        .map(|url| Redis::new(url.expose()).map(Arc::new))
        .transpose()?;

    let registry = Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(|e| NodeError::Startup(format!("metrics registration failed: {e}")))?;
    let actor_metrics = ActorMetrics::register(&registry)
        .map_err(|e| NodeError::Startup(format!("metrics registration failed: {e}")))?;
    let slots = ActorSlots::default();
    let audit = AuditHandle::new(slots.audit.clone(), clock.clone(), node_id.clone());
    let rate_table = Arc::new(RateTable::default());
    let policies = Arc::new(PolicyRegistry::default());
    let policy_actors = PolicyActors::default();
    let membership = {
        let view = MembershipView::new(node_id.clone()).speaking(config.cluster.protocol_version);
        // A node of a cluster (it has seeds) counts its majority from the stored membership.
        Arc::new(if !config.cluster.seeds.is_empty() {
            view.with_stored_voters()
        } else {
            view
        })
    };
    let (membership_events, membership_changes) = tokio::sync::mpsc::unbounded_channel();
    let control_cell: Arc<std::sync::OnceLock<Arc<PolicyControl>>> = Arc::default();
    let node_cell: Arc<std::sync::OnceLock<std::sync::Weak<Core>>> = Arc::default();

    let store_ready = Arc::new(AtomicBool::new(false));
    let (fatal_tx, fatal) = watch::channel(None);
    let sealer = SecretBox::new(&key);
    let tokens = Arc::new(std::sync::OnceLock::new());
    let revocations = Arc::new(RevocationList::default());
    let bootstrap = Bootstrap {
        config: config.clone(),
        backend: backend.clone(),
        store: store.clone(),
        key: key.clone(),
        sealer: sealer.clone(),
        audit: audit.clone(),
        ready: store_ready.clone(),
        tokens: tokens.clone(),
        revocations: revocations.clone(),
    };
    // SQLite is local: bootstrap before serving, failing start-up on any error.
    // PostgreSQL may be down: keep trying in the background.
    let mut background = Vec::new();
    let mut created_admin = None;
    match backend {
        Backend::Sqlite(_) => created_admin = bootstrap.run_once().await?,
        Backend::Postgres(_) => background.push(tokio::spawn(bootstrap.run_until_done(fatal_tx))),
    }

    let restart = RestartPolicy {
        max_backoff: Duration::from_secs(5),
        ..RestartPolicy::default()
    };
    let policy_supervisor = Arc::new(PolicySupervisorSpec {
        store: store.clone(),
        registry: policies.clone(),
        actors: policy_actors.clone(),
        slot: slots.policies.clone(),
        policy: restart.clone(),
        settings: config.policy.settings(),
        metrics: actor_metrics.clone(),
    });
    let audit_chain_key = ChainKey::derive(&key.derive("audit chain"));
    let siem_stopping = watch::Sender::new(false);
    let sinks = crate::siem::sinks(&config, &node_id)
        .map_err(|e| NodeError::Config(crate::config::ConfigError::key(&e.key, e.message)))?;
    let siem = Arc::new(SiemRegistry::default());
    let siem_metrics =
        SiemMetrics::register(&registry).map_err(|e| NodeError::Startup(e.to_string()))?;
    let children: Vec<Arc<dyn ChildSpec>> = vec![
        Arc::new(SessionSupervisorSpec {
            store: store.clone(),
            clock: clock.clone(),
            limits: SessionLimits {
                idle: chrono::Duration::seconds(seconds(config.session.idle_seconds)),
                passivate_after: Duration::from_secs(config.session.actor_idle_seconds),
            },
            slot: slots.sessions.clone(),
            metrics: actor_metrics.clone(),
        }),
        policy_supervisor.clone(),
        Arc::new(SupervisorSpec {
            kind: "siem_supervisor",
            children: sinks
                .iter()
                .map(|sink| {
                    Arc::new(SiemForwarderSpec {
                        sink: sink.clone(),
                        store: store.clone(),
                        clock: clock.clone(),
                        node_id: node_id.clone(),
                        settings: forwarder_settings(&config),
                        registry: siem.clone(),
                        metrics: siem_metrics.clone(),
                        slot: Slot::default(),
                        stopping: siem_stopping.subscribe(),
                    }) as Arc<dyn ChildSpec>
                })
                .collect(),
            policy: RestartPolicy::default(),
            slot: slots.siem.clone(),
            metrics: actor_metrics.clone(),
        }),
        Arc::new(AuditWriterSpec {
            store: store.clone(),
            chain: node_id.clone(),
            key: audit_chain_key.clone(),
            sinks: sinks.iter().map(|s| s.name().to_owned()).collect(),
            slot: slots.audit.clone(),
            metrics: actor_metrics.clone(),
            clock: clock.clone(),
            head_statements: Duration::from_secs(config.audit.head_statement_seconds),
        }),
        Arc::new(LimiterSpec {
            table: rate_table.clone(),
            slot: slots.limiter.clone(),
        }),
        Arc::new(MembershipSpec {
            config: MembershipConfig {
                tls: cluster_tls,
                sessions: Some(sessions(node_cell.clone())),
                ..membership_config(
                    &config,
                    &node_id,
                    node_summary(&policies, &actor_metrics, &store_ready, &node_cell),
                    membership_events,
                    notice_handler(
                        &revocations,
                        &policies,
                        &control_cell,
                        Sessions::new(slots.sessions.clone(), store.clone()),
                        membership.clone(),
                    ),
                    rate_table.clone(),
                    ClusterMetrics::register(&registry).map_err(|e| {
                        NodeError::Startup(format!("metrics registration failed: {e}"))
                    })?,
                )
            },
            view: membership.clone(),
            slot: slots.membership.clone(),
        }),
    ];
    let args = SupervisorArguments {
        kind: "node_supervisor",
        children,
        policy: restart,
        metrics: actor_metrics.clone(),
    };
    let (supervisor, supervisor_handle) = Actor::spawn(None, Supervisor::default(), args)
        .await
        .map_err(|e| NodeError::Startup(format!("node supervisor failed to start: {e}")))?;
    if let Some(admin) = created_admin {
        // The AuditWriter started with the supervisor: record the event before serving.
        record_admin_created(audit.clone(), admin).await;
    }
    let (supervisor_exited, supervisor_done) = watch::channel(false);
    tokio::spawn(async move {
        let _ = supervisor_handle.await;
        let _ = supervisor_exited.send(true);
    });
    if let Backend::Postgres(pg) = &backend {
        let pg = pg.clone();
        let clock = clock.clone();
        background.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                pg.maintain(clock.now()).await;
            }
        }));
    }
    background.push(tokio::spawn(record_membership(
        audit.clone(),
        membership_changes,
    )));
    background.push(tokio::spawn(housekeeping(
        store.clone(),
        clock.clone(),
        store_ready.clone(),
        audit_chain_key.clone(),
        Retention {
            lockout_window: chrono::Duration::seconds(seconds(config.auth.lockout_seconds)),
            time_series: chrono::Duration::days(seconds(config.audit.retention_days)),
        },
    )));
    let policies_loaded_once = Arc::new(AtomicBool::new(false));
    let policy_control = Arc::new(PolicyControl {
        actors: policy_actors.clone(),
        supervisor: slots.policies.clone(),
        spec: policy_supervisor,
    });
    let _ = control_cell.set(policy_control.clone());
    background.push(tokio::spawn(
        PolicySync {
            loaded_once: policies_loaded_once.clone(),
            store: store.clone(),
            registry: policies.clone(),
            control: policy_control.clone(),
            store_ready: store_ready.clone(),
        }
        .run(Duration::from_secs(config.policy.sync_seconds)),
    ));
    info!(node_id, backend = store.backend(), "node started");
    let session_forwards = crate::auth::forward::register_metric(&registry)
        .map_err(|e| NodeError::Startup(format!("metrics registration failed: {e}")))?;
    let lockout = crate::core::lockout::Lockout::new(redis.clone(), store.clone(), &registry)
        .map_err(|e| NodeError::Startup(format!("metrics registration failed: {e}")))?;
    let slots_sessions = slots.sessions.clone();
    let session_store: Arc<dyn sark_actors::store::SessionStore> = store.clone();
    let (request_log, request_log_task) =
        crate::request_log::RequestLog::start(store.clone(), &registry)
            .map_err(|e| NodeError::Startup(e.to_string()))?;
    background.push(request_log_task);
    let mut control = NodeControl {
        node_id: node_id.clone(),
        supervisor: supervisor.clone(),
        supervisor_done,
        backend,
        fatal,
        background,
        siem_owners: sinks
            .iter()
            .map(|sink| sark_actors::siem::lease_owner(&node_id, sink.name()))
            .collect(),
        siem_stopping,
    };
    let rate_limiter =
        crate::limits::RateLimiter::new(redis.clone(), rate_table, membership.clone(), &registry)
            .map_err(|e| NodeError::Startup(format!("metrics registration failed: {e}")))?;
    let node = Core {
        config,
        node_id,
        hostname,
        store,
        redis,
        registry,
        actor_metrics,
        audit,
        rate_limiter,
        policies,
        policy_actors,
        membership,
        slots,
        clock,
        started_at: tokio::time::Instant::now(),
        supervisor,
        store_ready,
        policies_loaded_once,
        policy_control,
        draining: AtomicBool::new(false),
        left: AtomicBool::new(false),
        voting: tokio::sync::Mutex::new(()),
        policy_compiles: tokio::sync::Semaphore::new(1),
        revocations,
        sessions: Sessions::new(slots_sessions, session_store),
        passwords: PasswordHasherPool::default(),
        sealer,
        recovery_code_key: key.derive("mfa recovery codes"),
        audit_chain_key,
        tokens,
        last_key_reload: tokio::sync::Mutex::new(None),
        api_key_touches: std::sync::Mutex::new(std::collections::HashMap::new()),
        request_log,
        siem,
        attempt_locks: Default::default(),
        session_forwards,
        lockout,
    };
    let node = Arc::new(node);
    let _ = node_cell.set(Arc::downgrade(&node));
    // Tells the members at once that this node no longer starts, so that sessions are
    // placed on it from now on rather than from the next heartbeat.
    if let Some(membership) = node.slots.membership.get() {
        node.slots
            .membership
            .mailbox()
            .cast(&membership, MembershipMessage::Heartbeat);
    }
    control
        .background
        .push(tokio::spawn(credential_sync(Arc::downgrade(&node))));
    control
        .background
        .push(tokio::spawn(catch_up_after_gaps(Arc::downgrade(&node))));
    // A node without seeds is a cluster of its own: it has no majority to count.
    if !node.config.cluster.seeds.is_empty() {
        voters::first_read(&node).await;
        control
            .background
            .push(tokio::spawn(voters::run(Arc::downgrade(&node))));
    }
    Ok((node, control))
}

impl NodeControl {
    /// Resolves when the node must stop on its own: the supervision tree gave up, or the
    /// background bootstrap hit a permanent error. Returns the reason.
    pub async fn failed(&mut self) -> String {
        let mut fatal = self.fatal.clone();
        tokio::select! {
            () = wait_until_true(&mut self.supervisor_done) => {
                "the node supervisor stopped after repeated actor crashes".to_owned()
            }
            reason = async {
                loop {
                    if let Some(reason) = fatal.borrow_and_update().clone() {
                        return reason;
                    }
                    if fatal.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            } => reason,
        }
    }

    /// Stops the actors (committing pending audit events) and closes the store.
    pub async fn shutdown(mut self) {
        for task in &self.background {
            task.abort();
        }
        // A forwarder waiting on a hung sink would hold the stop up for the grace period.
        self.siem_stopping.send_replace(true);
        self.supervisor.stop(Some("node shutting down".into()));
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            wait_until_true(&mut self.supervisor_done),
        )
        .await;
        self.hand_over_siem_leases().await;
        // A request still stuck after the grace period must not keep the process alive.
        if tokio::time::timeout(Duration::from_secs(5), self.backend.close())
            .await
            .is_err()
        {
            warn!("database connections still busy at shutdown; closing anyway");
        }
        info!(node_id = self.node_id, "node stopped");
    }

    /// Gives up the outbox leases this node's forwarders still hold (a delivery that did
    /// not finish within the stop grace period), so other nodes deliver those rows now
    /// rather than when the leases expire. Receivers drop a duplicate by event id.
    async fn hand_over_siem_leases(&self) {
        let store = self.backend.store();
        for owner in &self.siem_owners {
            match store.hand_over_outbox(owner).await {
                Ok(0) => {}
                Ok(rows) => info!(owner, rows, "SIEM outbox leases handed over"),
                Err(err) => {
                    warn!(owner, error = %err, "could not hand SIEM outbox leases over; they expire instead");
                }
            }
        }
    }
}

const HANDOVER_BATCH: usize = 1000;

/// Tells the other members this node is leaving, so they drop it at once instead of
/// after its lease (a rolling restart is then not a string of failures), and takes it
/// out of the voting membership, so that it no longer counts toward the majority.
pub async fn leave_cluster(node: &Core) {
    // Sessions first: their new owners activate them from the store before this node
    // stops, so a rolling restart is not a string of failovers.
    let ids = node.sessions.running_ids().await;
    for batch in ids.chunks(HANDOVER_BATCH) {
        node.broadcast(Notice::Handover {
            from: node.node_id.clone(),
            sessions: batch.iter().map(Uuid::to_string).collect(),
        })
        .await;
    }
    info!(sessions = ids.len(), "handed this node's sessions over");
    node.left.store(true, Ordering::Release);
    voters::withdraw(node).await;
    let propagation = node.broadcast(Notice::Leaving).await;
    info!(
        elapsed_ms = propagation.elapsed.as_millis(),
        "announced this node's leave to the cluster"
    );
}

fn forwarder_settings(config: &Config) -> ForwarderSettings {
    let siem = &config.siem;
    ForwarderSettings {
        batch: siem.batch_size,
        lease: Duration::from_secs(siem.lease_seconds),
        backoff_max: Duration::from_secs(siem.backoff_max_seconds),
        breaker_failures: siem.breaker_failures,
        breaker_open: Duration::from_secs(siem.breaker_open_seconds),
        ..ForwarderSettings::default()
    }
}

/// Resolves once the flag is true (or its sender is gone).
pub(crate) async fn wait_until_true(flag: &mut watch::Receiver<bool>) {
    loop {
        let done = *flag.borrow_and_update();
        if done || flag.changed().await.is_err() {
            return;
        }
    }
}

/// What this node reports about itself in heartbeats.
/// What this node reports in heartbeats; it says it is starting until its store is
/// initialised and its front door exists, so that no session is placed on it before it can
/// serve one.
fn node_summary(
    policies: &Arc<PolicyRegistry>,
    metrics: &ActorMetrics,
    store_ready: &Arc<AtomicBool>,
    node: &Arc<std::sync::OnceLock<std::sync::Weak<Core>>>,
) -> SummarySource {
    let (policies, metrics) = (policies.clone(), metrics.clone());
    let (store_ready, node) = (store_ready.clone(), node.clone());
    Arc::new(move || NodeSummary {
        sessions: u64::try_from(metrics.running.with_label_values(&["session"]).get()).unwrap_or(0),
        policy_versions: policies.versions(),
        starting: !store_ready.load(Ordering::Acquire) || node.get().is_none(),
        ..NodeSummary::default()
    })
}

fn notice_handler(
    revocations: &Arc<RevocationList>,
    policies: &Arc<PolicyRegistry>,
    control: &Arc<std::sync::OnceLock<Arc<PolicyControl>>>,
    sessions: Sessions,
    view: Arc<MembershipView>,
) -> NoticeHandler {
    let (revocations, policies, control) = (revocations.clone(), policies.clone(), control.clone());
    Arc::new(move |notice| {
        let (revocations, policies, control) =
            (revocations.clone(), policies.clone(), control.clone());
        let (sessions, view) = (sessions.clone(), view.clone());
        Box::pin(async move {
            match notice {
                Notice::Revoked { sessions, api_keys } => {
                    let ids = |ids: Vec<String>| -> Vec<Uuid> {
                        ids.iter().filter_map(|id| id.parse().ok()).collect()
                    };
                    revocations.revoke_sessions(&ids(sessions));
                    revocations.revoke_api_keys(&ids(api_keys));
                    true
                }
                Notice::PolicyActivated { bundle, version } => {
                    let current = || policies.get(&bundle).is_some_and(|c| c.version >= version);
                    if current() {
                        return true;
                    }
                    let Some(control) = control.get() else {
                        return false;
                    };
                    control.bring_up(&bundle).await && current()
                }
                Notice::Handover {
                    from,
                    sessions: handed,
                } => {
                    take_over(&sessions, &view, &from, &handed).await;
                    true
                }
                // The Peer actor handles leaves itself.
                Notice::Leaving => true,
            }
        })
    })
}

/// Activates, from the store, those of `handed` (sessions of the leaving member `from`)
/// that this node owns once `from` is gone.
async fn take_over(sessions: &Sessions, view: &MembershipView, from: &str, handed: &[String]) {
    let remaining: Vec<String> = view
        .live_members()
        .into_iter()
        .filter(|m| m != from)
        .collect();
    let mut taken = 0usize;
    for id in handed.iter().filter_map(|id| id.parse::<Uuid>().ok()) {
        let key = id.to_string();
        let owner = sark_cluster::placement::owner(&key, remaining.iter().map(String::as_str));
        if owner == Some(view.node_id()) && sessions.actor(id).await.is_ok() {
            taken += 1;
        }
    }
    info!(from, taken, "took over the sessions of a leaving member");
}

fn membership_config(
    config: &Config,
    node_id: &str,
    summary: SummarySource,
    events: tokio::sync::mpsc::UnboundedSender<MembershipEvent>,
    notices: NoticeHandler,
    rate_table: Arc<RateTable>,
    metrics: ClusterMetrics,
) -> MembershipConfig {
    let cookie = config
        .cluster
        .cookie
        .as_ref()
        .map(|c| c.expose().to_owned())
        .unwrap_or_else(|| {
            // Alone, nobody needs to join: a random cookie keeps the port closed to others.
            let mut bytes = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut bytes);
            hex::encode(bytes)
        });
    MembershipConfig {
        node_id: node_id.to_owned(),
        bind: config.cluster.listen_addr(),
        cookie,
        seeds: config
            .cluster
            .seeds
            .iter()
            .map(|seed| seed.strip_prefix("dns:").unwrap_or(seed).to_owned())
            .collect(),
        lease: Duration::from_secs(config.cluster.lease_seconds),
        heartbeat: Duration::from_millis(config.cluster.heartbeat_ms),
        summary,
        events: Some(events),
        notices: Some(notices),
        metrics: Some(metrics),
        rate_table: Some(rate_table),
        tls: None,
        sessions: None,
    }
}

/// Creates the data directory, or tightens an existing one, to mode 0700: it holds the
/// secrets key, the SQLite database and the bootstrap password.
fn prepare_data_dir(config: &Config) -> Result<(), NodeError> {
    let dir = &config.data_dir;
    let fail =
        |e: std::io::Error| NodeError::Startup(format!("`data_dir`: {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mode = std::fs::metadata(dir).map_err(fail)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
        if mode & 0o077 != 0 {
            warn!(path = %dir.display(), mode = format!("{mode:o}"), "the data directory was accessible to others; set it to 0700");
        }
    }
    Ok(())
}

/// Name of the file that keeps a generated node id.
const NODE_ID_FILE: &str = "node-id";

/// The configured node name, or one generated once into the data directory (the host
/// name plus a random suffix), so two processes on one host never share an audit chain.
fn resolve_node_id(config: &Config, hostname: &str) -> Result<String, NodeError> {
    if let Some(name) = &config.cluster.node_name {
        return Ok(name.clone());
    }
    let path = config.data_dir.join(NODE_ID_FILE);
    let base: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let mut suffix = [0u8; 3];
    rand::thread_rng().fill_bytes(&mut suffix);
    let generated = format!(
        "{}-{}",
        if base.is_empty() { "sark" } else { &base },
        hex::encode(suffix)
    );
    secrets::write_private_once(&path, generated.as_bytes())?;
    let id = std::fs::read_to_string(&path)
        .map_err(|e| NodeError::Startup(format!("`data_dir`: {}: {e}", path.display())))?;
    let id = id.trim().to_owned();
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !valid {
        return Err(NodeError::Startup(format!(
            "{} does not hold a valid node id; delete it",
            path.display()
        )));
    }
    Ok(id)
}
