//! Assembling a node, phase by phase: the ground it stands on (directories, keys, store),
//! the handles its parts share, bootstrap, the supervision tree, the background jobs, and
//! last the [`Core`] the front door reads.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use prometheus::Registry;
use ractor::{Actor, ActorRef};
use rand::RngCore;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use uuid::Uuid;

use sark_actors::audit::{AuditHandle, AuditWriterSpec};
use sark_actors::clock::{SharedClock, SystemClock};
use sark_actors::limiter::{LimiterSpec, RateTable};
use sark_actors::metrics::ActorMetrics;
use sark_actors::policy::{PolicyActors, PolicyRegistry, PolicySupervisorSpec};
use sark_actors::session::{SessionLimits, SessionSupervisorSpec, Sessions};
use sark_actors::siem::{
    ForwarderSettings, SiemForwarderSpec, SiemMetrics, SiemRegistry, SiemSink,
};
use sark_actors::supervisor::{
    ChildSpec, RestartPolicy, Slot, Supervisor, SupervisorArguments, SupervisorMessage,
    SupervisorSpec,
};
use sark_cluster::membership::{
    ClusterMetrics, ClusterTls, MembershipConfig, MembershipEvent, MembershipMessage,
    MembershipSpec, MembershipView, NoticeHandler, SessionHandler, SummarySource,
};
use sark_cluster::wire::{NodeSummary, Notice};

use super::bootstrap::{Bootstrap, record_admin_created};
use super::jobs::{
    PolicySync, Retention, SampledGauges, catch_up_after_gaps, credential_sync, housekeeping,
    record_membership,
};
use super::{NodeControl, NodeError, voters};
use crate::config::{Config, ConfigError};
use crate::core::revocation::RevocationList;
use crate::core::{ActorSlots, Core, PolicyControl, seconds};
use crate::hashing_keys::KeyCustody;
use crate::idp::jwt::TokenKeys;
use crate::idp::password::PasswordHasherPool;
use crate::secrets;
use crate::store::redis::Redis;
use crate::store::{Backend, Store};

/// Where the node will be once it exists: filled in by the last phase, read by the parts
/// started before it (heartbeats, forwarded session operations).
type CoreCell = Arc<OnceLock<Weak<Core>>>;

/// Starts a node: opens the store, loads keys, bootstraps and spawns the supervision tree.
/// `sessions` makes the handler of the session operations other members forward here,
/// given where the node will be once it exists.
pub async fn start(
    config: Arc<Config>,
    sessions: impl FnOnce(CoreCell) -> SessionHandler,
) -> Result<(Arc<Core>, NodeControl), NodeError> {
    let ground = Ground::lay(config).await?;
    let shared = Shared::new(&ground)?;
    let (fatal_tx, fatal) = watch::channel(None);
    let mut background = Vec::new();
    // SQLite is local: bootstrap before serving, failing start-up on any error.
    // PostgreSQL may be down: keep trying in the background.
    let created_admin = match &ground.backend {
        Backend::Sqlite(_) => shared.bootstrap(&ground).run_once().await?,
        Backend::Postgres(_) => {
            let bootstrap = shared.bootstrap(&ground);
            background.push(tokio::spawn(bootstrap.run_until_done(fatal_tx)));
            None
        }
    };

    let policy_supervisor = Arc::new(shared.policy_supervisor(&ground));
    let (membership_events, membership_changes) = mpsc::unbounded_channel();
    let children = shared.children(
        &ground,
        policy_supervisor.clone(),
        sessions(shared.core.clone()),
        membership_events,
    )?;
    let (supervisor, supervisor_done) = spawn_supervisor(children, &shared.actor_metrics).await?;
    if let Some(admin) = created_admin {
        // The AuditWriter started with the supervisor: record the event before serving.
        record_admin_created(shared.audit.clone(), admin).await;
    }

    let policy_control = Arc::new(PolicyControl {
        actors: shared.policy_actors.clone(),
        supervisor: shared.slots.policies.clone(),
        spec: policy_supervisor,
    });
    let _ = shared.policy_control.set(policy_control.clone());
    let policies_loaded_once = Arc::new(AtomicBool::new(false));
    background.extend(shared.jobs(
        &ground,
        membership_changes,
        &policy_control,
        &policies_loaded_once,
    ));
    info!(
        node_id = ground.node_id,
        backend = ground.store.backend(),
        "node started"
    );

    let mut control = NodeControl {
        node_id: ground.node_id.clone(),
        supervisor: supervisor.clone(),
        supervisor_done,
        backend: ground.backend.clone(),
        fatal,
        background,
        siem_owners: shared
            .sinks
            .iter()
            .map(|sink| sark_actors::siem::lease_owner(&ground.node_id, sink.name()))
            .collect(),
        siem_stopping: shared.siem_stopping.clone(),
    };
    let core_cell = shared.core.clone();
    let (node, request_log_task) = shared.into_core(
        ground,
        Running {
            supervisor,
            policy_control,
            policies_loaded_once,
        },
    )?;
    control.background.push(request_log_task);
    let node = Arc::new(node);
    let _ = core_cell.set(Arc::downgrade(&node));
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
    let gauges = SampledGauges::register(&node.registry).map_err(registering)?;
    control
        .background
        .push(tokio::spawn(gauges.run(Arc::downgrade(&node))));
    // A node without seeds is a cluster of its own: it has no majority to count.
    if !node.config.cluster.seeds.is_empty() {
        voters::first_read(&node).await;
        control
            .background
            .push(tokio::spawn(voters::run(Arc::downgrade(&node))));
    }
    Ok((node, control))
}

/// What a node stands on, checked or made before anything of it runs.
struct Ground {
    config: Arc<Config>,
    hostname: String,
    clock: SharedClock,
    cluster_tls: Option<ClusterTls>,
    node_id: String,
    custody: Arc<KeyCustody>,
    backend: Backend,
    store: Arc<dyn Store>,
    redis: Option<Arc<Redis>>,
}

impl Ground {
    /// Checks the cluster's TLS files and port, prepares the data directory, names the
    /// node, loads (or makes) the secrets key and opens the store.
    async fn lay(config: Arc<Config>) -> Result<Self, NodeError> {
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let cluster_tls = crate::tls::cluster_tls(&config.cluster).map_err(NodeError::Startup)?;
        prepare_data_dir(&config)?;
        if let Some(addr) = config.cluster.listen_addr() {
            // The node server binds inside an actor, where a taken port would only be a
            // restart loop: find out here, and stop with the key and the address.
            std::net::TcpListener::bind(addr).map_err(|e| {
                ConfigError::key("cluster.bind", format!("cannot listen on {addr}: {e}"))
            })?;
        }
        let node_id = resolve_node_id(&config, &hostname)?;
        let (ring, generated) = config.secrets.key_ring(&config.data_dir)?;
        if generated {
            info!(path = %config.data_dir.join(secrets::KEY_FILE).display(), "generated the secrets key");
        }
        let backend = Backend::open(&config).await?;
        let redis = config
            .redis
            .url
            .as_ref()
            .map(|url| Redis::new(url.expose()).map(Arc::new))
            .transpose()?;
        Ok(Self {
            store: backend.store(),
            custody: Arc::new(KeyCustody::new(ring, backend.store())),
            hostname,
            clock: Arc::new(SystemClock),
            cluster_tls,
            node_id,
            backend,
            redis,
            config,
        })
    }
}

/// The handles made before the supervision tree: its actors, the background jobs and the
/// [`Core`] all hold them.
struct Shared {
    registry: Registry,
    actor_metrics: ActorMetrics,
    slots: ActorSlots,
    audit: AuditHandle,
    rate_table: Arc<RateTable>,
    policies: Arc<PolicyRegistry>,
    policy_actors: PolicyActors,
    policy_control: Arc<OnceLock<Arc<PolicyControl>>>,
    membership: Arc<MembershipView>,
    core: CoreCell,
    store_ready: Arc<AtomicBool>,
    tokens: Arc<OnceLock<Arc<TokenKeys>>>,
    revocations: Arc<RevocationList>,
    sinks: Vec<Arc<dyn SiemSink>>,
    siem: Arc<SiemRegistry>,
    siem_stopping: watch::Sender<bool>,
}

/// What the supervision tree's start gave the node.
struct Running {
    supervisor: ActorRef<SupervisorMessage>,
    policy_control: Arc<PolicyControl>,
    policies_loaded_once: Arc<AtomicBool>,
}

/// A metric that could not be registered stops the start.
fn registering(e: impl std::fmt::Display) -> NodeError {
    NodeError::Startup(format!("metrics registration failed: {e}"))
}

impl Shared {
    fn new(ground: &Ground) -> Result<Self, NodeError> {
        let config = &ground.config;
        let registry = Registry::new();
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .map_err(registering)?;
        let actor_metrics = ActorMetrics::register(&registry).map_err(registering)?;
        let slots = ActorSlots::default();
        let audit = AuditHandle::new(
            slots.audit.clone(),
            ground.clock.clone(),
            ground.node_id.clone(),
        );
        let view =
            MembershipView::new(ground.node_id.clone()).speaking(config.cluster.protocol_version);
        // A node of a cluster (it has seeds) counts its majority from the stored membership.
        let membership = Arc::new(if config.cluster.seeds.is_empty() {
            view
        } else {
            view.with_stored_voters()
        });
        let sinks = crate::siem::sinks(config, &ground.node_id)
            .map_err(|e| NodeError::Config(ConfigError::key(&e.key, e.message)))?;
        Ok(Self {
            registry,
            actor_metrics,
            slots,
            audit,
            rate_table: Arc::default(),
            policies: Arc::default(),
            policy_actors: PolicyActors::default(),
            policy_control: Arc::default(),
            membership,
            core: Arc::default(),
            store_ready: Arc::new(AtomicBool::new(false)),
            tokens: Arc::default(),
            revocations: Arc::default(),
            sinks,
            siem: Arc::default(),
            siem_stopping: watch::Sender::new(false),
        })
    }

    fn bootstrap(&self, ground: &Ground) -> Bootstrap {
        Bootstrap {
            config: ground.config.clone(),
            backend: ground.backend.clone(),
            store: ground.store.clone(),
            custody: ground.custody.clone(),
            audit: self.audit.clone(),
            ready: self.store_ready.clone(),
            tokens: self.tokens.clone(),
            revocations: self.revocations.clone(),
        }
    }

    fn policy_supervisor(&self, ground: &Ground) -> PolicySupervisorSpec {
        PolicySupervisorSpec {
            store: ground.store.clone(),
            registry: self.policies.clone(),
            actors: self.policy_actors.clone(),
            slot: self.slots.policies.clone(),
            policy: restart_policy(),
            settings: ground.config.policy.settings(),
            metrics: self.actor_metrics.clone(),
        }
    }

    /// The node supervisor's children, in start order.
    fn children(
        &self,
        ground: &Ground,
        policy_supervisor: Arc<PolicySupervisorSpec>,
        sessions: SessionHandler,
        membership_events: mpsc::UnboundedSender<MembershipEvent>,
    ) -> Result<Vec<Arc<dyn ChildSpec>>, NodeError> {
        let config = &ground.config;
        let (store, clock, node_id) = (&ground.store, &ground.clock, &ground.node_id);
        let siem_metrics = SiemMetrics::register(&self.registry).map_err(registering)?;
        let membership = MembershipConfig {
            tls: ground.cluster_tls.clone(),
            sessions: Some(sessions),
            ..membership_config(
                config,
                node_id,
                node_summary(
                    &self.policies,
                    &self.actor_metrics,
                    &self.store_ready,
                    &self.core,
                ),
                membership_events,
                notice_handler(
                    &self.revocations,
                    &self.policies,
                    &self.policy_control,
                    Sessions::new(self.slots.sessions.clone(), store.clone()),
                    self.membership.clone(),
                ),
                self.rate_table.clone(),
                ClusterMetrics::register(&self.registry).map_err(registering)?,
            )
        };
        Ok(vec![
            Arc::new(SessionSupervisorSpec {
                store: store.clone(),
                clock: clock.clone(),
                limits: SessionLimits {
                    idle: chrono::Duration::seconds(seconds(config.session.idle_seconds)),
                    passivate_after: Duration::from_secs(config.session.actor_idle_seconds),
                },
                slot: self.slots.sessions.clone(),
                metrics: self.actor_metrics.clone(),
            }),
            policy_supervisor,
            Arc::new(SupervisorSpec {
                kind: "siem_supervisor",
                children: self
                    .sinks
                    .iter()
                    .map(|sink| {
                        Arc::new(SiemForwarderSpec {
                            sink: sink.clone(),
                            store: store.clone(),
                            clock: clock.clone(),
                            node_id: node_id.clone(),
                            settings: forwarder_settings(config),
                            registry: self.siem.clone(),
                            metrics: siem_metrics.clone(),
                            slot: Slot::default(),
                            stopping: self.siem_stopping.subscribe(),
                        }) as Arc<dyn ChildSpec>
                    })
                    .collect(),
                policy: RestartPolicy::default(),
                slot: self.slots.siem.clone(),
                metrics: self.actor_metrics.clone(),
            }),
            Arc::new(AuditWriterSpec {
                store: store.clone(),
                chain: node_id.clone(),
                key: ground.custody.clone(),
                sinks: self.sinks.iter().map(|s| s.name().to_owned()).collect(),
                slot: self.slots.audit.clone(),
                metrics: self.actor_metrics.clone(),
                clock: clock.clone(),
                head_statements: Duration::from_secs(config.audit.head_statement_seconds),
            }),
            Arc::new(LimiterSpec {
                table: self.rate_table.clone(),
                slot: self.slots.limiter.clone(),
            }),
            Arc::new(MembershipSpec {
                config: membership,
                view: self.membership.clone(),
                slot: self.slots.membership.clone(),
            }),
        ])
    }

    /// Starts the jobs that need no [`Core`]: database maintenance, the membership audit,
    /// housekeeping and the policy sync.
    fn jobs(
        &self,
        ground: &Ground,
        membership_changes: mpsc::UnboundedReceiver<MembershipEvent>,
        policy_control: &Arc<PolicyControl>,
        policies_loaded_once: &Arc<AtomicBool>,
    ) -> Vec<JoinHandle<()>> {
        let config = &ground.config;
        let mut jobs = Vec::new();
        if let Backend::Postgres(pg) = &ground.backend {
            let (pg, clock) = (pg.clone(), ground.clock.clone());
            jobs.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    tick.tick().await;
                    pg.maintain(clock.now()).await;
                }
            }));
        }
        jobs.push(tokio::spawn(record_membership(
            self.audit.clone(),
            membership_changes,
        )));
        jobs.push(tokio::spawn(housekeeping(
            ground.store.clone(),
            ground.clock.clone(),
            self.store_ready.clone(),
            ground.custody.clone(),
            Retention {
                lockout_window: chrono::Duration::seconds(seconds(config.auth.lockout_seconds)),
                time_series: chrono::Duration::days(seconds(config.audit.retention_days)),
            },
        )));
        jobs.push(tokio::spawn(
            PolicySync {
                loaded_once: policies_loaded_once.clone(),
                store: ground.store.clone(),
                registry: self.policies.clone(),
                control: policy_control.clone(),
                store_ready: self.store_ready.clone(),
            }
            .run(Duration::from_secs(config.policy.sync_seconds)),
        ));
        jobs
    }

    /// The node the front door reads, and the request log's writer task.
    fn into_core(
        self,
        ground: Ground,
        running: Running,
    ) -> Result<(Core, JoinHandle<()>), NodeError> {
        let registry = &self.registry;
        let session_forwards =
            crate::auth::forward::register_metric(registry).map_err(registering)?;
        let lockout = crate::core::lockout::Lockout::new(
            ground.redis.clone(),
            ground.store.clone(),
            registry,
        )
        .map_err(registering)?;
        let (request_log, request_log_task) =
            crate::request_log::RequestLog::start(ground.store.clone(), registry)
                .map_err(registering)?;
        let rate_limiter = crate::limits::RateLimiter::new(
            ground.redis.clone(),
            self.rate_table,
            self.membership.clone(),
            registry,
        )
        .map_err(registering)?;
        let session_store: Arc<dyn sark_actors::store::SessionStore> = ground.store.clone();
        let passwords = ground
            .config
            .auth
            .password_hash_concurrency
            .map_or_else(PasswordHasherPool::default, PasswordHasherPool::new);
        let core = Core {
            sessions: Sessions::new(self.slots.sessions.clone(), session_store),
            config: ground.config,
            node_id: ground.node_id,
            hostname: ground.hostname,
            store: ground.store,
            redis: ground.redis,
            registry: self.registry,
            actor_metrics: self.actor_metrics,
            audit: self.audit,
            rate_limiter,
            policies: self.policies,
            policy_actors: self.policy_actors,
            membership: self.membership,
            slots: self.slots,
            clock: ground.clock,
            started_at: tokio::time::Instant::now(),
            supervisor: running.supervisor,
            store_ready: self.store_ready,
            policies_loaded_once: running.policies_loaded_once,
            policy_control: running.policy_control,
            draining: AtomicBool::new(false),
            left: AtomicBool::new(false),
            voting: tokio::sync::Mutex::new(()),
            policy_compiles: tokio::sync::Semaphore::new(1),
            revocations: self.revocations,
            passwords,
            keys: ground.custody,
            tokens: self.tokens,
            last_key_reload: tokio::sync::Mutex::new(None),
            api_key_touches: std::sync::Mutex::new(std::collections::HashMap::new()),
            request_log,
            siem: self.siem,
            attempt_locks: Default::default(),
            session_forwards,
            lockout,
        };
        Ok((core, request_log_task))
    }
}

/// How the node supervisor and the policy supervisor restart their children.
fn restart_policy() -> RestartPolicy {
    RestartPolicy {
        max_backoff: Duration::from_secs(5),
        ..RestartPolicy::default()
    }
}

/// Spawns the node supervisor over `children`; the receiver turns true once it stopped.
async fn spawn_supervisor(
    children: Vec<Arc<dyn ChildSpec>>,
    metrics: &ActorMetrics,
) -> Result<(ActorRef<SupervisorMessage>, watch::Receiver<bool>), NodeError> {
    let args = SupervisorArguments {
        kind: "node_supervisor",
        children,
        policy: restart_policy(),
        metrics: metrics.clone(),
    };
    let (supervisor, handle) = Actor::spawn(None, Supervisor::default(), args)
        .await
        .map_err(|e| NodeError::Startup(format!("node supervisor failed to start: {e}")))?;
    let (exited, done) = watch::channel(false);
    tokio::spawn(async move {
        let _ = handle.await;
        let _ = exited.send(true);
    });
    Ok((supervisor, done))
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
