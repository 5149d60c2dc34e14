//! The voting membership, kept in the store: who counts toward the cluster's majority.
//!
//! Every node records itself while it runs (`last_seen_at`) and takes itself out when it
//! leaves gracefully. A member that died (kill -9, a lost machine, an unclean scale-down)
//! stays in, and keeps counting, until a node that holds a valid lease sees it down for
//! longer than `cluster.forget_after_seconds` and removes it (`member_forgotten`). A node
//! without a lease never forgets anyone: the lone survivor of a split would otherwise make
//! itself the majority. `sark admin forget-member` is the break-glass for that case.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use tracing::{info, warn};

use super::{Node, seconds};

/// How often a node records itself and reads the membership.
pub(crate) const RECORD_EVERY: Duration = Duration::from_secs(1);

/// Records this node, reads the voting membership into the view and forgets members gone
/// for good, every [`RECORD_EVERY`], until the node stops or leaves.
pub(super) async fn run(node: Weak<Node>) {
    loop {
        let Some(node) = node.upgrade() else { return };
        if node.store_initialized() && !sync(&node).await {
            return;
        }
        drop(node);
        tokio::time::sleep(RECORD_EVERY).await;
    }
}

/// One round; `false` once the node has left (nothing more to record).
async fn sync(node: &Node) -> bool {
    {
        let _voting = node.voting.lock().await;
        if node.left.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let addr = node
            .config
            .cluster
            .listen_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if let Err(err) = node
            .store
            .record_member(&node.node_id, &addr, node.clock.now())
            .await
        {
            warn!(error = %err, "could not record this node in the voting membership");
            return true;
        }
    }
    let members = match node.store.cluster_members().await {
        Ok(members) => members,
        Err(err) => {
            warn!(error = %err, "could not read the voting membership");
            return true;
        }
    };
    let now = node.clock.now();
    let cutoff = now - chrono::Duration::seconds(seconds(node.config.cluster.forget_after_seconds));
    let mut voters = BTreeSet::new();
    for member in members {
        let gone = member.node_id != node.node_id
            && member.last_seen_at < cutoff
            && !node.membership.is_live(&member.node_id);
        // Checked for each member: the lease may lapse while this round runs.
        if gone && node.membership.lease_valid(tokio::time::Instant::now()) {
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
    for dropped in node.membership.set_voters(voters) {
        info!(
            peer = dropped,
            "a member no longer in the voting membership was dropped from the view"
        );
    }
    true
}

/// Audits and logs that this node forgot `member`.
async fn forgotten(node: &Node, member: &crate::store::StoredMember) {
    warn!(
        peer = member.node_id,
        last_seen_at = %member.last_seen_at,
        "forgot a cluster member down for longer than cluster.forget_after_seconds; it no longer counts toward the majority"
    );
    let mut event = node.audit.event("member_forgotten", "success");
    event.actor = Some("system".into());
    event.resource = Some(format!("node:{}", member.node_id));
    event.details = serde_json::json!({
        "addr": member.addr,
        "last_seen_at": member.last_seen_at,
        "forget_after_seconds": node.config.cluster.forget_after_seconds,
    });
    node.record_audit(event).await;
}

/// Takes this node out of the voting membership as it leaves, so the members that stay do
/// not count it toward their majority.
pub(super) async fn withdraw(node: &Node) {
    let _voting = node.voting.lock().await;
    if !node.store_initialized() || node.config.cluster.listen_addr().is_none() {
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
