//! Policy bundles over the API: upload (multipart), list, show, history, rollback, and
//! tests of a stored bundle or a draft.
//!
//! Every new version is compiled and checked before it is stored (syntax, forbidden
//! builtins, and for `authorization` that admins keep a way to write policies), then made
//! active on this node by its PolicyActor before the answer.

use axum::Json;
use axum::extract::multipart::{Multipart, MultipartError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use sark_actors::policy;

use crate::auth::guard::authorize;
use crate::auth::principal::Principal;
use crate::core::Core;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::validate::{self, ClientAddr};
use crate::policies::{self, Activated, NewVersion, Subject};
use crate::store::PolicyVersion;

/// The largest policy source accepted.
pub const MAX_POLICY_BYTES: usize = policy::MAX_SOURCE_BYTES;

const MAX_DESCRIPTION: usize = 1000;

fn too_large(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("`{field}`: a policy is at most 256 KiB"),
    )
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
            "name" => name = Some(policies::bundle_name("name", text.trim())?),
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
        actor: &principal.username,
        ip,
    };
    Ok(activated(policies::upload(node, new).await?))
}

/// The answer to a version made active.
fn activated(activated: Activated) -> (StatusCode, Json<Value>) {
    let stored = activated.stored;
    (
        StatusCode::CREATED,
        Json(json!({
            "name": stored.bundle,
            "version": stored.version,
            "sha256": stored.sha256,
            "activated_at": stored.created_at,
            "propagation_ms": activated.propagation.propagation_ms,
        })),
    )
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

/// `GET /api/v1/policies/{name}`: the active version with its source.
pub async fn get_policy(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "policies", ip).await?;
    let version = policies::active(node, "name", &name).await?;
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
    let current = policies::active(node, "name", &name).await?;
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
    let rolled_back =
        policies::roll_back(node, &name, body.version, &principal.username, ip).await?;
    Ok(activated(rolled_back))
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
    let subject = match (body.policy_name, body.source) {
        (Some(name), None) => {
            authorize(node, &principal, "read", "policies", ip).await?;
            Subject::Stored(name)
        }
        (None, Some(source)) => {
            authorize(node, &principal, "write", "policies", ip).await?;
            if source.len() > MAX_POLICY_BYTES {
                return Err(too_large("source"));
            }
            Subject::Draft(source)
        }
        _ => {
            return Err(ApiError::invalid_field(
                "policy_name",
                "give exactly one of `policy_name` (a stored bundle) and `source` (a draft)",
            ));
        }
    };
    let evaluation = policies::evaluate(node, subject, input).await?;
    Ok(Json(json!({
        "allowed": evaluation.result.get("allow") == Some(&Value::Bool(true)),
        "result": evaluation.result,
        "policy_version": evaluation.policy_version,
        "duration_us": evaluation.duration_us,
    })))
}
