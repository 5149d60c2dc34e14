//! Configuration of the external identity providers (`[ldap]`, `[oidc]`) and of the role
//! mapping they share.

use std::path::PathBuf;
use std::str::FromStr;

use sark_actors::store::Role;
use serde::{Deserialize, Deserializer, Serialize};

use super::{ConfigError, Secret, check_sink_url, comma_list, is_loopback, string_like};

/// `group=>role` pairs separated by `;` (a group may be an LDAP DN, which holds commas).
/// Groups match case-insensitively; a user in several mapped groups gets the strongest
/// role, and a user in none gets `viewer`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleMapping(Vec<(String, Role)>);

impl RoleMapping {
    /// The role for a user in `groups`.
    pub fn role_for<'a>(&self, groups: impl IntoIterator<Item = &'a str>) -> Role {
        let groups: Vec<&str> = groups.into_iter().collect();
        self.0
            .iter()
            .filter(|(group, _)| groups.iter().any(|g| g.eq_ignore_ascii_case(group)))
            .map(|(_, role)| *role)
            .min_by_key(|role| match role {
                Role::Admin => 0,
                Role::Operator => 1,
                Role::Viewer => 2,
            })
            .unwrap_or(Role::Viewer)
    }
}

impl FromStr for RoleMapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pairs = Vec::new();
        for pair in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((group, role)) = pair.split_once("=>") else {
                return Err(format!("`{pair}` is not a `group=>role` pair"));
            };
            let group = group.trim();
            if group.is_empty() {
                return Err(format!("`{pair}` has an empty group"));
            }
            pairs.push((group.to_owned(), role.trim().parse::<Role>()?));
        }
        Ok(Self(pairs))
    }
}

impl<'de> Deserialize<'de> for RoleMapping {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_like(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for RoleMapping {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text: Vec<String> = self
            .0
            .iter()
            .map(|(group, role)| format!("{group}=>{role}"))
            .collect();
        s.serialize_str(&text.join(";"))
    }
}

/// An LDAP directory users log in against (`POST /api/v1/auth/login/ldap`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// DN of the service account that searches for users and their groups.
    pub bind_dn: String,
    /// The service account's password.
    pub bind_password: Secret,
    /// Base DN of the user search (whole subtree).
    pub user_base: String,
    /// User search filter; `{username}` becomes the submitted username, escaped (RFC 4515).
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// Base DN of the group search; without it users have no groups (role `viewer`).
    #[serde(default)]
    pub group_base: Option<String>,
    /// Group search filter; `{dn}` becomes the user's DN and `{username}` the username,
    /// both escaped.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    /// Upgrade `ldap://` connections with StartTLS before any bind.
    #[serde(default)]
    pub starttls: bool,
    /// CA certificate (PEM) that signed the directory's certificate; the system roots
    /// otherwise.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Group to role mapping; a group matches by its DN or its `cn`.
    #[serde(default)]
    pub role_mapping: RoleMapping,
    /// Deadline of each connection attempt and each operation.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Service connections kept open for searches.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

/// An OpenID Connect provider (authorization code flow with PKCE).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; its `/.well-known/openid-configuration` is discovered.
    pub issuer: String,
    /// SARK's client id at the provider.
    pub client_id: String,
    /// SARK's client secret.
    pub client_secret: Secret,
    /// SARK's own callback URL (`…/api/v1/auth/oidc/callback`) as registered at the provider.
    pub redirect_url: String,
    /// Group to role mapping, matched against the groups claim.
    #[serde(default)]
    pub role_mapping: RoleMapping,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_scopes", deserialize_with = "comma_list")]
    pub scopes: Vec<String>,
    /// The ID-token claim that lists the user's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Deadline of each request to the provider.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

/// A SAML 2.0 identity provider (SP-initiated, HTTP-Redirect AuthnRequest, HTTP-POST
/// response).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SamlConfig {
    /// Where the IdP's metadata is fetched from (https in production).
    #[serde(default)]
    pub idp_metadata_url: Option<String>,
    /// Or a file holding it.
    #[serde(default)]
    pub idp_metadata_file: Option<PathBuf>,
    /// The IdP's entity ID; required when the metadata describes more than one IdP.
    #[serde(default)]
    pub idp_entity_id: Option<String>,
    /// SARK's entity ID (the audience assertions must name).
    pub sp_entity_id: String,
    /// SARK's assertion consumer service URL (`…/api/v1/auth/saml/acs`).
    pub acs_url: String,
    /// Private key (PEM) that signs AuthnRequests; requests are unsigned without it.
    #[serde(default)]
    pub sp_key_file: Option<PathBuf>,
    /// Certificate (PEM) of that key, published in the SP metadata.
    #[serde(default)]
    pub sp_cert_file: Option<PathBuf>,
    /// Group to role mapping, matched against the groups attribute.
    #[serde(default)]
    pub role_mapping: RoleMapping,
    /// The attribute listing the user's groups.
    #[serde(default = "default_groups_attribute")]
    pub groups_attribute: String,
    /// The attribute holding the user's name (the NameID otherwise).
    #[serde(default = "default_name_attribute")]
    pub name_attribute: String,
    /// The attribute holding the user's email.
    #[serde(default = "default_email_attribute")]
    pub email_attribute: String,
    /// Clock skew tolerated on NotBefore / NotOnOrAfter.
    #[serde(default = "default_skew_seconds")]
    pub clock_skew_seconds: u64,
    /// Deadline of each metadata fetch.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_groups_attribute() -> String {
    "groups".into()
}

fn default_name_attribute() -> String {
    "uid".into()
}

fn default_email_attribute() -> String {
    "mail".into()
}

fn default_skew_seconds() -> u64 {
    30
}

fn default_user_filter() -> String {
    "(uid={username})".into()
}

fn default_group_filter() -> String {
    "(member={dn})".into()
}

fn default_timeout_seconds() -> u64 {
    5
}

fn default_pool_size() -> usize {
    4
}

fn default_scopes() -> Vec<String> {
    vec!["email".into(), "profile".into()]
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn readable(key: &str, path: &Option<PathBuf>) -> Result<(), ConfigError> {
    match path {
        Some(path) if !path.is_file() => Err(ConfigError::key(
            key,
            format!("{} is not a readable file", path.display()),
        )),
        _ => Ok(()),
    }
}

fn absolute_http_url(key: &str, value: &str) -> Result<url::Url, ConfigError> {
    let parsed = url::Url::parse(value)
        .map_err(|e| ConfigError::key(key, format!("`{value}` is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ConfigError::key(
            key,
            format!("`{value}` must be an absolute http(s) URL"),
        ));
    }
    Ok(parsed)
}

impl LdapConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| ConfigError::key("ldap.url", format!("not a URL ({e})")))?;
        match url.scheme() {
            "ldap" | "ldaps" if url.host().is_some() => {}
            _ => {
                return Err(ConfigError::key(
                    "ldap.url",
                    "must be ldap://host[:port] or ldaps://host[:port]",
                ));
            }
        }
        if url.scheme() == "ldap" && !self.starttls && !is_loopback(&url) {
            return Err(ConfigError::key(
                "ldap.url",
                "ldap:// to another machine would send passwords in clear: use ldaps:// or ldap.starttls = true",
            ));
        }
        if self.starttls && url.scheme() == "ldaps" {
            return Err(ConfigError::key(
                "ldap.starttls",
                "applies to ldap:// only (ldaps:// is TLS from the start)",
            ));
        }
        for (key, value) in [
            ("ldap.bind_dn", &self.bind_dn),
            ("ldap.user_base", &self.user_base),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::key(key, "must not be empty"));
            }
        }
        if self.bind_password.expose().is_empty() {
            return Err(ConfigError::key(
                "ldap.bind_password",
                "must not be empty (an empty password is an anonymous bind)",
            ));
        }
        if !self.user_filter.contains("{username}") {
            return Err(ConfigError::key(
                "ldap.user_filter",
                "must contain `{username}`, which becomes the escaped username",
            ));
        }
        readable("ldap.ca_file", &self.ca_file)?;
        if self.timeout_seconds == 0 {
            return Err(ConfigError::key(
                "ldap.timeout_seconds",
                "must be greater than 0",
            ));
        }
        if !(1..=64).contains(&self.pool_size) {
            return Err(ConfigError::key("ldap.pool_size", "must be 1-64"));
        }
        Ok(())
    }
}

impl OidcConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_sink_url("oidc.issuer", &self.issuer)?;
        absolute_http_url("oidc.redirect_url", &self.redirect_url)?;
        if self.client_id.is_empty() {
            return Err(ConfigError::key("oidc.client_id", "must not be empty"));
        }
        if self.client_secret.expose().is_empty() {
            return Err(ConfigError::key("oidc.client_secret", "must not be empty"));
        }
        if self.timeout_seconds == 0 {
            return Err(ConfigError::key(
                "oidc.timeout_seconds",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

impl SamlConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match (&self.idp_metadata_url, &self.idp_metadata_file) {
            (Some(url), None) => check_sink_url("saml.idp_metadata_url", url)?,
            (None, Some(_)) => readable("saml.idp_metadata_file", &self.idp_metadata_file)?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::key(
                    "saml.idp_metadata_file",
                    "give saml.idp_metadata_url or saml.idp_metadata_file, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::key(
                    "saml.idp_metadata_url",
                    "saml.idp_metadata_url or saml.idp_metadata_file is required",
                ));
            }
        }
        if self.sp_entity_id.trim().is_empty() || self.sp_entity_id.len() > 1024 {
            return Err(ConfigError::key(
                "saml.sp_entity_id",
                "must be 1-1024 characters",
            ));
        }
        absolute_http_url("saml.acs_url", &self.acs_url)?;
        match (&self.sp_key_file, &self.sp_cert_file) {
            (Some(_), None) => {
                return Err(ConfigError::key(
                    "saml.sp_cert_file",
                    "is required when saml.sp_key_file is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::key(
                    "saml.sp_key_file",
                    "is required when saml.sp_cert_file is set",
                ));
            }
            _ => {}
        }
        readable("saml.sp_key_file", &self.sp_key_file)?;
        readable("saml.sp_cert_file", &self.sp_cert_file)?;
        if self.clock_skew_seconds > 300 {
            return Err(ConfigError::key(
                "saml.clock_skew_seconds",
                "must be at most 300",
            ));
        }
        if self.timeout_seconds == 0 {
            return Err(ConfigError::key(
                "saml.timeout_seconds",
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_mappings_take_dns_and_pick_the_strongest_role() {
        let mapping: RoleMapping =
            "cn=sark-admins,ou=groups,dc=example,dc=org=>admin; staff=>operator;"
                .parse()
                .unwrap();
        assert_eq!(
            mapping.role_for(["CN=SARK-ADMINS,ou=groups,dc=example,dc=org", "staff"]),
            Role::Admin
        );
        assert_eq!(mapping.role_for(["staff"]), Role::Operator);
        assert_eq!(mapping.role_for(["other"]), Role::Viewer);
        assert_eq!(mapping.role_for([]), Role::Viewer);
        for bad in ["staff", "staff=>root", "=>admin"] {
            assert!(bad.parse::<RoleMapping>().is_err(), "{bad}");
        }
    }
}
