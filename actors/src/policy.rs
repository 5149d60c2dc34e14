//! Policy bundles: one PolicyActor per bundle under the PolicySupervisor.
//!
//! The store is the source of truth. A PolicyActor loads its bundle's active version,
//! compiles it with regorus and publishes the compiled snapshot in the node's
//! [`PolicyRegistry`]. Request tasks evaluate against that immutable snapshot in parallel
//! (no actor hop on the hot path); a new version replaces the snapshot atomically.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SpawnErr};
use tracing::{info, warn};

use regorus::utils::limits::{ExecutionTimerConfig, LimitError};

pub use analysis::{BundleTraits, FORBIDDEN_BUILTINS, VOLATILE_CONTEXT};
pub use cache::DecisionCache;

use crate::mailbox::Mailbox;
use crate::metrics::ActorMetrics;
use crate::store::{PolicyStore, StoreError};
use crate::supervisor::{
    ChildSpec, RestartPolicy, Slot, SupervisorArguments, SupervisorMessage, spawn_into,
    spawn_supervisor,
};

/// Which Rego syntax a bundle is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegoSyntax {
    /// `allow if { … }` (OPA 1.x, the regorus default).
    V1,
    /// `allow { … }` (OPA 0.x).
    V0,
}

mod analysis;
mod bounds;
mod cache;

pub use bounds::{MAX_NESTING, MAX_NESTING_COST, MAX_SOURCE_BYTES, MAX_STRING_BYTES};

/// Why a policy could not be compiled or evaluated.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The source does not compile, or calls a forbidden builtin; the message names the line.
    #[error("{0}")]
    Invalid(String),
    /// Evaluation failed.
    #[error("evaluation failed: {0}")]
    Evaluation(String),
    /// Evaluation ran past the time limit.
    #[error("evaluation stopped after the {0:?} limit")]
    LimitExceeded(Duration),
    /// Compiling took longer than its deadline.
    #[error("compiling took longer than the {0:?} limit")]
    CompileTimeout(Duration),
}

/// How long a compile may take before its caller stops waiting. The source bounds keep
/// any compile well inside it; it is the backstop.
pub const COMPILE_DEADLINE: Duration = Duration::from_secs(10);

/// [`compile`] on a blocking thread, off the async workers, waited for at most `deadline`.
pub async fn compile_off_thread(
    bundle: String,
    version: i64,
    sha256: String,
    source: String,
    settings: PolicySettings,
    deadline: Duration,
) -> Result<CompiledBundle, PolicyError> {
    let compiling =
        tokio::task::spawn_blocking(move || compile(&bundle, version, &sha256, &source, &settings));
    match tokio::time::timeout(deadline, compiling).await {
        Ok(Ok(compiled)) => compiled,
        Ok(Err(panicked)) => Err(PolicyError::Invalid(format!(
            "the compiler failed: {panicked}"
        ))),
        Err(_) => Err(PolicyError::CompileTimeout(deadline)),
    }
}

/// How bundles are compiled and evaluated on this node.
#[derive(Clone, Copy, Debug)]
pub struct PolicySettings {
    /// Wall-clock limit of one evaluation.
    pub eval_timeout: Duration,
    /// Answers kept per cacheable bundle version (0: no cache).
    pub cache_entries: usize,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            eval_timeout: Duration::from_millis(100),
            cache_entries: 10_000,
        }
    }
}

/// A compiled, immutable version of a bundle.
pub struct CompiledBundle {
    /// Bundle name.
    pub bundle: String,
    /// Stored version number.
    pub version: i64,
    /// Hex SHA-256 of the source.
    pub sha256: String,
    /// Rego package path, e.g. `data.sark.authz`.
    pub package: String,
    /// Syntax the source was accepted in.
    pub syntax: RegoSyntax,
    /// What the source reads and calls.
    pub traits: BundleTraits,
    engine: regorus::Engine,
    eval_timeout: Duration,
    /// Present for cacheable bundles.
    cache: Option<DecisionCache>,
}

impl fmt::Debug for CompiledBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledBundle")
            .field("bundle", &self.bundle)
            .field("version", &self.version)
            .field("package", &self.package)
            .field("syntax", &self.syntax)
            .field("traits", &self.traits)
            .finish_non_exhaustive()
    }
}

fn load(
    source: &str,
    syntax: RegoSyntax,
    timeout: Duration,
) -> Result<(regorus::Engine, String), String> {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(syntax == RegoSyntax::V0);
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: timeout,
        check_interval: NonZeroU32::MIN.saturating_add(63),
    });
    let package = engine
        .add_policy("policy.rego".to_owned(), source.to_owned())
        .map_err(|e| e.to_string())?;
    Ok((engine, package))
}

/// Parses and compiles a Rego source, accepting either syntax, and refuses sources that
/// call a builtin reaching outside the process.
pub fn compile(
    bundle: &str,
    version: i64,
    sha256: &str,
    source: &str,
    settings: &PolicySettings,
) -> Result<CompiledBundle, PolicyError> {
    bounds::check(source)?;
    let timeout = settings.eval_timeout;
    let (engine, package, syntax) = match load(source, RegoSyntax::V1, timeout) {
        Ok((engine, package)) => (engine, package, RegoSyntax::V1),
        Err(v1_error) => match load(source, RegoSyntax::V0, timeout) {
            Ok((engine, package)) => (engine, package, RegoSyntax::V0),
            Err(_) => return Err(PolicyError::Invalid(one_line(&v1_error))),
        },
    };
    let ast = engine
        .get_ast_as_json()
        .and_then(|json| Ok(serde_json::from_str(&json)?))
        .map_err(|e| PolicyError::Invalid(format!("the syntax tree could not be read: {e}")))?;
    let traits = analysis::analyze(&ast).map_err(PolicyError::Invalid)?;
    let mut engine = engine;
    // The first evaluation prepares the engine (about half the cost of an evaluation of
    // `authorization`); doing it here means every per-request clone starts prepared.
    let _ = engine.eval_bool_query("true".to_owned(), false);
    let cache = (traits.cacheable() && settings.cache_entries > 0)
        .then(|| DecisionCache::new(settings.cache_entries));
    Ok(CompiledBundle {
        bundle: bundle.to_owned(),
        version,
        sha256: sha256.to_owned(),
        package,
        syntax,
        traits,
        engine,
        eval_timeout: timeout,
        cache,
    })
}

/// regorus' multi-line diagnostic (`--> policy.rego:L:C`, the source line, `error: …`) as
/// one line that starts with the line and column.
fn one_line(diagnostic: &str) -> String {
    let position = diagnostic
        .split("policy.rego:")
        .nth(1)
        .and_then(|rest| {
            let mut parts = rest.split(|c: char| !c.is_ascii_digit());
            let line: u32 = parts.next()?.parse().ok()?;
            let column: u32 = parts.next()?.parse().ok()?;
            Some(format!("line {line}, column {column}: "))
        })
        .unwrap_or_default();
    let message = diagnostic
        .lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .unwrap_or_else(|| diagnostic.trim());
    format!("{position}{message}")
}

/// A rule's value and whether it came from the decision cache.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleValue {
    /// The value; `None` when the rule is undefined for the input.
    pub value: Option<serde_json::Value>,
    /// Whether it was answered from the cache.
    pub cached: bool,
}

impl CompiledBundle {
    /// The same compiled source under the version number the store gave it.
    pub fn with_version(mut self, version: i64) -> Self {
        self.version = version;
        // Answers computed before (a lock-out check) stay with the number they had.
        self.cache = self.cache.map(|old| DecisionCache::new(old.capacity()));
        self
    }

    /// Whether answers of this version are cached.
    pub fn cached(&self) -> bool {
        self.cache.is_some()
    }

    /// Evaluates `rule` of the bundle's package (e.g. `allow`) for `input`, from the
    /// decision cache when the bundle is cacheable; counts cache lookups, time-limit stops
    /// and failures in `metrics`.
    pub fn eval(
        &self,
        rule: &str,
        input: &serde_json::Value,
        metrics: &ActorMetrics,
    ) -> Result<RuleValue, PolicyError> {
        let Some(cache) = &self.cache else {
            let value = self.eval_counted(rule, input, metrics)?;
            return Ok(RuleValue {
                value,
                cached: false,
            });
        };
        let key = cache::key(rule, input);
        let counter = |result: &str| {
            metrics
                .policy_cache
                .with_label_values(&[self.bundle.as_str(), result])
                .inc();
        };
        if let Some(value) = cache.get(&key) {
            counter("hit");
            return Ok(RuleValue {
                value,
                cached: true,
            });
        }
        counter("miss");
        let value = self.eval_counted(rule, input, metrics)?;
        cache.insert(key, value.clone());
        Ok(RuleValue {
            value,
            cached: false,
        })
    }

    fn eval_counted(
        &self,
        rule: &str,
        input: &serde_json::Value,
        metrics: &ActorMetrics,
    ) -> Result<Option<serde_json::Value>, PolicyError> {
        let result = self.eval_rule(rule, input);
        match &result {
            Err(PolicyError::LimitExceeded(_)) => metrics
                .policy_limit_exceeded
                .with_label_values(&[&self.bundle])
                .inc(),
            Err(_) => metrics
                .policy_evaluation_errors
                .with_label_values(&[&self.bundle])
                .inc(),
            Ok(_) => {}
        }
        result
    }

    /// Evaluates `rule` without the cache or metrics; `None` when it is undefined.
    pub fn eval_rule(
        &self,
        rule: &str,
        input: &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_input(regorus::Value::from(input.clone()));
        let value = engine
            .eval_rule(format!("{}.{rule}", self.package))
            .map_err(|e| self.evaluation_error(&e))?;
        to_json(&value)
    }

    /// Evaluates the whole package (every rule's value) without the cache.
    pub fn eval_package(
        &self,
        input: &serde_json::Value,
    ) -> Result<serde_json::Value, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_input(regorus::Value::from(input.clone()));
        let results = engine
            .eval_query(self.package.clone(), false)
            .map_err(|e| self.evaluation_error(&e))?;
        let value = results
            .result
            .first()
            .and_then(|r| r.expressions.first())
            .map(|e| e.value.clone())
            .unwrap_or(regorus::Value::Undefined);
        Ok(to_json(&value)?.unwrap_or_else(|| serde_json::json!({})))
    }

    fn evaluation_error(&self, err: &anyhow::Error) -> PolicyError {
        if err.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<LimitError>(),
                Some(LimitError::TimeLimitExceeded { .. })
            )
        }) {
            PolicyError::LimitExceeded(self.eval_timeout)
        } else {
            PolicyError::Evaluation(err.to_string())
        }
    }
}

fn to_json(value: &regorus::Value) -> Result<Option<serde_json::Value>, PolicyError> {
    if *value == regorus::Value::Undefined {
        return Ok(None);
    }
    let json = value
        .to_json_str()
        .map_err(|e| PolicyError::Evaluation(e.to_string()))?;
    serde_json::from_str(&json)
        .map(Some)
        .map_err(|e| PolicyError::Evaluation(e.to_string()))
}

/// The compiled bundles of this node, shared by every request task.
#[derive(Debug, Default)]
pub struct PolicyRegistry {
    bundles: RwLock<BTreeMap<String, Arc<CompiledBundle>>>,
    failures: RwLock<BTreeMap<String, LoadFailure>>,
}

/// Why the active version of a bundle could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LoadFailure {
    /// The stored active version.
    pub version: i64,
    /// What went wrong.
    pub error: String,
}

impl PolicyRegistry {
    /// The active compiled version of a bundle.
    pub fn get(&self, bundle: &str) -> Option<Arc<CompiledBundle>> {
        self.bundles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(bundle)
            .cloned()
    }

    /// Publishes a compiled version, unless a newer one is already published.
    pub fn publish(&self, compiled: Arc<CompiledBundle>) {
        let mut bundles = self.bundles.write().unwrap_or_else(PoisonError::into_inner);
        let newer_present = bundles
            .get(&compiled.bundle)
            .is_some_and(|current| current.version > compiled.version);
        if !newer_present {
            self.failures
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&compiled.bundle);
            bundles.insert(compiled.bundle.clone(), compiled);
        }
    }

    /// Records that the active `version` of `bundle` could not be loaded.
    pub fn record_failure(&self, bundle: &str, version: i64, error: String) {
        self.failures
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(bundle.to_owned(), LoadFailure { version, error });
    }

    /// Bundles whose active version could not be loaded since it was last published.
    pub fn failures(&self) -> BTreeMap<String, LoadFailure> {
        self.failures
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Active version of every loaded bundle.
    pub fn versions(&self) -> BTreeMap<String, i64> {
        self.bundles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, b)| (name.clone(), b.version))
            .collect()
    }
}

/// Messages of a [`PolicyActor`].
pub enum PolicyMessage {
    /// Reloads the active version from the store; replies with the version now active.
    Reload(RpcReplyPort<Result<i64, String>>),
    /// Makes the actor panic, to prove supervision restarts it.
    #[cfg(feature = "fault-injection")]
    Panic,
}

impl Message for PolicyMessage {}

/// The actor that owns one bundle on this node.
#[derive(Debug, Default)]
pub struct PolicyActor;

/// What a PolicyActor starts with.
pub struct PolicyArguments {
    /// Bundle name.
    pub bundle: String,
    /// Where versions are stored.
    pub store: Arc<dyn PolicyStore>,
    /// Where compiled versions are published.
    pub registry: Arc<PolicyRegistry>,
    /// Evaluation limits and cache size.
    pub settings: PolicySettings,
    /// Metrics.
    pub metrics: ActorMetrics,
}

/// The PolicyActor's state.
pub struct PolicyState {
    args: PolicyArguments,
}

impl PolicyActor {
    /// Loads and publishes the active version; returns it.
    async fn load_active(args: &PolicyArguments) -> Result<i64, ActorProcessingErr> {
        let Some(active) = args.store.active_policy(&args.bundle).await? else {
            return Err(Box::new(StoreError::Corrupt(format!(
                "policy bundle {} has no active version",
                args.bundle
            ))));
        };
        if args
            .registry
            .get(&args.bundle)
            .is_some_and(|c| c.version == active.version)
        {
            return Ok(active.version);
        }
        let compiled = compile_off_thread(
            active.bundle.clone(),
            active.version,
            active.sha256.clone(),
            active.source.clone(),
            args.settings,
            COMPILE_DEADLINE,
        )
        .await
        .inspect_err(|err| {
            // Only compiled versions are ever stored, so this means the engine or its
            // bounds changed, or the row was written around the API.
            args.metrics.policy_load_failures.with_label_values(&[&args.bundle]).inc();
            args.registry.record_failure(&args.bundle, active.version, err.to_string());
            warn!(bundle = args.bundle, version = active.version, error = %err, "stored policy does not compile");
        })?;
        args.registry.publish(Arc::new(compiled));
        args.metrics
            .policy_version
            .with_label_values(&[&args.bundle])
            .set(active.version);
        info!(
            bundle = args.bundle,
            version = active.version,
            "policy version active"
        );
        Ok(active.version)
    }
}

impl Actor for PolicyActor {
    type Msg = PolicyMessage;
    type State = PolicyState;
    type Arguments = PolicyArguments;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Self::load_active(&args).await?;
        Ok(PolicyState { args })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            PolicyMessage::Reload(reply) => {
                let result = Self::load_active(&state.args)
                    .await
                    .map_err(|e| e.to_string());
                let _ = reply.send(result);
            }
            #[cfg(feature = "fault-injection")]
            PolicyMessage::Panic => {
                #[allow(clippy::panic)]
                {
                    panic!("fault injection: policy actor panic");
                }
            }
        }
        Ok(())
    }
}

/// Where each bundle's PolicyActor can be reached.
#[derive(Clone, Debug, Default)]
pub struct PolicyActors {
    slots: Arc<RwLock<BTreeMap<String, Slot<PolicyMessage>>>>,
}

impl PolicyActors {
    /// The slot of a bundle's actor, created on first use.
    pub fn slot(&self, bundle: &str) -> Slot<PolicyMessage> {
        self.slots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(bundle.to_owned())
            .or_default()
            .clone()
    }

    /// The running actor of a bundle.
    pub fn get(&self, bundle: &str) -> Option<ActorRef<PolicyMessage>> {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(bundle)
            .and_then(Slot::get)
    }
}

/// Spawns the PolicyActor of one bundle.
pub struct PolicyChild {
    bundle: String,
    store: Arc<dyn PolicyStore>,
    registry: Arc<PolicyRegistry>,
    slot: Slot<PolicyMessage>,
    settings: PolicySettings,
    metrics: ActorMetrics,
}

#[async_trait]
impl ChildSpec for PolicyChild {
    fn kind(&self) -> &'static str {
        "policy"
    }

    fn mailbox(&self) -> Mailbox {
        self.slot.mailbox()
    }

    fn id(&self) -> String {
        self.bundle.clone()
    }

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = PolicyArguments {
            bundle: self.bundle.clone(),
            store: self.store.clone(),
            registry: self.registry.clone(),
            settings: self.settings,
            metrics: self.metrics.clone(),
        };
        spawn_into(|_| PolicyActor, args, supervisor, &self.slot).await
    }
}

/// Spawns the PolicySupervisor with one PolicyActor per stored bundle.
pub struct PolicySupervisorSpec {
    /// Where bundles are stored.
    pub store: Arc<dyn PolicyStore>,
    /// Where compiled versions are published.
    pub registry: Arc<PolicyRegistry>,
    /// Where the PolicyActors are published.
    pub actors: PolicyActors,
    /// Where the supervisor is published.
    pub slot: Slot<SupervisorMessage>,
    /// Restart behaviour of the PolicyActors.
    pub policy: RestartPolicy,
    /// Evaluation limits and cache size.
    pub settings: PolicySettings,
    /// Metrics.
    pub metrics: ActorMetrics,
}

impl PolicySupervisorSpec {
    /// The child spec of one bundle's actor.
    pub fn child(&self, bundle: &str) -> Arc<dyn ChildSpec> {
        Arc::new(PolicyChild {
            bundle: bundle.to_owned(),
            store: self.store.clone(),
            registry: self.registry.clone(),
            slot: self.actors.slot(bundle),
            settings: self.settings,
            metrics: self.metrics.clone(),
        })
    }
}

#[async_trait]
impl ChildSpec for PolicySupervisorSpec {
    fn kind(&self) -> &'static str {
        "policy_supervisor"
    }

    fn mailbox(&self) -> Mailbox {
        self.slot.mailbox()
    }

    fn is_supervisor(&self) -> bool {
        true
    }

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        // The bundle list comes from the store each time, so a restart picks up bundles
        // created while the previous instance was running.
        let bundles = self
            .store
            .active_policies()
            .await
            .map_err(|e| SpawnErr::StartupFailed(Box::new(e)))?;
        let args = SupervisorArguments {
            kind: self.kind(),
            children: bundles.iter().map(|b| self.child(&b.bundle)).collect(),
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
        };
        spawn_supervisor(args, supervisor, &self.slot).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HANDOFF_V0: &str = "package sark.authz\n\
        allow { input.user.role == \"admin\" }\n\
        allow { input.action == \"read\"; input.user.role == \"viewer\" }\n";

    #[test]
    fn both_rego_syntaxes_compile_and_evaluate() {
        let v0 = compile(
            "authorization",
            1,
            "x",
            HANDOFF_V0,
            &PolicySettings::default(),
        )
        .unwrap();
        assert_eq!(v0.syntax, RegoSyntax::V0);
        assert_eq!(v0.package, "data.sark.authz");
        let admin = json!({"user": {"role": "admin"}, "action": "delete"});
        let viewer = json!({"user": {"role": "viewer"}, "action": "delete"});
        assert_eq!(v0.eval_rule("allow", &admin).unwrap(), Some(json!(true)));
        assert_eq!(v0.eval_rule("allow", &viewer).unwrap(), None);

        let v1 = compile(
            "b",
            1,
            "x",
            "package p\nallow if input.x == 1\n",
            &PolicySettings::default(),
        )
        .unwrap();
        assert_eq!(v1.syntax, RegoSyntax::V1);
        assert_eq!(
            v1.eval_rule("allow", &json!({"x": 1})).unwrap(),
            Some(json!(true))
        );
    }

    #[test]
    fn an_invalid_policy_reports_the_line() {
        let err = compile(
            "b",
            1,
            "x",
            "package p\n\nallow if {\n  input.x ==\n",
            &PolicySettings::default(),
        )
        .unwrap_err();
        let PolicyError::Invalid(message) = err else {
            panic!("expected invalid")
        };
        assert!(message.starts_with("line 5, column 1: "), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    fn metrics() -> ActorMetrics {
        ActorMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    #[test]
    fn a_runaway_evaluation_stops_at_the_time_limit_and_is_counted() {
        let settings = PolicySettings {
            eval_timeout: Duration::from_millis(20),
            ..PolicySettings::default()
        };
        // Many cheap iterations, so the timer is checked between them.
        let source = "package p\nallow if count([1 | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000)]) > 0\n";
        let compiled = compile("slow", 1, "x", source, &settings).unwrap();
        let metrics = metrics();
        let started = std::time::Instant::now();
        let err = compiled.eval("allow", &json!({}), &metrics).unwrap_err();
        assert_eq!(err, PolicyError::LimitExceeded(Duration::from_millis(20)));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            metrics
                .policy_limit_exceeded
                .with_label_values(&["slow"])
                .get(),
            1
        );
        let err = compiled.eval_package(&json!({})).unwrap_err();
        assert!(matches!(err, PolicyError::LimitExceeded(_)), "{err:?}");
    }

    #[test]
    fn input_only_bundles_are_cached_and_clock_readers_never() {
        let metrics = metrics();
        let settings = PolicySettings::default();
        let pure = compile(
            "pure",
            1,
            "x",
            "package p\nallow if input.user.role == \"admin\"\n",
            &settings,
        )
        .unwrap();
        let input = |time: &str| json!({"user": {"role": "admin"}, "context": {"time": time}});
        let first = pure.eval("allow", &input("t1"), &metrics).unwrap();
        let second = pure.eval("allow", &input("t2"), &metrics).unwrap();
        assert_eq!((first.cached, second.cached), (false, true));
        assert_eq!(second.value, Some(json!(true)));
        let hits = metrics
            .policy_cache
            .with_label_values(&["pure", "hit"])
            .get();
        assert_eq!(hits, 1);

        let timed =
            "package p\nallow if time.parse_rfc3339_ns(input.context.time) < 2000000000000000000\n";
        let timed = compile("timed", 1, "x", timed, &settings).unwrap();
        assert!(!timed.cached());
        let early = "2020-01-01T00:00:00Z";
        let late = "2040-01-01T00:00:00Z";
        assert_eq!(
            timed.eval("allow", &input(early), &metrics).unwrap().value,
            Some(json!(true))
        );
        let after = timed.eval("allow", &input(late), &metrics).unwrap();
        assert_eq!((after.value, after.cached), (None, false));

        let renumbered = pure.with_version(2);
        assert_eq!(renumbered.version, 2);
        assert!(
            !renumbered
                .eval("allow", &input("t3"), &metrics)
                .unwrap()
                .cached
        );
    }

    #[test]
    fn the_whole_package_can_be_evaluated() {
        let compiled = compile("b", 1, "x", HANDOFF_V0, &PolicySettings::default()).unwrap();
        let value = compiled
            .eval_package(&json!({"user": {"role": "viewer"}, "action": "read"}))
            .unwrap();
        assert_eq!(value, json!({"allow": true}));
    }

    #[test]
    fn the_registry_never_goes_back_to_an_older_version() {
        let registry = PolicyRegistry::default();
        registry.publish(Arc::new(
            compile(
                "b",
                2,
                "x",
                "package p\nallow := true\n",
                &PolicySettings::default(),
            )
            .unwrap(),
        ));
        registry.publish(Arc::new(
            compile(
                "b",
                1,
                "x",
                "package p\nallow := false\n",
                &PolicySettings::default(),
            )
            .unwrap(),
        ));
        assert_eq!(registry.get("b").unwrap().version, 2);
        assert_eq!(registry.versions().get("b"), Some(&2));
    }
}
