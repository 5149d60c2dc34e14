//! What every login route answers: the login body it takes, and the token response or
//! the MFA challenge it gives.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::auth::service::LoginOutcome;

/// `POST /api/v1/auth/login` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: Zeroizing<String>,
}

/// The answer to a login: the token response, or the MFA challenge to answer.
pub fn login_response(outcome: LoginOutcome) -> Response {
    match outcome {
        LoginOutcome::Tokens(tokens) => Json(tokens).into_response(),
        LoginOutcome::MfaRequired {
            challenge_id,
            expires_in,
        } => Json(json!({
            "mfa_required": true,
            "challenge_id": challenge_id,
            "expires_in": expires_in,
        }))
        .into_response(),
    }
}
