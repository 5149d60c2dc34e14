//! Health and metrics: `/health`, `/health/ready`, `/health/detailed`, `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, TextEncoder};
use serde_json::{Value, json};

use crate::http::AppState;
use crate::http::errors::ApiError;

/// How long a health check waits for a dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health`: the process is up.
pub async fn get_health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "version": env!("CARGO_PKG_VERSION"),
        "hostname": state.node.hostname,
        "node_id": state.node.node_id,
    }))
}

async fn database_up(state: &AppState) -> bool {
    state.node.store_initialized()
        && matches!(
            tokio::time::timeout(CHECK_TIMEOUT, state.node.store.ping()).await,
            Ok(Ok(()))
        )
}

/// Whether this node holds a valid cluster lease (a single node always does): it is not
/// cut off from the majority. Catching up with the store, or learning of a member that
/// just joined, takes it off its fast path (it then checks the store) but not out of
/// rotation: it serves correctly meanwhile.
fn lease_valid(state: &AppState) -> bool {
    state
        .node
        .membership
        .lease_valid(tokio::time::Instant::now())
}

/// `GET /health/ready`: 200 when this node can serve; 503 naming what fails.
pub async fn get_ready(State(state): State<AppState>) -> Response {
    let mut failing = Vec::new();
    if !database_up(&state).await {
        failing.push("database");
    }
    if !state.node.policies_loaded() {
        failing.push("policies");
    }
    if !state.node.revocations.loaded() || state.node.tokens().is_none() {
        failing.push("revocations");
    }
    if !lease_valid(&state) {
        failing.push("cluster");
    }
    if state.node.draining() {
        failing.push("shutting_down");
    }
    if failing.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unready", "failing": failing})),
        )
            .into_response()
    }
}

/// How long a `/health/detailed` answer is reused: the endpoint is unauthenticated and
/// costs a ping, two counts and a Redis round trip.
const DETAILED_TTL: Duration = Duration::from_secs(1);

/// `GET /health/detailed`: every dependency and a few figures.
pub async fn get_detailed(State(state): State<AppState>) -> Json<Value> {
    let mut cached = state.detailed.lock().await;
    if let Some((at, value)) = cached.as_ref()
        && at.elapsed() < DETAILED_TTL
    {
        return Json(value.clone());
    }
    let value = detailed(&state).await;
    *cached = Some((tokio::time::Instant::now(), value.clone()));
    Json(value)
}

async fn detailed(state: &AppState) -> Value {
    let node = &state.node;
    let database = database_up(state).await;
    let redis = match &node.redis {
        None => "DISABLED",
        Some(redis) => match redis.ping().await {
            Ok(()) => "UP",
            Err(_) => "DOWN",
        },
    };
    let opa = node.policies_loaded();
    let cluster = lease_valid(state);
    let mut services = BTreeMap::new();
    services.insert("database".to_owned(), if database { "UP" } else { "DOWN" });
    services.insert("redis".to_owned(), redis);
    services.insert("opa".to_owned(), if opa { "UP" } else { "DOWN" });
    services.insert(
        "cluster".to_owned(),
        if cluster { "UP" } else { "DEGRADED" },
    );
    // A sink that fails only delays forwarding (the outbox keeps every event).
    let mut sinks_up = true;
    for sink in node.siem.statuses() {
        let up = match sink.state.as_str() {
            "healthy" => "UP",
            "retrying" => "DEGRADED",
            _ => "DOWN",
        };
        sinks_up &= up == "UP";
        services.insert(format!("siem_{}", sink.name), up);
    }
    // A provider that is down fails only its own logins.
    let providers = tokio::time::timeout(CHECK_TIMEOUT, state.providers.health())
        .await
        .unwrap_or_else(|_| {
            state
                .providers
                .configured()
                .into_iter()
                .map(|p| (p, false))
                .collect()
        });
    let providers_up = providers.iter().all(|(_, up)| *up);
    for (provider, up) in providers {
        services.insert(provider.to_owned(), if up { "UP" } else { "DOWN" });
    }
    let status = if !database {
        "unhealthy"
    } else if redis == "DOWN" || !opa || !cluster || !sinks_up || !providers_up {
        "degraded"
    } else {
        "healthy"
    };
    let now = node.clock.now();
    let (active_sessions, total_servers) = if database {
        let sessions =
            tokio::time::timeout(CHECK_TIMEOUT, node.store.count_active_sessions(now)).await;
        let servers = tokio::time::timeout(CHECK_TIMEOUT, node.store.count_servers()).await;
        (
            sessions.ok().and_then(Result::ok),
            servers.ok().and_then(Result::ok),
        )
    } else {
        (None, None)
    };
    json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "hostname": node.hostname,
        "node_id": node.node_id,
        "services": services,
        "storage": {
            "backend": node.store.backend(),
            "time_series": node.store.time_series(),
        },
        "policy_versions": node.policies.versions(),
        // Active versions that could not be loaded (the previous one, if any, still serves).
        "policy_load_failures": node.policies.failures(),
        "cluster": {
            "lease": if cluster { "valid" } else { "lapsed" },
            // Whether tokens and policies are answered from memory, or checked against the
            // store (after a membership change, until the node has caught up).
            "local_answers": node.lease_fresh(),
            // Whether a revocation or policy write can be made to reach every member now.
            "writes": node.membership.fencing(tokio::time::Instant::now()),
            "voters": node.membership.voters(),
            // Members sessions are placed on, this node included (up or suspect, started).
            "placement_members": node.membership.live_members().len(),
            "majority": node.membership.majority(),
        },
        "metrics": {
            "uptime_seconds": node.started_at.elapsed().as_secs(),
            "active_sessions": active_sessions,
            "total_servers": total_servers,
            "cluster_members": node.membership.members_up(),
        },
    })
}

/// `GET /metrics`: the Prometheus text format.
pub async fn get_metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    encoder
        .encode(&state.node.registry.gather(), &mut body)
        .map_err(|e| ApiError::internal(format!("metrics encoding failed: {e}")))?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}
