//! Logins at external identity providers: the accounts they vouch for and the browser
//! delivery of a login's result.
//!
//! An external identity is keyed by (provider, subject) and becomes an account of its own
//! on first login, named `<provider>:<name>`: it is never merged with a local account of
//! the same name or email. The provider stays the source of the account's email and role,
//! which follow it at every login. Lockout applies as to local logins.

pub mod ldap;
pub mod oidc;
pub mod saml;

use std::net::IpAddr;

use chrono::Duration;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::service::{self, Attempt, LoginOutcome, lockout_key};
use crate::config::{Config, ConfigError};
use crate::core::Core;
use crate::error::{Error, ErrorKind};
pub use crate::secrets::{random_token, sha256_hex};
use crate::store::{LoginCodeRecord, Role, StoreError, User, UserPatch};

/// How long a one-time login code handed to a redirect stays valid.
const LOGIN_CODE_SECONDS: i64 = 60;

/// The external providers this node is configured with.
pub struct Providers {
    /// LDAP, when `[ldap]` is configured.
    pub ldap: Option<ldap::LdapProvider>,
    /// OpenID Connect, when `[oidc]` is configured.
    pub oidc: Option<oidc::OidcProvider>,
    /// SAML 2.0, when `[saml]` is configured.
    pub saml: Option<saml::SamlProvider>,
}

impl Providers {
    /// Builds the configured providers; contacts none of them.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(Self {
            ldap: config
                .ldap
                .clone()
                .map(ldap::LdapProvider::new)
                .transpose()?,
            oidc: config
                .oidc
                .clone()
                .map(oidc::OidcProvider::new)
                .transpose()?,
            saml: config
                .saml
                .clone()
                .map(saml::SamlProvider::new)
                .transpose()?,
        })
    }

    /// The ids of the configured providers.
    pub fn configured(&self) -> Vec<&'static str> {
        let mut ids = Vec::new();
        if self.ldap.is_some() {
            ids.push("ldap");
        }
        if self.oidc.is_some() {
            ids.push("oidc");
        }
        if self.saml.is_some() {
            ids.push("saml");
        }
        ids
    }

    /// Whether each configured provider answers now, by provider id.
    pub async fn health(&self) -> Vec<(&'static str, bool)> {
        let ldap = async {
            match &self.ldap {
                Some(ldap) => Some(("ldap", ldap.probe().await.is_ok())),
                None => None,
            }
        };
        let oidc = async {
            match &self.oidc {
                Some(oidc) => Some(("oidc", oidc.probe().await.is_ok())),
                None => None,
            }
        };
        let saml = async {
            match &self.saml {
                Some(saml) => Some(("saml", saml.probe().await.is_ok())),
                None => None,
            }
        };
        let (ldap, oidc, saml) = tokio::join!(ldap, oidc, saml);
        ldap.into_iter().chain(oidc).chain(saml).collect()
    }
}

/// What an external provider vouches for.
#[derive(Clone, Debug)]
pub struct ExternalIdentity {
    /// Provider id (`ldap`, `oidc`, `saml`); also the session's `auth_method`.
    pub provider: &'static str,
    /// The provider's stable identifier of the user.
    pub subject: String,
    /// The user's name at the provider; the account is named `<provider>:<name>`.
    pub name: String,
    /// Email, if the provider gives one.
    pub email: Option<String>,
    /// Role from the provider's role mapping.
    pub role: Role,
}

/// A name safe to show and to put in a URL path: lowercase letters, digits and `.`, `_`,
/// `-`, `@`; anything else becomes `_`.
pub fn account_name(provider: &str, name: &str) -> String {
    let clean: String = name
        .trim()
        .to_lowercase()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{provider}:{clean}")
}

/// The account of `identity`: found by (provider, subject), or created on first login.
/// Its email and role follow the provider; a role change signs its other sessions out.
pub async fn provision(
    node: &Core,
    identity: &ExternalIdentity,
    ip: Option<IpAddr>,
) -> Result<User, Error> {
    if let Some(user) = node
        .store
        .user_by_subject(identity.provider, &identity.subject)
        .await?
    {
        return follow_provider(node, user, identity).await;
    }
    let now = node.clock.now();
    let name = account_name(identity.provider, &identity.name);
    // A second name when the first belongs to another subject (a user who was renamed or
    // deleted at the provider and whose name was given to someone else).
    let digest = hex::encode(Sha256::digest(identity.subject.as_bytes()));
    let fallback = format!("{name}-{}", &digest[..8]);
    for username in [name, fallback] {
        let user = User {
            id: Uuid::now_v7(),
            username,
            email: identity.email.clone(),
            role: identity.role,
            teams: Vec::new(),
            password_hash: None,
            is_active: true,
            mfa_enabled: false,
            provider: identity.provider.to_owned(),
            subject: Some(identity.subject.clone()),
            created_at: now,
            updated_at: now,
        };
        match node.store.create_user(&user).await {
            Ok(()) => {
                service::audit(
                    node,
                    "user_provisioned",
                    "success",
                    &user.username,
                    ip,
                    Some(format!("user:{}", user.username)),
                    json!({"provider": identity.provider, "role": user.role}),
                )
                .await;
                return Ok(user);
            }
            Err(StoreError::Conflict(_)) => {
                // Another node may have provisioned the same subject a moment ago.
                if let Some(user) = node
                    .store
                    .user_by_subject(identity.provider, &identity.subject)
                    .await?
                {
                    return Ok(user);
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(Error::new(
        ErrorKind::Conflict,
        "identity_conflict",
        "no free account name for this external identity; ask an administrator",
    ))
}

async fn follow_provider(
    node: &Core,
    user: User,
    identity: &ExternalIdentity,
) -> Result<User, Error> {
    let email_changed = user.email != identity.email;
    let role_changed = user.role != identity.role;
    if !email_changed && !role_changed {
        return Ok(user);
    }
    let patch = UserPatch {
        email: email_changed.then(|| identity.email.clone()),
        role: role_changed.then_some(identity.role),
        ..Default::default()
    };
    let changed = if role_changed { "role" } else { "email" };
    let event = |updated: &User, revocation_confirmed: Option<bool>| {
        service::event(node, "user_updated", "success", identity.provider, None)
            .on(format!("user:{}", user.username))
            .with_details(json!({"changed": [changed], "role": updated.role, "by": "provider", "revocation_confirmed": revocation_confirmed}))
    };
    if !role_changed {
        let updated = node
            .store
            .update_user(&user.username, &patch, node.clock.now())
            .await?
            .ok_or_else(service::invalid_credentials)?;
        node.record_audit(event(&updated, None)).await;
        return Ok(updated);
    }
    // A role change revokes the user's sessions and API keys with it; a revocation no
    // majority confirmed is stored, the login goes on, and the audit event says so.
    let revoke = crate::store::CredentialRevocation {
        reason: "role_changed",
        keep: None,
        api_keys: true,
    };
    let fence = node.fence().await?;
    let (updated, published) =
        service::change_credentials(node, fence, &user.username, &patch, &revoke)
            .await
            .map_err(|err| {
                if err.kind() == ErrorKind::NotFound {
                    service::invalid_credentials()
                } else {
                    err
                }
            })?;
    published
        .audited_standing(|propagated| Some(event(&updated, Some(propagated.confirmed))))
        .await;
    Ok(updated)
}

/// Refuses a disabled account with the same answer as a wrong password.
async fn refuse_disabled(
    node: &Core,
    attempt: Attempt,
    user: &User,
    ip: Option<IpAddr>,
) -> Result<Attempt, Error> {
    if user.is_active {
        return Ok(attempt);
    }
    service::audit(
        node,
        "login_failed",
        "failure",
        &user.username,
        ip,
        None,
        json!({"auth_method": user.provider, "reason": "disabled"}),
    )
    .await;
    Err(attempt
        .failed(node, ip, service::invalid_credentials())
        .await)
}

/// Finishes a login the provider vouched for: lockout, then a session (or an MFA
/// challenge) answered directly.
pub async fn login(
    node: &Core,
    identity: &ExternalIdentity,
    ip: Option<IpAddr>,
) -> Result<LoginOutcome, Error> {
    let user = provision(node, identity, ip).await?;
    let attempt = Attempt::begin(node, &lockout_key(&user.username)).await?;
    finish(node, attempt, &user, identity.provider, ip).await
}

/// As [`login`], for a provider that checked a password under `attempt` (LDAP).
pub async fn login_with(
    node: &Core,
    attempt: Attempt,
    identity: &ExternalIdentity,
    ip: Option<IpAddr>,
) -> Result<LoginOutcome, Error> {
    let user = provision(node, identity, ip).await?;
    finish(node, attempt, &user, identity.provider, ip).await
}

async fn finish(
    node: &Core,
    attempt: Attempt,
    user: &User,
    method: &str,
    ip: Option<IpAddr>,
) -> Result<LoginOutcome, Error> {
    let attempt = refuse_disabled(node, attempt, user, ip).await?;
    service::complete_login(node, attempt, user, method, ip).await
}

/// Finishes a login the provider vouched for by issuing a one-time login code for
/// `POST /api/v1/auth/exchange`, and returns the redirect that carries it.
pub async fn login_code(
    node: &Core,
    identity: &ExternalIdentity,
    redirect: url::Url,
    ip: Option<IpAddr>,
) -> Result<url::Url, Error> {
    let user = provision(node, identity, ip).await?;
    let attempt = Attempt::begin(node, &lockout_key(&user.username)).await?;
    refuse_disabled(node, attempt, &user, ip).await?;
    let code = random_token();
    let now = node.clock.now();
    node.store
        .put_login_code(&LoginCodeRecord {
            code_hash: sha256_hex(&code),
            user_id: user.id,
            auth_method: identity.provider.to_owned(),
            ip: ip.map(|ip| ip.to_string()),
            created_at: now,
            expires_at: now + Duration::seconds(LOGIN_CODE_SECONDS),
        })
        .await?;
    service::audit(
        node,
        "login_code_issued",
        "success",
        &user.username,
        ip,
        None,
        json!({"auth_method": identity.provider, "redirect": redirect.origin().ascii_serialization()}),
    )
    .await;
    let mut redirect = redirect;
    redirect.query_pairs_mut().append_pair("code", &code);
    Ok(redirect)
}

/// `POST /api/v1/auth/exchange`: a login code, once, for the login it stands for.
pub async fn exchange(node: &Core, code: &str, ip: Option<IpAddr>) -> Result<LoginOutcome, Error> {
    let invalid = || {
        Error::new(
            ErrorKind::Unauthenticated,
            "invalid_code",
            "the login code is unknown, used or expired",
        )
    };
    let record = node
        .store
        .take_login_code(&sha256_hex(code), node.clock.now())
        .await?
        .ok_or_else(invalid)?;
    let user = node
        .store
        .user_by_id(record.user_id)
        .await?
        .ok_or_else(invalid)?;
    let attempt = Attempt::begin(node, &lockout_key(&user.username)).await?;
    finish(node, attempt, &user, &record.auth_method, ip).await
}

/// The allow-listed redirect `value` (field `field`) as a URL: its scheme, host and port
/// must equal those of an `auth.allowed_redirects` entry and its path must start with the
/// entry's path.
pub fn allowed_redirect(config: &Config, field: &str, value: &str) -> Result<url::Url, Error> {
    let refuse = |reason: &str| {
        Error::new(
            ErrorKind::Invalid,
            "redirect_not_allowed",
            format!("`{field}` {reason}"),
        )
    };
    if value.len() > 2048 {
        return Err(refuse("is longer than 2048 characters"));
    }
    let url = url::Url::parse(value).map_err(|_| refuse("is not an absolute URL"))?;
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(refuse("must not carry credentials or a fragment"));
    }
    let listed = config.auth.allowed_redirects.iter().any(|entry| {
        url::Url::parse(entry).is_ok_and(|allowed| {
            allowed.scheme() == url.scheme()
                && allowed.host() == url.host()
                && allowed.port_or_known_default() == url.port_or_known_default()
                && within(url.path(), allowed.path())
        })
    });
    if listed {
        Ok(url)
    } else {
        Err(refuse("is not on the allow-list (auth.allowed_redirects)"))
    }
}

/// Whether `path` is `base` or below it (`/login` covers `/login/done`, not `/login-x`).
fn within(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path == base || path.starts_with(&format!("{base}/"))
}

/// Whether the browser-binding cookie `browser` is the one whose hash is `expected`.
pub fn same_browser(browser: Option<&str>, expected: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    browser.is_some_and(|b| bool::from(sha256_hex(b).as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_prefixed_and_cleaned() {
        assert_eq!(account_name("ldap", " Test.User "), "ldap:test.user");
        assert_eq!(account_name("oidc", "a b/c"), "oidc:a_b_c");
    }

    #[test]
    fn redirects_must_match_an_allowed_origin_and_path() {
        let mut config = Config::default();
        config.auth.allowed_redirects = vec!["https://app.example.org/login".into()];
        for good in [
            "https://app.example.org/login",
            "https://app.example.org/login/done?x=1",
            "https://app.example.org:443/login",
        ] {
            assert!(
                allowed_redirect(&config, "redirect_uri", good).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "https://app.example.org.evil.test/login",
            "https://evil.test/login",
            "http://app.example.org/login",
            "https://app.example.org:8443/login",
            "https://app.example.org/other",
            "https://app.example.org/login-evil",
            "https://user@app.example.org/login",
            "https://app.example.org/login#x",
            "/login",
        ] {
            let err = allowed_redirect(&config, "redirect_uri", bad).unwrap_err();
            assert_eq!(err.code(), "redirect_not_allowed", "{bad}");
        }
    }
}
