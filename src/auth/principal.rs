//! Who is calling: resolved once per request by [`authenticate`] (before rate limiting,
//! which counts per principal) and taken by handlers with the [`Principal`] extractor.
//!
//! Access tokens are verified locally (signature, `iss`, `aud`, `exp`) and their session
//! checked against the revocation list: no store round trip. API keys are looked up by
//! prefix and their secret compared in constant time.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::api_keys;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::idp::jwt::TokenError;
use crate::node::Node;
use crate::store::{Role, StoreError};

/// Presented credentials longer than this are refused unread.
const MAX_CREDENTIAL_LENGTH: usize = 8 * 1024;

/// How a principal proved itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalKind {
    /// An access token of a session.
    Session {
        /// The session.
        session_id: Uuid,
    },
    /// An API key.
    ApiKey {
        /// The key.
        key_id: Uuid,
        /// Its scopes.
        scopes: Vec<String>,
    },
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The user.
    pub user_id: Uuid,
    /// The user's name.
    pub username: String,
    /// The user's email (as of the token's issue, for sessions).
    pub email: Option<String>,
    /// The user's role.
    pub role: Role,
    /// The user's teams.
    pub teams: Vec<String>,
    /// Whether the user has MFA enabled.
    pub mfa_enabled: bool,
    /// Whether a second factor was verified (sessions only).
    pub mfa_verified: bool,
    /// `password`, `ldap`, `oidc`, `saml` or `api_key`.
    pub auth_method: String,
    /// Session or API key.
    pub kind: PrincipalKind,
}

impl Principal {
    /// The session, for a session principal.
    pub fn session_id(&self) -> Option<Uuid> {
        match &self.kind {
            PrincipalKind::Session { session_id } => Some(*session_id),
            PrincipalKind::ApiKey { .. } => None,
        }
    }

    /// `session` or `api_key`, as policies see it.
    pub fn principal_type(&self) -> &'static str {
        match self.kind {
            PrincipalKind::Session { .. } => "session",
            PrincipalKind::ApiKey { .. } => "api_key",
        }
    }

    /// The API key's scopes (none for sessions).
    pub fn scopes(&self) -> &[String] {
        match &self.kind {
            PrincipalKind::ApiKey { scopes, .. } => scopes,
            PrincipalKind::Session { .. } => &[],
        }
    }

    /// Whether the principal is an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// A credential was presented but refused; kept for the handler to answer 401.
#[derive(Clone, Debug)]
pub struct AuthFailure {
    code: &'static str,
    message: &'static str,
    unavailable: bool,
}

impl AuthFailure {
    fn invalid(code: &'static str, message: &'static str) -> Self {
        Self {
            code,
            message,
            unavailable: false,
        }
    }

    fn into_error(self) -> ApiError {
        if self.unavailable {
            return ApiError::unavailable("database_unavailable", self.message);
        }
        ApiError::new(StatusCode::UNAUTHORIZED, self.code, self.message).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        )
    }
}

enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
}

fn credential(parts: &axum::http::HeaderMap) -> Option<Result<Credential<'_>, AuthFailure>> {
    let malformed = || AuthFailure::invalid("invalid_token", "the credential is malformed");
    if let Some(value) = parts.get(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else {
            return Some(Err(malformed()));
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return Some(Err(malformed()));
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Some(Err(AuthFailure::invalid(
                "invalid_token",
                "only Bearer credentials are accepted",
            )));
        }
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_CREDENTIAL_LENGTH {
            return Some(Err(malformed()));
        }
        return Some(Ok(if token.starts_with(api_keys::KEY_PREFIX) {
            Credential::ApiKey(token)
        } else {
            Credential::Bearer(token)
        }));
    }
    let key = parts.get("x-api-key")?;
    match key.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_CREDENTIAL_LENGTH => {
            Some(Ok(Credential::ApiKey(key.trim())))
        }
        _ => Some(Err(malformed())),
    }
}

/// Middleware: resolves the caller, if a credential was presented.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let unauthenticated_route = req
        .extensions()
        .get::<crate::http::middleware::RouteTemplate>()
        .is_some_and(|route| crate::http::middleware::UNLIMITED_ROUTES.contains(&route.0.as_str()));
    if unauthenticated_route {
        return next.run(req).await;
    }
    let outcome = match credential(req.headers()) {
        None => None,
        Some(Err(failure)) => Some(Err(failure)),
        Some(Ok(Credential::Bearer(token))) => Some(from_access_token(&state.node, token).await),
        Some(Ok(Credential::ApiKey(key))) => {
            let client = req
                .extensions()
                .get::<crate::http::middleware::ClientIp>()
                .map(|c| c.0);
            if let Some(refused) = limit_key_lookups(&state.node, client).await {
                return refused;
            }
            Some(from_api_key(&state.node, key).await)
        }
    };
    let mut who = None;
    match outcome {
        Some(Ok(principal)) => {
            who = Some(RequestPrincipal(principal.username.clone()));
            req.extensions_mut().insert(principal);
        }
        Some(Err(failure)) => {
            req.extensions_mut().insert(failure);
        }
        None => {}
    }
    let mut response = next.run(req).await;
    if let Some(who) = who {
        response.extensions_mut().insert(who);
    }
    response
}

/// Counts an API key's lookup against its client address before the lookup reaches the
/// store: guessed keys cost no more database reads than the authenticated rate allows.
/// `Some(429)` past it.
async fn limit_key_lookups(node: &Node, client: Option<std::net::IpAddr>) -> Option<Response> {
    let ip = client?;
    let limit = node.config.rate_limit.authenticated_per_minute;
    let key = format!(
        "{}|api_key_lookups|{limit}",
        crate::http::middleware::client_key(ip)
    );
    let decision = node.rate_limiter.check(&key, limit).await;
    if decision.allowed {
        return None;
    }
    node.actor_metrics
        .rate_limited
        .with_label_values(&["api_key_lookup"])
        .inc();
    Some(
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("more than {limit} API key lookups per minute from this address; retry later"),
        )
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from(decision.retry_after_secs),
        )
        .into_response(),
    )
}

/// Who made a request (a username), on its response, for the request log.
#[derive(Clone, Debug)]
pub struct RequestPrincipal(pub String);

async fn from_access_token(node: &Arc<Node>, token: &str) -> Result<Principal, AuthFailure> {
    let invalid =
        || AuthFailure::invalid("invalid_token", "the access token is invalid or expired");
    let Some(tokens) = node.tokens() else {
        return Err(AuthFailure {
            code: "unavailable",
            message: "the node is still starting",
            unavailable: true,
        });
    };
    let claims = match tokens.verify(token) {
        Err(TokenError::UnknownKey) => {
            // A key rotated on another node: reload once, then decide.
            node.reload_token_keys().await;
            tokens.verify(token).map_err(|_| invalid())?
        }
        other => other.map_err(|_| invalid())?,
    };
    let session_id = Uuid::parse_str(&claims.sid).map_err(|_| invalid())?;
    let user_id = Uuid::parse_str(&claims.sub).map_err(|_| invalid())?;
    let revoked = || AuthFailure::invalid("token_revoked", "the session of this token was revoked");
    if node.revocations.session_revoked(session_id) {
        return Err(revoked());
    }
    if !node.lease_fresh() {
        // Cut off from the cluster, this node may have missed a revocation broadcast: the
        // store decides.
        match node.store.session(session_id).await {
            Ok(Some(session)) if session.revoked_at.is_none() => {}
            Ok(_) => return Err(revoked()),
            Err(_) => {
                return Err(AuthFailure {
                    code: "database_unavailable",
                    message: "this node is cut off from the cluster and cannot check the session; retry",
                    unavailable: true,
                });
            }
        }
    }
    Ok(Principal {
        user_id,
        username: claims.username,
        email: claims.email,
        role: claims.role.parse().map_err(|_| invalid())?,
        teams: claims.teams,
        mfa_enabled: claims.mfa_enabled,
        mfa_verified: claims.mfa,
        auth_method: claims.amr,
        kind: PrincipalKind::Session { session_id },
    })
}

async fn from_api_key(node: &Arc<Node>, key: &str) -> Result<Principal, AuthFailure> {
    let invalid = || {
        AuthFailure::invalid(
            "invalid_api_key",
            "the API key is invalid, expired or revoked",
        )
    };
    let unavailable = |_: StoreError| AuthFailure {
        code: "database_unavailable",
        message: "the database is unavailable; retry later",
        unavailable: true,
    };
    let (prefix, secret) = api_keys::parse(key).ok_or_else(invalid)?;
    let record = node
        .store
        .api_key_by_prefix(prefix)
        .await
        .map_err(unavailable)?;
    // The hash comparison runs whether or not the prefix exists.
    let stored_hash = record.as_ref().map_or("", |r| r.key_hash.as_str());
    let matched = api_keys::matches(secret, stored_hash);
    let Some(record) = record.filter(|_| matched) else {
        return Err(invalid());
    };
    let now = node.clock.now();
    if record.revoked_at.is_some()
        || node.revocations.api_key_revoked(record.id)
        || record.expires_at.is_some_and(|at| at <= now)
    {
        return Err(invalid());
    }
    let user = node
        .store
        .user_by_id(record.user_id)
        .await
        .map_err(unavailable)?;
    let Some(user) = user.filter(|u| u.is_active) else {
        return Err(invalid());
    };
    if node.should_touch_api_key(record.id) {
        let store = node.store.clone();
        tokio::spawn(async move {
            let _ = store.touch_api_key(record.id, now).await;
        });
    }
    Ok(Principal {
        user_id: user.id,
        username: user.username,
        email: user.email,
        role: user.role,
        teams: user.teams,
        mfa_enabled: user.mfa_enabled,
        mfa_verified: false,
        auth_method: "api_key".into(),
        kind: PrincipalKind::ApiKey {
            key_id: record.id,
            scopes: record.scopes,
        },
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        if let Some(failure) = parts.extensions.get::<AuthFailure>() {
            return Err(failure.clone().into_error());
        }
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_required",
            "this endpoint needs a credential",
        )
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")))
    }
}
