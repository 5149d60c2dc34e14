//! `/api/v1/sessions`: one's own sessions (admins: anyone's).

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use std::collections::{BTreeMap, HashMap};

use super::auth::session_of;
use crate::auth::forward;
use crate::auth::guard::authorize;
use crate::auth::principal::Principal;
use crate::auth::service::{self, Revoked};
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::validate::{self, ClientAddr};
use crate::node::Node;
use crate::store::SessionRecord;

/// `GET /api/v1/sessions` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    user: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Sessions described in one call to their owner (keeps the answer within a cluster
/// message).
const DESCRIBE_BATCH: usize = 100;

/// A session as listed; `owner` is the member that owns its actor.
fn session_json(s: &SessionRecord, owner: &str) -> Value {
    json!({
        "session_id": s.id,
        "user_id": s.user_id,
        "created_at": s.created_at,
        "last_seen_at": s.last_seen_at,
        "expires_at": s.expires_at,
        "auth_method": s.auth_method,
        "ip": s.ip,
        "node_id": owner,
    })
}

/// `GET /api/v1/sessions`: live sessions of the caller, or of `?user=` for admins.
pub async fn get_sessions(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Query(query): Query<SessionsQuery>,
) -> Result<Json<Value>, ApiError> {
    session_of(&principal)?;
    let node = &state.node;
    let user_id = match query.user {
        Some(name) if name != principal.username => {
            let name = validate::account_name("user", &name)?;
            authorize(node, &principal, "read", "users", ip).await?;
            node.store
                .user_by_username(&name)
                .await?
                .ok_or_else(|| ApiError::not_found("no such user"))?
                .id
        }
        _ => principal.user_id,
    };
    let limit = validate::limit(query.limit)?;
    let after = validate::decode_cursor(query.cursor.as_deref())?;
    let sessions = live_sessions(node, user_id).await?;
    let (sessions, next_cursor) = validate::page(sessions, |s| s.id.to_string(), limit, after);
    let items = describe_by_owner(node, user_id, &sessions).await;
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })))
}

/// Whether `s` is live at `now`: not revoked, not expired, used within the idle timeout.
fn live(node: &Node, s: &SessionRecord, now: chrono::DateTime<chrono::Utc>) -> bool {
    let idle = chrono::Duration::seconds(crate::node::seconds(node.config.session.idle_seconds));
    s.revoked_at.is_none() && s.expires_at > now && s.last_seen_at + idle > now
}

/// The live sessions of `user_id`, as stored.
async fn live_sessions(node: &Node, user_id: Uuid) -> Result<Vec<SessionRecord>, ApiError> {
    let now = node.clock.now();
    Ok(node
        .store
        .user_sessions(user_id, now)
        .await?
        .into_iter()
        .filter(|s| live(node, s, now))
        .collect())
}

/// Each of `sessions` (of one user) as the owner of its actor describes it: this node's
/// own here, the others' by their owners over the cluster, all owners at once. A session
/// whose owner does not answer is listed from the store row, under the owner it hashes to.
async fn describe_by_owner(node: &Node, user_id: Uuid, sessions: &[SessionRecord]) -> Vec<Value> {
    let members = node.membership.live_members();
    let owner_of = |s: &SessionRecord| {
        sark_cluster::placement::owner(&s.id.to_string(), members.iter().map(String::as_str))
            .unwrap_or(&node.node_id)
            .to_owned()
    };
    let mut by_owner: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for session in sessions {
        by_owner
            .entry(owner_of(session))
            .or_default()
            .push(session.id);
    }
    let batches: Vec<(&String, &[Uuid])> = by_owner
        .iter()
        .flat_map(|(owner, ids)| ids.chunks(DESCRIBE_BATCH).map(move |ids| (owner, ids)))
        .collect();
    let calls = batches.iter().map(|&(owner, ids)| async move {
        if *owner == node.node_id {
            Some(describe(node, sessions, ids).await)
        } else {
            forward::describe_on(node, owner, user_id, ids).await
        }
    });
    // An owner that answered described every live session it was asked about: one it left
    // out has ended. Only an owner that did not answer is stood in for by the store rows.
    let mut described: HashMap<Uuid, Option<Value>> = HashMap::new();
    for ((_, ids), items) in batches.iter().zip(futures::future::join_all(calls).await) {
        let Some(items) = items else { continue };
        for id in *ids {
            described.insert(*id, None);
        }
        for item in items {
            if let Some(id) = item["session_id"]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok())
            {
                described.insert(id, Some(item));
            }
        }
    }
    sessions
        .iter()
        .filter_map(|s| match described.remove(&s.id) {
            Some(answer) => answer,
            None => Some(session_json(s, &owner_of(s))),
        })
        .collect()
}

/// The live sessions among `ids` (of one user) that this node owns, as their running
/// actors hold them (or as stored, for those whose actor is passivated).
pub async fn describe_owned(
    node: &Node,
    user_id: Uuid,
    ids: &[Uuid],
) -> Result<Vec<Value>, ApiError> {
    let stored = live_sessions(node, user_id).await?;
    Ok(describe(node, &stored, ids).await)
}

/// Those of `ids` live in `stored` (an actor does not hear of revocations made in the
/// store alone), as their running actors hold them, or as stored; still live.
async fn describe(node: &Node, stored: &[SessionRecord], ids: &[Uuid]) -> Vec<Value> {
    let now = node.clock.now();
    let running = node.sessions.running_states(ids).await;
    ids.iter()
        .filter_map(|id| {
            let row = stored.iter().find(|s| s.id == *id)?;
            Some(running.get(id).unwrap_or(row))
        })
        .filter(|s| live(node, s, now))
        .map(|s| session_json(s, &node.node_id))
        .collect()
}

/// `DELETE /api/v1/sessions/{id}`: revokes one of one's sessions (admins: anyone's).
pub async fn delete_session(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    session_of(&principal)?;
    let node = &state.node;
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::invalid_field("id", "must be a session id (UUID)"))?;
    let Some(session) = node.store.session(id).await? else {
        return Err(ApiError::not_found("no such session"));
    };
    if session.user_id != principal.user_id {
        // Someone else's session: an admin action, and otherwise indistinguishable from
        // a session that does not exist.
        if authorize(node, &principal, "write", "users", ip)
            .await
            .is_err()
        {
            return Err(ApiError::not_found("no such session"));
        }
    }
    Ok(Json(
        service::revoke_session(node, id, "revoked", &principal.username, ip).await?,
    ))
}

/// `DELETE /api/v1/sessions`: signs out everywhere (every session of the caller).
pub async fn delete_sessions(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
) -> Result<Json<Revoked>, ApiError> {
    session_of(&principal)?;
    let node = &state.node;
    let revoked = service::revoke_user_credentials(
        node,
        principal.user_id,
        None,
        false,
        "signed_out_everywhere",
    )
    .await?;
    let mut event = node.audit.event("session_revoked", "success");
    event.actor = Some(principal.username.clone());
    event.ip = ip.map(|ip| ip.to_string());
    event.resource = Some(format!("user:{}", principal.username));
    event.details = json!({"reason": "signed_out_everywhere", "confirmed": revoked.confirmed});
    node.record_audit(event).await;
    if !revoked.confirmed {
        return Err(crate::node::unconfirmed());
    }
    Ok(Json(revoked))
}
