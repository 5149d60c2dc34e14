//! The domain error: what a service answers when it cannot do what it was asked.
//!
//! An error has a kind (what the caller can do about it), a stable snake_case code (the
//! contract clients match on, listed in docs/api.md), a message for people, and, for a
//! failure inside the server, a detail kept for the log only. How an error becomes an HTTP
//! answer is known only to `http::errors`.

use std::borrow::Cow;

use sark_cluster::wire::Refusal;

use crate::store::StoreError;

/// What the caller can do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong: fix it.
    Invalid,
    /// No valid credential: authenticate (again).
    Unauthenticated,
    /// Authenticated, but not allowed.
    Forbidden,
    /// Nothing by that name.
    NotFound,
    /// The request clashes with what exists.
    Conflict,
    /// The account is locked for a while.
    Locked,
    /// Too many requests: wait `retry_after`.
    RateLimited,
    /// Something this node needs is down or busy: retry, here or elsewhere.
    Unavailable,
    /// The server failed.
    Internal,
}

impl ErrorKind {
    /// Every kind.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Invalid,
        ErrorKind::Unauthenticated,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Locked,
        ErrorKind::RateLimited,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// The kind's stable snake_case name (as the cluster wire carries it).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Locked => "locked",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind named `name`; a name this build does not know is `Internal`.
    pub fn from_name(name: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .unwrap_or(ErrorKind::Internal)
    }
}

/// A service's refusal or failure.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    kind: ErrorKind,
    code: Cow<'static, str>,
    message: String,
    retry_after: Option<u64>,
    bearer_challenge: bool,
    detail: Option<String>,
}

/// How long a client is asked to wait before retrying a dependency that is down.
const UNAVAILABLE_RETRY_SECONDS: u64 = 5;

impl Error {
    /// An error of `kind` with a snake_case `code` and a message for people.
    pub fn new(
        kind: ErrorKind,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            bearer_challenge: false,
            detail: None,
        }
    }

    /// `invalid_request`, naming the field and why it is wrong.
    pub fn invalid_field(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::Invalid,
            "invalid_request",
            format!("`{field}`: {reason}"),
        )
    }

    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", message)
    }

    /// A dependency is down; `code` names it (`database_unavailable`, `starting`, …).
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, message).retry_after(UNAVAILABLE_RETRY_SECONDS)
    }

    /// `internal_error` with a generic message; `detail` goes only to the log.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::Internal,
            "internal_error",
            "the server failed to handle the request",
        )
        .with_detail(detail)
    }

    /// Asks the client to wait `seconds` before retrying.
    #[must_use]
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Tells a client that presented a bearer token that the token is the problem.
    #[must_use]
    pub fn bearer_challenge(mut self) -> Self {
        self.bearer_challenge = true;
        self
    }

    /// Keeps `detail` for the log (never shown to the client).
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// What the caller can do about it.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The stable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The message for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Seconds to wait before a retry, when the error asks for one.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        self.retry_after
    }

    /// Whether the client should be told its bearer token is the problem.
    pub fn has_bearer_challenge(&self) -> bool {
        self.bearer_challenge
    }

    /// The server-side detail for the log.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(reason) => Error::unavailable(
                "database_unavailable",
                "the database is unavailable; retry later",
            )
            .with_detail(reason),
            StoreError::Conflict(what) => Error::new(
                ErrorKind::Conflict,
                "conflict",
                format!("{what} already exists"),
            ),
            StoreError::Invalid(reason) => Error::new(
                ErrorKind::Invalid,
                "invalid_value",
                format!("a value was refused: {reason}"),
            ),
            StoreError::Contended(what) => {
                Error::unavailable("contended", "a concurrent update won; retry").with_detail(what)
            }
            other => Error::internal(other.to_string()),
        }
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Self {
            kind: ErrorKind::from_name(&refusal.kind),
            code: refusal.code.into(),
            message: refusal.message,
            retry_after: refusal.retry_after,
            bearer_challenge: refusal.bearer_challenge,
            detail: None,
        }
    }
}

impl From<&Error> for Refusal {
    /// The error as another node is told it: the detail stays here, in the log.
    fn from(err: &Error) -> Self {
        Self {
            kind: err.kind.name().to_owned(),
            code: err.code.to_string(),
            message: err.message.clone(),
            retry_after: err.retry_after,
            bearer_challenge: err.bearer_challenge,
        }
    }
}

/// A service's answer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_keep_their_detail_out_of_the_message() {
        let err = Error::from(StoreError::Unavailable(
            "connection refused to 10.0.0.5".into(),
        ));
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(err.code(), "database_unavailable");
        assert!(!err.message().contains("10.0.0.5"));
        assert_eq!(err.detail(), Some("connection refused to 10.0.0.5"));
        assert_eq!(err.retry_after_seconds(), Some(5));

        let err = Error::from(StoreError::Internal("syntax error at or near".into()));
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(!err.message().contains("syntax"));
    }

    #[test]
    fn errors_cross_the_cluster_whole_but_without_their_detail() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.name()), kind);
        }
        assert_eq!(
            ErrorKind::from_name("from_a_newer_node"),
            ErrorKind::Internal
        );
        let err = Error::new(ErrorKind::Locked, "account_locked", "locked for 30 s")
            .retry_after(30)
            .bearer_challenge()
            .with_detail("lockout key alice");
        let back = Error::from(Refusal::from(&err));
        assert_eq!(back.kind(), ErrorKind::Locked);
        assert_eq!(back.code(), "account_locked");
        assert_eq!(back.message(), "locked for 30 s");
        assert_eq!(back.retry_after_seconds(), Some(30));
        assert!(back.has_bearer_challenge());
        assert_eq!(back.detail(), None);
    }

    #[test]
    fn internal_failures_keep_a_generic_message() {
        let err = Error::from(StoreError::Internal("syntax error at or near".into()));
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(!err.message().contains("syntax"));
    }
}
