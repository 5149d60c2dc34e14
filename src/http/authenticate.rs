//! The caller of a request: its credential read from the headers and resolved once per
//! request by [`authenticate`] (in the admission middleware, before rate limiting, which
//! counts per principal), then taken by handlers with the [`Principal`] extractor.

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::errors::ApiError;
use crate::auth::principal::{self, Credential, MAX_CREDENTIAL_LENGTH, Principal};
use crate::error::{Error, ErrorKind};

/// A credential was presented but refused; kept for the handler to answer.
#[derive(Clone, Debug)]
struct Refused(Error);

/// The credential in `Authorization: Bearer …` or `X-API-Key`, if any.
fn credential(headers: &HeaderMap) -> Option<Result<Credential<'_>, Error>> {
    let malformed = || principal::refused("invalid_token", "the credential is malformed");
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else {
            return Some(Err(malformed()));
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return Some(Err(malformed()));
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Some(Err(principal::refused(
                "invalid_token",
                "only Bearer credentials are accepted",
            )));
        }
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_CREDENTIAL_LENGTH {
            return Some(Err(malformed()));
        }
        return Some(Ok(Credential::bearer(token)));
    }
    let key = headers.get("x-api-key")?;
    match key.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_CREDENTIAL_LENGTH => {
            Some(Ok(Credential::ApiKey(key.trim())))
        }
        _ => Some(Err(malformed())),
    }
}

/// Resolves the caller of `req`, if a credential was presented: a principal it accepted, or
/// the refusal for the handler to answer, goes into the request's extensions; `Ok` carries
/// the accepted principal's username. Too many API key lookups from `client` are answered
/// 429 at once (`Err`).
pub(super) async fn authenticate(
    state: &AppState,
    req: &mut Request,
    client: Option<std::net::IpAddr>,
) -> Result<Option<String>, Response> {
    let outcome = match credential(req.headers()) {
        None => return Ok(None),
        Some(Err(refused)) => Err(refused),
        Some(Ok(credential)) => principal::authenticate(&state.node, credential, client).await,
    };
    match outcome {
        Ok(principal) => {
            let who = principal.username.clone();
            req.extensions_mut().insert(principal);
            Ok(Some(who))
        }
        Err(err) if err.kind() == ErrorKind::RateLimited => {
            Err(ApiError::from(err).into_response())
        }
        Err(err) => {
            req.extensions_mut().insert(Refused(err));
            Ok(None)
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        if let Some(Refused(err)) = parts.extensions.get::<Refused>() {
            return Err(err.clone().into());
        }
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_required",
            "this endpoint needs a credential",
        )
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")))
    }
}
