//! `/api/v1/users`: accounts (admins, through the `authorization` policy: `read`/`write`
//! on `users`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::auth::guard::authorize;
use crate::auth::principal::Principal;
use crate::auth::service;
use crate::core::Core;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::validate::{self, ClientAddr};
use crate::store::{CredentialRevocation, PageRequest, Role, StoreError, User, UserPatch};

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

async fn audit(
    node: &Core,
    event_type: &str,
    actor: &str,
    ip: Option<std::net::IpAddr>,
    username: &str,
    details: Value,
) {
    let event = node
        .audit
        .event(event_type, "success")
        .by(actor)
        .from_ip(ip)
        .on(format!("user:{username}"))
        .with_details(details);
    node.record_audit(event).await;
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
    let password_hash = match body.password {
        Some(password) => {
            crate::idp::password::check_policy(&username, &password).map_err(|v| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "weak_password",
                    format!("`password` ({}): {}", v.rule, v.message),
                )
            })?;
            Some(
                node.passwords
                    .hash(password)
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            )
        }
        None => None,
    };
    let now = node.clock.now();
    let user = User {
        id: Uuid::now_v7(),
        username,
        email: Some(email),
        role,
        teams,
        password_hash,
        is_active: true,
        mfa_enabled: false,
        provider: "local".into(),
        subject: None,
        created_at: now,
        updated_at: now,
    };
    match node.store.create_user(&user).await {
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "user_exists",
                format!("user {} already exists", user.username),
            ));
        }
        other => other?,
    }
    audit(
        node,
        "user_created",
        &principal.username,
        ip,
        &user.username,
        json!({"role": user.role, "user_id": user.id}),
    )
    .await;
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
    node.store
        .user_by_username(&username)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {username}")))
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

fn refuse_self_lockout(principal: &Principal, user: &User, what: &str) -> Result<(), ApiError> {
    if principal.user_id == user.id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "self_lockout",
            format!("you cannot {what} your own account; ask another admin, or use `sark admin`"),
        ));
    }
    Ok(())
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
    let new_role = body.role.as_deref().map(|r| role("role", r)).transpose()?;
    let teams = body
        .teams
        .as_deref()
        .map(|t| validate::teams("teams", t))
        .transpose()?;
    if body.is_active == Some(false) {
        refuse_self_lockout(&principal, &user, "disable")?;
    }
    if new_role.is_some_and(|r| r != Role::Admin && user.role == Role::Admin) {
        refuse_self_lockout(&principal, &user, "demote")?;
    }
    if let Some(password) = &body.password {
        service::set_password(
            node,
            &user.username,
            password,
            None,
            &principal.username,
            ip,
        )
        .await?;
    }
    let patch = UserPatch {
        email,
        role: new_role,
        teams,
        is_active: body.is_active,
        ..Default::default()
    };
    // Revoked whenever asked for, not only on a change: a retry after a failed
    // revocation must revoke again. Sessions and API keys go in the transaction that
    // stores the change.
    let disabled = body.is_active == Some(false);
    let mut revocation_confirmed = None;
    let updated = if disabled || new_role.is_some() {
        let reason = if disabled {
            "user_disabled"
        } else {
            "role_changed"
        };
        let revoke = CredentialRevocation {
            reason,
            keep: None,
            api_keys: true,
        };
        let (updated, revoked) =
            service::change_credentials(node, &user.username, &patch, &revoke).await?;
        revocation_confirmed = Some(revoked);
        updated
    } else {
        node.store
            .update_user(&user.username, &patch, node.clock.now())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no user {}", user.username)))?
    };
    let mut response = user_json(&updated);
    let revocation_confirmed = revocation_confirmed.map(|revoked| {
        response["propagation_ms"] = json!(revoked.propagation_ms);
        revoked.confirmed
    });
    let changed: Vec<&str> = [
        ("email", patch.email.is_some()),
        ("role", patch.role.is_some()),
        ("teams", patch.teams.is_some()),
        ("is_active", patch.is_active.is_some()),
        ("password", body.password.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let event = if disabled && user.is_active {
        "user_disabled"
    } else {
        "user_updated"
    };
    audit(
        node,
        event,
        &principal.username,
        ip,
        &user.username,
        json!({"changed": changed, "role": updated.role, "revocation_confirmed": revocation_confirmed}),
    )
    .await;
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
    refuse_self_lockout(&principal, &user, "delete")?;
    node.require_cluster().await?;
    let deleted = node
        .store
        .delete_user(&user.username, node.clock.now())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user {}", user.username)))?;
    node.revocations.revoke_sessions(&deleted.revoked_sessions);
    node.revocations.revoke_api_keys(&deleted.revoked_api_keys);
    let propagation = node
        .broadcast_revoked(&deleted.revoked_sessions, &deleted.revoked_api_keys)
        .await;
    audit(
        node,
        "user_deleted",
        &principal.username,
        ip,
        &user.username,
        json!({"sessions_revoked": deleted.revoked_sessions.len(), "api_keys_revoked": deleted.revoked_api_keys.len()}),
    )
    .await;
    crate::core::confirmed(propagation)?;
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
    node.store.reset_mfa(user.id).await?;
    audit(
        node,
        "mfa_reset",
        &principal.username,
        ip,
        &user.username,
        json!({}),
    )
    .await;
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
    let was_locked = node
        .lockout
        .clear(&service::lockout_key(&username), node.clock.now())
        .await?;
    audit(
        node,
        "account_unlocked",
        &principal.username,
        ip,
        &username,
        json!({"was_locked": was_locked}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
