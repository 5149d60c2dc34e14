//! The audit log: `GET /api/v1/audit` and `GET /api/v1/audit/verify`.

use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use sark_actors::audit::verify_chains;

use crate::auth::guard::authorize;
use crate::auth::principal::Principal;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::validate::{self, ClientAddr};
use crate::store::{AuditQuery, ChainedEvent};

/// `GET /api/v1/audit` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFilters {
    event_type: Option<String>,
    actor: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn event_json(e: &ChainedEvent) -> Value {
    json!({
        "id": e.event.id,
        "chain": e.chain,
        "seq": e.seq,
        "timestamp": e.event.timestamp,
        "event_type": e.event.event_type,
        "actor": e.event.actor,
        "ip": e.event.ip,
        "resource": e.event.resource,
        "outcome": e.event.outcome,
        "details": e.event.details,
        "node_id": e.event.node_id,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    })
}

fn time(field: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::invalid_field(field, "must be an RFC 3339 time"))
        })
        .transpose()
}

/// A cursor is the last event's `(timestamp, id)`.
fn cursor(value: Option<&str>) -> Result<Option<(DateTime<Utc>, Uuid)>, ApiError> {
    let Some(decoded) = validate::decode_cursor(value)? else {
        return Ok(None);
    };
    let invalid = || ApiError::invalid_field("cursor", "is not a cursor this API issued");
    let (time, id) = decoded.split_once('|').ok_or_else(invalid)?;
    let time = DateTime::parse_from_rfc3339(time).map_err(|_| invalid())?;
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    Ok(Some((time.with_timezone(&Utc), id)))
}

fn optional_text(
    field: &str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    value.map(|v| validate::text(field, &v, max)).transpose()
}

/// `GET /api/v1/audit`: newest first, filtered by type, actor and time.
pub async fn get_audit(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Query(filters): Query<AuditFilters>,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "audit", ip).await?;
    let limit = validate::limit(filters.limit)?;
    let query = AuditQuery {
        event_type: optional_text("event_type", filters.event_type, 64)?,
        actor: optional_text("actor", filters.actor, 256)?,
        since: time("since", filters.since.as_deref())?,
        until: time("until", filters.until.as_deref())?,
        before: cursor(filters.cursor.as_deref())?,
        limit: limit + 1,
    };
    let events = node.store.list_audit(&query).await?;
    let (events, next_cursor) = validate::keyset_page(events, limit, |e| {
        let micros = e
            .event
            .timestamp
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        format!("{micros}|{}", e.event.id)
    });
    let items: Vec<Value> = events.iter().map(event_json).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// `GET /api/v1/audit/verify`: recomputes every retained chain.
pub async fn get_audit_verify(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "audit", ip).await?;
    let keys = node.keys.keys().await.map_err(crate::error::Error::from)?;
    let verification = verify_chains(node.store.as_ref(), &keys.audit_chain).await?;
    Ok(Json(json!(verification)))
}

/// `GET /api/v1/siem/status`: each configured sink's forwarder state and queue depth.
/// `queued` is null while the database cannot be asked.
pub async fn get_siem_status(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    let node = &state.node;
    authorize(node, &principal, "read", "audit", ip).await?;
    let mut sinks = Vec::new();
    for status in node.siem.statuses() {
        let queued = node
            .store
            .outbox_stats(&status.name)
            .await
            .ok()
            .map(|stats| stats.queued);
        sinks.push(json!({
            "name": status.name,
            "kind": status.kind,
            "state": status.state,
            "queued": queued,
            "delivered_total": status.delivered_total,
            "failed_attempts_total": status.failed_attempts_total,
            "dead_lettered_total": status.dead_lettered_total,
            "last_error": status.last_error,
            "last_delivery_at": status.last_delivery_at,
        }));
    }
    Ok(Json(json!({ "sinks": sinks })))
}
