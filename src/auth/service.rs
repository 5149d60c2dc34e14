//! Logins, MFA challenges, token refresh and revocation.
//!
//! Failed first and second factors count against the submitted username, whether or not
//! such an account exists, in the store (so counts survive restarts and are shared by
//! every node). Unknown users, disabled users and wrong passwords get the same answer
//! after the same amount of argon2 work.

use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::json;
use tokio::sync::OwnedMutexGuard;
use uuid::Uuid;
use zeroize::Zeroizing;

use sark_actors::session::{RefreshOutcome, SessionError};

use crate::core::{Change, Core, Fence, Propagated, Published, seconds};
use crate::error::{Error, ErrorKind};
use crate::idp::jwt::AccessClaims;
use crate::idp::totp;
use crate::secrets::sealing_context;
use crate::store::{ChallengeRecord, LockState, LockoutRule, SealedKind, SessionRecord, User};

/// Submitted usernames longer than this are refused before any work.
pub const MAX_USERNAME_INPUT: usize = 256;

/// The user as shown in token responses and `/auth/me`.
#[derive(Debug, Serialize)]
pub struct UserSummary {
    /// Id.
    pub user_id: Uuid,
    /// Name.
    pub username: String,
    /// Email.
    pub email: Option<String>,
    /// Role.
    pub role: String,
    /// Teams.
    pub teams: Vec<String>,
    /// Whether MFA is on.
    pub mfa_enabled: bool,
}

impl From<&User> for UserSummary {
    fn from(user: &User) -> Self {
        Self {
            user_id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
            role: user.role.to_string(),
            teams: user.teams.clone(),
            mfa_enabled: user.mfa_enabled,
        }
    }
}

/// What every successful login returns.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// The access token (JWT).
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The refresh token (opaque, single use).
    pub refresh_token: String,
    /// The session.
    pub session_id: Uuid,
    /// The user.
    pub user: UserSummary,
}

/// The first step of a login.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Logged in.
    Tokens(Box<TokenResponse>),
    /// The password was right; a second factor is required.
    MfaRequired {
        /// The challenge to answer at `/auth/mfa/verify`.
        challenge_id: Uuid,
        /// Seconds it stays open.
        expires_in: i64,
    },
}

/// The answer of a revocation.
#[derive(Debug, Serialize)]
pub struct Revoked {
    /// Whether something live was revoked.
    pub revoked: bool,
    /// How the revocation reached the cluster.
    #[serde(flatten)]
    pub propagation: Propagated,
}

/// The configured lockout rule.
pub fn lockout_rule(node: &Core) -> LockoutRule {
    let lock = Duration::seconds(seconds(node.config.auth.lockout_seconds));
    LockoutRule {
        threshold: node.config.auth.lockout_threshold,
        window: lock,
        lock_for: lock,
    }
}

/// The key failures are counted under: the submitted name, trimmed and lowercased.
pub fn lockout_key(username: &str) -> String {
    username.trim().to_lowercase()
}

fn locked(until: DateTime<Utc>, now: DateTime<Utc>) -> Error {
    let retry = (until - now).num_seconds().max(1);
    Error::new(
        ErrorKind::Locked,
        "account_locked",
        "too many failed attempts; try again later",
    )
    .retry_after(u64::try_from(retry).unwrap_or(1))
}

pub(crate) fn invalid_credentials() -> Error {
    Error::new(
        ErrorKind::Unauthenticated,
        "invalid_credentials",
        "invalid username or password",
    )
}

/// A check of a credential against the lockout of `key`, holding the key's turn. It ends
/// with [`Attempt::succeeded`], [`Attempt::failed`], or is dropped when the first factor
/// was right and the second is pending (the counted failures stay, so proving the
/// password again buys no new second-factor guesses).
pub struct Attempt {
    key: String,
    now: DateTime<Utc>,
    /// Whether the name had a counter when its turn began.
    counted: bool,
    _turn: OwnedMutexGuard<()>,
}

impl Attempt {
    /// Waits for the key's turn, then answers 423 if the name is locked.
    pub async fn begin(node: &Core, key: &str) -> Result<Self, Error> {
        let turn = node.attempt_locks.turn(key).await;
        let now = node.clock.now();
        let state = node.lockout.state(key).await?;
        if let Some(LockState {
            locked_until: Some(until),
            ..
        }) = state
            && until > now
        {
            return Err(locked(until, now));
        }
        Ok(Self {
            key: key.to_owned(),
            now,
            counted: state.is_some(),
            _turn: turn,
        })
    }

    /// The credential was right: the name's counter is cleared. A name that had none
    /// when its turn began costs no write (a failure counted meanwhile by another node
    /// stays counted).
    pub async fn succeeded(self, node: &Core) -> Result<(), Error> {
        if self.counted {
            node.lockout.clear(&self.key, self.now).await?;
        }
        Ok(())
    }

    /// The credential was wrong: the failure is counted. Returns 423 when this failure
    /// locked the name (and audits the lock), otherwise `otherwise`.
    pub async fn failed(self, node: &Core, ip: Option<IpAddr>, otherwise: Error) -> Error {
        let state = match node
            .lockout
            .record_failure(&self.key, lockout_rule(node), self.now)
            .await
        {
            Ok(state) => state,
            Err(err) => return err.into(),
        };
        match state.locked_until {
            Some(until) if until > self.now => {
                // Audited once, by the failure that reached the threshold.
                if state.failures == node.config.auth.lockout_threshold {
                    let event = node
                        .audit
                        .event("account_locked", "success")
                        .by(&self.key)
                        .from_ip(ip)
                        .on(format!("user:{}", self.key))
                        .with_details(json!({ "failures": state.failures, "locked_until": until }));
                    node.record_audit(event).await;
                }
                locked(until, self.now)
            }
            _ => otherwise,
        }
    }
}

/// An audit event by `actor`, from `ip`.
pub(crate) fn event(
    node: &Core,
    event_type: &str,
    outcome: &str,
    actor: &str,
    ip: Option<IpAddr>,
) -> sark_actors::store::AuditEvent {
    node.audit.event(event_type, outcome).by(actor).from_ip(ip)
}

/// Records an audit event about `actor`.
pub(crate) async fn audit(
    node: &Core,
    event_type: &str,
    outcome: &str,
    actor: &str,
    ip: Option<IpAddr>,
    resource: Option<String>,
    details: serde_json::Value,
) {
    let mut event = event(node, event_type, outcome, actor, ip).with_details(details);
    event.resource = resource;
    node.record_audit(event).await;
}

/// A local password login.
pub async fn password_login(
    node: &Core,
    username: &str,
    password: Zeroizing<String>,
    ip: Option<IpAddr>,
) -> Result<LoginOutcome, Error> {
    let key = lockout_key(username);
    let attempt = Attempt::begin(node, &key).await?;
    let user = node.store.user_by_username(&key).await?;
    // Only active local accounts with a password can succeed; every other case still
    // pays for one argon2 verification, against a dummy hash.
    let hash = user
        .as_ref()
        .filter(|u| u.is_active && u.provider == "local")
        .and_then(|u| u.password_hash.clone());
    let verified = node.passwords.verify(password, hash).await;
    let user = match (verified, user) {
        (true, Some(user)) => user,
        _ => {
            audit(
                node,
                "login_failed",
                "failure",
                &key,
                ip,
                None,
                json!({"auth_method": "password"}),
            )
            .await;
            return Err(attempt.failed(node, ip, invalid_credentials()).await);
        }
    };
    complete_login(node, attempt, &user, "password", ip).await
}

/// Finishes a login whose first factor (`method`) proved `user`: a second-factor challenge
/// when the user has MFA on, otherwise the lockout counter is cleared and a session starts.
pub async fn complete_login(
    node: &Core,
    attempt: Attempt,
    user: &User,
    method: &str,
    ip: Option<IpAddr>,
) -> Result<LoginOutcome, Error> {
    if user.mfa_enabled {
        let now = node.clock.now();
        let expires_in = seconds(node.config.auth.mfa_challenge_seconds);
        let challenge = ChallengeRecord {
            id: Uuid::new_v4(),
            user_id: user.id,
            username: attempt.key.clone(),
            auth_method: method.to_owned(),
            ip: ip.map(|ip| ip.to_string()),
            created_at: now,
            expires_at: now + Duration::seconds(expires_in),
        };
        node.store.create_challenge(&challenge).await?;
        drop(attempt);
        return Ok(LoginOutcome::MfaRequired {
            challenge_id: challenge.id,
            expires_in,
        });
    }
    attempt.succeeded(node).await?;
    let response = start_session(node, user, method, false, ip).await?;
    audit(
        node,
        "login_succeeded",
        "success",
        &user.username,
        ip,
        Some(format!("session:{}", response.session_id)),
        json!({"auth_method": method, "mfa": false}),
    )
    .await;
    Ok(LoginOutcome::Tokens(Box::new(response)))
}

/// The second step of a login: a TOTP code or a recovery code for an open challenge.
pub async fn verify_mfa(
    node: &Core,
    challenge_id: Uuid,
    code: &str,
    ip: Option<IpAddr>,
) -> Result<TokenResponse, Error> {
    let now = node.clock.now();
    let invalid_challenge = || {
        Error::new(
            ErrorKind::Unauthenticated,
            "invalid_challenge",
            "the MFA challenge is unknown, used or expired",
        )
    };
    let challenge = node
        .store
        .challenge(challenge_id, now)
        .await?
        .ok_or_else(invalid_challenge)?;
    let key = challenge.username.clone();
    let attempt = Attempt::begin(node, &key).await?;
    let user = node
        .store
        .user_by_id(challenge.user_id)
        .await?
        .filter(|u| u.is_active && u.mfa_enabled)
        .ok_or_else(invalid_challenge)?;
    let method = if totp::is_recovery_code(code) {
        "recovery_code"
    } else {
        "totp"
    };
    let accepted = match method {
        "recovery_code" => {
            let keys = node.keys.keys().await?;
            node.store
                .use_recovery_code(
                    user.id,
                    &totp::hash_recovery_code(&keys.recovery_codes, user.id, code),
                    now,
                )
                .await?
        }
        _ => accept_totp(node, &user, code, now).await?,
    };
    if !accepted {
        audit(
            node,
            "mfa_failed",
            "failure",
            &user.username,
            ip,
            None,
            json!({"method": method, "challenge_id": challenge_id}),
        )
        .await;
        let wrong = Error::new(
            ErrorKind::Unauthenticated,
            "invalid_code",
            "the code is wrong or was already used",
        );
        return Err(attempt.failed(node, ip, wrong).await);
    }
    if !node.store.consume_challenge(challenge_id, now).await? {
        return Err(invalid_challenge());
    }
    attempt.succeeded(node).await?;
    let response = start_session(node, &user, &challenge.auth_method, true, ip).await?;
    let session = Some(format!("session:{}", response.session_id));
    audit(
        node,
        "mfa_verified",
        "success",
        &user.username,
        ip,
        session.clone(),
        json!({"method": method}),
    )
    .await;
    audit(
        node,
        "login_succeeded",
        "success",
        &user.username,
        ip,
        session,
        json!({"auth_method": challenge.auth_method, "mfa": true}),
    )
    .await;
    Ok(response)
}

/// Checks a TOTP code of a confirmed enrolment; a code is accepted once (the store keeps
/// the last accepted time step).
async fn accept_totp(
    node: &Core,
    user: &User,
    code: &str,
    now: DateTime<Utc>,
) -> Result<bool, Error> {
    let Some(record) = node
        .store
        .totp(user.id)
        .await?
        .filter(|t| t.confirmed_at.is_some())
    else {
        return Ok(false);
    };
    let secret = node
        .keys
        .sealer()
        .open(
            &sealing_context(SealedKind::Totp, &user.id.to_string()),
            &record.secret,
        )
        .map_err(|e| Error::internal(e.to_string()))?;
    let Some(step) = totp::verify(&secret, code, u64::try_from(now.timestamp()).unwrap_or(0))
    else {
        return Ok(false);
    };
    Ok(node.store.accept_totp_step(user.id, step).await?)
}

/// A new refresh token and the hash the store keeps of it.
fn new_refresh_token(session_id: Uuid) -> (String, String) {
    let secret = crate::secrets::random_token();
    let hash = hash_refresh_secret(&secret);
    (format!("{}.{secret}", session_id.simple()), hash)
}

fn hash_refresh_secret(secret: &str) -> String {
    crate::secrets::sha256_hex(secret)
}

/// Splits a presented refresh token into its session and the hash of its secret.
fn parse_refresh_token(token: &str) -> Option<(Uuid, String)> {
    let (sid, secret) = token.split_once('.')?;
    if secret.len() != 43
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some((Uuid::parse_str(sid).ok()?, hash_refresh_secret(secret)))
}

fn access_token(
    node: &Core,
    user: &User,
    session: &SessionRecord,
    now: DateTime<Utc>,
) -> Result<(String, i64), Error> {
    let tokens = node
        .tokens()
        .ok_or_else(|| Error::unavailable("starting", "the node is still starting"))?;
    let lifetime = seconds(node.config.auth.access_token_seconds);
    // An access token never outlives its session.
    let exp = (now + Duration::seconds(lifetime)).min(session.expires_at);
    let claims = AccessClaims {
        iss: node.config.auth.issuer.clone(),
        aud: node.config.auth.audience.clone(),
        sub: user.id.to_string(),
        sid: session.id.to_string(),
        iat: now.timestamp(),
        exp: exp.timestamp(),
        jti: Uuid::new_v4().to_string(),
        username: user.username.clone(),
        email: user.email.clone(),
        role: user.role.to_string(),
        teams: user.teams.clone(),
        mfa_enabled: user.mfa_enabled,
        mfa: session.mfa_verified,
        amr: session.auth_method.clone(),
    };
    let token = tokens
        .issue(&claims)
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok((token, (exp - now).num_seconds().max(0)))
}

/// Creates a session for `user` (its actor is activated at once) and its tokens.
pub async fn start_session(
    node: &Core,
    user: &User,
    auth_method: &str,
    mfa_verified: bool,
    ip: Option<IpAddr>,
) -> Result<TokenResponse, Error> {
    let now = node.clock.now();
    let id = Uuid::now_v7();
    let (refresh_token, refresh_hash) = new_refresh_token(id);
    let session = SessionRecord {
        id,
        user_id: user.id,
        refresh_hash,
        auth_method: auth_method.to_owned(),
        ip: ip.map(|ip| ip.to_string()),
        mfa_verified,
        created_at: now,
        last_seen_at: now,
        expires_at: now + Duration::seconds(seconds(node.config.session.absolute_seconds)),
        revoked_at: None,
        revoked_reason: None,
        node_id: node.node_id.clone(),
    };
    if !node.store.create_session(&session).await? {
        // The user was disabled or deleted a moment ago.
        return Err(invalid_credentials());
    }
    // A password, role or MFA change that committed between our read of the user and the
    // insert revoked every session it could see, but not this one: check again after it.
    let current = node.store.user_by_id(user.id).await?;
    if !current.as_ref().is_some_and(|c| same_credentials(c, user)) {
        node.store
            .revoke_session(id, "credentials_changed", node.clock.now())
            .await?;
        node.revocations.revoke_sessions(&[id]);
        return Err(invalid_credentials());
    }
    node.actor_metrics.sessions_created.inc();
    // The session's actor starts with the session on its owner: here, or on the owner's
    // first request for it; a failure here only delays it to that request.
    if node.owns(&id.to_string()) {
        let _ = node.sessions.actor(id).await;
    }
    let (access_token, expires_in) = access_token(node, user, &session, now)?;
    Ok(TokenResponse {
        access_token,
        token_type: "bearer",
        expires_in,
        refresh_token,
        session_id: id,
        user: UserSummary::from(user),
    })
}

/// Whether nothing that a session's authentication rests on differs between the two.
fn same_credentials(now: &User, then: &User) -> bool {
    now.is_active
        && now.password_hash == then.password_hash
        && now.role == then.role
        && now.mfa_enabled == then.mfa_enabled
}

/// Exchanges a refresh token for new tokens; the presented one dies. A refresh token
/// presented twice revokes its whole session.
pub async fn refresh(
    node: &Core,
    refresh_token: &str,
    ip: Option<IpAddr>,
) -> Result<TokenResponse, Error> {
    let invalid = || {
        Error::new(
            ErrorKind::Unauthenticated,
            "invalid_token",
            "the refresh token is invalid or expired",
        )
    };
    let (session_id, presented) = parse_refresh_token(refresh_token).ok_or_else(invalid)?;
    let (new_token, new_hash) = new_refresh_token(session_id);
    let outcome = match node.sessions.refresh(session_id, presented, new_hash).await {
        Ok(outcome) => outcome,
        Err(SessionError::NotFound) => return Err(invalid()),
        Err(SessionError::Store(err)) => return Err(err.into()),
        Err(SessionError::Unavailable) => {
            return Err(Error::unavailable(
                "session_unavailable",
                "the session could not be reached; retry",
            ));
        }
    };
    match outcome {
        RefreshOutcome::Rotated(session) => {
            let now = node.clock.now();
            let user = node
                .store
                .user_by_id(session.user_id)
                .await?
                .filter(|u| u.is_active)
                .ok_or_else(invalid)?;
            let (access_token, expires_in) = access_token(node, &user, &session, now)?;
            audit(
                node,
                "token_refreshed",
                "success",
                &user.username,
                ip,
                Some(format!("session:{session_id}")),
                json!({}),
            )
            .await;
            Ok(TokenResponse {
                access_token,
                token_type: "bearer",
                expires_in,
                refresh_token: new_token,
                session_id,
                user: UserSummary::from(&user),
            })
        }
        RefreshOutcome::Reused(session) => {
            // The presenter gets a 401 either way; an unconfirmed revocation is stored and
            // reaches the other members once they hear from this node or check the store.
            node.publish_unfenced(Change::Revoked {
                sessions: &[session_id],
                api_keys: &[],
            })
            .await;
            node.actor_metrics.refresh_reuse.inc();
            let actor = node
                .store
                .user_by_id(session.user_id)
                .await
                .ok()
                .flatten()
                .map(|u| u.username)
                .unwrap_or_default();
            audit(
                node,
                "refresh_token_reused",
                "failure",
                &actor,
                ip,
                Some(format!("session:{session_id}")),
                json!({"session_revoked": true}),
            )
            .await;
            Err(Error::new(
                ErrorKind::Unauthenticated,
                "refresh_token_reused",
                "this refresh token was already used; the session has been revoked",
            ))
        }
        RefreshOutcome::Expired => Err(invalid()),
    }
}

/// Revokes one session (through its actor) and refuses it here and on every member.
pub async fn revoke_session(
    node: &Core,
    session_id: Uuid,
    reason: &str,
    actor: &str,
    ip: Option<IpAddr>,
) -> Result<Revoked, Error> {
    let fence = node.fence().await?;
    let revoked = match node.sessions.revoke(session_id, reason).await {
        Ok(revoked) => revoked,
        Err(SessionError::Store(err)) => return Err(err.into()),
        Err(SessionError::NotFound) => false,
        // The actor is unreachable: revoke in the store directly, which is what counts.
        Err(SessionError::Unavailable) => {
            node.store
                .revoke_session(session_id, reason, node.clock.now())
                .await?
        }
    };
    let change = Change::Revoked {
        sessions: &[session_id],
        api_keys: &[],
    };
    let propagation = fence
        .publish(change)
        .await
        .audited(|_| {
            revoked.then(|| {
                event(node, "session_revoked", "success", actor, ip)
                    .on(format!("session:{session_id}"))
                    .with_details(json!({"reason": reason}))
            })
        })
        .await?;
    Ok(Revoked {
        revoked,
        propagation,
    })
}

/// Revokes every session of a user (signing out everywhere), here and on every member.
/// The event is recorded, confirmed or not, before an unconfirmed revocation is refused.
pub async fn sign_out_everywhere(
    node: &Core,
    user_id: Uuid,
    username: &str,
    ip: Option<IpAddr>,
) -> Result<Revoked, Error> {
    let reason = "signed_out_everywhere";
    let fence = node.fence().await?;
    let (revoked, published) =
        revoke_user_credentials(node, fence, user_id, None, false, reason).await?;
    let propagation = published
        .audited(|propagated| {
            Some(
                event(node, "session_revoked", "success", username, ip)
                    .on(format!("user:{username}"))
                    .with_details(json!({"reason": reason, "confirmed": propagated.confirmed})),
            )
        })
        .await?;
    Ok(Revoked {
        revoked,
        propagation,
    })
}

/// Checks `password` against `user`'s own, as a login does: it counts toward the lockout,
/// and a wrong one is 403 `invalid_current_password` (the caller's token is fine).
pub async fn verify_current_password(
    node: &Core,
    user: &User,
    password: Zeroizing<String>,
    ip: Option<IpAddr>,
) -> Result<(), Error> {
    if password.is_empty() || password.chars().count() > crate::idp::password::MAX_LENGTH {
        return Err(Error::invalid_field(
            "current_password",
            format!("must be 1-{} characters", crate::idp::password::MAX_LENGTH),
        ));
    }
    if user.provider != "local" {
        return Err(Error::new(
            ErrorKind::Conflict,
            "external_account",
            "this account's password is managed by its identity provider: log in again instead",
        ));
    }
    let attempt = Attempt::begin(node, &lockout_key(&user.username)).await?;
    if !node
        .passwords
        .verify(password, user.password_hash.clone())
        .await
    {
        let wrong = Error::new(
            ErrorKind::Forbidden,
            "invalid_current_password",
            "the current password is wrong",
        );
        return Err(attempt.failed(node, ip, wrong).await);
    }
    attempt.succeeded(node).await
}

/// Requires a recent authentication for a change a stolen access token must not make
/// (enrolling a second factor, creating an API key): `current_password` in the request,
/// or a login of session `session_id` within `auth.reauth_seconds`; otherwise 403
/// `reauthentication_required`.
pub async fn reauthenticate(
    node: &Core,
    user_id: Uuid,
    session_id: Uuid,
    current_password: Option<Zeroizing<String>>,
    ip: Option<IpAddr>,
) -> Result<(), Error> {
    if let Some(password) = current_password {
        let user = node
            .store
            .user_by_id(user_id)
            .await?
            .ok_or_else(|| Error::not_found("no such user"))?;
        return verify_current_password(node, &user, password, ip).await;
    }
    let window = node.config.auth.reauth_seconds;
    let logged_in_since = node.clock.now() - Duration::seconds(seconds(window));
    let session = node.store.session(session_id).await?;
    if session.is_some_and(|s| s.created_at >= logged_in_since) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Forbidden,
        "reauthentication_required",
        format!(
            "this change needs a login within the last {window} s: send `current_password`, or log in again"
        ),
    ))
}

/// Revokes every live session (except `keep`) and, with `keys`, every API key of a user,
/// and publishes the revocation; the caller audits it. Whether something was revoked comes
/// with it.
pub async fn revoke_user_credentials<'a>(
    node: &'a Core,
    fence: Fence<'a>,
    user_id: Uuid,
    keep: Option<Uuid>,
    keys: bool,
    reason: &str,
) -> Result<(bool, Published<'a>), Error> {
    let now = node.clock.now();
    let sessions = node
        .store
        .revoke_user_sessions(user_id, keep, reason, now)
        .await?;
    let api_keys = if keys {
        node.store
            .revoke_user_api_keys(user_id, reason, now)
            .await?
    } else {
        Vec::new()
    };
    let revoked = !sessions.is_empty() || !api_keys.is_empty();
    let change = Change::Revoked {
        sessions: &sessions,
        api_keys: &api_keys,
    };
    Ok((revoked, fence.publish(change).await))
}

/// Changes a user's credentials (password, role, activation) and, in the same store
/// transaction, revokes what `revoke` names; then publishes the revocation, which the
/// caller audits (a change whose revocation no majority confirmed stands: it is stored).
pub async fn change_credentials<'a>(
    node: &'a Core,
    fence: Fence<'a>,
    username: &str,
    patch: &crate::store::UserPatch,
    revoke: &crate::store::CredentialRevocation<'_>,
) -> Result<(User, Published<'a>), Error> {
    let updated = node
        .store
        .update_user_revoking(username, patch, revoke, node.clock.now())
        .await?
        .ok_or_else(|| Error::not_found(format!("no user {username}")))?;
    let change = Change::Revoked {
        sessions: &updated.revoked_sessions,
        api_keys: &updated.revoked_api_keys,
    };
    let published = fence.publish(change).await;
    Ok((updated.user, published))
}

/// Refuses an empty or oversized username or password.
pub fn check_credentials(username: &str, secret: &str) -> Result<(), Error> {
    if username.is_empty() || username.chars().count() > MAX_USERNAME_INPUT {
        return Err(Error::invalid_field(
            "username",
            format!("must be 1-{MAX_USERNAME_INPUT} characters"),
        ));
    }
    if secret.is_empty() || secret.chars().count() > crate::idp::password::MAX_LENGTH {
        return Err(Error::invalid_field(
            "password",
            format!("must be 1-{} characters", crate::idp::password::MAX_LENGTH),
        ));
    }
    Ok(())
}

/// Refuses a password the policy refuses for `username`: 400 `weak_password`, naming
/// the rule.
pub fn check_password_policy(username: &str, password: &str) -> Result<(), Error> {
    crate::idp::password::check_policy(username, password).map_err(|v| {
        Error::new(
            ErrorKind::Invalid,
            "weak_password",
            format!("`password` ({}): {}", v.rule, v.message),
        )
    })
}

/// Checks the policy, stores the new hash and revokes the user's sessions (except
/// `keep`) and API keys with it; shared by self-service and admin password changes.
pub async fn set_password(
    node: &Core,
    username: &str,
    new_password: &str,
    keep: Option<Uuid>,
    actor: &str,
    ip: Option<std::net::IpAddr>,
) -> Result<(), Error> {
    check_password_policy(username, new_password)?;
    let hash = node
        .passwords
        .hash(Zeroizing::new(new_password.to_owned()))
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    let patch = crate::store::UserPatch {
        password_hash: Some(hash),
        ..Default::default()
    };
    // The other sessions and every API key (one minted from a stolen session included)
    // are revoked in the transaction that stores the new hash: both, or neither.
    let revoke = crate::store::CredentialRevocation {
        reason: "password_changed",
        keep,
        api_keys: true,
    };
    let fence = node.fence().await?;
    let (_, published) = change_credentials(node, fence, username, &patch, &revoke).await?;
    published
        .audited_standing(|propagated| {
            Some(
                event(node, "password_changed", "success", actor, ip)
                    .on(format!("user:{username}"))
                    .with_details(json!({"revocation_confirmed": propagated.confirmed})),
            )
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_carry_their_session_and_only_a_hash_is_kept() {
        let sid = Uuid::now_v7();
        let (token, hash) = new_refresh_token(sid);
        let (parsed_sid, parsed_hash) = parse_refresh_token(&token).unwrap();
        assert_eq!((parsed_sid, parsed_hash.as_str()), (sid, hash.as_str()));
        assert!(!token.contains(&hash));
        for bad in [
            "",
            "abc",
            &format!("{}.short", sid.simple()),
            &format!("nope.{}", "a".repeat(43)),
        ] {
            assert!(parse_refresh_token(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn lockout_keys_ignore_case_and_surrounding_space() {
        assert_eq!(lockout_key("  Alice "), "alice");
    }
}
