//! `/api/v1/sessions`: one's own sessions (admins: anyone's).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::guard::authorize;
use crate::auth::principal::Principal;
use crate::auth::service::{self, Revoked};
use crate::auth::sessions::{describe_by_owner, live_sessions};
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::validate::{self, ClientAddr};

/// `GET /api/v1/sessions` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    user: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /api/v1/sessions`: live sessions of the caller, or of `?user=` for admins.
pub async fn get_sessions(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Query(query): Query<SessionsQuery>,
) -> Result<Json<Value>, ApiError> {
    principal.require_session()?;
    let node = &state.node;
    let user_id = match query.user {
        Some(name) if name != principal.username => {
            let name = validate::account_name("user", &name)?;
            authorize(node, &principal, "read", "users", ip).await?;
            node.store
                .user_by_username(&name)
                .await?
                .ok_or_else(|| ApiError::not_found("no such user"))?
                .id
        }
        _ => principal.user_id,
    };
    let limit = validate::limit(query.limit)?;
    let after = validate::decode_cursor(query.cursor.as_deref())?;
    let sessions = live_sessions(node, user_id).await?;
    let (sessions, next_cursor) = validate::page(sessions, |s| s.id.to_string(), limit, after);
    let items = describe_by_owner(node, user_id, &sessions).await;
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// `DELETE /api/v1/sessions/{id}`: revokes one of one's sessions (admins: anyone's).
pub async fn delete_session(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    principal.require_session()?;
    let node = &state.node;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::invalid_field("id", "must be a session id (UUID)"))?;
    let Some(session) = node.store.session(id).await? else {
        return Err(ApiError::not_found("no such session"));
    };
    if session.user_id != principal.user_id {
        // Someone else's session: an admin action, and otherwise indistinguishable from
        // a session that does not exist.
        if authorize(node, &principal, "write", "users", ip)
            .await
            .is_err()
        {
            return Err(ApiError::not_found("no such session"));
        }
    }
    Ok(Json(
        service::revoke_session(node, id, "revoked", &principal.username, ip).await?,
    ))
}

/// `DELETE /api/v1/sessions`: signs out everywhere (every session of the caller).
pub async fn delete_sessions(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
) -> Result<Json<Revoked>, ApiError> {
    principal.require_session()?;
    let node = &state.node;
    Ok(Json(
        service::sign_out_everywhere(node, principal.user_id, &principal.username, ip).await?,
    ))
}
