//! Cluster membership: the Membership actor (node server, dialing, heartbeats, lease
//! renewal), the [`Peer`] actor that answers other nodes, the [`MembershipView`] both
//! maintain, and their [`ClusterMetrics`].

mod metrics;
mod peer;
mod view;

pub use metrics::ClusterMetrics;
pub use peer::{NoticeHandler, Peer, PeerArguments, SessionHandler};
pub use view::{Fencing, Member, MemberStatus, MembershipEvent, MembershipView};

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ractor::pg::GroupChangeMessage;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, Message, SpawnErr, SupervisionEvent,
};
use ractor_cluster::{IncomingEncryptionMode, NetworkStream, NodeServer, NodeServerMessage};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use sark_actors::limiter::RateTable;
use sark_actors::mailbox::Mailbox;
use sark_actors::supervisor::{ChildSpec, Slot, spawn_into};

use crate::wire::{
    Frame, Hello, MAX_FRAME_BYTES, NodeSummary, PEER_GROUP, PROTOCOL_VERSION, PeerMessage,
    compatible,
};

/// What a node reports about itself in heartbeats (sessions, policy versions).
pub type SummarySource = Arc<dyn Fn() -> NodeSummary + Send + Sync>;

/// Cluster settings of this node.
#[derive(Clone)]
pub struct MembershipConfig {
    /// This node's id (its cluster node name).
    pub node_id: String,
    /// Where the cluster node server listens; outgoing connections leave from its IP too.
    /// `None`: a single node without seeds, which opens no cluster port.
    pub bind: Option<SocketAddr>,
    /// Shared secret of the cookie handshake.
    pub cookie: String,
    /// Peers to dial: `host:port` (a DNS name may stand for several nodes, e.g. a
    /// Kubernetes headless service).
    pub seeds: Vec<String>,
    /// How long an acknowledged heartbeat keeps this node's lease fresh; a member silent for
    /// this long is down.
    pub lease: Duration,
    /// How often heartbeats are sent; a member silent for three of them is suspect.
    pub heartbeat: Duration,
    /// What this node reports about itself.
    pub summary: SummarySource,
    /// Where member status changes go.
    pub events: Option<tokio::sync::mpsc::UnboundedSender<MembershipEvent>>,
    /// Applies notices other nodes broadcast.
    pub notices: Option<NoticeHandler>,
    /// Where membership is reported.
    pub metrics: Option<ClusterMetrics>,
    /// The rate-limit buckets of keys this node owns.
    pub rate_table: Option<Arc<RateTable>>,
    /// Mutual TLS on every cluster connection, when configured.
    pub tls: Option<ClusterTls>,
    /// Runs session operations forwarded to this node.
    pub sessions: Option<SessionHandler>,
}

/// Mutual TLS between nodes: both ends present a certificate of the cluster's CA.
#[derive(Clone)]
pub struct ClusterTls {
    /// Accepts connections whose client certificate the cluster CA signed.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Dials with this node's certificate, trusting only the cluster CA.
    pub connector: tokio_rustls::TlsConnector,
    /// The name every node certificate carries, checked on the server side of a dial.
    pub server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for MembershipConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MembershipConfig")
            .field("node_id", &self.node_id)
            .field("bind", &self.bind)
            .field("seeds", &self.seeds)
            .field("lease", &self.lease)
            .field("heartbeat", &self.heartbeat)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Messages of the [`Membership`] actor.
pub enum MembershipMessage {
    /// Dials missing peers, sends heartbeats and renews the lease (the actor's own timer).
    Heartbeat,
    /// Recomputes statuses and the lease at once (a heartbeat was answered).
    Renew,
}

impl Message for MembershipMessage {}

/// The actor that runs this node's cluster membership.
#[derive(Debug, Default)]
pub struct Membership {
    /// Where its own timers count their messages in.
    pub mailbox: Mailbox,
}

/// What Membership starts with.
pub struct MembershipArguments {
    /// Settings.
    pub config: MembershipConfig,
    /// The shared view it maintains.
    pub view: Arc<MembershipView>,
}

/// Membership's state.
pub struct MembershipState {
    config: MembershipConfig,
    view: Arc<MembershipView>,
    /// The node server and the address it listens on, unless this is a single node.
    server: Option<(ActorRef<NodeServerMessage>, SocketAddr)>,
    /// This actor, for answers to heartbeats to ask for a renewal.
    myself: ActorRef<MembershipMessage>,
    /// Where its messages to itself are counted in.
    mailbox: Mailbox,
    /// The Peer actor, joined again to its group at every heartbeat.
    peer: ActorRef<PeerMessage>,
    /// This process's incarnation number.
    incarnation: u64,
    timer: ractor::concurrency::JoinHandle<()>,
    dialed: BTreeMap<SocketAddr, Dial>,
    unreached: BTreeMap<SocketAddr, Instant>,
}

/// The last dial of an address: when, and how many dials in a row found nothing there.
#[derive(Clone, Copy, Debug)]
struct Dial {
    at: Instant,
    failed: u32,
}

impl Dial {
    /// How long to wait before dialing again. A connection that was made gets [`REDIAL`] to
    /// finish its handshake; an address where nothing answered (a peer still starting, or
    /// restarting) is tried again soon, backing off from one heartbeat to [`REDIAL`].
    fn pause(&self, heartbeat: Duration) -> Duration {
        match self.failed {
            0 => REDIAL,
            failed => heartbeat
                .saturating_mul(1 << (failed - 1).min(8))
                .min(REDIAL),
        }
    }
}

/// A random number for this process (std's per-process hash keys are random).
fn incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Pause between two dials of the same address.
const REDIAL: Duration = Duration::from_secs(2);

impl MembershipState {
    fn hello(&self) -> Hello {
        let mut me = (self.config.summary)();
        me.node_id = self.config.node_id.clone();
        me.addr = self
            .server
            .as_ref()
            .map(|(_, bind)| bind.to_string())
            .unwrap_or_default();
        me.members = self.view.member_addrs();
        me.incarnation = self.incarnation;
        self.view.set_me(me);
        Hello {
            version: self.view.protocol_version(),
            node: self.view.me(),
        }
    }

    /// Dials seeds and down members that no live member answers for, from this node's IP.
    async fn dial(&mut self) {
        let Some((server, bind)) = self.server.clone() else {
            return;
        };
        // A node without a lease is joining: nobody in the cluster knows it yet, so nobody
        // will dial it, and waiting its turn would only delay its joining.
        let turn_wait = if self.view.lease_valid(Instant::now()) {
            REDIAL * 2
        } else {
            Duration::ZERO
        };
        let seeds = self.config.seeds.len();
        let mut seeds_elsewhere = false;
        let mut targets: Vec<String> = self.config.seeds.clone();
        targets.extend(self.view.dial_addrs());
        let now = Instant::now();
        for (i, target) in targets.into_iter().enumerate() {
            let Ok(addrs) = tokio::net::lookup_host(target.as_str()).await else {
                debug!(seed = target, "cluster seed does not resolve yet");
                continue;
            };
            for addr in addrs {
                seeds_elsewhere |= i < seeds && addr != bind;
                if addr == bind || self.view.reachable(&addr.to_string()) {
                    self.unreached.remove(&addr);
                    continue;
                }
                // Of two nodes that know each other, the one with the lower address dials;
                // the other waits for it a while first. Two nodes dialing each other at once
                // make two connections, and messages sent over the one being closed are lost.
                let unreached_since = *self.unreached.entry(addr).or_insert(now);
                let their_turn =
                    addr < bind && now.saturating_duration_since(unreached_since) < turn_wait;
                let heartbeat = self.config.heartbeat;
                let last = self.dialed.get(&addr).copied();
                if their_turn
                    || last
                        .is_some_and(|d| now.saturating_duration_since(d.at) < d.pause(heartbeat))
                {
                    continue;
                }
                let dialed = connect_from(&server, bind, addr, self.config.tls.as_ref()).await;
                let failed = match &dialed {
                    Ok(()) => 0,
                    Err(_) => last.map_or(0, |d| d.failed) + 1,
                };
                self.dialed.insert(addr, Dial { at: now, failed });
                if let Err(err) = dialed {
                    debug!(peer = %addr, error = %err, "cluster peer not reachable");
                }
            }
        }
        self.view.expect_peers(seeds_elsewhere);
    }

    /// Sends a heartbeat to each remote Peer actor of `cells`; answers are recorded as they
    /// come, and each asks for a renewal of the lease at once.
    fn heartbeat(&self, cells: Vec<ActorCell>) {
        let hello = self.hello();
        let timeout_ms = u64::try_from(self.config.heartbeat.as_millis())
            .unwrap_or(1000)
            .saturating_mul(2)
            .max(200);
        for cell in cells {
            if cell.get_id().is_local() {
                continue;
            }
            let id = cell.get_id();
            let peer: ActorRef<PeerMessage> = ActorRef::from(cell);
            let frame = Frame::Ok(hello.clone());
            let view = self.view.clone();
            let (myself, mailbox) = (self.myself.clone(), self.mailbox.clone());
            tokio::spawn(async move {
                let sent = Instant::now();
                match ractor::call_t!(peer, PeerMessage::Heartbeat, timeout_ms, frame) {
                    Ok(Frame::Ok(answer)) if compatible(answer.version) => {
                        view.heard(answer, Instant::now(), Some(sent), Some(id));
                        mailbox.cast(&myself, MembershipMessage::Renew);
                    }
                    Ok(Frame::Ok(answer)) => refuse(&answer.node.node_id, answer.version),
                    Ok(Frame::Malformed(reason)) => {
                        warn!(
                            reason,
                            "malformed heartbeat answer from a cluster peer; ignored"
                        );
                    }
                    // A hung or departing peer: its silence is what marks it suspect.
                    Err(_) => {}
                }
            });
        }
    }
}

/// Logs a peer refused for its protocol version.
pub(crate) fn refuse(peer: &str, peer_version: u32) {
    warn!(
        peer,
        peer_version,
        version = PROTOCOL_VERSION,
        "refusing a cluster peer: its protocol version is not supported by this node"
    );
}

/// How long a dial may take, TLS handshake included.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a cluster connection to `peer` from this node's own address, so that rules on
/// node addresses (a partition test's iptables rules) apply to it; over mutual TLS when
/// the cluster has it.
async fn connect_from(
    server: &ActorRef<NodeServerMessage>,
    bind: SocketAddr,
    peer: SocketAddr,
    tls: Option<&ClusterTls>,
) -> std::io::Result<()> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let socket = match peer {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if !bind.ip().is_unspecified() {
        socket.bind(SocketAddr::new(bind.ip(), 0))?;
    }
    let stream = tokio::time::timeout(DIAL_TIMEOUT, socket.connect(peer))
        .await
        .map_err(|_| timed_out())??;
    stream.set_nodelay(true)?;
    let local_addr = stream.local_addr()?;
    let stream = match tls {
        None => NetworkStream::Raw {
            peer_addr: peer,
            local_addr,
            stream,
        },
        Some(tls) => {
            let stream = tokio::time::timeout(
                DIAL_TIMEOUT,
                tls.connector.connect(tls.server_name.clone(), stream),
            )
            .await
            .map_err(|_| timed_out())??;
            NetworkStream::TlsClient {
                peer_addr: peer,
                local_addr,
                stream,
            }
        }
    };
    server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(stream),
            is_server: false,
        })
        .map_err(|e| std::io::Error::other(e.to_string()))
}

impl Actor for Membership {
    type Msg = MembershipMessage;
    type State = MembershipState;
    type Arguments = MembershipArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let config = args.config;
        // The node server and the Peer actor are linked to us: if one dies we die and are
        // restarted together, and if we die they stop, freeing the port for the next instance.
        let server = match config.bind {
            Some(bind) => {
                let node = NodeServer::new(
                    bind.port(),
                    config.cookie.clone(),
                    config.node_id.clone(),
                    bind.ip().to_string(),
                    config
                        .tls
                        .as_ref()
                        .map(|tls| IncomingEncryptionMode::Tls(tls.acceptor.clone())),
                    // We dial every member ourselves, from this node's address (learned
                    // addresses come with heartbeats): ractor_cluster's own transitive dials
                    // would leave from any address and slip past rules on node addresses.
                    Some(ractor_cluster::node::NodeConnectionMode::Isolated),
                )
                .with_listen_addr(bind.ip())
                .with_max_inbound_frame_size(MAX_FRAME_BYTES);
                let (server, _) = Actor::spawn_linked(None, node, (), myself.get_cell()).await?;
                Some((server, bind))
            }
            None => None,
        };
        let (peer, _) = Actor::spawn_linked(
            None,
            Peer,
            PeerArguments {
                view: args.view.clone(),
                notices: config.notices.clone(),
                events: config.events.clone(),
                rate_table: config.rate_table.clone(),
                sessions: config.sessions.clone(),
                quiet: config.lease,
            },
            myself.get_cell(),
        )
        .await?;
        let mailbox = self.mailbox.clone();
        let timer = myself.send_interval(config.heartbeat, move || {
            mailbox.post(MembershipMessage::Heartbeat)
        });
        myself.cast(self.mailbox.post(MembershipMessage::Heartbeat))?;
        // A peer that connects is sent a heartbeat at once, not at the next tick: a joining
        // node gets its lease, and its members know it, within a round trip.
        ractor::pg::monitor(PEER_GROUP.to_owned(), myself.get_cell());
        match config.bind {
            Some(bind) => {
                info!(node_id = config.node_id, %bind, seeds = ?config.seeds, "cluster membership started");
            }
            None => info!(
                node_id = config.node_id,
                "single node: no cluster port (set cluster.bind or cluster.seeds to form a cluster)"
            ),
        }
        Ok(MembershipState {
            config,
            view: args.view,
            server,
            myself: myself.clone(),
            mailbox: self.mailbox.clone(),
            peer,
            incarnation: incarnation(),
            timer,
            dialed: BTreeMap::new(),
            unreached: BTreeMap::new(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
        ractor::pg::demonitor(PEER_GROUP.to_owned(), myself.get_id());
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Join(_, group, cells))
                if group == PEER_GROUP =>
            {
                state.heartbeat(cells);
            }
            SupervisionEvent::ProcessGroupChanged(_) => {}
            // The node server or the Peer actor ended: stop, to be restarted with both.
            SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorFailed(..) => {
                myself.stop(None);
            }
            _ => {}
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MembershipMessage::Heartbeat => {
                state.dial().await;
                // Joining again announces the Peer actor to every connected node anew: a
                // node session that closed as a duplicate takes the remote group entry with
                // it, and heartbeats and broadcasts go to group members.
                ractor::pg::join(PEER_GROUP.to_owned(), vec![state.peer.get_cell()]);
                state.heartbeat(ractor::pg::get_members(&PEER_GROUP.to_owned()));
                state.renew();
            }
            MembershipMessage::Renew => state.renew(),
        }
        Ok(())
    }
}

impl MembershipState {
    /// Recomputes statuses and the lease, and reports what changed.
    fn renew(&self) {
        let now = Instant::now();
        let was_valid = self.view.lease_valid(now);
        let connected: HashSet<ActorId> = ractor::pg::get_members(&PEER_GROUP.to_owned())
            .iter()
            .map(|cell| cell.get_id())
            .collect();
        let events = self.view.update(
            now,
            self.config.heartbeat * 3,
            self.config.lease,
            Some(&connected),
        );
        let valid = self.view.lease_valid(now);
        let lapsed = was_valid && !valid;
        if lapsed {
            warn!(
                "this node's cluster lease lapsed: tokens and policies are checked against the store"
            );
        }
        if let Some(metrics) = &self.config.metrics {
            metrics.observe(&self.view, valid, lapsed);
        }
        for event in events {
            match &event {
                MembershipEvent::Joined { node_id, addr } => {
                    info!(peer = node_id, addr, "cluster member up");
                }
                MembershipEvent::Left { node_id, addr } => {
                    warn!(peer = node_id, addr, "cluster member down");
                }
            }
            if let Some(events) = &self.config.events {
                let _ = events.send(event);
            }
        }
    }
}

/// Spawns Membership under the NodeSupervisor.
pub struct MembershipSpec {
    /// Settings.
    pub config: MembershipConfig,
    /// The shared view.
    pub view: Arc<MembershipView>,
    /// Where the running instance is published.
    pub slot: Slot<MembershipMessage>,
}

#[async_trait]
impl ChildSpec for MembershipSpec {
    fn kind(&self) -> &'static str {
        "membership"
    }

    fn mailbox(&self) -> Mailbox {
        self.slot.mailbox()
    }

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = MembershipArguments {
            config: self.config.clone(),
            view: self.view.clone(),
        };
        spawn_into(
            |mailbox| Membership { mailbox },
            args,
            supervisor,
            &self.slot,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_single_node_is_a_one_member_cluster_with_a_fresh_lease() {
        let view = Arc::new(MembershipView::new("n1"));
        let config = MembershipConfig {
            node_id: "n1".into(),
            bind: Some("127.0.0.1:0".parse().unwrap()),
            cookie: "cookie".into(),
            seeds: Vec::new(),
            lease: Duration::from_secs(5),
            heartbeat: Duration::from_millis(50),
            summary: Arc::new(NodeSummary::default),
            events: None,
            notices: None,
            metrics: None,
            rate_table: None,
            tls: None,
            sessions: None,
        };
        let (actor, handle) = Actor::spawn(
            None,
            Membership::default(),
            MembershipArguments {
                config,
                view: view.clone(),
            },
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !view.lease_valid(Instant::now()) {
            assert!(Instant::now() < deadline, "lease never became fresh");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(view.members_up(), 1);
        assert_eq!(view.members()[0].node_id, "n1");
        actor.stop(None);
        handle.await.unwrap();
    }

    #[test]
    fn an_address_where_nothing_answered_is_dialed_again_soon_then_less_often() {
        let heartbeat = Duration::from_millis(200);
        let dial = |failed| Dial {
            at: Instant::now(),
            failed,
        };
        assert_eq!(
            dial(0).pause(heartbeat),
            REDIAL,
            "a made connection gets its handshake time"
        );
        assert_eq!(dial(1).pause(heartbeat), heartbeat);
        assert_eq!(dial(3).pause(heartbeat), heartbeat * 4);
        assert_eq!(dial(40).pause(heartbeat), REDIAL);
    }
}
