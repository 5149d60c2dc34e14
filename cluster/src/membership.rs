//! The Membership actor and the member view it maintains.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, SpawnErr};
use ractor_cluster::NodeServer;
use serde::Serialize;
use tokio::time::Instant;
use tracing::info;

use sark_actors::supervisor::{ChildSpec, Slot, spawn_into};

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

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The member's node id.
    pub node_id: String,
    /// The member's cluster address.
    pub addr: String,
    /// Its status.
    pub status: MemberStatus,
}

#[derive(Debug)]
struct ViewState {
    members: BTreeMap<String, Member>,
    lease_expires_at: Option<Instant>,
}

/// The member list and this node's lease, shared with request tasks.
#[derive(Debug)]
pub struct MembershipView {
    node_id: String,
    state: RwLock<ViewState>,
}

impl MembershipView {
    /// A view of a cluster not yet joined: no members, no lease.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            state: RwLock::new(ViewState {
                members: BTreeMap::new(),
                lease_expires_at: None,
            }),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether this node's lease is fresh at `now`: only then may it answer token and
    /// policy checks from local state.
    pub fn lease_fresh(&self, now: Instant) -> bool {
        self.read().lease_expires_at.is_some_and(|at| at > now)
    }

    /// The members, this node included.
    pub fn members(&self) -> Vec<Member> {
        self.read().members.values().cloned().collect()
    }

    /// Number of members that are up.
    pub fn members_up(&self) -> usize {
        self.read()
            .members
            .values()
            .filter(|m| m.status == MemberStatus::Up)
            .count()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Cluster settings of this node.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// This node's id (its cluster node name).
    pub node_id: String,
    /// Where the cluster node server listens.
    pub bind: SocketAddr,
    /// Shared secret of the cookie handshake.
    pub cookie: String,
    /// How long an acknowledged heartbeat keeps this node's lease fresh.
    pub lease: Duration,
    /// How often heartbeats are sent.
    pub heartbeat: Duration,
}

/// Messages of the [`Membership`] actor.
pub enum MembershipMessage {
    /// Sends heartbeats and renews the lease (sent by the actor's own timer).
    Heartbeat,
}

impl Message for MembershipMessage {}

/// The actor that runs this node's cluster membership.
#[derive(Debug, Default)]
pub struct Membership;

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
    timer: ractor::concurrency::JoinHandle<()>,
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
        // The node server is linked to us: if it dies we die and are restarted together,
        // and if we die it is stopped, freeing the port for the next instance.
        let server = NodeServer::new(
            config.bind.port(),
            config.cookie.clone(),
            config.node_id.clone(),
            config.bind.ip().to_string(),
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Transitive),
        )
        .with_listen_addr(config.bind.ip());
        Actor::spawn_linked(None, server, (), myself.get_cell()).await?;
        {
            let mut view = args.view.write();
            view.members.insert(
                config.node_id.clone(),
                Member {
                    node_id: config.node_id.clone(),
                    addr: config.bind.to_string(),
                    status: MemberStatus::Up,
                },
            );
        }
        let timer = myself.send_interval(config.heartbeat, || MembershipMessage::Heartbeat);
        myself.cast(MembershipMessage::Heartbeat)?;
        info!(node_id = config.node_id, bind = %config.bind, "cluster membership started");
        Ok(MembershipState {
            config,
            view: args.view,
            timer,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.timer.abort();
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
                // Alone, this node acknowledges its own heartbeat; the lease lapses if this
                // loop stalls for longer than the lease.
                let mut view = state.view.write();
                view.lease_expires_at = Some(Instant::now() + state.config.lease);
            }
        }
        Ok(())
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

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = MembershipArguments {
            config: self.config.clone(),
            view: self.view.clone(),
        };
        spawn_into(Membership, args, supervisor, &self.slot).await
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
            bind: "127.0.0.1:0".parse().unwrap(),
            cookie: "cookie".into(),
            lease: Duration::from_secs(5),
            heartbeat: Duration::from_millis(50),
        };
        let (actor, handle) = Actor::spawn(
            None,
            Membership,
            MembershipArguments {
                config,
                view: view.clone(),
            },
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !view.lease_fresh(Instant::now()) {
            assert!(Instant::now() < deadline, "lease never became fresh");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(view.members_up(), 1);
        assert_eq!(view.members()[0].node_id, "n1");
        actor.stop(None);
        handle.await.unwrap();
    }
}
