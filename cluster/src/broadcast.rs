//! Fenced, acknowledged broadcasts: a notice reaches every member before the write that
//! caused it is acknowledged to its caller.
//!
//! The sender calls every remote Peer actor with the notice at once (and, when fewer than a
//! majority applied a fenced notice, asks those that did not once more). A member that
//! applies it answers; for a member that does not answer in time (hung, cut off, restarting) the
//! broadcast waits until that member's lease has certainly expired: a member without a
//! fresh lease checks the store instead of its memory, so from then on it cannot serve what
//! the notice revoked. The wait runs from the last time the sender, or any member that
//! answered, heard from it. Broadcasts are numbered per sender and every heartbeat carries
//! the numbers its sender has applied, so a member that the sender could not reach but that
//! still hears from others learns it missed one within that wait, and checks the store
//! until it has caught up.
//!
//! That holds only if the members that applied the notice, with the sender, are a majority:
//! a member renews its lease only through a majority, which then includes one of them. A
//! sender on the minority side of a partition (its own lease not yet lapsed) cannot get
//! that, and the members of the majority side would keep their leases without ever hearing
//! of the notice; such a broadcast is reported unconfirmed and not waited out.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use ractor::ActorRef;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::warn;

use crate::membership::MembershipView;
use crate::wire::{Announcement, Frame, Notice, PEER_GROUP, PeerMessage};

/// How a broadcast went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Propagation {
    /// Whether the sender and the members that applied the notice make a majority of the
    /// members the sender knows, so every other member learns of it before it can renew its
    /// lease (fenced broadcasts only; an unfenced one is always confirmed).
    pub confirmed: bool,
    /// From the first send to the last answer, or to the end of the last wait.
    pub elapsed: Duration,
    /// Members that did not answer and whose lease was waited out.
    pub waited_out: Vec<String>,
    /// Members that applied the notice.
    pub acknowledged_by: Vec<String>,
}

impl Propagation {
    /// A broadcast that had nothing to send.
    pub fn nothing_sent() -> Self {
        Self {
            confirmed: true,
            elapsed: Duration::ZERO,
            waited_out: Vec::new(),
            acknowledged_by: Vec::new(),
        }
    }
}

/// Sends `notice` to every member and returns once each applied it or was fenced.
///
/// `answer_within` bounds the wait for answers; `fence_lease` is the members' lease, to wait
/// out for those that did not answer (`None`: an announcement that needs no fencing).
pub async fn broadcast(
    view: &MembershipView,
    notice: Notice,
    answer_within: Duration,
    fence_lease: Option<Duration>,
) -> Propagation {
    let started = Instant::now();
    let announcement = Announcement {
        version: view.protocol_version(),
        from: view.node_id().to_owned(),
        seq: view.next_broadcast(),
        notice,
    };
    let timeout_ms = u64::try_from(answer_within.as_millis()).unwrap_or(u64::MAX);
    let mut pending: Vec<ActorRef<PeerMessage>> = ractor::pg::get_members(&PEER_GROUP.to_owned())
        .into_iter()
        .filter(|cell| !cell.get_id().is_local())
        .map(ActorRef::from)
        .collect();
    let mut answered = HashSet::new();
    let mut heard_elsewhere: BTreeMap<String, Instant> = BTreeMap::new();
    // A fenced broadcast short of a majority asks the members that did not apply it once
    // more: one that was merely slow (a loaded machine, a member still starting) then
    // counts, and only a member that cannot answer twice leaves the change unconfirmed.
    let rounds = if fence_lease.is_some() { 2 } else { 1 };
    for _ in 0..rounds {
        let mut calls = JoinSet::new();
        for peer in std::mem::take(&mut pending) {
            let frame = Frame::Ok(announcement.clone());
            calls.spawn(async move {
                let answer = ractor::call_t!(peer, PeerMessage::Announce, timeout_ms, frame);
                (peer, answer)
            });
        }
        while let Some(result) = calls.join_next().await {
            let Ok((peer, answer)) = result else {
                continue;
            };
            let Ok(Frame::Ok(ack)) = answer else {
                pending.push(peer);
                continue;
            };
            // Measured by the member before it answered, so this errs towards later.
            let received = Instant::now();
            for (member, ago) in ack.heard_ms_ago {
                let heard = received
                    .checked_sub(Duration::from_millis(ago))
                    .unwrap_or(received);
                let latest = heard_elsewhere.entry(member).or_insert(heard);
                *latest = (*latest).max(heard);
            }
            if ack.applied {
                answered.insert(ack.node_id);
            } else {
                pending.push(peer);
            }
        }
        if pending.is_empty() || answered.len() + 1 >= view.majority() {
            break;
        }
    }
    let mut waited_out = Vec::new();
    let mut until = Instant::now();
    let mut acknowledged_by: Vec<String> = answered.iter().cloned().collect();
    acknowledged_by.sort();
    let Some(lease) = fence_lease else {
        return Propagation {
            confirmed: true,
            elapsed: started.elapsed(),
            waited_out,
            acknowledged_by,
        };
    };
    if answered.len() + 1 < view.majority() {
        warn!(
            acknowledged_by = ?acknowledged_by,
            majority = view.majority(),
            "a broadcast was not applied by a majority of the cluster; it is not confirmed"
        );
        return Propagation {
            confirmed: false,
            elapsed: started.elapsed(),
            waited_out,
            acknowledged_by,
        };
    }
    for (member, expired_at) in
        view.fence_deadlines(&answered, &heard_elsewhere, lease, Instant::now())
    {
        warn!(
            peer = member,
            "a member did not acknowledge a broadcast; waiting out its lease"
        );
        until = until.max(expired_at);
        waited_out.push(member);
    }
    tokio::time::sleep_until(until).await;
    Propagation {
        confirmed: true,
        elapsed: started.elapsed(),
        waited_out,
        acknowledged_by,
    }
}
