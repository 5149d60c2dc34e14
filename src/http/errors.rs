//! The one error shape of the API: `{"error": {"code", "message", "request_id"}}`.
//!
//! Only this module knows how errors become HTTP: a domain [`Error`]'s kind picks the
//! status. Details of server-side failures go into a response extension for the access log
//! and never into the body.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{Error, ErrorKind};
use crate::store::StoreError;

tokio::task_local! {
    /// The id of the request being handled, set by the request-context middleware.
    pub static REQUEST_ID: String;
}

/// The current request's id, or an empty string outside a request.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// What went wrong inside the server, kept for the access log.
#[derive(Clone, Debug)]
pub struct InternalDetail(pub String);

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    internal: Option<String>,
}

impl ApiError {
    /// An error with a status, a snake_case code and a message for humans.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            headers: Vec::new(),
            internal: None,
        }
    }

    /// 400 naming the field and why it is wrong.
    pub fn invalid_field(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("`{field}`: {reason}"),
        )
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 because a dependency is down; `code` names it (e.g. `database_unavailable`).
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
    }

    /// 500 with a generic message; `detail` goes only to the log.
    pub fn internal(detail: impl Into<String>) -> Self {
        let mut err = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to handle the request",
        );
        err.internal = Some(detail.into());
        err
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The snake_case code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The error shape for a bare status produced outside our handlers (by axum or a layer).
    pub fn from_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::BAD_REQUEST => ("bad_request", "the request is malformed"),
            StatusCode::UNAUTHORIZED => ("unauthenticated", "authentication is required"),
            StatusCode::FORBIDDEN => ("forbidden", "the request is not allowed"),
            StatusCode::NOT_FOUND => ("not_found", "no such resource"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this method is not allowed on this resource",
            ),
            StatusCode::REQUEST_TIMEOUT => {
                ("request_timeout", "the request took too long to arrive")
            }
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "the content type is not supported",
            ),
            StatusCode::UNPROCESSABLE_ENTITY => {
                ("unprocessable_entity", "the request could not be processed")
            }
            StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "too many requests"),
            StatusCode::SERVICE_UNAVAILABLE => {
                ("unavailable", "the service is temporarily unavailable")
            }
            s if s.is_client_error() => ("bad_request", "the request was refused"),
            _ => ("internal_error", "the server failed to handle the request"),
        };
        Self::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "request_id": current_request_id(),
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        if let Some(detail) = self.internal {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let status = match err.kind() {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Locked => StatusCode::LOCKED,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut api = ApiError::new(status, err.code().to_owned(), err.message());
        if let Some(seconds) = err.retry_after_seconds() {
            api = api.with_header(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if err.has_bearer_challenge() {
            api = api.with_header(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        api.internal = err.detail().map(str::to_owned);
        api
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Error::from(err).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn body(err: ApiError) -> (StatusCode, serde_json::Value, Response) {
        let response = REQUEST_ID
            .scope("req-1".into(), async { err.into_response() })
            .await;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let bytes = to_bytes(body, 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap(),
            Response::from_parts(parts, axum::body::Body::empty()),
        )
    }

    #[tokio::test]
    async fn errors_have_the_api_shape_with_the_request_id() {
        let (status, json, _) = body(ApiError::invalid_field("name", "must not be empty")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"]["code"], "invalid_request");
        assert_eq!(json["error"]["message"], "`name`: must not be empty");
        assert_eq!(json["error"]["request_id"], "req-1");
    }

    #[tokio::test]
    async fn a_database_outage_is_503_and_internal_details_stay_out_of_the_body() {
        let (status, json, response) =
            body(StoreError::Unavailable("connection refused to 10.0.0.5".into()).into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json["error"]["code"], "database_unavailable");
        assert!(!json.to_string().contains("10.0.0.5"));
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        assert!(response.extensions().get::<InternalDetail>().is_some());

        let (status, json, _) =
            body(StoreError::Internal("syntax error at or near".into()).into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!json.to_string().contains("syntax"));
    }
}
