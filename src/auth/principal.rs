//! Who is calling: the [`Principal`] a presented credential proves.
//!
//! Access tokens are verified locally (signature, `iss`, `aud`, `exp`) and their session
//! checked against the revocation list: no store round trip. API keys are looked up by
//! prefix and their secret compared in constant time, after a per-address limit on
//! lookups.

use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;

use super::key_material;
use crate::core::Core;
use crate::error::{Error, ErrorKind};
use crate::idp::jwt::TokenError;
use crate::store::{Role, StoreError};

/// Presented credentials longer than this are refused unread.
pub const MAX_CREDENTIAL_LENGTH: usize = 8 * 1024;

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

    /// The caller's session: API keys may not manage sessions, keys or MFA.
    pub fn require_session(&self) -> Result<Uuid, Error> {
        self.session_id().ok_or_else(|| {
            Error::new(
                ErrorKind::Forbidden,
                "not_a_session",
                "this needs a logged-in session, not an API key",
            )
        })
    }
}

/// A credential as presented: an access token or an API key.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// A bearer access token.
    Bearer(&'a str),
    /// An API key (as a bearer token with the key prefix, or in `X-API-Key`).
    ApiKey(&'a str),
}

impl<'a> Credential<'a> {
    /// A bearer token: an API key when it has the key prefix, else an access token.
    pub fn bearer(token: &'a str) -> Self {
        if token.starts_with(key_material::KEY_PREFIX) {
            Credential::ApiKey(token)
        } else {
            Credential::Bearer(token)
        }
    }
}

/// A refused credential: 401 telling a bearer client its token is the problem.
pub fn refused(code: &'static str, message: &'static str) -> Error {
    Error::new(ErrorKind::Unauthenticated, code, message).bearer_challenge()
}

/// The store (or the node) cannot tell whether a credential is good.
fn undecided(message: &'static str) -> Error {
    Error::unavailable("database_unavailable", message)
}

/// The principal `credential` proves; API key lookups from `client` are rate limited first.
pub async fn authenticate(
    node: &Arc<Core>,
    credential: Credential<'_>,
    client: Option<IpAddr>,
) -> Result<Principal, Error> {
    match credential {
        Credential::Bearer(token) => from_access_token(node, token).await,
        Credential::ApiKey(key) => {
            limit_key_lookups(node, client).await?;
            from_api_key(node, key).await
        }
    }
}

/// Counts an API key lookup against the address it came from: a guessed key costs a store
/// lookup, so guessing is limited (at the authenticated rate) before the store is asked.
async fn limit_key_lookups(node: &Core, client: Option<IpAddr>) -> Result<(), Error> {
    let Some(ip) = client else {
        return Ok(());
    };
    let limit = node.config.rate_limit.authenticated_per_minute;
    let key = format!("{}|api_key_lookups|{limit}", crate::limits::client_key(ip));
    let decision = node.rate_limiter.check(&key, limit).await;
    if decision.allowed {
        return Ok(());
    }
    node.actor_metrics
        .rate_limited
        .with_label_values(&["api_key_lookup"])
        .inc();
    Err(Error::new(
        ErrorKind::RateLimited,
        "rate_limited",
        format!("more than {limit} API key lookups per minute from this address; retry later"),
    )
    .retry_after(decision.retry_after_secs))
}

async fn from_access_token(node: &Arc<Core>, token: &str) -> Result<Principal, Error> {
    let invalid = || refused("invalid_token", "the access token is invalid or expired");
    let Some(tokens) = node.tokens() else {
        return Err(undecided("the node is still starting"));
    };
    let now = node.clock.now();
    let claims = match tokens.verify(token, now) {
        Err(TokenError::UnknownKey) => {
            // A key rotated on another node: reload once, then decide.
            node.reload_token_keys().await;
            tokens.verify(token, now).map_err(|_| invalid())?
        }
        other => other.map_err(|_| invalid())?,
    };
    let session_id = Uuid::parse_str(&claims.sid).map_err(|_| invalid())?;
    let user_id = Uuid::parse_str(&claims.sub).map_err(|_| invalid())?;
    let revoked = || refused("token_revoked", "the session of this token was revoked");
    if node.revocations.session_revoked(session_id) || node.revocations.issued_too_early(claims.iat)
    {
        return Err(revoked());
    }
    if !node.lease_fresh() {
        // Cut off from the cluster, this node may have missed a revocation broadcast: the
        // store decides.
        match node.store.session(session_id).await {
            Ok(Some(session)) if session.revoked_at.is_none() => {}
            Ok(_) => return Err(revoked()),
            Err(_) => {
                return Err(undecided(
                    "this node is cut off from the cluster and cannot check the session; retry",
                ));
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

async fn from_api_key(node: &Arc<Core>, key: &str) -> Result<Principal, Error> {
    let invalid = || {
        refused(
            "invalid_api_key",
            "the API key is invalid, expired or revoked",
        )
    };
    let unavailable = |_: StoreError| undecided("the database is unavailable; retry later");
    let (prefix, secret) = key_material::parse(key).ok_or_else(invalid)?;
    let record = node
        .store
        .api_key_by_prefix(prefix)
        .await
        .map_err(unavailable)?;
    // The hash comparison runs whether or not the prefix exists.
    let stored_hash = record.as_ref().map_or("", |r| r.key_hash.as_str());
    let matched = key_material::matches(secret, stored_hash);
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
