//! Policy bundles over the API: upload (multipart), list, show, history, rollback, and
//! tests of a stored bundle or a draft.
//!
//! Every new version is compiled and checked before it is stored (syntax, forbidden
//! builtins, and for `authorization` that admins keep a way to write policies), then made
//! active on this node by its PolicyActor before the answer.

use std::net::IpAddr;
use std::time::Instant;

use axum::Json;
use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use sark_actors::policy::{self, CompiledBundle, PolicyError};

use crate::auth::guard::{AUTHORIZATION_BUNDLE, authorize};
use crate::auth::principal::Principal;
use crate::core::Core;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::validate::{self, ClientAddr};
use crate::secrets::sha256_hex;
use crate::store::{NewPolicyVersion, PolicyVersion};

/// The largest policy source accepted.
pub const MAX_POLICY_BYTES: usize = policy::MAX_SOURCE_BYTES;

const MAX_DESCRIPTION: usize = 1000;

fn policy_invalid(err: &PolicyError) -> ApiError {
    let code = match err {
        PolicyError::CompileTimeout(_) => "policy_too_complex",
        _ => "policy_invalid",
    };
    ApiError::new(StatusCode::BAD_REQUEST, code, err.to_string())
}

fn too_large(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("`{field}`: a policy is at most 256 KiB"),
    )
}

/// Takes this node's one place for compiling a policy a caller sent, waiting for it a
/// moment (compiles are bounded and short); 503 when other compiles keep it, so a flood of
/// sources costs one core at most and holds up no other request.
async fn compile_slot(node: &Core) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    let busy = || {
        ApiError::unavailable(
            "policy_compiler_busy",
            "other policies are being compiled on this node; retry in a moment",
        )
    };
    tokio::time::timeout(COMPILE_SLOT_WAIT, node.policy_compiles.acquire())
        .await
        .map_err(|_| busy())?
        .map_err(|_| busy())
}

/// How long a caller waits for the compile slot.
const COMPILE_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A bundle name: a lowercase identifier (it is also a metric label).
fn bundle_name(field: &str, value: &str) -> Result<String, ApiError> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(ApiError::invalid_field(
            field,
            "must be 1-63 lowercase letters, digits or `_`, starting with a letter",
        ));
    }
    if value == "test" {
        // `/api/v1/policies/test` is the test endpoint.
        return Err(ApiError::invalid_field(field, "`test` is reserved"));
    }
    Ok(value.to_owned())
}

/// Compiles a source as a new version of `bundle` and applies the checks of its bundle, on
/// a blocking thread (the lock-out check evaluates the policy a few hundred times).
async fn compile_checked(
    node: &Core,
    bundle: &str,
    source: &str,
) -> Result<CompiledBundle, ApiError> {
    let _compiling = compile_slot(node).await?;
    let settings = node.config.policy.settings();
    let compiled = policy::compile_off_thread(
        bundle.to_owned(),
        0,
        sha256_hex(source),
        source.to_owned(),
        settings,
        policy::COMPILE_DEADLINE,
    )
    .await
    .map_err(|e| policy_invalid(&e))?;
    // The rate_limiting bundle is asked on every request: only a version whose decisions
    // can be cached, so that each distinct question is evaluated once, may shape limits.
    if bundle == crate::http::middleware::RATE_LIMITING_BUNDLE && !compiled.traits.cacheable() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "policy_not_cacheable",
            "the rate_limiting bundle runs on every request, so it must not read the time or the node, nor call a non-deterministic builtin: its decisions must be cacheable",
        ));
    }
    let (now, node_id, bundle) = (node.clock.now(), node.node_id.clone(), bundle.to_owned());
    let checked = tokio::task::spawn_blocking(move || {
        if bundle == AUTHORIZATION_BUNDLE {
            crate::policy::safety::admins_keep_policy_writes(&compiled, now, &node_id).map_err(
                |why| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "policy_would_lock_out_admins",
                        format!("this authorization policy would lock the admins out: {why}"),
                    )
                },
            )?;
        }
        Ok(compiled)
    });
    checked
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

/// What a new version is stored as, and who is told about it.
struct NewVersion<'a> {
    bundle: &'a str,
    source: &'a str,
    description: Option<&'a str>,
    event_type: &'static str,
    details: Value,
}

/// Checks, stores and activates a new version; answers with its description.
async fn store_and_activate(
    node: &Core,
    principal: &Principal,
    ip: Option<IpAddr>,
    new: NewVersion<'_>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let compiled = compile_checked(node, new.bundle, new.source).await?;
    node.require_cluster().await?;
    let stored = node
        .store
        .add_policy_version(&NewPolicyVersion {
            bundle: new.bundle,
            source: new.source,
            sha256: &compiled.sha256,
            description: new.description,
            created_by: &principal.username,
            now: node.clock.now(),
        })
        .await?;
    let started = Instant::now();
    let propagation = node
        .activate_policy(compiled.with_version(stored.version))
        .await;
    let propagation_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut details = json!({"version": stored.version, "sha256": stored.sha256});
    if let (Value::Object(details), Value::Object(extra)) = (&mut details, new.details) {
        details.extend(extra);
    }
    let event = node
        .audit
        .event(new.event_type, "success")
        .by(&principal.username)
        .from_ip(ip)
        .on(format!("policy:{}", stored.bundle))
        .with_details(details);
    node.record_audit(event).await;
    propagation?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "name": stored.bundle,
            "version": stored.version,
            "sha256": stored.sha256,
            "activated_at": stored.created_at,
            "propagation_ms": propagation_ms,
        })),
    ))
}

/// The fields of a policy upload.
struct Upload {
    name: String,
    description: Option<String>,
    source: String,
}

fn multipart_error(err: &MultipartError) -> ApiError {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large("file");
    }
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!("the multipart body could not be read: {}", err.body_text()),
    )
}

async fn read_upload(mut multipart: Multipart) -> Result<Upload, ApiError> {
    let (mut name, mut description, mut source) = (None, None, None);
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e))?
    {
        let field_name = field.name().unwrap_or_default().to_owned();
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(&e))? {
            if bytes.len() + chunk.len() > MAX_POLICY_BYTES {
                return Err(too_large(&field_name));
            }
            bytes.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| ApiError::invalid_field(&field_name, "must be UTF-8 text"))?;
        match field_name.as_str() {
            "file" => source = Some(text),
            "name" => name = Some(bundle_name("name", text.trim())?),
            "description" => {
                description = Some(validate::text("description", text.trim(), MAX_DESCRIPTION)?);
            }
            other => {
                return Err(ApiError::invalid_field(
                    other,
                    "is not a field of a policy upload (`file`, `name`, `description`)",
                ));
            }
        }
    }
    let source = source.ok_or_else(|| ApiError::invalid_field("file", "is required (.rego)"))?;
    if source.trim().is_empty() {
        return Err(ApiError::invalid_field("file", "is empty"));
    }
    Ok(Upload {
        name: name.ok_or_else(|| ApiError::invalid_field("name", "is required"))?,
        description: description.filter(|d| !d.is_empty()),
        source,
    })
}

/// `POST /api/v1/policies`: uploads a new version of a bundle and activates it.
pub async fn post_policy(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    multipart: Multipart,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "policies", ip).await?;
    let upload = read_upload(multipart).await?;
    let new = NewVersion {
        bundle: &upload.name,
        source: &upload.source,
        description: upload.description.as_deref(),
        event_type: "policy_uploaded",
        details: json!({}),
    };
    store_and_activate(node, &principal, ip, new).await
}

fn version_json(v: &PolicyVersion) -> Value {
    json!({
        "version": v.version,
        "sha256": v.sha256,
        "description": v.description,
        "created_at": v.created_at,
        "created_by": v.created_by,
    })
}

fn summary_json(node: &Core, v: &PolicyVersion) -> Value {
    let loaded = node.policies.get(&v.bundle);
    let mut body = version_json(v);
    body["name"] = json!(v.bundle);
    body["active_version"] = json!(v.version);
    body["loaded_version"] = json!(loaded.as_ref().map(|c| c.version));
    body["cached"] = json!(loaded.as_ref().map(|c| c.cached()));
    body
}

/// `GET /api/v1/policies`: every bundle with its active version.
pub async fn get_policies(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "policies", ip).await?;
    let items: Vec<Value> = node
        .store
        .active_policies()
        .await?
        .iter()
        .map(|v| summary_json(node, v))
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn active(node: &Core, name: &str) -> Result<PolicyVersion, ApiError> {
    let name = bundle_name("name", name)?;
    node.store
        .active_policy(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no policy bundle {name}")))
}

/// `GET /api/v1/policies/{name}`: the active version with its source.
pub async fn get_policy(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "policies", ip).await?;
    let version = active(node, &name).await?;
    let mut body = summary_json(node, &version);
    body["source"] = json!(version.source);
    Ok(Json(body))
}

/// `GET /api/v1/policies/{name}/versions`: the history, newest first.
pub async fn get_policy_versions(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "policies", ip).await?;
    let current = active(node, &name).await?;
    let items: Vec<Value> = node
        .store
        .policy_versions(&current.bundle)
        .await?
        .iter()
        .map(version_json)
        .collect();
    Ok(Json(
        json!({ "name": current.bundle, "active_version": current.version, "items": items }),
    ))
}

/// `POST /api/v1/policies/{name}/rollback` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    version: i64,
}

/// `POST /api/v1/policies/{name}/rollback`: makes an earlier version active again, as a
/// new version (so the history only grows).
pub async fn post_rollback(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(name): Path<String>,
    AppJson(body): AppJson<Rollback>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "policies", ip).await?;
    let current = active(node, &name).await?;
    let old = node
        .store
        .policy_version(&current.bundle, body.version)
        .await?
        .ok_or_else(|| {
            ApiError::invalid_field(
                "version",
                format!("bundle {} has no version {}", current.bundle, body.version),
            )
        })?;
    let description = format!("rollback to version {}", old.version);
    let new = NewVersion {
        bundle: &current.bundle,
        source: &old.source,
        description: Some(&description),
        event_type: "policy_rolled_back",
        details: json!({"rolled_back_to": old.version, "previous_version": current.version}),
    };
    store_and_activate(node, &principal, ip, new).await
}

/// `POST /api/v1/policies/test` body: a stored bundle or a draft source, and an input.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTest {
    policy_name: Option<String>,
    source: Option<String>,
    input: Option<Value>,
}

/// `POST /api/v1/policies/test`: evaluates a stored bundle (needs `read` on policies) or
/// a draft that is not stored (needs `write`), under the evaluation time limit.
pub async fn post_policy_test(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    AppJson(body): AppJson<PolicyTest>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    let input = body
        .input
        .ok_or_else(|| ApiError::invalid_field("input", "is required"))?;
    let (compiled, stored) = match (body.policy_name, body.source) {
        (Some(name), None) => {
            authorize(node, &principal, "read", "policies", ip).await?;
            let name = bundle_name("policy_name", &name)?;
            let compiled = node
                .policies
                .get(&name)
                .ok_or_else(|| ApiError::not_found(format!("no policy bundle {name}")))?;
            (compiled, true)
        }
        (None, Some(source)) => {
            authorize(node, &principal, "write", "policies", ip).await?;
            if source.len() > MAX_POLICY_BYTES {
                return Err(too_large("source"));
            }
            let _compiling = compile_slot(node).await?;
            let compiled = policy::compile_off_thread(
                "draft".to_owned(),
                0,
                sha256_hex(&source),
                source,
                node.config.policy.settings(),
                policy::COMPILE_DEADLINE,
            )
            .await
            .map_err(|e| policy_invalid(&e))?;
            (std::sync::Arc::new(compiled), false)
        }
        _ => {
            return Err(ApiError::invalid_field(
                "policy_name",
                "give exactly one of `policy_name` (a stored bundle) and `source` (a draft)",
            ));
        }
    };
    let started = Instant::now();
    // Runs on a blocking thread: a draft may use its whole time limit.
    let evaluated = {
        let compiled = compiled.clone();
        tokio::task::spawn_blocking(move || compiled.eval_package(&input))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
    };
    let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let result = evaluated.map_err(|err| {
        let (code, metric_bundle) = match err {
            PolicyError::LimitExceeded(_) => ("policy_timeout", Some(compiled.bundle.as_str())),
            _ => ("policy_evaluation_failed", None),
        };
        if let Some(bundle) = metric_bundle {
            node.actor_metrics
                .policy_limit_exceeded
                .with_label_values(&[bundle])
                .inc();
        }
        ApiError::new(StatusCode::BAD_REQUEST, code, err.to_string())
    })?;
    Ok(Json(json!({
        "allowed": result.get("allow") == Some(&Value::Bool(true)),
        "result": result,
        "policy_version": stored.then_some(compiled.version),
        "duration_us": duration_us,
    })))
}
