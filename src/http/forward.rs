//! Answering session operations other nodes forward here. A caller that speaks the
//! current protocol gets the domain outcome (the answer, or the refusal); one that speaks
//! version 3 gets what this node's front door would have answered (status, `Retry-After`,
//! JSON body), which is why this adapter lives in `http`. It moves to `auth::forward` once
//! version 3 is no longer spoken.

use std::sync::{Arc, OnceLock, Weak};

use axum::Json;
use axum::body::to_bytes;
use axum::http::header;
use axum::response::IntoResponse;
use sark_cluster::membership::SessionHandler;
use sark_cluster::wire::{OUTCOME_SINCE, Refusal, SessionAnswer, SessionOutcome};
use serde_json::Value;

use super::errors::ApiError;
use crate::auth::forward::run_here;
use crate::core::Core;
use crate::error::Error;

/// Largest answer relayed (token responses are a few KiB).
const MAX_ANSWER_BYTES: usize = 60 * 1024;

/// `answered` in the current form.
fn outcome(answered: Result<Value, Error>) -> SessionAnswer {
    SessionAnswer::outcome(match answered {
        Ok(value) => SessionOutcome::Done { value },
        Err(err) => SessionOutcome::Refused(Refusal::from(&err)),
    })
}

/// `answered` as a version-3 node reads it: the HTTP answer.
async fn http_answer(answered: Result<Value, Error>) -> SessionAnswer {
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
        outcome: None,
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
            let (answered, spoken) = match node {
                None => {
                    let starting = Error::unavailable("starting", "the node is still starting");
                    (Err(starting), OUTCOME_SINCE)
                }
                Some(node) => {
                    let ip = call.ip.as_deref().and_then(|ip| ip.parse().ok());
                    let answered = run_here(&node, call.op, ip).await;
                    (answered, node.membership.protocol_version())
                }
            };
            if call.version.min(spoken) >= OUTCOME_SINCE {
                outcome(answered)
            } else {
                http_answer(answered).await
            }
        })
    })
}
