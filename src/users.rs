//! The account service: creating, changing and deleting users, with the rules an
//! administrator's change obeys. Disabling a user or changing their role revokes their
//! sessions and API keys in the transaction that stores the change (a fenced write), so it
//! takes effect at once; nobody disables, demotes or deletes their own account (the last
//! admin would lock everyone out); MFA is only turned on by the user's own enrolment.

use std::net::IpAddr;

use serde_json::{Value, json};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::auth::service;
use crate::core::{Change, Core, changed_fields};
use crate::error::{Error, ErrorKind};
use crate::store::{CredentialRevocation, Role, StoreError, User, UserPatch};

/// The administrator making a change.
#[derive(Clone, Copy, Debug)]
pub struct Admin<'a> {
    /// Their user id.
    pub user_id: Uuid,
    /// Their name, for the audit log.
    pub username: &'a str,
    /// Where they called from.
    pub ip: Option<IpAddr>,
}

impl Admin<'_> {
    fn event(
        &self,
        node: &Core,
        event_type: &str,
        username: &str,
    ) -> sark_actors::store::AuditEvent {
        service::event(node, event_type, "success", self.username, self.ip)
            .on(format!("user:{username}"))
    }
}

/// A new local account, its fields already checked for form.
#[derive(Debug)]
pub struct NewAccount {
    /// The name.
    pub username: String,
    /// The address.
    pub email: String,
    /// The role.
    pub role: Role,
    /// Teams.
    pub teams: Vec<String>,
    /// A first password (none: the user cannot log in with a password until one is set).
    pub password: Option<Zeroizing<String>>,
}

/// Creates a local account; 409 `user_exists` when the name is taken.
pub async fn create(node: &Core, admin: Admin<'_>, new: NewAccount) -> Result<User, Error> {
    let password_hash = match new.password {
        Some(password) => {
            service::check_password_policy(&new.username, &password)?;
            Some(
                node.passwords
                    .hash(password)
                    .await
                    .map_err(|e| Error::internal(e.to_string()))?,
            )
        }
        None => None,
    };
    let now = node.clock.now();
    let user = User {
        email: Some(new.email),
        teams: new.teams,
        ..User::local(new.username, new.role, password_hash, now)
    };
    match node.store.create_user(&user).await {
        Err(StoreError::Conflict(_)) => {
            return Err(Error::new(
                ErrorKind::Conflict,
                "user_exists",
                format!("user {} already exists", user.username),
            ));
        }
        other => other?,
    }
    let event = admin
        .event(node, "user_created", &user.username)
        .with_details(json!({"role": user.role, "user_id": user.id}));
    node.record_audit(event).await;
    Ok(user)
}

/// The user `username`, or 404.
pub async fn find(node: &Core, username: &str) -> Result<User, Error> {
    node.store
        .user_by_username(username)
        .await?
        .ok_or_else(|| Error::not_found(format!("no user {username}")))
}

/// A change to an account, its fields already checked for form.
#[derive(Debug, Default)]
pub struct AccountChange {
    /// New email (`Some(None)` clears it).
    pub email: Option<Option<String>>,
    /// New role.
    pub role: Option<Role>,
    /// New teams.
    pub teams: Option<Vec<String>>,
    /// Enable or disable the account.
    pub is_active: Option<bool>,
    /// New password.
    pub password: Option<Zeroizing<String>>,
}

/// What a change does besides storing its fields.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The reason the user's sessions and API keys are revoked with the change, if they
    /// are: revoked whenever the change asks for it, not only when it changes something, so
    /// a retry after a revocation that failed revokes again.
    pub revoke: Option<&'static str>,
    /// The audit event recorded.
    pub event_type: &'static str,
}

/// The rules of an administrator's change to `target`: refuses one that would lock the
/// administrator out of their own account, and says what else the change does.
pub fn plan(admin_id: Uuid, target: &User, change: &AccountChange) -> Result<Plan, Error> {
    let disabling = change.is_active == Some(false);
    if disabling {
        refuse_self_lockout(admin_id, target, "disable")?;
    }
    if change
        .role
        .is_some_and(|r| r != Role::Admin && target.role == Role::Admin)
    {
        refuse_self_lockout(admin_id, target, "demote")?;
    }
    let revoke = if disabling {
        Some("user_disabled")
    } else {
        change.role.map(|_| "role_changed")
    };
    let event_type = if disabling && target.is_active {
        "user_disabled"
    } else {
        "user_updated"
    };
    Ok(Plan { revoke, event_type })
}

fn refuse_self_lockout(admin_id: Uuid, target: &User, what: &str) -> Result<(), Error> {
    if admin_id == target.id {
        return Err(Error::new(
            ErrorKind::Conflict,
            "self_lockout",
            format!("you cannot {what} your own account; ask another admin, or use `sark admin`"),
        ));
    }
    Ok(())
}

/// A user after a change.
#[derive(Debug)]
pub struct Updated {
    /// The user as stored.
    pub user: User,
    /// When the change revoked credentials: the time until every member refused them.
    pub propagation_ms: Option<u64>,
}

/// Applies an administrator's change to `target` under the rules of [`plan`]. A new
/// password is set first (it revokes the user's sessions and keys itself).
pub async fn update(
    node: &Core,
    admin: Admin<'_>,
    target: &User,
    change: AccountChange,
) -> Result<Updated, Error> {
    let plan = plan(admin.user_id, target, &change)?;
    if let Some(password) = &change.password {
        service::set_password(
            node,
            &target.username,
            password,
            None,
            admin.username,
            admin.ip,
        )
        .await?;
    }
    let patch = UserPatch {
        email: change.email,
        role: change.role,
        teams: change.teams,
        is_active: change.is_active,
        ..Default::default()
    };
    let changed = changed_fields([
        ("email", patch.email.is_some()),
        ("role", patch.role.is_some()),
        ("teams", patch.teams.is_some()),
        ("is_active", patch.is_active.is_some()),
        ("password", change.password.is_some()),
    ]);
    let event = |user: &User, revocation_confirmed: Option<bool>| {
        admin
            .event(node, plan.event_type, &target.username)
            .with_details(json!({"changed": changed, "role": user.role, "revocation_confirmed": revocation_confirmed}))
    };
    let Some(reason) = plan.revoke else {
        let user = node
            .store
            .update_user(&target.username, &patch, node.clock.now())
            .await?
            .ok_or_else(|| Error::not_found(format!("no user {}", target.username)))?;
        node.record_audit(event(&user, None)).await;
        return Ok(Updated {
            user,
            propagation_ms: None,
        });
    };
    let revoke = CredentialRevocation {
        reason,
        keep: None,
        api_keys: true,
    };
    let fence = node.fence().await?;
    let (user, published) =
        service::change_credentials(node, fence, &target.username, &patch, &revoke).await?;
    // The change stands when no majority confirmed the revocation (it is stored); the
    // audit event says so.
    let propagation = published
        .audited_standing(|propagated| Some(event(&user, Some(propagated.confirmed))))
        .await;
    Ok(Updated {
        user,
        propagation_ms: Some(propagation.propagation_ms),
    })
}

/// Deletes `target` (not oneself), revoking their sessions and API keys everywhere.
pub async fn delete(node: &Core, admin: Admin<'_>, target: &User) -> Result<(), Error> {
    refuse_self_lockout(admin.user_id, target, "delete")?;
    let fence = node.fence().await?;
    let deleted = node
        .store
        .delete_user(&target.username, node.clock.now())
        .await?
        .ok_or_else(|| Error::not_found(format!("no user {}", target.username)))?;
    let change = Change::Revoked {
        sessions: &deleted.revoked_sessions,
        api_keys: &deleted.revoked_api_keys,
    };
    let details: Value = json!({"sessions_revoked": deleted.revoked_sessions.len(), "api_keys_revoked": deleted.revoked_api_keys.len()});
    fence
        .publish(change)
        .await
        .audited(|_| {
            Some(
                admin
                    .event(node, "user_deleted", &target.username)
                    .with_details(details),
            )
        })
        .await?;
    Ok(())
}

/// Removes `target`'s TOTP secret and recovery codes (a lost authenticator).
pub async fn reset_mfa(node: &Core, admin: Admin<'_>, target: &User) -> Result<(), Error> {
    node.store.reset_mfa(target.id).await?;
    let event = admin
        .event(node, "mfa_reset", &target.username)
        .with_details(json!({}));
    node.record_audit(event).await;
    Ok(())
}

/// Clears the failed-login counter of `username` (a name with no account too: locks apply
/// to those as well); answers whether it was locked.
pub async fn unlock(node: &Core, admin: Admin<'_>, username: &str) -> Result<bool, Error> {
    let was_locked = node
        .lockout
        .clear(&service::lockout_key(username), node.clock.now())
        .await?;
    let event = admin
        .event(node, "account_unlocked", username)
        .with_details(json!({"was_locked": was_locked}));
    node.record_audit(event).await;
    Ok(was_locked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role, is_active: bool) -> User {
        User {
            is_active,
            ..User::local("bob".into(), role, None, chrono::DateTime::UNIX_EPOCH)
        }
    }

    fn refused_code(result: Result<Plan, Error>) -> String {
        result.expect_err("refused").code().to_owned()
    }

    #[test]
    fn nobody_disables_demotes_or_deletes_their_own_account() {
        let admin = user(Role::Admin, true);
        let disable = AccountChange {
            is_active: Some(false),
            ..Default::default()
        };
        let demote = AccountChange {
            role: Some(Role::Viewer),
            ..Default::default()
        };
        assert_eq!(
            refused_code(plan(admin.id, &admin, &disable)),
            "self_lockout"
        );
        assert_eq!(
            refused_code(plan(admin.id, &admin, &demote)),
            "self_lockout"
        );
        let err = refuse_self_lockout(admin.id, &admin, "delete").expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.message().contains("delete"), "{}", err.message());

        // Another admin may do all three; and one may keep one's own admin role.
        let other = user(Role::Admin, true);
        assert!(plan(other.id, &admin, &disable).is_ok());
        assert!(plan(other.id, &admin, &demote).is_ok());
        let stay_admin = AccountChange {
            role: Some(Role::Admin),
            ..Default::default()
        };
        assert!(plan(admin.id, &admin, &stay_admin).is_ok());
    }

    #[test]
    fn disabling_and_role_changes_revoke_credentials_and_nothing_else_does() {
        let admin = Uuid::now_v7();
        let active = user(Role::Viewer, true);
        let plan_of = |change: AccountChange| plan(admin, &active, &change).expect("allowed");

        let disabled = plan_of(AccountChange {
            is_active: Some(false),
            role: Some(Role::Admin),
            ..Default::default()
        });
        assert_eq!(
            disabled,
            Plan {
                revoke: Some("user_disabled"),
                event_type: "user_disabled"
            }
        );
        let promoted = plan_of(AccountChange {
            role: Some(Role::Admin),
            ..Default::default()
        });
        assert_eq!(promoted.revoke, Some("role_changed"));
        assert_eq!(promoted.event_type, "user_updated");
        // The same role again still revokes: a retry of a change whose revocation failed.
        let same_role = plan_of(AccountChange {
            role: Some(Role::Viewer),
            ..Default::default()
        });
        assert_eq!(same_role.revoke, Some("role_changed"));
        let cosmetic = plan_of(AccountChange {
            email: Some(Some("bob@example.com".into())),
            teams: Some(vec!["ops".into()]),
            is_active: Some(true),
            ..Default::default()
        });
        assert_eq!(cosmetic.revoke, None);
    }

    #[test]
    fn disabling_an_account_that_is_already_disabled_is_an_update() {
        let inactive = user(Role::Viewer, false);
        let change = AccountChange {
            is_active: Some(false),
            ..Default::default()
        };
        let planned = plan(Uuid::now_v7(), &inactive, &change).expect("allowed");
        assert_eq!(planned.event_type, "user_updated");
        assert_eq!(planned.revoke, Some("user_disabled"));
    }
}
