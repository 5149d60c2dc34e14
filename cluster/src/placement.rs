//! Rendezvous (highest random weight) hashing: which live member owns a key.
//!
//! Every node computes the same owner from the same member list, and when a member joins or
//! leaves only the keys it wins or held move.

use std::time::Duration;

use sark_actors::limiter::{RateDecision, RateTable};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::membership::MembershipView;
use crate::wire::{Frame, PeerMessage, RateQuery, SessionAnswer, SessionCall, SessionOp};

/// The member that owns `key` among `members` (node ids), or `None` when there are none.
pub fn owner<'a>(key: &str, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    members.into_iter().max_by_key(|member| weight(member, key))
}

fn weight(member: &str, key: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(member.as_bytes());
    hasher.update([0]);
    hasher.update(key.as_bytes());
    hasher.finalize().into()
}

/// Where an operation on an owned key (a rate check, a session operation) ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Here: this node owns the key.
    Here,
    /// On the owner, over the cluster.
    Owner,
    /// Here, because the owner did not answer in time (it is hung or going down).
    OwnerUnreachable,
}

impl Counted {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Counted::Here => "here",
            Counted::Owner => "owner",
            Counted::OwnerUnreachable => "owner_unreachable",
        }
    }
}

/// Runs `op` on the owner of `key` among the live members, over the cluster. `None` (with
/// where it must run) when this node owns the key, or when the owner does not answer
/// within `timeout`: the caller then runs it here, from the store.
pub async fn call_owner(
    view: &MembershipView,
    key: &str,
    op: SessionOp,
    ip: Option<String>,
    timeout: Duration,
) -> (Option<SessionAnswer>, Counted) {
    let members = view.live_members();
    let owner = owner(key, members.iter().map(String::as_str)).unwrap_or(view.node_id());
    if owner == view.node_id() {
        return (None, Counted::Here);
    }
    call_node(view, owner, op, ip, timeout).await
}

/// Runs `op` on member `owner` over the cluster; `None` when it does not answer within
/// `timeout` (or refuses the call: an older version that does not know it).
pub async fn call_node(
    view: &MembershipView,
    owner: &str,
    op: SessionOp,
    ip: Option<String>,
    timeout: Duration,
) -> (Option<SessionAnswer>, Counted) {
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    for peer in view.peers(owner) {
        let call = Frame::Ok(SessionCall {
            version: view.protocol_version(),
            op: op.clone(),
            ip: ip.clone(),
        });
        match ractor::call_t!(peer, PeerMessage::Session, timeout_ms, call) {
            Ok(Frame::Ok(answer)) => return (Some(answer), Counted::Owner),
            Ok(Frame::Malformed(reason)) => {
                warn!(owner, reason, "the owner node refused a session call");
            }
            Err(err) => warn!(owner, error = %err, "the owner node did not answer a session call"),
        }
    }
    (None, Counted::OwnerUnreachable)
}

/// Counts a request against `key` on the key's owner: in `table` when this node owns it,
/// otherwise over the cluster. When the owner does not answer within `timeout` (it is going
/// down), the request is counted here.
pub async fn owner_rate_check(
    view: &MembershipView,
    table: &RateTable,
    key: &str,
    limit: u32,
    timeout: Duration,
) -> (RateDecision, Counted) {
    let members = view.live_members();
    let owner = owner(key, members.iter().map(String::as_str)).unwrap_or(view.node_id());
    let here = |counted| {
        (
            table.check(key, limit, tokio::time::Instant::now()),
            counted,
        )
    };
    if owner == view.node_id() {
        return here(Counted::Here);
    }
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    for peer in view.peers(owner) {
        let query = Frame::Ok(RateQuery {
            version: view.protocol_version(),
            key: key.to_owned(),
            limit,
        });
        match ractor::call_t!(peer, PeerMessage::RateCheck, timeout_ms, query) {
            Ok(Frame::Ok(decision)) => return (decision, Counted::Owner),
            Ok(Frame::Malformed(reason)) => {
                warn!(owner, reason, "the owner node refused a rate check");
            }
            Err(err) => warn!(owner, error = %err, "the owner node did not answer a rate check"),
        }
    }
    here(Counted::OwnerUnreachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_and_only_the_leavers_keys_move() {
        let three = ["a", "b", "c"];
        let keys: Vec<String> = (0..3000).map(|i| format!("user:{i}")).collect();
        let before: Vec<&str> = keys.iter().map(|k| owner(k, three).unwrap()).collect();
        for member in three {
            let share = before.iter().filter(|o| **o == member).count();
            assert!(
                (800..1200).contains(&share),
                "{member} owns {share} of 3000"
            );
        }
        let after: Vec<&str> = keys.iter().map(|k| owner(k, ["a", "c"]).unwrap()).collect();
        for (was, is) in before.iter().zip(&after) {
            if *was != "b" {
                assert_eq!(was, is, "a key not held by the leaver moved");
            }
        }
        assert_eq!(owner("k", std::iter::empty::<&str>()), None);
    }
}
