//! TOTP enrolment: a new secret is stored sealed and pending, and only a code that matches
//! it turns MFA on, with ten recovery codes and the revocation of the user's other
//! sessions (they were proven by the password alone).

use std::net::IpAddr;

use serde_json::json;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::service::{self, event};
use crate::core::Core;
use crate::error::{Error, ErrorKind};
use crate::idp::totp::{self, Enrollment};
use crate::secrets::sealing_context;
use crate::store::{SealedKind, StoreError};

/// The user whose second factor changes, as their session proves them.
#[derive(Clone, Copy, Debug)]
pub struct Enrollee<'a> {
    /// The user.
    pub user_id: Uuid,
    /// Their name, for the audit log.
    pub username: &'a str,
    /// The session making the change.
    pub session_id: Uuid,
}

fn already_enabled(message: &str) -> Error {
    Error::new(
        ErrorKind::Conflict,
        "mfa_already_enabled",
        message.to_owned(),
    )
}

/// Starts a TOTP enrolment: a change a stolen access token must not make, so it needs a
/// recent authentication (see [`service::reauthenticate`]). Refused with 409
/// `mfa_already_enabled` when MFA is on; a pending enrolment is replaced.
pub async fn enroll_totp(
    node: &Core,
    who: Enrollee<'_>,
    current_password: Option<Zeroizing<String>>,
    ip: Option<IpAddr>,
) -> Result<Enrollment, Error> {
    service::reauthenticate(node, who.user_id, who.session_id, current_password, ip).await?;
    let user = node
        .store
        .user_by_id(who.user_id)
        .await?
        .ok_or_else(|| Error::not_found("no such user"))?;
    if user.mfa_enabled {
        return Err(already_enabled(
            "MFA is already enabled; an admin can reset it",
        ));
    }
    let secret = totp::new_secret();
    let sealed = node
        .keys
        .sealer()
        .seal(
            &sealing_context(SealedKind::Totp, &user.id.to_string()),
            &secret,
        )
        .map_err(|e| Error::internal(e.to_string()))?;
    match node
        .store
        .put_pending_totp(user.id, &sealed, node.clock.now())
        .await
    {
        Err(StoreError::Conflict(_)) => return Err(already_enabled("MFA is already enabled")),
        other => other?,
    }
    totp::enrollment(&secret, &user.username).map_err(|e| Error::internal(e.to_string()))
}

/// Confirms the pending enrolment with a code from the new secret: MFA is on, the code
/// cannot be used again, the user's other sessions are revoked, and the recovery codes are
/// returned (only their hashes are kept). The user gets the codes even when no majority
/// confirmed the revocation (it is stored); the audit event says so.
pub async fn confirm_totp(
    node: &Core,
    who: Enrollee<'_>,
    code: &str,
    ip: Option<IpAddr>,
) -> Result<Vec<String>, Error> {
    let no_pending = |message: &str| {
        Error::new(
            ErrorKind::Conflict,
            "no_pending_enrollment",
            message.to_owned(),
        )
    };
    let now = node.clock.now();
    let pending = node
        .store
        .totp(who.user_id)
        .await?
        .filter(|t| t.confirmed_at.is_none())
        .ok_or_else(|| no_pending("start with POST /api/v1/auth/mfa/totp/enroll"))?;
    let secret = node
        .keys
        .sealer()
        .open(
            &sealing_context(SealedKind::Totp, &who.user_id.to_string()),
            &pending.secret,
        )
        .map_err(|e| Error::internal(e.to_string()))?;
    let unix = u64::try_from(now.timestamp()).unwrap_or(0);
    let step = totp::verify(&secret, code, unix).ok_or_else(|| {
        Error::new(
            ErrorKind::Invalid,
            "invalid_code",
            "`code`: does not match the new secret",
        )
    })?;
    let codes = totp::recovery_codes();
    let keys = node.keys.keys().await?;
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| totp::hash_recovery_code(&keys.recovery_codes, who.user_id, c))
        .collect();
    let fence = node.fence().await?;
    if !node.store.confirm_totp(who.user_id, &hashes, now).await? {
        return Err(no_pending("the enrolment was confirmed already"));
    }
    // The code just used cannot log anyone in.
    node.store.accept_totp_step(who.user_id, step).await?;
    let (_, published) = service::revoke_user_credentials(
        node,
        fence,
        who.user_id,
        Some(who.session_id),
        false,
        "mfa_enabled",
    )
    .await?;
    published
        .audited_standing(|propagated| {
            Some(
                event(node, "mfa_enrolled", "success", who.username, ip)
                    .on(format!("user:{}", who.username))
                    .with_details(
                        json!({"method": "totp", "revocation_confirmed": propagated.confirmed}),
                    ),
            )
        })
        .await;
    Ok(codes)
}
