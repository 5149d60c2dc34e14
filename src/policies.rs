//! The policy service: checking, storing and activating new versions of a bundle
//! (uploads and rollbacks), and evaluating a stored bundle or a draft for a test. Every
//! source a caller sends is compiled in this node's one compile slot, under the compile
//! deadline, on a blocking thread, so no source can hold up other requests.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sark_actors::policy::{self, CompiledBundle, PolicyError};

use crate::auth::guard::AUTHORIZATION_BUNDLE;
use crate::core::{Change, Core, Propagated};
use crate::error::{Error, ErrorKind};
use crate::secrets::sha256_hex;
use crate::store::{NewPolicyVersion, PolicyVersion};

/// The bundle asked on every request to shape its rate limit.
pub const RATE_LIMITING_BUNDLE: &str = "rate_limiting";

/// How long a caller waits for the compile slot.
const COMPILE_SLOT_WAIT: Duration = Duration::from_secs(5);

fn policy_invalid(err: &PolicyError) -> Error {
    let code = match err {
        PolicyError::CompileTimeout(_) => "policy_too_complex",
        _ => "policy_invalid",
    };
    Error::new(ErrorKind::Invalid, code, err.to_string())
}

/// A bundle name: a lowercase identifier (it is also a metric label); `field` names it in
/// the refusal.
pub fn bundle_name(field: &str, value: &str) -> Result<String, Error> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(Error::invalid_field(
            field,
            "must be 1-63 lowercase letters, digits or `_`, starting with a letter",
        ));
    }
    if value == "test" {
        // `/api/v1/policies/test` is the test endpoint.
        return Err(Error::invalid_field(field, "`test` is reserved"));
    }
    Ok(value.to_owned())
}

/// Takes this node's one place for compiling a policy a caller sent, waiting for it a
/// moment (compiles are bounded and short); 503 when other compiles keep it, so a flood of
/// sources costs one core at most and holds up no other request.
async fn compile_slot(node: &Core) -> Result<tokio::sync::SemaphorePermit<'_>, Error> {
    let busy = || {
        Error::unavailable(
            "policy_compiler_busy",
            "other policies are being compiled on this node; retry in a moment",
        )
    };
    tokio::time::timeout(COMPILE_SLOT_WAIT, node.policy_compiles.acquire())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())
}

/// Compiles `source` as `bundle` in the compile slot.
async fn compile(node: &Core, bundle: &str, source: &str) -> Result<CompiledBundle, Error> {
    let _compiling = compile_slot(node).await?;
    policy::compile_off_thread(
        bundle.to_owned(),
        0,
        sha256_hex(source),
        source.to_owned(),
        node.config.policy.settings(),
        policy::COMPILE_DEADLINE,
    )
    .await
    .map_err(|e| policy_invalid(&e))
}

/// Compiles a source as a new version of `bundle` and applies the checks of its bundle, on
/// a blocking thread (the lock-out check evaluates the policy a few hundred times).
async fn compile_checked(node: &Core, bundle: &str, source: &str) -> Result<CompiledBundle, Error> {
    let compiled = compile(node, bundle, source).await?;
    // The rate_limiting bundle is asked on every request: only a version whose decisions
    // can be cached, so that each distinct question is evaluated once, may shape limits.
    if bundle == RATE_LIMITING_BUNDLE && !compiled.traits.cacheable() {
        return Err(Error::new(
            ErrorKind::Invalid,
            "policy_not_cacheable",
            "the rate_limiting bundle runs on every request, so it must not read the time or the node, nor call a non-deterministic builtin: its decisions must be cacheable",
        ));
    }
    let (now, node_id, bundle) = (node.clock.now(), node.node_id.clone(), bundle.to_owned());
    let checked = tokio::task::spawn_blocking(move || {
        if bundle == AUTHORIZATION_BUNDLE {
            crate::policy::safety::admins_keep_policy_writes(&compiled, now, &node_id).map_err(
                |why| {
                    Error::new(
                        ErrorKind::Invalid,
                        "policy_would_lock_out_admins",
                        format!("this authorization policy would lock the admins out: {why}"),
                    )
                },
            )?;
        }
        Ok(compiled)
    });
    checked.await.map_err(|e| Error::internal(e.to_string()))?
}

/// A new version to store, and how it is audited.
#[derive(Debug)]
pub struct NewVersion<'a> {
    /// The bundle.
    pub bundle: &'a str,
    /// Its Rego source.
    pub source: &'a str,
    /// What the version is for.
    pub description: Option<&'a str>,
    /// Who stores it.
    pub actor: &'a str,
    /// From where.
    pub ip: Option<IpAddr>,
}

/// A version stored and active on every member that answered.
#[derive(Debug)]
pub struct Activated {
    /// The version as stored.
    pub stored: PolicyVersion,
    /// How its activation reached the cluster.
    pub propagation: Propagated,
}

/// Checks, stores and activates an uploaded version.
pub async fn upload(node: &Core, new: NewVersion<'_>) -> Result<Activated, Error> {
    store_and_activate(node, new, "policy_uploaded", json!({})).await
}

/// Makes an earlier version of `bundle` active again, as a new version (so the history
/// only grows).
pub async fn roll_back(
    node: &Core,
    bundle: &str,
    version: i64,
    actor: &str,
    ip: Option<IpAddr>,
) -> Result<Activated, Error> {
    let current = active(node, "name", bundle).await?;
    let old = node
        .store
        .policy_version(&current.bundle, version)
        .await?
        .ok_or_else(|| {
            Error::invalid_field(
                "version",
                format!("bundle {} has no version {version}", current.bundle),
            )
        })?;
    let description = format!("rollback to version {}", old.version);
    let new = NewVersion {
        bundle: &current.bundle,
        source: &old.source,
        description: Some(&description),
        actor,
        ip,
    };
    let details = json!({"rolled_back_to": old.version, "previous_version": current.version});
    store_and_activate(node, new, "policy_rolled_back", details).await
}

/// The active version of the bundle `name` (`field` names it in a refusal).
pub async fn active(node: &Core, field: &str, name: &str) -> Result<PolicyVersion, Error> {
    let name = bundle_name(field, name)?;
    node.store
        .active_policy(&name)
        .await?
        .ok_or_else(|| Error::not_found(format!("no policy bundle {name}")))
}

/// Checks, stores and activates a new version (a fenced write), recording `event_type`
/// with `details` added to the version's.
async fn store_and_activate(
    node: &Core,
    new: NewVersion<'_>,
    event_type: &str,
    details: Value,
) -> Result<Activated, Error> {
    let compiled = compile_checked(node, new.bundle, new.source).await?;
    let fence = node.fence().await?;
    let stored = node
        .store
        .add_policy_version(&NewPolicyVersion {
            bundle: new.bundle,
            source: new.source,
            sha256: &compiled.sha256,
            description: new.description,
            created_by: new.actor,
            now: node.clock.now(),
        })
        .await?;
    let mut event_details = json!({"version": stored.version, "sha256": stored.sha256});
    if let (Value::Object(all), Value::Object(extra)) = (&mut event_details, details) {
        all.extend(extra);
    }
    let change = Change::PolicyActivated(Box::new(compiled.with_version(stored.version)));
    let propagation = fence
        .publish(change)
        .await
        .audited(|_| {
            Some(
                node.audit
                    .event(event_type, "success")
                    .by(new.actor)
                    .from_ip(new.ip)
                    .on(format!("policy:{}", stored.bundle))
                    .with_details(event_details),
            )
        })
        .await?;
    Ok(Activated {
        stored,
        propagation,
    })
}

/// What to evaluate in a test.
#[derive(Debug)]
pub enum Subject {
    /// A stored bundle, at the version loaded here.
    Stored(String),
    /// A draft source, not stored.
    Draft(String),
}

/// The outcome of a test evaluation.
#[derive(Debug)]
pub struct Evaluation {
    /// The package's result document.
    pub result: Value,
    /// The version evaluated (a stored bundle's).
    pub policy_version: Option<i64>,
    /// How long the evaluation took.
    pub duration_us: u64,
}

/// Evaluates a stored bundle or a draft against `input`, on a blocking thread and under
/// the evaluation time limit (a draft may use all of it).
pub async fn evaluate(node: &Core, subject: Subject, input: Value) -> Result<Evaluation, Error> {
    let (compiled, stored) = match subject {
        Subject::Stored(name) => {
            let name = bundle_name("policy_name", &name)?;
            let compiled = node
                .policies
                .get(&name)
                .ok_or_else(|| Error::not_found(format!("no policy bundle {name}")))?;
            (compiled, true)
        }
        Subject::Draft(source) => (Arc::new(compile(node, "draft", &source).await?), false),
    };
    let started = Instant::now();
    let evaluated = {
        let compiled = compiled.clone();
        tokio::task::spawn_blocking(move || compiled.eval_package(&input))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
    };
    let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let result = evaluated.map_err(|err| {
        let code = match err {
            PolicyError::LimitExceeded(_) => {
                node.actor_metrics
                    .policy_limit_exceeded
                    .with_label_values(&[compiled.bundle.as_str()])
                    .inc();
                "policy_timeout"
            }
            _ => "policy_evaluation_failed",
        };
        Error::new(ErrorKind::Invalid, code, err.to_string())
    })?;
    Ok(Evaluation {
        result,
        policy_version: stored.then_some(compiled.version),
        duration_us,
    })
}
