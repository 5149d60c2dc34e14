//! `/api/v1/auth/*` and `/.well-known/jwks.json`: logins, tokens, self-service password
//! and MFA. These routes are authorized by ownership, never by policy, so no policy can
//! stop a user from logging out or managing their own credentials.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sark_cluster::wire::SessionOp;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::auth::principal::{Principal, PrincipalKind};
use crate::auth::service;
use crate::auth::{forward, mfa};
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::login::{LoginRequest, login_response};
use crate::http::validate::ClientAddr;

/// `POST /api/v1/auth/login`.
pub async fn post_login(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    AppJson(body): AppJson<LoginRequest>,
) -> Result<axum::response::Response, ApiError> {
    service::check_credentials(&body.username, &body.password)?;
    let outcome = service::password_login(&state.node, &body.username, body.password, ip).await?;
    Ok(login_response(outcome))
}

/// `POST /api/v1/auth/mfa/verify` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaVerifyRequest {
    challenge_id: String,
    code: Zeroizing<String>,
}

/// `POST /api/v1/auth/mfa/verify`.
pub async fn post_mfa_verify(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    AppJson(body): AppJson<MfaVerifyRequest>,
) -> Result<Json<Value>, ApiError> {
    let challenge_id = Uuid::parse_str(&body.challenge_id)
        .map_err(|_| ApiError::invalid_field("challenge_id", "must be a UUID"))?;
    if body.code.is_empty() || body.code.len() > 64 {
        return Err(ApiError::invalid_field(
            "code",
            "must be a 6-digit code or a recovery code",
        ));
    }
    let op = SessionOp::VerifyMfa {
        challenge_id: challenge_id.to_string(),
        code: body.code.to_string(),
    };
    Ok(Json(forward::run(&state.node, challenge_id, op, ip).await?))
}

/// `POST /api/v1/auth/refresh` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: Zeroizing<String>,
}

/// `POST /api/v1/auth/refresh`.
pub async fn post_refresh(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    AppJson(body): AppJson<RefreshRequest>,
) -> Result<Json<Value>, ApiError> {
    if body.refresh_token.is_empty() || body.refresh_token.len() > 256 {
        return Err(ApiError::invalid_field(
            "refresh_token",
            "is not a refresh token",
        ));
    }
    let op = SessionOp::Refresh {
        refresh_token: body.refresh_token.to_string(),
    };
    // The session is named by the token's prefix; a malformed token is refused here.
    let session = body
        .refresh_token
        .split_once('.')
        .and_then(|(sid, _)| Uuid::parse_str(sid).ok());
    let tokens = match session {
        Some(session) => forward::run(&state.node, session, op, ip).await?,
        None => forward::run_here(&state.node, op, ip).await?,
    };
    Ok(Json(tokens))
}

/// `POST /api/v1/auth/logout`.
pub async fn post_logout(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    let session_id = principal.require_session()?;
    let op = SessionOp::Logout {
        session_id: session_id.to_string(),
        actor: principal.username.clone(),
    };
    Ok(Json(forward::run(&state.node, session_id, op, ip).await?))
}

/// `GET /api/v1/auth/me`: answered from the credential alone (a session's fields are as of
/// its token's issue; a refresh picks up changes).
pub async fn get_me(principal: Principal) -> Json<Value> {
    let (session_id, scopes) = match &principal.kind {
        PrincipalKind::Session { session_id } => (Some(*session_id), Vec::new()),
        PrincipalKind::ApiKey { scopes, .. } => (None, scopes.clone()),
    };
    Json(json!({
        "user_id": principal.user_id,
        "username": principal.username,
        "email": principal.email,
        "role": principal.role,
        "teams": principal.teams,
        "mfa_enabled": principal.mfa_enabled,
        "session_id": session_id,
        "auth_method": principal.auth_method,
        "principal_type": principal.principal_type(),
        "scopes": scopes,
    }))
}

/// The optional body of a change that needs a recent authentication.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reauthentication {
    current_password: Option<Zeroizing<String>>,
}

/// `POST /api/v1/auth/password`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: Zeroizing<String>,
    new_password: Zeroizing<String>,
}

/// `POST /api/v1/auth/password`: changes one's own password and revokes one's other
/// sessions.
pub async fn post_password(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    AppJson(body): AppJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    let session_id = principal.require_session()?;
    let node = &state.node;
    let user = node
        .store
        .user_by_id(principal.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    service::verify_current_password(node, &user, body.current_password, ip).await?;
    service::set_password(
        node,
        &user.username,
        &body.new_password,
        Some(session_id),
        &principal.username,
        ip,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/auth/mfa/totp/enroll`: a new secret, not active until confirmed.
pub async fn post_totp_enroll(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    body: Option<AppJson<Reauthentication>>,
) -> Result<Json<Value>, ApiError> {
    let current_password = body.and_then(|AppJson(body)| body.current_password);
    let enrollment =
        mfa::enroll_totp(&state.node, enrollee(&principal)?, current_password, ip).await?;
    Ok(Json(json!({
        "secret": enrollment.secret,
        "otpauth_uri": enrollment.otpauth_uri,
        "qr_png_base64": enrollment.qr_png_base64,
    })))
}

/// `POST /api/v1/auth/mfa/totp/confirm` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotpConfirm {
    code: Zeroizing<String>,
}

/// `POST /api/v1/auth/mfa/totp/confirm`: turns MFA on and returns ten recovery codes.
pub async fn post_totp_confirm(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    AppJson(body): AppJson<TotpConfirm>,
) -> Result<Json<Value>, ApiError> {
    let codes = mfa::confirm_totp(&state.node, enrollee(&principal)?, &body.code, ip).await?;
    Ok(Json(json!({ "recovery_codes": codes })))
}

/// The caller as the user whose second factor changes: a session, not an API key.
fn enrollee(principal: &Principal) -> Result<mfa::Enrollee<'_>, ApiError> {
    Ok(mfa::Enrollee {
        user_id: principal.user_id,
        username: &principal.username,
        session_id: principal.require_session()?,
    })
}

/// `GET /.well-known/jwks.json`.
pub async fn get_jwks(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let tokens = state
        .node
        .tokens()
        .ok_or_else(|| ApiError::unavailable("starting", "the node is still starting"))?;
    Ok(Json(tokens.jwks()))
}
