//! Session operations across the cluster, in HTTP terms: the answer a session's owner
//! gives another node is the HTTP answer its front door would have given (status,
//! `Retry-After`, JSON body), and the node that received the request relays it.

use std::sync::{Arc, OnceLock, Weak};

use axum::Json;
use axum::body::to_bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sark_cluster::membership::SessionHandler;
use sark_cluster::wire::SessionAnswer;
use serde_json::Value;

use super::errors::ApiError;
use crate::auth::forward::run_here;
use crate::core::Core;
use crate::error::Error;

/// Largest answer relayed (token responses are a few KiB).
const MAX_ANSWER_BYTES: usize = 60 * 1024;

/// The owner's answer as this node's response.
pub fn relay(answer: SessionAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        answer.body,
    )
        .into_response();
    if let Some(seconds) = answer.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `answered` as the answer to send back to the forwarding node.
async fn answer(answered: Result<Value, Error>) -> SessionAnswer {
    let response = match answered {
        Ok(value) => Json(value).into_response(),
        Err(err) => ApiError::from(err).into_response(),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    SessionAnswer {
        status,
        retry_after,
        body,
    }
}

/// Runs the session operations other nodes forward here; `node` is filled in once the
/// node exists (until then, and after it is gone, calls are answered 503).
pub fn handler(node: Arc<OnceLock<Weak<Core>>>) -> SessionHandler {
    Arc::new(move |call| {
        let node = node.get().and_then(Weak::upgrade);
        Box::pin(async move {
            let Some(node) = node else {
                let starting = Error::unavailable("starting", "the node is still starting");
                return answer(Err(starting)).await;
            };
            let ip = call.ip.as_deref().and_then(|ip| ip.parse().ok());
            answer(run_here(&node, call.op, ip).await).await
        })
    })
}
