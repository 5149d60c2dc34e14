//! `/api/v1/users`: accounts (admins, through the `authorization` policy: `read`/`write`
//! on `users`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::auth::guard::authorize;
use crate::auth::principal::Principal;
use crate::core::Core;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::validate::{self, ClientAddr};
use crate::store::{PageRequest, Role, User};
use crate::users::{self, AccountChange, Admin, NewAccount};

/// A user as the API shows it: never a hash or a secret.
pub fn user_json(user: &User) -> Value {
    json!({
        "user_id": user.id,
        "username": user.username,
        "email": user.email,
        "role": user.role,
        "teams": user.teams,
        "is_active": user.is_active,
        "mfa_enabled": user.mfa_enabled,
        "auth_provider": user.provider,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    })
}

fn role(field: &str, value: &str) -> Result<Role, ApiError> {
    value
        .parse()
        .map_err(|e: String| ApiError::invalid_field(field, e))
}

/// `POST /api/v1/users` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    username: String,
    email: String,
    role: String,
    password: Option<Zeroizing<String>>,
    teams: Option<Vec<String>>,
    mfa_enabled: Option<bool>,
}

/// The caller as the administrator making a change.
fn admin(principal: &Principal, ip: Option<std::net::IpAddr>) -> Admin<'_> {
    Admin {
        user_id: principal.user_id,
        username: &principal.username,
        ip,
    }
}

/// `POST /api/v1/users`.
pub async fn post_user(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    AppJson(body): AppJson<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "users", ip).await?;
    let username = validate::username("username", &body.username)?;
    let email = validate::email("email", &body.email)?;
    let role = role("role", &body.role)?;
    let teams = validate::teams("teams", body.teams.as_deref().unwrap_or_default())?;
    if body.mfa_enabled == Some(true) {
        return Err(ApiError::invalid_field(
            "mfa_enabled",
            "MFA is turned on by the user's own enrolment (POST /api/v1/auth/mfa/totp/enroll)",
        ));
    }
    let new = NewAccount {
        username,
        email,
        role,
        teams,
        password: body.password,
    };
    let user = users::create(node, admin(&principal, ip), new).await?;
    Ok((StatusCode::CREATED, Json(user_json(&user))))
}

/// `GET /api/v1/users` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /api/v1/users`.
pub async fn get_users(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "users", ip).await?;
    let limit = validate::limit(query.limit)?;
    let after = validate::decode_cursor(query.cursor.as_deref())?;
    let users = node
        .store
        .list_users(&PageRequest {
            after,
            limit: limit + 1,
        })
        .await?;
    let (users, next_cursor) = validate::keyset_page(users, limit, |u| u.username.clone());
    let items: Vec<Value> = users.iter().map(user_json).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

async fn target(node: &Core, username: &str) -> Result<User, ApiError> {
    let username = validate::account_name("username", username)?;
    Ok(users::find(node, &username).await?)
}

/// `GET /api/v1/users/{username}`.
pub async fn get_user(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(username): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state.node, &principal, "read", "users", ip).await?;
    Ok(Json(user_json(&target(&state.node, &username).await?)))
}

/// `PATCH /api/v1/users/{username}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    #[serde(default, deserialize_with = "validate::nullable")]
    email: Option<Option<String>>,
    role: Option<String>,
    teams: Option<Vec<String>>,
    is_active: Option<bool>,
    password: Option<Zeroizing<String>>,
}

/// `PATCH /api/v1/users/{username}`. Disabling revokes every session and API key of the
/// user before answering; a role change signs the user out, so it takes effect at once.
pub async fn patch_user(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(username): Path<String>,
    AppJson(body): AppJson<UserUpdate>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "users", ip).await?;
    let user = target(node, &username).await?;
    let email = match body.email {
        Some(Some(email)) => Some(Some(validate::email("email", &email)?)),
        other => other,
    };
    let change = AccountChange {
        email,
        role: body.role.as_deref().map(|r| role("role", r)).transpose()?,
        teams: body
            .teams
            .as_deref()
            .map(|t| validate::teams("teams", t))
            .transpose()?,
        is_active: body.is_active,
        password: body.password,
    };
    let updated = users::update(node, admin(&principal, ip), &user, change).await?;
    let mut response = user_json(&updated.user);
    if let Some(ms) = updated.propagation_ms {
        response["propagation_ms"] = json!(ms);
    }
    Ok(Json(response))
}

/// `DELETE /api/v1/users/{username}`: the user's sessions and API keys are revoked.
pub async fn delete_user(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "users", ip).await?;
    let user = target(node, &username).await?;
    users::delete(node, admin(&principal, ip), &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/users/{username}/mfa`: removes the user's TOTP and recovery codes.
pub async fn delete_user_mfa(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "users", ip).await?;
    let user = target(node, &username).await?;
    users::reset_mfa(node, admin(&principal, ip), &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/users/{username}/unlock`: clears the failed-login counter of a name.
pub async fn post_unlock(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "write", "users", ip).await?;
    // Locks apply to names that have no account too, so any well-formed name can be
    // unlocked.
    let username = validate::account_name("username", &username)?;
    users::unlock(node, admin(&principal, ip), &username).await?;
    Ok(StatusCode::NO_CONTENT)
}
