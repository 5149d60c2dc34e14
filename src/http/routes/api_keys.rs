//! `/api/v1/api-keys`: any user's own keys (admins: everyone's). A key's scopes never
//! exceed what its creator may do, as the `authorization` policy decides.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Duration;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::api_keys::{self, SCOPES};
use crate::auth::guard::allowed;
use crate::auth::principal::Principal;
use crate::auth::service::{self, Revoked};
use crate::core::Change;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::validate::{self, ClientAddr};
use crate::store::{ApiKeyRecord, Role};

/// Live API keys a user may hold at once.
const MAX_KEYS_PER_USER: usize = 100;

/// `POST /api/v1/api-keys` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    name: String,
    scopes: Vec<String>,
    expires_in_days: Option<u32>,
    /// Needed unless the session logged in within `auth.reauth_seconds`.
    current_password: Option<zeroize::Zeroizing<String>>,
}

fn key_json(key: &ApiKeyRecord) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": key.scopes,
        "user_id": key.user_id,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "last_used_at": key.last_used_at,
        "revoked_at": key.revoked_at,
    })
}

/// `POST /api/v1/api-keys`: the key is in this answer and nowhere else, ever.
pub async fn post_api_key(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    AppJson(body): AppJson<NewApiKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let node = &state.node;
    let session_id = principal.require_session()?;
    let name = validate::text("name", body.name.trim(), 100)?;
    if name.is_empty() {
        return Err(ApiError::invalid_field("name", "must not be empty"));
    }
    if body.scopes.is_empty() || body.scopes.len() > SCOPES.len() {
        return Err(ApiError::invalid_field(
            "scopes",
            format!("must list 1-{} scopes", SCOPES.len()),
        ));
    }
    let mut scopes = Vec::new();
    for scope in &body.scopes {
        if !SCOPES.contains(&scope.as_str()) {
            return Err(ApiError::invalid_field(
                "scopes",
                format!("`{scope}` is not one of {}", SCOPES.join(", ")),
            ));
        }
        let grantable = match scope.split_once(':') {
            None => principal.role == Role::Admin,
            Some((action, resource)) => allowed(node, &principal, action, resource, ip),
        };
        if !grantable {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "scope_exceeds_rights",
                format!("`scopes`: you may not grant `{scope}`, which you do not have yourself"),
            ));
        }
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    let expires_at = match body.expires_in_days {
        None => None,
        Some(days @ 1..=3650) => Some(node.clock.now() + Duration::days(i64::from(days))),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "expires_in_days",
                "must be between 1 and 3650",
            ));
        }
    };
    // Last, so that a malformed request is told what is wrong with it first.
    service::reauthenticate(
        node,
        principal.user_id,
        session_id,
        body.current_password,
        ip,
    )
    .await?;
    let now = node.clock.now();
    let live = node
        .store
        .api_keys(Some(principal.user_id))
        .await?
        .into_iter()
        .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|at| at > now))
        .count();
    if live >= MAX_KEYS_PER_USER {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_api_keys",
            format!("a user may hold at most {MAX_KEYS_PER_USER} live API keys; revoke one first"),
        ));
    }
    let new = api_keys::generate();
    let record = ApiKeyRecord {
        id: Uuid::now_v7(),
        user_id: principal.user_id,
        name,
        prefix: new.prefix.clone(),
        key_hash: new.hash.clone(),
        scopes,
        created_at: node.clock.now(),
        expires_at,
        last_used_at: None,
        revoked_at: None,
        revoked_reason: None,
    };
    if !node.store.create_api_key(&record).await? {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the account is disabled",
        ));
    }
    let event = node.audit
        .event("api_key_created", "success")
        .by(&principal.username)
        .from_ip(ip)
        .on(format!("api_key:{}", record.id))
        .with_details(json!({"prefix": record.prefix, "scopes": record.scopes, "expires_at": record.expires_at}));
    node.record_audit(event).await;
    let mut body = key_json(&record);
    body["key"] = json!(new.key.as_str());
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /api/v1/api-keys` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /api/v1/api-keys`: one's own keys; admins see everyone's.
pub async fn get_api_keys(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    axum::extract::Query(query): axum::extract::Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    principal.require_session()?;
    let node = &state.node;
    let owner = if allowed(node, &principal, "read", "users", ip) {
        None
    } else {
        Some(principal.user_id)
    };
    let limit = validate::limit(query.limit)?;
    let after = validate::decode_cursor(query.cursor.as_deref())?;
    let keys = node.store.api_keys(owner).await?;
    let (keys, next_cursor) = validate::page(keys, |k| k.id.to_string(), limit, after);
    let items: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// `DELETE /api/v1/api-keys/{id}`: refused on every node from the next request.
pub async fn delete_api_key(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    principal.require_session()?;
    let node = &state.node;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::invalid_field("id", "must be an API key id (UUID)"))?;
    let key = node
        .store
        .api_key(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such API key"))?;
    if key.user_id != principal.user_id && !allowed(node, &principal, "write", "users", ip) {
        return Err(ApiError::not_found("no such API key"));
    }
    let fence = node.fence().await?;
    let revoked = node
        .store
        .revoke_api_key(id, "revoked", node.clock.now())
        .await?;
    let change = Change::Revoked {
        sessions: &[],
        api_keys: &[id],
    };
    let propagation = fence
        .publish(change)
        .await
        .audited(|_| {
            revoked.then(|| {
                node.audit
                    .event("api_key_revoked", "success")
                    .by(&principal.username)
                    .from_ip(ip)
                    .on(format!("api_key:{id}"))
                    .with_details(json!({"prefix": key.prefix, "owner": key.user_id}))
            })
        })
        .await?;
    Ok(Json(Revoked {
        revoked,
        propagation,
    }))
}
