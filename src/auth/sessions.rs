//! Listing sessions: each live session as the member that owns its actor describes it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::core::Core;
use sark_cluster::placement::call_node;
use sark_cluster::wire::{DESCRIBE_SINCE, SessionOp};

use crate::error::Error;
use crate::store::SessionRecord;

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

/// Whether `s` is live at `now`: not revoked, not expired, used within the idle timeout.
pub fn live(node: &Core, s: &SessionRecord, now: chrono::DateTime<chrono::Utc>) -> bool {
    let idle = chrono::Duration::seconds(crate::core::seconds(node.config.session.idle_seconds));
    s.live(idle, now)
}

/// The live sessions of `user_id`, as stored.
pub async fn live_sessions(node: &Core, user_id: Uuid) -> Result<Vec<SessionRecord>, Error> {
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
pub async fn describe_by_owner(
    node: &Core,
    user_id: Uuid,
    sessions: &[SessionRecord],
) -> Vec<Value> {
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
            describe_on(node, owner, user_id, ids).await
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
pub async fn describe_owned(node: &Core, user_id: Uuid, ids: &[Uuid]) -> Result<Vec<Value>, Error> {
    let stored = live_sessions(node, user_id).await?;
    Ok(describe(node, &stored, ids).await)
}

/// Those of `ids` live in `stored` (an actor does not hear of revocations made in the
/// store alone), as their running actors hold them, or as stored; still live.
async fn describe(node: &Core, stored: &[SessionRecord], ids: &[Uuid]) -> Vec<Value> {
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

/// How long a session's owner gets to answer before the operation runs here.
pub const OWNER_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks member `owner` to describe `ids` (sessions of `user_id` it owns); `None` when it
/// does not answer, or either side speaks a protocol version without the operation (the
/// caller lists them from the store).
pub async fn describe_on(
    node: &Core,
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
    let (answer, ran) = call_node(&node.membership, owner, op, None, OWNER_TIMEOUT).await;
    node.session_forwards
        .with_label_values(&["list", ran.as_str()])
        .inc();
    let mut body = answer?.into_result().ok()?;
    match body["items"].take() {
        serde_json::Value::Array(items) => Some(items),
        _ => None,
    }
}
