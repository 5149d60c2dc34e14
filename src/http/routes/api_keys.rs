//! `/api/v1/api-keys`: any user's own keys (admins: everyone's); the rules are
//! [`crate::auth::api_keys`]'s.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::api_keys::{self, KeyRequest};
use crate::auth::principal::Principal;
use crate::auth::service::Revoked;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::validate::{self, ClientAddr};
use crate::store::ApiKeyRecord;

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
    principal.require_session()?;
    let name = validate::text("name", body.name.trim(), 100)?;
    if name.is_empty() {
        return Err(ApiError::invalid_field("name", "must not be empty"));
    }
    let request = KeyRequest {
        name,
        scopes: body.scopes,
        expires_in_days: body.expires_in_days,
        current_password: body.current_password,
    };
    let issued = api_keys::issue(&state.node, &principal, request, ip).await?;
    let mut body = key_json(&issued.record);
    body["key"] = json!(issued.key.as_str());
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
    // A key is told it cannot list keys before what is wrong with its query.
    principal.require_session()?;
    let limit = validate::limit(query.limit)?;
    let after = validate::decode_cursor(query.cursor.as_deref())?;
    let keys = api_keys::visible(&state.node, &principal, ip).await?;
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
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::invalid_field("id", "must be an API key id (UUID)"))?;
    Ok(Json(
        api_keys::revoke(&state.node, &principal, id, ip).await?,
    ))
}
