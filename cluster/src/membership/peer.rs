//! The Peer actor: where other nodes' heartbeats, notices, rate checks and session calls
//! arrive.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;
use tracing::{info, warn};

use sark_actors::limiter::RateTable;

use super::refuse;
use super::view::{MembershipEvent, MembershipView};
use crate::wire::{
    Ack, Frame, Hello, Notice, PEER_GROUP, PeerMessage, SessionAnswer, SessionCall, compatible,
};

/// Applies a notice from another node; `true` once it is applied here.
pub type NoticeHandler =
    Arc<dyn Fn(Notice) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Runs a session operation another node forwarded to this one, its owner.
pub type SessionHandler =
    Arc<dyn Fn(SessionCall) -> Pin<Box<dyn Future<Output = SessionAnswer> + Send>> + Send + Sync>;

/// The actor other nodes' heartbeats and notices reach (process group [`PEER_GROUP`]).
#[derive(Debug, Default)]
pub struct Peer;

/// What the Peer actor starts with.
pub struct PeerArguments {
    /// The view it records callers in, and answers from.
    pub view: Arc<MembershipView>,
    /// Applies notices; without one, notices are answered as not applied.
    pub notices: Option<NoticeHandler>,
    /// Where member status changes go (a member announcing its leave).
    pub events: Option<tokio::sync::mpsc::UnboundedSender<MembershipEvent>>,
    /// The buckets this node counts for keys it owns.
    pub rate_table: Option<Arc<RateTable>>,
    /// Runs session operations forwarded to this node.
    pub sessions: Option<SessionHandler>,
    /// How long a departed member's heartbeats are ignored (the lease).
    pub quiet: Duration,
}

impl Actor for Peer {
    type Msg = PeerMessage;
    type State = PeerArguments;
    type Arguments = PeerArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(PEER_GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let view = &state.view;
        match message {
            PeerMessage::Heartbeat(frame, reply) => {
                match frame {
                    Frame::Ok(hello) if compatible(hello.version) => {
                        view.heard(hello, Instant::now(), None, None);
                    }
                    Frame::Ok(hello) => refuse(&hello.node.node_id, hello.version),
                    Frame::Malformed(reason) => {
                        warn!(reason, "malformed heartbeat from a cluster peer; ignored");
                    }
                }
                let _ = reply.send(Frame::Ok(Hello {
                    version: view.protocol_version(),
                    node: view.me(),
                }));
            }
            PeerMessage::Announce(frame, reply) => {
                let applied = match (frame, &state.notices) {
                    (Frame::Ok(announcement), _)
                        if compatible(announcement.version)
                            && announcement.notice == Notice::Leaving =>
                    {
                        if let Some(event) =
                            view.leave(&announcement.from, Instant::now(), state.quiet)
                        {
                            info!(peer = announcement.from, "cluster member left");
                            if let Some(events) = &state.events {
                                let _ = events.send(event);
                            }
                        }
                        true
                    }
                    (Frame::Ok(announcement), Some(apply)) if compatible(announcement.version) => {
                        let applied = apply(announcement.notice).await;
                        if applied {
                            view.applied(&announcement.from, announcement.seq);
                        }
                        applied
                    }
                    (Frame::Ok(announcement), _) => {
                        refuse(&announcement.from, announcement.version);
                        false
                    }
                    (Frame::Malformed(reason), _) => {
                        warn!(reason, "malformed notice from a cluster peer; not applied");
                        false
                    }
                };
                let _ = reply.send(Frame::Ok(Ack {
                    node_id: view.node_id.clone(),
                    applied,
                    heard_ms_ago: view.silences(Instant::now()),
                }));
            }
            PeerMessage::RateCheck(frame, reply) => {
                let answer = match (frame, &state.rate_table) {
                    (Frame::Ok(query), Some(table)) if compatible(query.version) => {
                        Frame::Ok(table.check(&query.key, query.limit, Instant::now()))
                    }
                    (Frame::Ok(_), Some(_)) => Frame::Malformed("unsupported version".into()),
                    (Frame::Ok(_), None) => Frame::Malformed("this node counts no buckets".into()),
                    (Frame::Malformed(reason), _) => {
                        warn!(reason, "malformed rate check from a cluster peer");
                        Frame::Malformed(reason)
                    }
                };
                let _ = reply.send(answer);
            }
            PeerMessage::Session(frame, reply) => match (frame, &state.sessions) {
                (Frame::Ok(call), Some(run)) if compatible(call.version) => {
                    // Off the actor: one slow operation must not hold up heartbeats.
                    let answer = run(call);
                    tokio::spawn(async move {
                        let _ = reply.send(Frame::Ok(answer.await));
                    });
                }
                (Frame::Ok(_), Some(_)) => {
                    let _ = reply.send(Frame::Malformed("unsupported version".into()));
                }
                (Frame::Ok(_), None) => {
                    let _ = reply.send(Frame::Malformed("this node runs no sessions".into()));
                }
                (Frame::Malformed(reason), _) => {
                    warn!(reason, "malformed session call from a cluster peer");
                    let _ = reply.send(Frame::Malformed(reason));
                }
            },
        }
        Ok(())
    }
}
