//! Mailbox lengths for `/api/v1/cluster/actors`.
//!
//! ractor keeps an actor's queue private, so the length is counted from both ends: whoever
//! sends a message counts it in (through [`Slot`](crate::supervisor::Slot) or
//! [`Mailbox::post`] for an actor's own timers), and the `Counted` wrapper every supervised
//! actor runs in counts it out as its handler starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SupervisionEvent};

/// The number of messages waiting for one instance of a supervised actor. Each instance
/// gets its own: a restarted actor starts from zero, and a late timer of the instance that
/// died counts against that one only.
#[derive(Clone, Debug, Default)]
pub struct Mailbox {
    queued: Arc<AtomicUsize>,
}

impl Mailbox {
    /// Messages sent and not yet taken.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts in a message the actor sends itself (from a timer closure) and returns it.
    pub fn post<M>(&self, message: M) -> M {
        self.queued.fetch_add(1, Ordering::Relaxed);
        message
    }

    /// Counts one message out; saturating, because a message sent around the count (fault
    /// injection holds a raw reference) must not wrap the gauge.
    fn taken(&self) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Sends `message` to `actor`, counting it in; a message that could not be sent is
    /// counted out again.
    pub fn cast<M: Message>(&self, actor: &ActorRef<M>, message: M) -> bool {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let sent = actor.cast(message).is_ok();
        if !sent {
            self.taken();
        }
        sent
    }

    /// Sends the request built by `build` to `actor` and waits up to `timeout` for the
    /// answer; `None` when it could not be sent or was not answered in time. A request that
    /// timed out stays counted until the actor takes it.
    pub async fn call<M: Message, T: Send + 'static>(
        &self,
        actor: &ActorRef<M>,
        build: impl FnOnce(RpcReplyPort<T>) -> M,
        timeout: Duration,
    ) -> Option<T> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        match actor.call(build, Some(timeout)).await {
            Ok(CallResult::Success(answer)) => Some(answer),
            Ok(CallResult::Timeout | CallResult::SenderError) => None,
            Err(_) => {
                self.taken();
                None
            }
        }
    }
}

/// Runs `actor` unchanged, counting each message out of `mailbox` as its handler starts.
pub(crate) struct Counted<A> {
    pub(crate) actor: A,
    pub(crate) mailbox: Mailbox,
}

impl<A: Actor> Actor for Counted<A> {
    type Msg = A::Msg;
    type State = A::State;
    type Arguments = A::Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        self.actor.pre_start(myself, args).await
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.actor.post_start(myself, state).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.actor.post_stop(myself, state).await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.mailbox.taken();
        self.actor.handle(myself, message, state).await
    }

    async fn handle_serialized(
        &self,
        myself: ActorRef<Self::Msg>,
        message: ractor::message::SerializedMessage,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.actor.handle_serialized(myself, message, state).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.actor.handle_supervisor_evt(myself, event, state).await
    }
}
