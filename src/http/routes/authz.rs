//! `POST /api/v1/authz/evaluate`: the authorization bundle as a decision service for other
//! systems.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::auth::guard::{AUTHORIZATION_BUNDLE, audit_denial, authorize, decide, policy_input};
use crate::auth::principal::Principal;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::validate::{self, ClientAddr};
use crate::store::User;

/// Most context fields a caller may add.
const MAX_CONTEXT_FIELDS: usize = 32;

/// The body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    user_id: Option<String>,
    resource: String,
    action: String,
    context: Option<Map<String, Value>>,
}

fn word(field: &str, value: &str) -> Result<String, ApiError> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid_field(
            field,
            "must be 1-64 letters, digits, `_`, `-`, `.` or `:`",
        ))
    }
}

/// The subject: a user id or a username.
async fn subject(state: &AppState, user: &str) -> Result<User, ApiError> {
    let node = &state.node;
    let found = match uuid::Uuid::parse_str(user) {
        Ok(id) => node.store.user_by_id(id).await?,
        Err(_) => {
            let name = validate::account_name("user_id", user)?;
            node.store.user_by_username(&name).await?
        }
    };
    found.ok_or_else(|| ApiError::not_found(format!("no user {user}")))
}

/// `POST /api/v1/authz/evaluate`: would the `authorization` bundle allow this subject this
/// action on this resource? The subject is the caller unless `user_id` names another user
/// (which needs `read` on users). Undefined results deny.
pub async fn post_evaluate(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    AppJson(body): AppJson<Evaluate>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "evaluate", "authz", ip).await?;
    let resource = word("resource", &body.resource)?;
    let action = word("action", &body.action)?;
    let mut input = policy_input(node, &principal, &action, &resource, ip);
    if let Some(user) = body.user_id.as_deref().map(str::trim) {
        let is_caller = user == principal.user_id.to_string() || user == principal.username;
        if !is_caller {
            authorize(node, &principal, "read", "users", ip).await?;
            let user = subject(&state, user).await?;
            // Another user, as a logged-in session of theirs without a second factor.
            input["user"] = json!({
                "id": user.id,
                "username": user.username,
                "role": user.role,
                "teams": user.teams,
                "mfa_enabled": user.mfa_enabled,
                "mfa_verified": false,
                "auth_method": "password",
            });
            input["principal_type"] = json!("session");
            input["scopes"] = json!([]);
        }
    }
    if let Some(context) = body.context {
        if context.len() > MAX_CONTEXT_FIELDS {
            return Err(ApiError::invalid_field(
                "context",
                format!("has more than {MAX_CONTEXT_FIELDS} fields"),
            ));
        }
        if let Value::Object(defaults) = &mut input["context"] {
            defaults.extend(context);
        }
    }
    let decision = decide(node, &input)?;
    if decision.error.is_some() {
        audit_denial(node, &principal.username, ip, &action, &resource, &decision).await;
    }
    let mut answer = json!({
        "allowed": decision.allowed,
        "policy": AUTHORIZATION_BUNDLE,
        "policy_version": decision.version,
        "cached": decision.cached,
    });
    if let Some(reason) = decision.reason {
        answer["reason"] = json!(reason);
    }
    Ok(Json(answer))
}
