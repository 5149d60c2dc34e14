//! The member view: what this node knows of every member (status, summary, protocol
//! version), the majority lease, fencing, and who to dial. Shared by the Membership and
//! Peer actors, read by everything else.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use ractor::{ActorCell, ActorId, ActorRef};
use serde::Serialize;
use tokio::time::Instant;

use crate::wire::{Hello, NodeSummary, PEER_GROUP, PROTOCOL_VERSION, PeerMessage};

/// How a member is seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Heartbeats arrive in time.
    Up,
    /// Heartbeats are late; the member may be hung or cut off.
    Suspect,
    /// The member left or its lease certainly expired.
    Down,
}

impl MemberStatus {
    /// The status as the API and metrics spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Up => "up",
            MemberStatus::Suspect => "suspect",
            MemberStatus::Down => "down",
        }
    }
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The member's node id.
    pub node_id: String,
    /// The member's cluster address.
    pub addr: String,
    /// Its status.
    pub status: MemberStatus,
    /// The cluster protocol version it speaks (0 until it was heard).
    pub protocol_version: u32,
    /// Session actors running on it, as it last reported.
    pub sessions: u64,
    /// Policy versions loaded on it, as it last reported.
    pub policy_versions: BTreeMap<String, i64>,
    /// Whether it is still starting (no session is placed on it yet).
    pub starting: bool,
}

/// What this node knows of a remote member.
#[derive(Clone, Debug)]
struct Remote {
    summary: NodeSummary,
    status: MemberStatus,
    /// Last time anything arrived from it (its heartbeat or its answer to ours).
    heard_at: Instant,
    /// Send time of our last heartbeat it answered: what this node's lease counts.
    acked_at: Option<Instant>,
    /// Its Peer actor as reached through ractor_cluster (one proxy per connection; two
    /// nodes dialing each other at once have two), once it answered us. When none is left
    /// (the connections closed: the peer died or stopped) it is down at once.
    cells: HashSet<ActorId>,
    /// The connection its last answer to our heartbeat came through.
    last_cell: Option<ActorId>,
    /// Whether its joining was reported (and its leaving not yet).
    announced: bool,
    /// The protocol version of its last hello.
    version: u32,
    /// Its connections closed since it last answered us: down, whatever its silence. Its
    /// lease may still run (others may hear it), so broadcasts still fence it by time.
    gone: bool,
}

#[derive(Debug)]
struct ViewState {
    me: NodeSummary,
    remotes: BTreeMap<String, Remote>,
    /// Members that announced their leave, until when their late heartbeats are ignored.
    departed: BTreeMap<String, (Instant, u64)>,
    lease_expires_at: Option<Instant>,
    /// Bumped whenever this node may have missed a broadcast: it regained its lease (it was
    /// paused or cut off), or a member joined (which may have broadcast without it).
    epoch: u64,
    /// The epoch of the last completed catch-up from the store.
    synced_epoch: u64,
    /// Per broadcasting node, the latest broadcast applied here (own: the latest sent).
    broadcasts: BTreeMap<String, u64>,
    /// Whether seeds name other nodes: then, until one was heard, this node has not joined
    /// its cluster and holds no lease (alone it would be its own majority).
    expects_peers: bool,
    /// Whether the voting membership is kept in a store: then, until it was read, this node
    /// holds no lease (the members it happens to hear are not the majority's measure).
    stored_voters: bool,
    /// Whether any peer was ever heard.
    ever_heard: bool,
    /// The voting membership as last read from the store (`None` until it was read): with
    /// the members up, who counts toward a majority. A member down and not in it was
    /// forgotten and counts no more.
    voters: Option<BTreeSet<String>>,
    /// Whether every member that this node's up members know is known here too, as of the
    /// last update: only then do this node's broadcasts reach (or fence) every member, and
    /// every member's broadcasts reach (or fence) it.
    acquainted: bool,
}

impl ViewState {
    /// The members that count toward a majority, this node included: the stored voting
    /// membership, and every member not down (a joining member counts before it is stored).
    pub(super) fn voter_count(&self) -> usize {
        let Some(voters) = &self.voters else {
            return self.remotes.len() + 1;
        };
        let unstored = self
            .remotes
            .values()
            .filter(|r| r.status != MemberStatus::Down && !voters.contains(&r.summary.node_id))
            .count();
        let me = usize::from(!voters.contains(&self.me.node_id));
        voters.len() + unstored + me
    }

    /// Whether every address that an up member lists is this node's or a member's it
    /// knows (whatever its status: a broadcast fences a known member by time).
    pub(super) fn knows_every_member(&self) -> bool {
        let known: HashSet<&str> = self
            .remotes
            .values()
            .map(|r| r.summary.addr.as_str())
            .chain(std::iter::once(self.me.addr.as_str()))
            .collect();
        self.remotes
            .values()
            .filter(|r| r.status == MemberStatus::Up)
            .flat_map(|r| r.summary.members.iter())
            .all(|addr| known.contains(addr.as_str()))
    }
}

/// Whether this node may make a change that every member must apply (a revocation, a
/// policy version) take effect everywhere: see [`MembershipView::fencing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fencing {
    /// Its lease runs and it knows every member: a broadcast reaches or fences them all.
    Ready,
    /// Its lease runs, but a member that others know is not known here yet (it just
    /// joined, or a member joined while it was cut off): a broadcast now could miss it.
    Acquainting,
    /// Its lease does not run: it is cut off, or has not joined its cluster.
    NoLease,
}

/// The smallest majority of `members`.
fn majority_of(members: usize) -> usize {
    members / 2 + 1
}

/// A change of a member's status that the node records (`node_joined`, `node_left`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member became up: it joined, came back, or recovered from a pause.
    Joined {
        /// The member.
        node_id: String,
        /// Its cluster address.
        addr: String,
    },
    /// A member went down: it died, left, or was cut off for longer than the lease.
    Left {
        /// The member.
        node_id: String,
        /// Its cluster address.
        addr: String,
    },
}

/// The member list and this node's lease, shared with request tasks.
#[derive(Debug)]
pub struct MembershipView {
    pub(super) node_id: String,
    /// The protocol version this node speaks.
    pub(super) version: u32,
    state: RwLock<ViewState>,
}

impl MembershipView {
    /// A view of a cluster not yet joined: no members, no lease.
    pub fn new(node_id: impl Into<String>) -> Self {
        let node_id = node_id.into();
        Self {
            state: RwLock::new(ViewState {
                me: NodeSummary {
                    node_id: node_id.clone(),
                    ..NodeSummary::default()
                },
                remotes: BTreeMap::new(),
                departed: BTreeMap::new(),
                lease_expires_at: None,
                epoch: 0,
                synced_epoch: 0,
                broadcasts: BTreeMap::new(),
                expects_peers: false,
                stored_voters: false,
                ever_heard: false,
                voters: None,
                acquainted: true,
            }),
            node_id,
            version: PROTOCOL_VERSION,
        }
    }

    /// The same view, speaking protocol `version` instead of this build's (the previous
    /// one, during a rolling upgrade).
    pub fn speaking(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The same view, holding no lease until the voting membership was read from the store
    /// ([`MembershipView::set_voters`]).
    pub fn with_stored_voters(self) -> Self {
        self.write().stored_voters = true;
        self
    }

    /// Whether the voting membership has been read from the store.
    pub fn has_voters(&self) -> bool {
        self.read().voters.is_some()
    }

    /// The protocol version this node speaks.
    pub fn protocol_version(&self) -> u32 {
        self.version
    }

    /// The protocol version member `node_id` last spoke, if it was heard.
    pub fn version_of(&self, node_id: &str) -> Option<u32> {
        self.read()
            .remotes
            .get(node_id)
            .map(|r| r.version)
            .filter(|v| *v > 0)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether this node's lease is fresh at `now`, it knows every member (so every
    /// broadcast reaches or fences it), and it has caught up with the store since it last
    /// may have missed a broadcast: only then may it answer token and policy checks from
    /// local state. Otherwise it still serves, checking the store.
    pub fn lease_fresh(&self, now: Instant) -> bool {
        let state = self.read();
        state.lease_expires_at.is_some_and(|at| at > now)
            && state.acquainted
            && state.synced_epoch == state.epoch
    }

    /// How many members, this node included, make a majority of the voting membership.
    pub fn majority(&self) -> usize {
        majority_of(self.read().voter_count())
    }

    /// How many members count toward the majority, this node included.
    pub fn voters(&self) -> usize {
        self.read().voter_count()
    }

    /// Sets the voting membership read from the store, and drops from the view the members
    /// that are down and were forgotten: in the membership read before (or none was read
    /// yet) and not in this one. Returns their ids. A member the store never listed (nodes
    /// that keep no store in common) stays in the view, down, as the failure detector sees
    /// it.
    pub fn set_voters(&self, voters: BTreeSet<String>) -> Vec<String> {
        let mut state = self.write();
        let forgotten: Vec<String> = state
            .remotes
            .values()
            .map(|r| &r.summary.node_id)
            .filter(|id| {
                state.remotes[*id].status == MemberStatus::Down
                    && !voters.contains(*id)
                    && state
                        .voters
                        .as_ref()
                        .is_none_or(|previous| previous.contains(*id))
            })
            .cloned()
            .collect();
        for id in &forgotten {
            state.remotes.remove(id);
        }
        // A smaller majority may let this node's lease run where it did not: what the
        // members it no longer counts broadcast meanwhile is caught up with first.
        if !forgotten.is_empty() {
            state.epoch += 1;
        }
        state.voters = Some(voters);
        forgotten
    }

    /// Whether member `node_id` is up or suspect here (heard within its lease).
    pub fn is_live(&self, node_id: &str) -> bool {
        self.read()
            .remotes
            .get(node_id)
            .is_some_and(|r| r.status != MemberStatus::Down)
    }

    /// Whether the lease itself runs at `now` (a majority answered recently enough).
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.read().lease_expires_at.is_some_and(|at| at > now)
    }

    /// Whether this node may broadcast a change and vouch that it reached every member.
    pub fn fencing(&self, now: Instant) -> Fencing {
        let state = self.read();
        if state.lease_expires_at.is_none_or(|at| at <= now) {
            Fencing::NoLease
        } else if state.acquainted {
            Fencing::Ready
        } else {
            Fencing::Acquainting
        }
    }

    /// The epoch to catch up to, when this node must catch up with the store (reload
    /// revocations and policies) before it answers from local state again.
    pub fn needs_sync(&self) -> Option<u64> {
        let state = self.read();
        (state.synced_epoch != state.epoch).then_some(state.epoch)
    }

    /// Records a catch-up with the store that started at `epoch`.
    pub fn synced(&self, epoch: u64) {
        let mut state = self.write();
        state.synced_epoch = state.synced_epoch.max(epoch.min(state.epoch));
    }

    /// The members, this node first, then the others by id.
    pub fn members(&self) -> Vec<Member> {
        let state = self.read();
        let me = Member {
            node_id: state.me.node_id.clone(),
            addr: state.me.addr.clone(),
            status: MemberStatus::Up,
            protocol_version: self.version,
            sessions: state.me.sessions,
            policy_versions: state.me.policy_versions.clone(),
            starting: state.me.starting,
        };
        std::iter::once(me)
            .chain(state.remotes.values().map(|r| Member {
                node_id: r.summary.node_id.clone(),
                addr: r.summary.addr.clone(),
                status: r.status,
                protocol_version: r.version,
                sessions: r.summary.sessions,
                policy_versions: r.summary.policy_versions.clone(),
                starting: r.summary.starting,
            }))
            .collect()
    }

    /// Number of members that are up, this node included.
    pub fn members_up(&self) -> usize {
        1 + self
            .read()
            .remotes
            .values()
            .filter(|r| r.status == MemberStatus::Up)
            .count()
    }

    /// Records a hello from a peer; `acked_at` is the send time of our heartbeat it
    /// answers, if it is an answer.
    pub(super) fn heard(
        &self,
        hello: Hello,
        now: Instant,
        acked_at: Option<Instant>,
        cell: Option<ActorId>,
    ) {
        let Hello {
            version,
            node: peer,
        } = hello;
        if peer.node_id == self.node_id {
            return;
        }
        let mut state = self.write();
        state.departed.retain(|_, (until, _)| *until > now);
        // Only the incarnation that left is ignored; a restarted process is heard at once,
        // so broadcasts reach (or fence) it from its first heartbeat on.
        match state.departed.get(&peer.node_id) {
            Some((_, left)) if *left == peer.incarnation => return,
            Some(_) => {
                state.departed.remove(&peer.node_id);
            }
            None => {}
        }
        // A broadcast this node never applied: catch up from the store before trusting
        // memory (the broadcast's write reached the store before the broadcast began).
        let mut missed = false;
        for (origin, seq) in &peer.broadcasts {
            if *origin == self.node_id {
                continue;
            }
            let applied = state.broadcasts.entry(origin.clone()).or_default();
            if *seq > *applied {
                *applied = *seq;
                missed = true;
            }
        }
        if missed {
            state.epoch += 1;
        }
        state.ever_heard = true;
        let remote = state
            .remotes
            .entry(peer.node_id.clone())
            .or_insert_with(|| Remote {
                summary: peer.clone(),
                status: MemberStatus::Down,
                heard_at: now,
                acked_at: None,
                cells: HashSet::new(),
                last_cell: None,
                announced: false,
                version,
                gone: false,
            });
        remote.summary = peer;
        remote.version = version;
        remote.heard_at = now;
        if let Some(cell) = cell {
            remote.cells.insert(cell);
            remote.last_cell = Some(cell);
            remote.gone = false;
        }
        if acked_at.is_some() {
            remote.acked_at = acked_at.max(remote.acked_at);
        }
    }

    /// Recomputes every member's status and this node's lease at `now`; returns the changes.
    ///
    /// A member is up while it was heard within `suspect_after` and answers our heartbeats,
    /// suspect until `lease`, down after. This node's lease runs `lease` from the oldest heartbeat that a majority of the
    /// known members (this node counts as one) answered: a node cut off from most of the
    /// cluster loses its lease within `lease`, whichever side of the cut it is on.
    pub(super) fn update(
        &self,
        now: Instant,
        suspect_after: Duration,
        lease: Duration,
        connected: Option<&HashSet<ActorId>>,
    ) -> Vec<MembershipEvent> {
        let mut state = self.write();
        let mut events = Vec::new();
        let mut joined = false;
        let was_valid = state.lease_expires_at.is_some_and(|at| at > now);
        for remote in state.remotes.values_mut() {
            if let Some(connected) = connected
                && !remote.cells.is_empty()
            {
                remote.cells.retain(|cell| connected.contains(cell));
                if remote.cells.is_empty() {
                    remote.acked_at = None;
                    remote.gone = true;
                }
            }
            let silent = now.saturating_duration_since(remote.heard_at);
            // Up means reachable: it answered one of our heartbeats over a live connection.
            let status = if remote.gone {
                MemberStatus::Down
            } else if silent < suspect_after && !remote.cells.is_empty() {
                MemberStatus::Up
            } else if silent < lease {
                MemberStatus::Suspect
            } else {
                MemberStatus::Down
            };
            let (node_id, addr) = (remote.summary.node_id.clone(), remote.summary.addr.clone());
            match status {
                MemberStatus::Up if !remote.announced => {
                    remote.announced = true;
                    events.push(MembershipEvent::Joined { node_id, addr });
                    joined = true;
                }
                MemberStatus::Down if remote.announced => {
                    remote.announced = false;
                    events.push(MembershipEvent::Left { node_id, addr });
                }
                _ => {}
            }
            remote.status = status;
        }
        let mut acks: Vec<Instant> = state.remotes.values().filter_map(|r| r.acked_at).collect();
        // This node answers its own heartbeat at once.
        acks.push(now);
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let majority = majority_of(state.voter_count());
        state.lease_expires_at = if (state.expects_peers && !state.ever_heard)
            || (state.stored_voters && state.voters.is_none())
        {
            None
        } else {
            acks.get(majority - 1).map(|oldest| *oldest + lease)
        };
        // Whatever was broadcast while it held no lease is caught up with first, even
        // with no member left to hear (the others were forgotten meanwhile).
        let regained = !was_valid && state.lease_expires_at.is_some_and(|at| at > now);
        // Broadcasts sent before a member knew this node did not reach it: catch up from
        // the store once every member knows it.
        let acquainted = state.knows_every_member();
        let introduced = acquainted && !state.acquainted;
        state.acquainted = acquainted;
        if joined || regained || introduced {
            state.epoch += 1;
        }
        events
    }

    /// For each remote member, how long ago it was last heard.
    pub(super) fn silences(&self, now: Instant) -> BTreeMap<String, u64> {
        self.read()
            .remotes
            .values()
            .map(|r| {
                let ago = now.saturating_duration_since(r.heard_at).as_millis();
                (
                    r.summary.node_id.clone(),
                    u64::try_from(ago).unwrap_or(u64::MAX),
                )
            })
            .collect()
    }

    /// Members missing from `answered` whose lease may still run at `now`, each with the
    /// instant its lease has certainly expired if it hears from nobody: `lease` after the
    /// last time this node, or any member that answered (`heard_elsewhere`), heard from it.
    /// A member only those that answered know of (it joined a moment ago) is one of them.
    pub(crate) fn fence_deadlines(
        &self,
        answered: &HashSet<String>,
        heard_elsewhere: &BTreeMap<String, Instant>,
        lease: Duration,
        now: Instant,
    ) -> Vec<(String, Instant)> {
        let state = self.read();
        let known = state.remotes.values().map(|r| {
            let heard = heard_elsewhere
                .get(&r.summary.node_id)
                .map_or(r.heard_at, |elsewhere| r.heard_at.max(*elsewhere));
            (r.summary.node_id.clone(), heard)
        });
        let unknown = heard_elsewhere
            .iter()
            .filter(|(id, _)| {
                **id != self.node_id
                    && !state.remotes.contains_key(*id)
                    && !state.departed.contains_key(*id)
            })
            .map(|(id, heard)| (id.clone(), *heard));
        known
            .chain(unknown)
            .filter(|(id, _)| !answered.contains(id))
            .map(|(id, heard)| (id, heard + lease))
            .filter(|(_, expired_at)| *expired_at > now)
            .collect()
    }

    /// The members not known to be down, this node included: what placement hashes over.
    /// A suspect member keeps its keys, so a late heartbeat does not move them; a member
    /// still starting gets none yet.
    pub fn live_members(&self) -> Vec<String> {
        let state = self.read();
        std::iter::once(self.node_id.clone())
            .chain(
                state
                    .remotes
                    .values()
                    .filter(|r| r.status != MemberStatus::Down && !r.summary.starting)
                    .map(|r| r.summary.node_id.clone()),
            )
            .collect()
    }

    /// The Peer actor of member `node_id` through each connection that reached it, the one
    /// its last heartbeat answer came through first.
    pub fn peers(&self, node_id: &str) -> Vec<ActorRef<PeerMessage>> {
        let Some((cells, last)) = self
            .read()
            .remotes
            .get(node_id)
            .map(|r| (r.cells.clone(), r.last_cell))
        else {
            return Vec::new();
        };
        let mut peers: Vec<ActorCell> = ractor::pg::get_members(&PEER_GROUP.to_owned())
            .into_iter()
            .filter(|member| cells.contains(&member.get_id()))
            .collect();
        peers.sort_by_key(|cell| Some(cell.get_id()) != last);
        peers.into_iter().map(ActorRef::from).collect()
    }

    /// Forgets a member that announced it is leaving, ignoring its heartbeats for `quiet`
    /// (it keeps sending them while it drains); returns the change.
    pub(super) fn leave(
        &self,
        node_id: &str,
        now: Instant,
        quiet: Duration,
    ) -> Option<MembershipEvent> {
        let mut state = self.write();
        let incarnation = state
            .remotes
            .get(node_id)
            .map_or(0, |r| r.summary.incarnation);
        state
            .departed
            .insert(node_id.to_owned(), (now + quiet, incarnation));
        let remote = state.remotes.remove(node_id)?;
        Some(MembershipEvent::Left {
            node_id: remote.summary.node_id,
            addr: remote.summary.addr,
        })
    }

    /// Records whether the seeds name nodes other than this one.
    pub(super) fn expect_peers(&self, expected: bool) {
        self.write().expects_peers = expected;
    }

    /// Sets what this node reports about itself.
    pub(super) fn set_me(&self, me: NodeSummary) {
        self.write().me = me;
    }

    /// What this node reports about itself, with its broadcast sequence vector.
    pub(super) fn me(&self) -> NodeSummary {
        let state = self.read();
        let mut me = state.me.clone();
        me.broadcasts = state.broadcasts.clone();
        me
    }

    /// Numbers this node's next broadcast.
    pub(crate) fn next_broadcast(&self) -> u64 {
        let mut state = self.write();
        let seq = state.broadcasts.entry(self.node_id.clone()).or_default();
        *seq += 1;
        *seq
    }

    /// Records that broadcast `seq` of `origin` was applied here.
    pub(super) fn applied(&self, origin: &str, seq: u64) {
        let mut state = self.write();
        let applied = state.broadcasts.entry(origin.to_owned()).or_default();
        *applied = (*applied).max(seq);
    }

    /// Addresses to dial besides the seeds: members that are down, and members other
    /// members know.
    pub(super) fn dial_addrs(&self) -> Vec<String> {
        let state = self.read();
        let mut addrs: Vec<String> = state
            .remotes
            .values()
            .filter(|r| r.status == MemberStatus::Down)
            .map(|r| r.summary.addr.clone())
            .collect();
        addrs.extend(
            state
                .remotes
                .values()
                .flat_map(|r| r.summary.members.iter().cloned()),
        );
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Cluster addresses of the remote members this node knows that are not down (a dead
    /// member is no one's to get to know).
    pub(super) fn member_addrs(&self) -> Vec<String> {
        self.read()
            .remotes
            .values()
            .filter(|r| r.status != MemberStatus::Down)
            .map(|r| r.summary.addr.clone())
            .collect()
    }

    /// Whether a member at `addr` is up or suspect (connected, or recently so).
    pub(super) fn reachable(&self, addr: &str) -> bool {
        self.read()
            .remotes
            .values()
            .any(|r| r.summary.addr == addr && r.status != MemberStatus::Down)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            node: NodeSummary {
                node_id: id.into(),
                addr: format!("{id}:7400"),
                ..NodeSummary::default()
            },
        }
    }

    #[test]
    fn statuses_follow_silence_and_changes_are_reported_once() {
        // A member is up only once it answered a heartbeat (here, through actor 7).
        let view = MembershipView::new("me");
        let beat = Duration::from_millis(100);
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        view.heard(peer("a"), t0, Some(t0), Some(ActorId::Local(7)));
        let joined = view.update(t0, beat * 3, lease, None);
        assert_eq!(
            joined,
            [MembershipEvent::Joined {
                node_id: "a".into(),
                addr: "a:7400".into()
            }]
        );
        assert!(view.update(t0 + beat, beat * 3, lease, None).is_empty());
        view.update(t0 + beat * 4, beat * 3, lease, None);
        assert_eq!(view.members()[1].status, MemberStatus::Suspect);
        let left = view.update(t0 + lease, beat * 3, lease, None);
        assert!(matches!(&left[..], [MembershipEvent::Left { node_id, .. }] if node_id == "a"));
        assert_eq!(view.dial_addrs(), ["a:7400"]);
        view.heard(peer("a"), t0 + lease * 2, None, None);
        assert_eq!(view.update(t0 + lease * 2, beat * 3, lease, None).len(), 1);
        assert_eq!(view.members_up(), 2);
    }

    #[test]
    fn a_departed_member_is_dropped_and_its_late_heartbeats_ignored() {
        let view = MembershipView::new("me");
        let quiet = Duration::from_secs(1);
        let t0 = Instant::now();
        view.heard(peer("a"), t0, Some(t0), Some(ActorId::Local(7)));
        assert!(matches!(
            view.leave("a", t0, quiet),
            Some(MembershipEvent::Left { .. })
        ));
        view.heard(peer("a"), t0 + quiet / 2, Some(t0), Some(ActorId::Local(7)));
        assert_eq!(
            view.members().len(),
            1,
            "a draining member's heartbeat is ignored"
        );
        view.heard(peer("a"), t0 + quiet * 2, None, None);
        assert_eq!(
            view.members().len(),
            2,
            "after the quiet period it may rejoin"
        );
        view.leave("a", t0 + quiet * 2, quiet);
        let mut restarted = peer("a");
        restarted.node.incarnation = 42;
        view.heard(restarted, t0 + quiet * 2, None, None);
        assert_eq!(
            view.members().len(),
            2,
            "a restarted process is heard at once"
        );
    }

    #[test]
    fn the_lease_needs_answers_from_a_majority() {
        let view = MembershipView::new("me");
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        view.update(t0, lease, lease, None);
        assert!(view.lease_valid(t0), "alone, a node is its own majority");
        let epoch = view
            .needs_sync()
            .expect("a gained lease is caught up with first");
        view.synced(epoch);
        assert!(view.lease_fresh(t0));
        view.heard(peer("a"), t0, None, None);
        view.heard(peer("b"), t0, None, None);
        view.update(t0, lease, lease, None);
        assert!(!view.lease_valid(t0), "no peer has answered: 1 of 3");
        assert_eq!(view.fencing(t0), Fencing::NoLease);
        view.heard(peer("a"), t0, Some(t0), None);
        view.update(t0, lease, lease, None);
        assert!(view.lease_valid(t0), "2 of 3 answered");
        assert_eq!(
            view.fencing(t0),
            Fencing::Ready,
            "writes need no settle window"
        );
        let epoch = view
            .needs_sync()
            .expect("regained with members: catch up first");
        assert!(!view.lease_fresh(t0), "not before the catch-up");
        view.synced(epoch);
        assert!(view.lease_fresh(t0), "caught up: answers from memory");
        assert!(
            !view.lease_fresh(t0 + lease),
            "the lease runs from the answered heartbeat"
        );
        assert_eq!(view.fencing(t0 + lease), Fencing::NoLease);
    }

    /// A view whose lease runs with member `a` up and answering, caught up.
    fn settled_with_a(t0: Instant, lease: Duration) -> MembershipView {
        let view = MembershipView::new("me");
        view.heard(peer("a"), t0, Some(t0), Some(ActorId::Local(1)));
        view.update(t0, lease, lease, None);
        view.synced(view.needs_sync().unwrap_or_default());
        assert!(view.lease_fresh(t0));
        view
    }

    #[test]
    fn a_join_keeps_the_lease_and_writes_ready() {
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        let view = settled_with_a(t0, lease);
        let t1 = t0 + lease / 4;
        view.heard(peer("a"), t1, Some(t1), Some(ActorId::Local(1)));
        view.heard(peer("b"), t1, Some(t1), Some(ActorId::Local(2)));
        let events = view.update(t1, lease, lease, None);
        assert_eq!(events.len(), 1, "b joined");
        assert!(view.lease_valid(t1), "a join never takes the lease away");
        assert_eq!(view.fencing(t1), Fencing::Ready, "nor holds up writes");
        let epoch = view.needs_sync().expect("a join is caught up with");
        view.synced(epoch);
        assert!(view.lease_fresh(t1));
    }

    #[test]
    fn a_member_only_others_know_holds_writes_and_local_answers_until_introduced() {
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        let view = settled_with_a(t0, lease);
        let t1 = t0 + lease / 4;
        let mut a = peer("a");
        a.node.members = vec!["x:7400".into()];
        view.heard(a.clone(), t1, Some(t1), Some(ActorId::Local(1)));
        view.update(t1, lease, lease, None);
        assert!(view.lease_valid(t1), "still in rotation");
        assert_eq!(view.fencing(t1), Fencing::Acquainting);
        assert!(
            !view.lease_fresh(t1),
            "x may have broadcast without this node: check the store"
        );
        let before = view.needs_sync();
        view.heard(peer("x"), t1, Some(t1), Some(ActorId::Local(3)));
        view.heard(a, t1, Some(t1), Some(ActorId::Local(1)));
        view.update(t1, lease, lease, None);
        assert_eq!(view.fencing(t1), Fencing::Ready);
        let epoch = view.needs_sync().expect("introduced: catch up again");
        assert!(Some(epoch) > before);
        view.synced(epoch);
        assert!(view.lease_fresh(t1));
    }

    #[test]
    fn a_forgotten_member_stops_counting_and_leaves_the_view() {
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        let view = MembershipView::new("me");
        for (id, cell) in [("a", 1), ("b", 2), ("c", 3)] {
            view.heard(peer(id), t0, Some(t0), Some(ActorId::Local(cell)));
        }
        view.update(t0, lease, lease, None);
        assert_eq!(view.majority(), 3, "4 members");
        let stored = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect();
        assert!(view.set_voters(stored(&["me", "a", "b", "c"])).is_empty());
        // b and c die: down after a lease; they still count while they are stored.
        let t1 = t0 + lease * 2;
        view.heard(peer("a"), t1, Some(t1), Some(ActorId::Local(1)));
        view.update(t1, lease, lease, None);
        assert!(!view.lease_valid(t1), "2 of 4 is no majority");
        assert_eq!(
            view.set_voters(stored(&["me", "a", "b"])),
            ["c"],
            "c was forgotten in the store: dropped from the view"
        );
        assert_eq!(view.majority(), 2, "3 voters");
        view.update(t1, lease, lease, None);
        assert!(view.lease_valid(t1), "2 of 3");
        assert_eq!(view.members().len(), 3, "c is no longer listed");
        view.heard(peer("c"), t1, Some(t1), Some(ActorId::Local(4)));
        view.update(t1, lease, lease, None);
        assert_eq!(
            view.voters(),
            4,
            "a forgotten member that comes back counts again"
        );
    }

    #[test]
    fn a_down_member_the_store_never_listed_stays_in_the_view() {
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        let view = MembershipView::new("me");
        view.heard(peer("a"), t0, Some(t0), Some(ActorId::Local(1)));
        view.update(t0, lease, lease, None);
        let alone = || ["me".to_owned()].into();
        assert!(view.set_voters(alone()).is_empty(), "a is up");
        let t1 = t0 + lease * 2;
        view.update(t1, lease, lease, None);
        assert!(
            view.set_voters(alone()).is_empty(),
            "a was never in this store's membership: nothing forgot it"
        );
        assert_eq!(
            view.members().len(),
            2,
            "a is listed, down: {:?}",
            view.members()
        );
    }

    #[test]
    fn with_a_stored_membership_no_lease_runs_before_it_is_read() {
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        let view = MembershipView::new("me").with_stored_voters();
        view.heard(peer("a"), t0, Some(t0), Some(ActorId::Local(1)));
        view.update(t0, lease, lease, None);
        assert!(
            !view.lease_valid(t0),
            "two nodes that hear each other are not a majority of a membership not read yet"
        );
        let stored = ["me", "a", "b", "c", "d"].map(str::to_owned).into();
        view.set_voters(stored);
        view.update(t0, lease, lease, None);
        assert!(!view.lease_valid(t0), "2 of 5");
        view.set_voters(["me", "a"].map(str::to_owned).into());
        view.update(t0, lease, lease, None);
        assert!(
            view.lease_valid(t0),
            "2 of 2 once the others were forgotten"
        );
    }

    #[test]
    fn dropping_forgotten_members_and_regaining_the_lease_alone_catch_up_first() {
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        let view = settled_with_a(t0, lease);
        let later = t0 + lease * 2;
        view.update(later, lease, lease, None);
        assert!(!view.lease_valid(later), "a is down: 1 of 2");
        let before = view.needs_sync();
        assert_eq!(view.set_voters(["me".to_owned()].into()), ["a"]);
        view.update(later, lease, lease, None);
        assert!(view.lease_valid(later), "alone in the membership");
        assert!(
            view.needs_sync() > before,
            "what was broadcast while it was fenced is caught up with first"
        );
        assert!(!view.lease_fresh(later));
    }

    #[test]
    fn a_member_still_starting_gets_no_sessions_yet() {
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        let view = settled_with_a(t0, lease);
        let mut b = peer("b");
        b.node.starting = true;
        view.heard(b.clone(), t0, Some(t0), Some(ActorId::Local(2)));
        view.update(t0, lease, lease, None);
        assert_eq!(view.members_up(), 3, "b is a member");
        assert_eq!(view.live_members(), ["me", "a"], "but owns no session yet");
        b.node.starting = false;
        view.heard(b, t0, Some(t0), Some(ActorId::Local(2)));
        assert_eq!(view.live_members(), ["me", "a", "b"]);
    }

    #[test]
    fn a_broadcast_fences_members_that_only_the_answering_members_know() {
        let lease = Duration::from_secs(1);
        let t0 = Instant::now();
        let view = settled_with_a(t0, lease);
        let answered: HashSet<String> = ["a".to_owned()].into();
        let heard_elsewhere: BTreeMap<String, Instant> =
            [("x".to_owned(), t0), ("me".to_owned(), t0)].into();
        let deadlines = view.fence_deadlines(&answered, &heard_elsewhere, lease, t0);
        assert_eq!(deadlines, [("x".to_owned(), t0 + lease)]);
        view.leave("x", t0, lease);
        assert!(
            view.fence_deadlines(&answered, &heard_elsewhere, lease, t0)
                .is_empty(),
            "a member that left is not waited for"
        );
    }
}
