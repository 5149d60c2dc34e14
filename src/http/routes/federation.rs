//! Logins at external identity providers: `/api/v1/auth/login/ldap`,
//! `/api/v1/auth/oidc/*`, `/api/v1/auth/saml/*`, `/api/v1/auth/exchange` and
//! `/api/v1/auth/providers`.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::auth::service::{self, Attempt, invalid_credentials, lockout_key};
use crate::core::Core;
use crate::error::Error;
use crate::federation::{self, ldap::Rejection};
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extract::AppJson;
use crate::http::login::{LoginRequest, login_response};
use crate::http::validate::ClientAddr;

fn not_configured(provider: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "provider_not_configured",
        format!("the {provider} provider is not configured on this server"),
    )
}

/// `GET /api/v1/auth/providers`.
pub async fn get_providers(State(state): State<AppState>) -> Json<serde_json::Value> {
    let providers = &state.providers;
    let entry = |id: &str, enabled: bool, url: &str| json!({"id": id, "type": id, "enabled": enabled, "login_url": enabled.then_some(url)});
    Json(json!({"providers": [
        entry("local", true, "/api/v1/auth/login"),
        entry("ldap", providers.ldap.is_some(), "/api/v1/auth/login/ldap"),
        entry("oidc", providers.oidc.is_some(), "/api/v1/auth/oidc/login"),
        entry("saml", providers.saml.is_some(), "/api/v1/auth/saml/login"),
    ]}))
}

/// `POST /api/v1/auth/login/ldap`.
pub async fn post_login_ldap(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    AppJson(body): AppJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let node = &state.node;
    let ldap = state
        .providers
        .ldap
        .as_ref()
        .ok_or_else(|| not_configured("LDAP"))?;
    if body.password.is_empty() {
        // Checked before anything else: an empty password makes a simple bind anonymous,
        // which most directories accept.
        return Err(ApiError::invalid_field(
            "password",
            "must not be empty (an empty password would be an anonymous bind)",
        ));
    }
    service::check_credentials(&body.username, &body.password)?;
    if body.username.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "username",
            "must not hold control characters",
        ));
    }
    // The directory ignores case and surrounding or repeated spaces in names, so the
    // lockout must too, or each spelling would get guesses of its own.
    let username = body
        .username
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let unavailable = |err: federation::ldap::Unavailable| {
        tracing::warn!(error = %err, "the LDAP directory is unavailable");
        ApiError::unavailable(
            "ldap_unavailable",
            "the LDAP directory cannot be reached; try again later",
        )
    };
    let found = match ldap.lookup(&username).await.map_err(unavailable)? {
        Ok(found) => found,
        Err(rejection) => {
            let key = lockout_key(&format!("ldap:{username}"));
            let attempt = Attempt::begin(node, &key).await?;
            audit_ldap_failure(node, &key, ip, rejection).await;
            return Err(attempt.failed(node, ip, invalid_credentials()).await.into());
        }
    };
    // Failures of a known entry count against its account, however it was spelled.
    let key = lockout_key(&federation::account_name("ldap", &found.identity.name));
    let attempt = Attempt::begin(node, &key).await?;
    if let Err(rejection) = ldap
        .check_password(&found, &body.password)
        .await
        .map_err(unavailable)?
    {
        audit_ldap_failure(node, &key, ip, rejection).await;
        return Err(attempt.failed(node, ip, invalid_credentials()).await.into());
    }
    let outcome = federation::login_with(node, attempt, &found.identity, ip).await?;
    Ok(login_response(outcome))
}

async fn audit_ldap_failure(node: &Core, key: &str, ip: Option<std::net::IpAddr>, why: Rejection) {
    service::audit(
        node,
        "login_failed",
        "failure",
        key,
        ip,
        None,
        json!({"auth_method": "ldap", "reason": why.as_str()}),
    )
    .await;
}

/// The query parameters of `raw`, refusing any not in `allowed` and any given twice.
fn query(raw: Option<&str>, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let mut params = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(ApiError::invalid_field(
                &key,
                format!("is not a parameter here (expected {})", allowed.join(", ")),
            ));
        }
        if value.len() > 4096 {
            return Err(ApiError::invalid_field(&key, "is longer than 4096 bytes"));
        }
        let key = key.into_owned();
        if params.contains_key(&key) {
            return Err(ApiError::invalid_field(&key, "is given more than once"));
        }
        params.insert(key, value.into_owned());
    }
    Ok(params)
}

/// A cookie that binds a started external login to the browser that started it.
struct Binding {
    name: &'static str,
    /// The name over https, where the browser then pins the cookie to this host and path
    /// `/` (`__Host-`), so no sibling domain or plain-http page can plant or read it.
    host_name: Option<&'static str>,
    path: &'static str,
    /// Whether the provider brings the browser back with a cross-site POST (SAML), which
    /// carries only `SameSite=None` cookies (and browsers want those `Secure`).
    cross_site: bool,
}

const OIDC_BINDING: Binding = Binding {
    name: "sark_login",
    host_name: Some("__Host-sark_login"),
    path: "/api/v1/auth/oidc",
    cross_site: false,
};

const SAML_BINDING: Binding = Binding {
    name: "sark_saml",
    host_name: Some("__Host-sark_saml"),
    path: "/api/v1/auth/saml",
    cross_site: true,
};

impl Binding {
    /// The cookie's name and path: `__Host-` and `/` over https where the binding has it.
    fn name_and_path(&self, secure: bool) -> (&'static str, &'static str) {
        match self.host_name {
            Some(host_name) if secure => (host_name, "/"),
            _ => (self.name, self.path),
        }
    }

    /// The cookie's value, if the request carries one.
    fn read(&self, headers: &HeaderMap, secure: bool) -> Option<String> {
        let (wanted, _) = self.name_and_path(secure);
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, value)| *name == wanted && value.len() == 43)
            .map(|(_, value)| value.to_owned())
    }

    /// `Set-Cookie` for `value`; `secure` when the browser reaches SARK over https.
    fn set(&self, secure: bool, value: &str, max_age: i64) -> Result<HeaderValue, ApiError> {
        let same_site = if self.cross_site {
            "None; Secure"
        } else if secure {
            "Lax; Secure"
        } else {
            "Lax"
        };
        let (name, path) = self.name_and_path(secure);
        HeaderValue::from_str(&format!(
            "{name}={value}; Path={path}; HttpOnly; SameSite={same_site}; Max-Age={max_age}"
        ))
        .map_err(|e| ApiError::internal(e.to_string()))
    }
}

/// Whether browsers reach the OIDC callback over https (here or at a TLS-terminating proxy).
fn oidc_secure(node: &Core) -> bool {
    node.config.http.tls_cert_file.is_some()
        || node
            .config
            .oidc
            .as_ref()
            .is_some_and(|o| o.redirect_url.starts_with("https://"))
}

fn location(url: &url::Url) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(url.as_str()).map_err(|e| ApiError::internal(e.to_string()))
}

/// `GET /api/v1/auth/oidc/login?redirect_uri=`: 302 to the provider.
pub async fn get_oidc_login(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let node = &state.node;
    let oidc = oidc_provider(&state)?;
    let params = query(raw.as_deref(), &["redirect_uri"])?;
    let redirect = params
        .get("redirect_uri")
        .map(|uri| federation::allowed_redirect(&node.config, "redirect_uri", uri))
        .transpose()?;
    let started = oidc.start(node, redirect).await?;
    let location = location(&started.url)?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (
                header::SET_COOKIE,
                OIDC_BINDING.set(oidc_secure(node), &started.browser, 600)?,
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

/// `GET /api/v1/auth/oidc/callback?code&state`.
pub async fn get_oidc_callback(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let node = &state.node;
    let oidc = oidc_provider(&state)?;
    let params = query(
        raw.as_deref(),
        &[
            "code",
            "state",
            "iss",
            "error",
            "error_description",
            "session_state",
        ],
    )?;
    let state_param = params
        .get("state")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::invalid_field("state", "is required"))?;
    if let Some(error) = params.get("error") {
        // The provider refused the login (a wrong password there, say); the pending
        // state is spent all the same.
        let _ = node
            .store
            .take_auth_request(&federation::sha256_hex(state_param), node.clock.now())
            .await;
        // The provider's word goes into a message and the audit log: only a code of the
        // form RFC 6749 gives its errors (`access_denied`, …) is repeated.
        let code = Some(error.as_str())
            .filter(|e| {
                (1..=64).contains(&e.len())
                    && e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
            .unwrap_or("an unrecognised error");
        let message = format!("the provider refused the login: {code}");
        return Err(
            federation::oidc::refuse(node, ip, "provider_error", &message)
                .await
                .into(),
        );
    }
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ApiError::invalid_field("code", "is required"))?;
    let browser = OIDC_BINDING.read(&headers, oidc_secure(node));
    let (identity, redirect) = oidc
        .finish(node, code, state_param, browser.as_deref(), ip)
        .await?;
    let clear = (
        header::SET_COOKIE,
        OIDC_BINDING.set(oidc_secure(node), "", 0)?,
    );
    let mut response = deliver(node, &identity, redirect, ip).await?;
    response.headers_mut().insert(clear.0, clear.1);
    Ok(response)
}

/// The answer to a login a provider vouched for: 302 with a login code to the
/// allow-listed redirect the login asked for, or the token response.
async fn deliver(
    node: &Core,
    identity: &federation::ExternalIdentity,
    redirect: Option<url::Url>,
    ip: Option<std::net::IpAddr>,
) -> Result<Response, ApiError> {
    match redirect {
        Some(redirect) => {
            let to = federation::login_code(node, identity, redirect, ip).await?;
            let location = HeaderValue::from_str(to.as_str())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
        }
        None => Ok(login_response(federation::login(node, identity, ip).await?)),
    }
}

fn oidc_provider(state: &AppState) -> Result<&federation::oidc::OidcProvider, ApiError> {
    state
        .providers
        .oidc
        .as_ref()
        .ok_or_else(|| not_configured("OpenID Connect"))
}

fn saml_provider(state: &AppState) -> Result<&federation::saml::SamlProvider, ApiError> {
    state
        .providers
        .saml
        .as_ref()
        .ok_or_else(|| not_configured("SAML"))
}

/// `GET /api/v1/auth/saml/metadata`: SARK's SP metadata.
pub async fn get_saml_metadata(State(state): State<AppState>) -> Result<Response, ApiError> {
    let saml = saml_provider(&state)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/samlmetadata+xml"),
        )],
        saml.sp_metadata(),
    )
        .into_response())
}

/// `GET /api/v1/auth/saml/login?relay_state=`: 302 to the IdP with an AuthnRequest.
pub async fn get_saml_login(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let node = &state.node;
    let saml = saml_provider(&state)?;
    let params = query(raw.as_deref(), &["relay_state"])?;
    let relay = params
        .get("relay_state")
        .map(|r| federation::allowed_redirect(&node.config, "relay_state", r))
        .transpose()?;
    // A fresh binding for every login: a value planted in the browser beforehand is
    // never taken over.
    let browser = federation::random_token();
    let to = saml.start(node, &browser, relay).await?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location(&to)?),
            (header::SET_COOKIE, SAML_BINDING.set(true, &browser, 600)?),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

/// `POST /api/v1/auth/saml/acs`: form `SAMLResponse`, `RelayState`.
pub async fn post_saml_acs(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let node = &state.node;
    let saml = saml_provider(&state)?;
    let mut response = None;
    let mut relay_state = None;
    for (key, value) in url::form_urlencoded::parse(&body) {
        let slot = match key.as_ref() {
            "SAMLResponse" => &mut response,
            "RelayState" => &mut relay_state,
            other => {
                return Err(ApiError::invalid_field(
                    other,
                    "is not a field here (expected SAMLResponse, RelayState)",
                ));
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(ApiError::invalid_field(&key, "is given more than once"));
        }
    }
    let encoded = response
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::invalid_field("SAMLResponse", "is required"))?;
    if encoded.len() > federation::saml::MAX_RESPONSE_BYTES * 4 / 3 + 4 {
        return Err(ApiError::invalid_field("SAMLResponse", "is too large"));
    }
    let compact: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let xml = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::invalid_field("SAMLResponse", "is not base64 of UTF-8 XML"))?;
    // Checked first: an unlisted RelayState is refused whatever the response holds.
    let posted_relay = match relay_state.filter(|r| !r.is_empty()) {
        Some(relay) => match federation::allowed_redirect(&node.config, "RelayState", &relay) {
            Ok(url) => Some(url),
            Err(err) => {
                return Err(federation::saml::refuse_relay_state(node, ip, err)
                    .await
                    .into());
            }
        },
        None => None,
    };
    let browser = SAML_BINDING.read(&headers, true);
    let (identity, relay) = saml.consume(node, xml, browser.as_deref(), ip).await?;
    if posted_relay.is_some() && posted_relay != relay {
        let err = Error::invalid_field("RelayState", "is not the one the login started with");
        return Err(federation::saml::refuse_relay_state(node, ip, err)
            .await
            .into());
    }
    let clear = SAML_BINDING.set(true, "", 0)?;
    let mut response = deliver(node, &identity, relay, ip).await?;
    response.headers_mut().insert(header::SET_COOKIE, clear);
    Ok(response)
}

/// `POST /api/v1/auth/exchange` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    code: Zeroizing<String>,
}

/// `POST /api/v1/auth/exchange`: a one-time login code → the token response.
pub async fn post_exchange(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    AppJson(body): AppJson<ExchangeRequest>,
) -> Result<Response, ApiError> {
    if body.code.is_empty() || body.code.len() > 128 {
        return Err(ApiError::invalid_field("code", "is not a login code"));
    }
    let outcome = federation::exchange(&state.node, &body.code, ip).await?;
    Ok(login_response(outcome))
}
