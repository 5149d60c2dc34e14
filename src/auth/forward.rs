//! Session placement: operations that need a session's actor (refresh, logout, MFA verify,
//! describing sessions for a listing) run on the node that owns the session, the winner of rendezvous hashing of its id over
//! the live members. Any node may receive the request; it forwards it over the cluster and
//! relays the owner's answer. When the owner does not answer in time (it is dying) the
//! operation runs here, from the store, which stays the source of truth: a refresh token
//! still rotates exactly once.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, Opts, Registry};
use sark_cluster::membership::SessionHandler;
use sark_cluster::placement::{call_node, call_owner};
use sark_cluster::wire::{DESCRIBE_SINCE, SessionAnswer, SessionOp};
use uuid::Uuid;

use crate::auth::service;
use crate::http::errors::ApiError;
use crate::node::Node;

/// How long the owner gets to answer before the operation runs here.
const OWNER_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer relayed (token responses are a few KiB).
const MAX_ANSWER_BYTES: usize = 60 * 1024;

/// `sark_session_forwards_total{op,ran}`: where session operations ran.
pub fn register_metric(registry: &Registry) -> prometheus::Result<IntCounterVec> {
    let forwards = IntCounterVec::new(
        Opts::new(
            "sark_session_forwards_total",
            "Session operations by where they ran: here (this node owns the session), owner (forwarded), owner_unreachable (run here after the owner did not answer)",
        ),
        &["op", "ran"],
    )?;
    registry.register(Box::new(forwards.clone()))?;
    Ok(forwards)
}

fn op_name(op: &SessionOp) -> &'static str {
    match op {
        SessionOp::Refresh { .. } => "refresh",
        SessionOp::Logout { .. } => "logout",
        SessionOp::VerifyMfa { .. } => "mfa_verify",
        SessionOp::Describe { .. } => "list",
    }
}

/// Asks member `owner` to describe `ids` (sessions of `user_id` it owns); `None` when it
/// does not answer, or either side speaks a protocol version without the operation (the
/// caller lists them from the store).
pub async fn describe_on(
    node: &Node,
    owner: &str,
    user_id: Uuid,
    ids: &[Uuid],
) -> Option<Vec<serde_json::Value>> {
    let speaks = |version: u32| version >= DESCRIBE_SINCE;
    if !speaks(node.membership.protocol_version())
        || !node.membership.version_of(owner).is_some_and(speaks)
    {
        return None;
    }
    let op = SessionOp::Describe {
        user_id: user_id.to_string(),
        session_ids: ids.iter().map(Uuid::to_string).collect(),
    };
    let name = op_name(&op);
    let (answer, ran) = call_node(&node.membership, owner, op, None, OWNER_TIMEOUT).await;
    node.session_forwards
        .with_label_values(&[name, ran.as_str()])
        .inc();
    let answer = answer.filter(|a| a.status == 200)?;
    let mut body: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
    match body["items"].take() {
        serde_json::Value::Array(items) => Some(items),
        _ => None,
    }
}

/// Runs `op` on the owner of `key` when that is another node; `None` when it must run
/// here (this node owns it, or the owner did not answer).
pub async fn on_owner(
    node: &Node,
    key: Uuid,
    op: SessionOp,
    ip: Option<IpAddr>,
) -> Option<Response> {
    let name = op_name(&op);
    let (answer, ran) = call_owner(
        &node.membership,
        &key.to_string(),
        op,
        ip.map(|ip| ip.to_string()),
        OWNER_TIMEOUT,
    )
    .await;
    node.session_forwards
        .with_label_values(&[name, ran.as_str()])
        .inc();
    answer.map(relay)
}

/// The owner's answer as this node's response.
fn relay(answer: SessionAnswer) -> Response {
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

/// Runs `op` here, answering as the front door would.
async fn run_here(node: &Node, op: SessionOp, ip: Option<IpAddr>) -> Response {
    let bad_id = |field: &str| ApiError::invalid_field(field, "must be a UUID");
    let answered: Result<Response, ApiError> = match op {
        SessionOp::Refresh { refresh_token } => service::refresh(node, &refresh_token, ip)
            .await
            .map(|tokens| Json(tokens).into_response()),
        SessionOp::Logout { session_id, actor } => match Uuid::parse_str(&session_id) {
            Ok(id) => service::revoke_session(node, id, "logout", &actor, ip)
                .await
                .map(|revoked| Json(revoked).into_response()),
            Err(_) => Err(bad_id("session_id")),
        },
        SessionOp::VerifyMfa { challenge_id, code } => match Uuid::parse_str(&challenge_id) {
            Ok(id) => service::verify_mfa(node, id, &code, ip)
                .await
                .map(|tokens| Json(tokens).into_response()),
            Err(_) => Err(bad_id("challenge_id")),
        },
        SessionOp::Describe {
            user_id,
            session_ids,
        } => {
            let ids: Option<Vec<Uuid>> = session_ids
                .iter()
                .map(|id| Uuid::parse_str(id).ok())
                .collect();
            match (Uuid::parse_str(&user_id), ids) {
                (Ok(user_id), Some(ids)) => {
                    crate::http::routes::sessions::describe_owned(node, user_id, &ids)
                        .await
                        .map(|items| Json(serde_json::json!({ "items": items })).into_response())
                }
                (Err(_), _) => Err(bad_id("user_id")),
                (_, None) => Err(bad_id("session_ids")),
            }
        }
    };
    answered.unwrap_or_else(IntoResponse::into_response)
}

/// The response as an answer to send back to the forwarding node.
async fn answer(response: Response) -> SessionAnswer {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
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
pub fn handler(node: Arc<OnceLock<Weak<Node>>>) -> SessionHandler {
    Arc::new(move |call| {
        let node = node.get().and_then(Weak::upgrade);
        Box::pin(async move {
            let Some(node) = node else {
                let starting = ApiError::unavailable("starting", "the node is still starting");
                return answer(starting.into_response()).await;
            };
            let ip = call.ip.as_deref().and_then(|ip| ip.parse().ok());
            answer(run_here(&node, call.op, ip).await).await
        })
    })
}
