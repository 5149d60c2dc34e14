//! Session placement: operations that need a session's actor (refresh, logout, MFA verify,
//! describing sessions for a listing) run on the node that owns the session, the winner of rendezvous hashing of its id over
//! the live members. Any node may receive the request; it forwards it over the cluster and
//! relays the owner's answer (its result, or its refusal as a domain error). When the owner does not answer in time (it is dying) the
//! operation runs here, from the store, which stays the source of truth: a refresh token
//! still rotates exactly once.

use std::net::IpAddr;

use prometheus::{IntCounterVec, Opts, Registry};
use sark_cluster::placement::call_owner;
use sark_cluster::wire::{Refusal, SessionAnswer, SessionOp};
use serde_json::{Value, json};
use uuid::Uuid;

use super::service;
use super::sessions::{self, OWNER_TIMEOUT};
use crate::core::Core;
use crate::core::fenced::NODE_LEAVING;
use crate::error::Error;

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

/// Runs `op` on the owner of `key`: forwarded when that is another node that answers,
/// here otherwise (this node owns it, or the owner did not answer in time).
pub async fn run(
    node: &Core,
    key: Uuid,
    op: SessionOp,
    ip: Option<IpAddr>,
) -> Result<Value, Error> {
    let name = op_name(&op);
    let (answer, ran) = call_owner(
        &node.membership,
        &key.to_string(),
        op.clone(),
        ip.map(|ip| ip.to_string()),
        OWNER_TIMEOUT,
    )
    .await;
    let (outcome, ran) = relay(answer, ran.as_str());
    node.session_forwards.with_label_values(&[name, ran]).inc();
    match outcome {
        Some(outcome) => outcome.map_err(Error::from),
        None => run_here(node, op, ip).await,
    }
}

/// What to make of the owner's answer: its outcome to relay, or `None` to run the
/// operation here; with where it ran (`ran`, unless the owner was leaving).
fn relay(
    answer: Option<SessionAnswer>,
    ran: &'static str,
) -> (Option<Result<Value, Refusal>>, &'static str) {
    match answer.map(SessionAnswer::into_result) {
        // The owner left between this node's placement and its fence, and wrote nothing:
        // this node, still a member, makes the change instead.
        Some(Err(refusal)) if refusal.code == NODE_LEAVING => (None, "owner_leaving"),
        outcome => (outcome, ran),
    }
}

/// Runs `op` here, for another node that forwarded it: the answer as a JSON value.
pub async fn run_here(node: &Core, op: SessionOp, ip: Option<IpAddr>) -> Result<Value, Error> {
    let bad_id = |field: &str| Error::invalid_field(field, "must be a UUID");
    let to_json = |value: Result<Value, serde_json::Error>| {
        value.map_err(|e| Error::internal(format!("answer not serialisable: {e}")))
    };
    match op {
        SessionOp::Refresh { refresh_token } => {
            let tokens = service::refresh(node, &refresh_token, ip).await?;
            to_json(serde_json::to_value(tokens))
        }
        SessionOp::Logout { session_id, actor } => {
            let id = Uuid::parse_str(&session_id).map_err(|_| bad_id("session_id"))?;
            let revoked = service::revoke_session(node, id, "logout", &actor, ip).await?;
            to_json(serde_json::to_value(revoked))
        }
        SessionOp::VerifyMfa { challenge_id, code } => {
            let id = Uuid::parse_str(&challenge_id).map_err(|_| bad_id("challenge_id"))?;
            let tokens = service::verify_mfa(node, id, &code, ip).await?;
            to_json(serde_json::to_value(tokens))
        }
        SessionOp::Describe {
            user_id,
            session_ids,
        } => {
            let user_id = Uuid::parse_str(&user_id).map_err(|_| bad_id("user_id"))?;
            let ids = session_ids
                .iter()
                .map(|id| Uuid::parse_str(id).map_err(|_| bad_id("session_ids")))
                .collect::<Result<Vec<Uuid>, Error>>()?;
            let items = sessions::describe_owned(node, user_id, &ids).await?;
            Ok(json!({ "items": items }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use sark_cluster::wire::SessionOutcome;

    fn refused(code: &'static str) -> SessionAnswer {
        SessionAnswer::outcome(SessionOutcome::Refused(Refusal::from(&Error::new(
            ErrorKind::Unavailable,
            code,
            "refused",
        ))))
    }

    #[test]
    fn a_leaving_owners_refusal_runs_here_and_other_refusals_are_relayed() {
        let (outcome, ran) = relay(Some(refused(NODE_LEAVING)), "owner");
        assert!(outcome.is_none(), "run here");
        assert_eq!(ran, "owner_leaving");
        for code in [
            "cluster_unavailable",
            "token_revoked",
            "database_unavailable",
        ] {
            let (outcome, ran) = relay(Some(refused(code)), "owner");
            assert_eq!(outcome.unwrap().unwrap_err().code, code);
            assert_eq!(ran, "owner");
        }
        let (outcome, ran) = relay(None, "owner_unreachable");
        assert!(outcome.is_none());
        assert_eq!(ran, "owner_unreachable");
    }
}
