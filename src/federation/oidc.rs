//! OpenID Connect logins: discovery, the authorization code flow with PKCE (S256), and a
//! verified ID token.
//!
//! The state, nonce and PKCE verifier of a login live in the store (sealed), keyed by the
//! state's hash, so the callback may land on any node and is usable once. The state is
//! also bound to the browser that started the login by a cookie whose hash is stored
//! with it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::RwLock;

use super::{ExternalIdentity, random_token, sha256_hex};
use crate::auth::service;
use crate::config::{ConfigError, OidcConfig};
use crate::core::Core;
use crate::error::{Error, ErrorKind};
use crate::secrets::sealing_context;
use crate::store::{AuthRequestRecord, SealedKind};

/// How long a started login waits for its callback.
const PENDING_SECONDS: i64 = 600;
/// How long discovered metadata (endpoints and signing keys) is reused.
const METADATA_TTL: Duration = Duration::from_secs(900);

/// ID tokens are accepted only with these (asymmetric) algorithms: never `none`, and never
/// HMAC with the client secret.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 8] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// What the store keeps of a started login, sealed.
#[derive(Serialize, Deserialize)]
struct Pending {
    verifier: String,
    nonce: String,
}

/// A started login.
#[derive(Debug)]
pub struct Started {
    /// Where to send the browser.
    pub url: url::Url,
    /// The browser-binding cookie's value.
    pub browser: String,
}

/// The configured provider and its discovered metadata.
pub struct OidcProvider {
    config: OidcConfig,
    http: reqwest::Client,
    metadata: RwLock<Option<(CoreProviderMetadata, Instant)>>,
}

fn unavailable(detail: impl std::fmt::Display) -> Error {
    tracing::warn!(error = %detail, "the OIDC provider is unavailable");
    Error::unavailable(
        "oidc_unavailable",
        "the OpenID Connect provider cannot be reached; try again later",
    )
}

impl OidcProvider {
    /// Checks the URLs; contacts nothing yet.
    pub fn new(config: OidcConfig) -> Result<Self, ConfigError> {
        IssuerUrl::new(config.issuer.clone())
            .map_err(|e| ConfigError::from_key("oidc.issuer", e))?;
        RedirectUrl::new(config.redirect_url.clone())
            .map_err(|e| ConfigError::from_key("oidc.redirect_url", e))?;
        // The provider's answers are never followed elsewhere (no SSRF by redirect).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(config.timeout_seconds))
            .build()
            .map_err(|e| ConfigError::from_key("oidc.issuer", e))?;
        Ok(Self {
            config,
            http,
            metadata: RwLock::new(None),
        })
    }

    async fn metadata(&self, fresh: bool) -> Result<CoreProviderMetadata, Error> {
        if !fresh
            && let Some((metadata, at)) = self.metadata.read().await.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(metadata.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(unavailable)?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(unavailable)?;
        *self.metadata.write().await = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    fn client(&self, metadata: CoreProviderMetadata) -> Result<Client, Error> {
        let redirect = RedirectUrl::new(self.config.redirect_url.clone())
            .map_err(|e| Error::internal(e.to_string()))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().to_owned(),
            )),
        )
        .set_redirect_uri(redirect))
    }

    /// Whether discovery works now (it refreshes the cached metadata).
    pub async fn probe(&self) -> Result<(), Error> {
        self.metadata(true).await.map(|_| ())
    }

    /// Starts a login: the provider's authorization URL, and the browser binding to set
    /// (`browser` is the one the browser already has, if any).
    pub async fn start(&self, node: &Core, redirect: Option<url::Url>) -> Result<Started, Error> {
        let client = self.client(self.metadata(false).await?)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let id = sha256_hex(state.secret());
        let pending = serde_json::to_vec(&Pending {
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
        .map_err(|e| Error::internal(e.to_string()))?;
        let data = node
            .keys
            .sealer()
            .seal(&sealing_context(SealedKind::AuthRequest, &id), &pending)
            .map_err(|e| Error::internal(e.to_string()))?;
        // A fresh binding for every login: a value planted in the browser earlier (a
        // login-fixation attempt) is never taken over.
        let browser = random_token();
        let now = node.clock.now();
        node.store
            .put_auth_request(&AuthRequestRecord {
                id,
                provider: "oidc".into(),
                browser_hash: sha256_hex(&browser),
                data,
                redirect_uri: redirect.map(String::from),
                created_at: now,
                expires_at: now + chrono::Duration::seconds(PENDING_SECONDS),
            })
            .await?;
        Ok(Started { url, browser })
    }

    /// Finishes a login at the callback: the state is taken (once) and must belong to
    /// this browser; the code is redeemed with the PKCE verifier; the ID token's
    /// signature, issuer, audience, expiry and nonce are verified. Every refusal is
    /// audited.
    pub async fn finish(
        &self,
        node: &Core,
        code: &str,
        state: &str,
        browser: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(ExternalIdentity, Option<url::Url>), Error> {
        let id = sha256_hex(state);
        let pending = node.store.take_auth_request(&id, node.clock.now()).await?;
        let Some(pending) = pending.filter(|p| p.provider == "oidc") else {
            return Err(refuse(
                node,
                ip,
                "unknown_state",
                "the login state is unknown, used or expired",
            )
            .await);
        };
        if !super::same_browser(browser, &pending.browser_hash) {
            return Err(refuse(
                node,
                ip,
                "browser_mismatch",
                "the login was started in another browser",
            )
            .await);
        }
        let sealed = node
            .keys
            .sealer()
            .open(
                &sealing_context(SealedKind::AuthRequest, &id),
                &pending.data,
            )
            .map_err(|e| Error::internal(e.to_string()))?;
        let secrets: Pending =
            serde_json::from_slice(&sealed).map_err(|e| Error::internal(e.to_string()))?;
        let client = self.client(self.metadata(false).await?)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(unavailable)?
            .set_pkce_verifier(PkceCodeVerifier::new(secrets.verifier))
            .request_async(&self.http)
            .await;
        let response = match response {
            Ok(response) => response,
            Err(openidconnect::RequestTokenError::ServerResponse(err)) => {
                let reason = format!("the provider refused the code: {}", err.error());
                return Err(refuse(node, ip, "code_refused", &reason).await);
            }
            Err(err) => return Err(unavailable(err)),
        };
        let Some(token) = response.id_token() else {
            return Err(refuse(node, ip, "no_id_token", "the provider sent no ID token").await);
        };
        let nonce = Nonce::new(secrets.nonce);
        let now = node.clock.now();
        let verify = |client: &Client| {
            let verifier = client
                .id_token_verifier()
                .set_allowed_algs(ALLOWED_ALGS)
                .set_time_fn(move || now);
            token.claims(&verifier, &nonce).cloned()
        };
        let claims = match verify(&client) {
            // The provider may have rotated its keys since discovery.
            Err(ClaimsVerificationError::SignatureVerification(_)) => {
                verify(&self.client(self.metadata(true).await?)?)
            }
            other => other,
        };
        let claims = match claims {
            Ok(claims) => claims,
            Err(err) => {
                let reason = format!("the ID token was refused: {err}");
                return Err(refuse(node, ip, "invalid_id_token", &reason).await);
            }
        };
        let groups = extra_claim(&token.to_string(), &self.config.groups_claim);
        let email = claims
            .email()
            .filter(|_| claims.email_verified() != Some(false))
            .map(|e| e.as_str().to_owned());
        let name = claims
            .preferred_username()
            .map(|n| n.as_str().to_owned())
            .or_else(|| email.clone())
            .unwrap_or_else(|| claims.subject().as_str().to_owned());
        let identity = ExternalIdentity {
            provider: "oidc",
            subject: claims.subject().as_str().to_owned(),
            name,
            email,
            role: self
                .config
                .role_mapping
                .role_for(groups.iter().map(String::as_str)),
        };
        let redirect = pending
            .redirect_uri
            .as_deref()
            .map(url::Url::parse)
            .transpose()
            .map_err(|e| Error::internal(e.to_string()))?;
        Ok((identity, redirect))
    }
}

/// Audits a refused callback (with `message`) and answers 401 `oidc_login_failed` naming
/// only the reason.
pub async fn refuse(node: &Core, ip: Option<IpAddr>, reason: &str, message: &str) -> Error {
    service::audit(
        node,
        "login_failed",
        "failure",
        "oidc",
        ip,
        None,
        json!({"auth_method": "oidc", "reason": reason, "detail": message}),
    )
    .await;
    Error::new(
        ErrorKind::Unauthenticated,
        "oidc_login_failed",
        message.to_owned(),
    )
}

/// A list-of-strings claim (or a single string) of a JWT whose signature was verified.
fn extra_claim(jwt: &str, claim: &str) -> Vec<String> {
    let payload = jwt
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok());
    match payload.as_ref().and_then(|p| p.get(claim)) {
        Some(Value::Array(values)) => values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(value)) => vec![value.clone()],
        _ => Vec::new(),
    }
}
