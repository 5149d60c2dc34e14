//! The cluster as this node sees it: `GET /api/v1/cluster` and `GET /api/v1/cluster/actors`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::auth::guard::authorize;
use crate::auth::principal::Principal;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::validate::ClientAddr;

/// The node, once the caller may read the cluster.
async fn reader<'a>(
    state: &'a AppState,
    ip: Option<std::net::IpAddr>,
    principal: &Principal,
) -> Result<&'a crate::core::Core, ApiError> {
    authorize(&state.node, principal, "read", "cluster", ip).await?;
    Ok(&state.node)
}

/// `GET /api/v1/cluster`: every member this node knows (itself first) with its status, and
/// the sessions and policy versions it last reported.
pub async fn get_cluster(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    let node = reader(&state, ip, &principal).await?;
    Ok(Json(json!({
        "node_id": node.node_id,
        "members": node.membership.members(),
    })))
}

/// `GET /api/v1/cluster/actors`: this node's supervision tree.
pub async fn get_actors(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    principal: Principal,
) -> Result<Json<Value>, ApiError> {
    let node = reader(&state, ip, &principal).await?;
    Ok(Json(json!({
        "node_id": node.node_id,
        "actors": node.actor_tree().await,
    })))
}
