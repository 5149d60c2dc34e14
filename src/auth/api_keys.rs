//! API keys, the rules of issuing and revoking them (the key itself is in
//! [`super::key_material`]): a key's scopes never exceed what its creator
//! may do, as the `authorization` policy decides; creating one takes a fresh login or the
//! password; a user holds at most [`MAX_KEYS_PER_USER`] live keys; a revocation is a fenced
//! write, refused on every member from the next request.

use std::net::IpAddr;

use serde_json::json;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::guard::allowed;
use super::key_material;
use super::principal::Principal;
use super::service::{self, Revoked};
use crate::core::{Change, Core};
use crate::error::{Error, ErrorKind};
use crate::store::{ApiKeyRecord, Role};

/// Live API keys a user may hold at once.
pub const MAX_KEYS_PER_USER: usize = 100;

/// The longest lifetime a key may be given, in days.
const MAX_LIFETIME_DAYS: u32 = 3650;

/// The scope vocabulary: `<action>:<resource>`, or `admin`.
pub const SCOPES: &[&str] = &[
    "read:servers",
    "write:servers",
    "read:policies",
    "write:policies",
    "read:users",
    "write:users",
    "read:audit",
    "evaluate:authz",
    "read:cluster",
    "admin",
];

/// What a user asks for when they create a key.
pub struct KeyRequest {
    /// Its name (already checked as text).
    pub name: String,
    /// The scopes asked for, from [`SCOPES`].
    pub scopes: Vec<String>,
    /// Its lifetime; none: until revoked.
    pub expires_in_days: Option<u32>,
    /// Needed unless the session logged in within `auth.reauth_seconds`.
    pub current_password: Option<Zeroizing<String>>,
}

/// A key just issued: its record, and the key itself, which is shown once.
pub struct Issued {
    /// What is stored of it.
    pub record: ApiKeyRecord,
    /// The whole key.
    pub key: Zeroizing<String>,
}

/// Issues a key to the session's user, with the scopes they may grant.
pub async fn issue(
    node: &Core,
    holder: &Principal,
    request: KeyRequest,
    ip: Option<IpAddr>,
) -> Result<Issued, Error> {
    let session_id = holder.require_session()?;
    let scopes = grantable_scopes(node, holder, &request.scopes, ip)?;
    let now = node.clock.now();
    let expires_at = match request.expires_in_days {
        None => None,
        Some(days @ 1..=MAX_LIFETIME_DAYS) => Some(now + chrono::Duration::days(i64::from(days))),
        Some(_) => {
            return Err(Error::invalid_field(
                "expires_in_days",
                format!("must be between 1 and {MAX_LIFETIME_DAYS}"),
            ));
        }
    };
    // Last, so that a malformed request is told what is wrong with it first.
    service::reauthenticate(
        node,
        holder.user_id,
        session_id,
        request.current_password,
        ip,
    )
    .await?;
    let live = node
        .store
        .api_keys(Some(holder.user_id))
        .await?
        .into_iter()
        .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|at| at > now))
        .count();
    if live >= MAX_KEYS_PER_USER {
        return Err(Error::new(
            ErrorKind::Conflict,
            "too_many_api_keys",
            format!("a user may hold at most {MAX_KEYS_PER_USER} live API keys; revoke one first"),
        ));
    }
    let new = key_material::generate();
    let record = ApiKeyRecord {
        id: Uuid::now_v7(),
        user_id: holder.user_id,
        name: request.name,
        prefix: new.prefix,
        key_hash: new.hash,
        scopes,
        created_at: now,
        expires_at,
        last_used_at: None,
        revoked_at: None,
        revoked_reason: None,
    };
    if !node.store.create_api_key(&record).await? {
        return Err(Error::new(
            ErrorKind::Unauthenticated,
            "invalid_credentials",
            "the account is disabled",
        ));
    }
    let event = service::event(node, "api_key_created", "success", &holder.username, ip)
        .on(format!("api_key:{}", record.id))
        .with_details(json!({"prefix": record.prefix, "scopes": record.scopes, "expires_at": record.expires_at}));
    node.record_audit(event).await;
    Ok(Issued {
        record,
        key: new.key,
    })
}

/// The scopes asked for, each once, if the holder may grant every one of them.
fn grantable_scopes(
    node: &Core,
    holder: &Principal,
    asked: &[String],
    ip: Option<IpAddr>,
) -> Result<Vec<String>, Error> {
    if asked.is_empty() || asked.len() > SCOPES.len() {
        return Err(Error::invalid_field(
            "scopes",
            format!("must list 1-{} scopes", SCOPES.len()),
        ));
    }
    let mut scopes: Vec<String> = Vec::new();
    for scope in asked {
        if !SCOPES.contains(&scope.as_str()) {
            return Err(Error::invalid_field(
                "scopes",
                format!("`{scope}` is not one of {}", SCOPES.join(", ")),
            ));
        }
        let grantable = match scope.split_once(':') {
            None => holder.role == Role::Admin,
            Some((action, resource)) => allowed(node, holder, action, resource, ip),
        };
        if !grantable {
            return Err(Error::new(
                ErrorKind::Forbidden,
                "scope_exceeds_rights",
                format!("`scopes`: you may not grant `{scope}`, which you do not have yourself"),
            ));
        }
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    Ok(scopes)
}

/// The keys `viewer` may see: their own, or everyone's if they may read users.
pub async fn visible(
    node: &Core,
    viewer: &Principal,
    ip: Option<IpAddr>,
) -> Result<Vec<ApiKeyRecord>, Error> {
    viewer.require_session()?;
    let owner = (!allowed(node, viewer, "read", "users", ip)).then_some(viewer.user_id);
    Ok(node.store.api_keys(owner).await?)
}

/// Revokes a key: one's own, or anyone's if one may write users. Someone else's key is
/// not found for those who may not revoke it.
pub async fn revoke(
    node: &Core,
    by: &Principal,
    id: Uuid,
    ip: Option<IpAddr>,
) -> Result<Revoked, Error> {
    by.require_session()?;
    let not_found = || Error::not_found("no such API key");
    let key = node.store.api_key(id).await?.ok_or_else(not_found)?;
    if key.user_id != by.user_id && !allowed(node, by, "write", "users", ip) {
        return Err(not_found());
    }
    let fence = node.fence().await?;
    let revoked = node
        .store
        .revoke_api_key(id, "revoked", node.clock.now())
        .await?;
    let change = Change::Revoked {
        sessions: &[],
        api_keys: &[id],
    };
    let propagation = fence
        .publish(change)
        .await
        .audited(|_| {
            revoked.then(|| {
                service::event(node, "api_key_revoked", "success", &by.username, ip)
                    .on(format!("api_key:{id}"))
                    .with_details(json!({"prefix": key.prefix, "owner": key.user_id}))
            })
        })
        .await?;
    Ok(Revoked {
        revoked,
        propagation,
    })
}
