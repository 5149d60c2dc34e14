//! The voting membership, kept in the store: who counts toward the cluster's majority.
//!
//! Only nodes of a cluster (with seeds) take part. A node enters once it holds a lease,
//! then records itself every second while it runs (`last_seen_at`), and takes itself out
//! when it leaves gracefully while holding a lease. Until it has read the membership, a
//! node holds no lease. A member that died (kill -9, a lost machine, an unclean scale-down)
//! stays in, and keeps counting, until a node that holds a valid lease sees it down for
//! longer than `cluster.forget_after_seconds` and removes it (`member_forgotten`). A node
//! without a lease never forgets anyone: the lone survivor of a split would otherwise make
//! itself the majority. `sark admin forget-member` is the break-glass for that case.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use tracing::{info, warn};

use crate::core::{Core, seconds};

/// How often a node records itself and reads the membership.
pub(crate) const RECORD_EVERY: Duration = Duration::from_secs(1);

/// Records this node, reads the voting membership into the view and forgets members gone
/// for good, every [`RECORD_EVERY`] (more often until the first read), until the node
/// stops or leaves.
pub(super) async fn run(node: Weak<Core>) {
    loop {
        let Some(node) = node.upgrade() else { return };
        if node.store_initialized() && !sync(&node).await {
            return;
        }
        // Until the membership was read the node holds no lease: look again soon.
        let pause = if node.membership.has_voters() {
            RECORD_EVERY
        } else {
            FIRST_READ_EVERY
        };
        drop(node);
        tokio::time::sleep(pause).await;
    }
}

/// How often the membership is read until it was read once.
const FIRST_READ_EVERY: Duration = Duration::from_millis(100);

/// One round; `false` once the node has left (nothing more to record).
async fn sync(node: &Core) -> bool {
    let members = match node.store.cluster_members().await {
        Ok(members) => members,
        Err(err) => {
            warn!(error = %err, "could not read the voting membership");
            return !node.left.load(std::sync::atomic::Ordering::Acquire);
        }
    };
    // A member keeps its entry fresh; a node that joins enters once it holds a lease, so
    // that members do not count it toward their majority while it cannot confirm a
    // broadcast yet.
    let member = members.iter().any(|m| m.node_id == node.node_id);
    let mut recorded = false;
    {
        let _voting = node.voting.lock().await;
        if node.left.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        if member || node.membership.lease_valid(tokio::time::Instant::now()) {
            let addr = node
                .config
                .cluster
                .listen_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            match node
                .store
                .record_member(&node.node_id, &addr, node.clock.now())
                .await
            {
                Ok(()) => recorded = true,
                Err(err) => {
                    warn!(error = %err, "could not record this node in the voting membership")
                }
            }
        }
    }
    // Only a lease counted against a membership read before this round may forget: the
    // first read must reach the lease before the lease can shrink the membership.
    let counted_from_store = node.membership.has_voters();
    let now = node.clock.now();
    let cutoff = now - chrono::Duration::seconds(seconds(node.config.cluster.forget_after_seconds));
    let mut voters = BTreeSet::new();
    for member in members {
        let gone = member.node_id != node.node_id
            && member.last_seen_at < cutoff
            && !node.membership.is_live(&member.node_id);
        // Checked for each member: the lease may lapse while this round runs.
        if gone && counted_from_store && node.membership.lease_valid(tokio::time::Instant::now()) {
            match node
                .store
                .remove_member(&member.node_id, Some(cutoff))
                .await
            {
                Ok(true) => {
                    forgotten(node, &member).await;
                    continue;
                }
                Ok(false) => {}
                Err(err) => warn!(error = %err, peer = member.node_id, "could not forget a member"),
            }
        }
        voters.insert(member.node_id);
    }
    if recorded {
        voters.insert(node.node_id.clone());
    }
    let dropped = node.membership.set_voters(voters);
    for peer in &dropped {
        info!(
            peer,
            "a member no longer in the voting membership was dropped from the view"
        );
    }
    // The lease is counted again at once, not at the next heartbeat, when the count changed.
    if (!counted_from_store || !dropped.is_empty())
        && let Some(membership) = node.slots.membership.get()
    {
        node.slots.membership.mailbox().cast(
            &membership,
            sark_cluster::membership::MembershipMessage::Renew,
        );
    }
    true
}

/// Reads the voting membership once as the node starts, when its store is there already,
/// so that its lease does not wait for the first round.
pub(super) async fn first_read(node: &Core) {
    if node.store_initialized() {
        sync(node).await;
    }
}

/// Audits and logs that this node forgot `member`.
async fn forgotten(node: &Core, member: &crate::store::StoredMember) {
    warn!(
        peer = member.node_id,
        last_seen_at = %member.last_seen_at,
        "forgot a cluster member down for longer than cluster.forget_after_seconds; it no longer counts toward the majority"
    );
    let event = node
        .audit
        .event("member_forgotten", "success")
        .by("system")
        .on(format!("node:{}", member.node_id))
        .with_details(serde_json::json!({
            "addr": member.addr,
            "last_seen_at": member.last_seen_at,
            "forget_after_seconds": node.config.cluster.forget_after_seconds,
        }));
    node.record_audit(event).await;
}

/// Takes this node out of the voting membership as it leaves, so the members that stay do
/// not count it toward their majority.
pub(super) async fn withdraw(node: &Core) {
    let _voting = node.voting.lock().await;
    if !node.store_initialized() || node.config.cluster.seeds.is_empty() {
        return;
    }
    // Without a lease this node may be the minority side of a cut: taking itself out would
    // shrink the majority the other side counts on. A leased member forgets it later.
    if !node.membership.lease_valid(tokio::time::Instant::now()) {
        info!(
            "left without a lease: staying in the voting membership until a majority forgets this node"
        );
        return;
    }
    match node.store.remove_member(&node.node_id, None).await {
        Ok(_) => info!("left the voting membership"),
        Err(err) => warn!(
            error = %err,
            "could not leave the voting membership; the others forget this node after cluster.forget_after_seconds"
        ),
    }
}
