//! The AuditWriter: every audit event of the node passes through it.
//!
//! It places events on this node's hash chain and commits them in groups: the first event
//! that arrives while nothing is pending queues a `Flush` behind whatever is already in the
//! mailbox, so every event that arrived meanwhile shares one transaction. A caller's reply
//! is sent only after its event committed, so an acknowledged event survives `kill -9`.
//!
//! Each hash is an HMAC-SHA-256, keyed by a key derived from the secrets key (which is not
//! in the database), over the event's canonical encoding and the previous hash. A database
//! writer alone therefore cannot forge a consistent chain.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use hmac::{Hmac, Mac};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, Message, RpcReplyPort, SpawnErr};
use serde_json::Value;
use sha2::Sha256;
use tokio::time::Instant;
use tracing::{error, warn};
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::mailbox::Mailbox;
use crate::metrics::ActorMetrics;
use crate::store::{
    AuditEvent, AuditStore, ChainedEvent, PositionKind, PositionSeal, SealedPosition, StoreError,
};
use crate::supervisor::{ChildSpec, Slot, spawn_into};

/// How often a caller looks for a writer that is being restarted.
const WRITER_POLL: Duration = Duration::from_millis(20);

/// How long one group commit may take before its outcome is treated as unknown.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);

/// The `prev_hash` of the first event on a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The HMAC key of the audit chain. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct ChainKey(Arc<[u8]>);

impl ChainKey {
    /// Derives the chain key from the node's secrets key.
    pub fn derive(secrets_key: &[u8]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secrets_key)
            .unwrap_or_else(|_| unreachable_hmac_key());
        mac.update(b"sark audit chain v1");
        Self(mac.finalize().into_bytes().to_vec().into())
    }

    /// The chain hash of `event` at position `seq` of `chain`, following `prev_hash`.
    pub fn hash(&self, chain: &str, seq: i64, prev_hash: &str, event: &AuditEvent) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable_hmac_key());
        mac.update(canonical_encoding(chain, seq, prev_hash, event).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn position_mac(
        &self,
        kind: PositionKind,
        chain: &str,
        seq: i64,
        hash: &str,
        at: DateTime<Utc>,
    ) -> Hmac<Sha256> {
        let kind = match kind {
            PositionKind::Head => "head",
            PositionKind::Checkpoint => "checkpoint",
        };
        let fields = Value::Array(vec![
            Value::from("sark chain position v1"),
            Value::from(kind),
            Value::from(chain),
            Value::from(seq),
            Value::from(hash),
            Value::from(at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        ]);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable_hmac_key());
        mac.update(fields.to_string().as_bytes());
        mac
    }

    /// Whether `position` carries the seal of `chain`'s `kind` position (constant time).
    pub fn verify_seal(&self, kind: PositionKind, chain: &str, position: &SealedPosition) -> bool {
        let Some(Ok(mac)) = position.mac.as_deref().map(hex::decode) else {
            return false;
        };
        self.position_mac(kind, chain, position.seq, &position.hash, position.at)
            .verify_slice(&mac)
            .is_ok()
    }
}

impl PositionSeal for ChainKey {
    fn seal(
        &self,
        kind: PositionKind,
        chain: &str,
        seq: i64,
        hash: &str,
        at: DateTime<Utc>,
    ) -> String {
        hex::encode(
            self.position_mac(kind, chain, seq, hash, at)
                .finalize()
                .into_bytes(),
        )
    }
}

/// HMAC-SHA-256 accepts keys of any length, so key setup cannot fail.
fn unreachable_hmac_key() -> Hmac<Sha256> {
    unreachable!("HMAC accepts keys of any length")
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainKey(<redacted>)")
    }
}

/// The canonical encoding that the chain hash covers: a JSON array of the chain position and
/// every event field, objects with sorted keys, timestamps in RFC 3339 with microseconds.
pub fn canonical_encoding(chain: &str, seq: i64, prev_hash: &str, event: &AuditEvent) -> String {
    let fields = Value::Array(vec![
        Value::from(chain),
        Value::from(seq),
        Value::from(prev_hash),
        Value::from(event.id.to_string()),
        Value::from(
            event
                .timestamp
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        Value::from(event.event_type.as_str()),
        event.actor.as_deref().map_or(Value::Null, Value::from),
        event.ip.as_deref().map_or(Value::Null, Value::from),
        event.resource.as_deref().map_or(Value::Null, Value::from),
        Value::from(event.outcome.as_str()),
        event.details.clone(),
        Value::from(event.node_id.as_str()),
    ]);
    let mut out = String::new();
    write_canonical(&fields, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Why a chain does not verify at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakReason {
    /// The event's hash is not the HMAC of its content: it was edited, forged or is
    /// unreadable.
    Tampered,
    /// The event does not name its predecessor's hash.
    Unlinked,
    /// Events are missing from here.
    Missing,
    /// The recorded head is ahead of the stored events: the newest events are gone.
    Truncated,
    /// The recorded head names another hash than the event at its position.
    HeadMismatch,
    /// Events exist beyond the recorded head: the head was moved back.
    HeadBehind,
    /// Events or a checkpoint exist but the chain has no recorded head.
    HeadMissing,
    /// The recorded head carries no valid seal (it was rewritten, or predates seals).
    HeadUnsealed,
    /// The retention checkpoint carries no valid seal (it was rewritten, or predates seals).
    CheckpointUnsealed,
    /// The SIEM holds an authentic event (or head statement) at this position that the
    /// store does not have.
    MissingFromStore,
    /// The store's event at this position differs from the SIEM's authentic copy.
    DiffersFromSiem,
}

/// A position where a stored chain does not verify.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainBreak {
    /// The chain.
    pub chain: String,
    /// The first sequence number at which it does not verify.
    pub seq: i64,
    /// Why.
    pub reason: BreakReason,
}

/// What comparing the store with a SIEM's copy of the chains found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SiemComparison {
    /// Authentic events of the export compared with the store.
    pub events: u64,
    /// Authentic head statements among them.
    pub statements: u64,
    /// Export entries whose hash is not the audit key's HMAC of their content: ignored, as
    /// anyone could have written them.
    pub not_authentic: u64,
}

/// What verifying every stored chain found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// No break anywhere.
    pub ok: bool,
    /// Events checked.
    pub checked: u64,
    /// Chains checked.
    pub chains: u64,
    /// Where chains break (at most [`MAX_BREAKS`]).
    pub broken: Vec<ChainBreak>,
    /// The comparison with a SIEM export, when one was supplied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem: Option<SiemComparison>,
}

impl Verification {
    fn report(&mut self, chain: &str, seq: i64, reason: BreakReason) {
        let duplicate = self
            .broken
            .last()
            .is_some_and(|b| b.chain == chain && b.seq == seq);
        if !duplicate && self.broken.len() < MAX_BREAKS {
            self.broken.push(ChainBreak {
                chain: chain.to_owned(),
                seq,
                reason,
            });
        }
        self.ok = false;
    }
}

/// Most breaks reported by one verification.
pub const MAX_BREAKS: usize = 1000;

/// Events read per query while verifying.
const VERIFY_SEGMENT: u32 = 1000;

/// The event type of a writer's sealed statement of its chain head.
pub const HEAD_STATEMENT_EVENT: &str = "audit_chain_head";

/// The event type a writer records when it finds its chain's recorded head without a valid
/// seal, before it extends the chain from there.
pub const HEAD_UNSEALED_EVENT: &str = "audit_head_unsealed";

/// Verifies every chain from its retention checkpoint (or its start) to its recorded head:
/// each event's HMAC, each link to the previous hash, that no sequence number is missing,
/// and the seals of the head and the checkpoint.
pub async fn verify_chains(
    store: &dyn AuditStore,
    key: &ChainKey,
) -> Result<Verification, StoreError> {
    let mut result = Verification {
        ok: true,
        ..Verification::default()
    };
    for chain in store.audit_chains().await? {
        result.chains += 1;
        verify_chain(store, key, &chain, &mut result).await?;
    }
    Ok(result)
}

async fn verify_chain(
    store: &dyn AuditStore,
    key: &ChainKey,
    chain: &str,
    result: &mut Verification,
) -> Result<(), StoreError> {
    let checkpoint = store.audit_checkpoint(chain).await?;
    let (mut seq, mut hash) = match &checkpoint {
        Some(position) => {
            if !key.verify_seal(PositionKind::Checkpoint, chain, position) {
                result.report(chain, position.seq, BreakReason::CheckpointUnsealed);
            }
            (position.seq, position.hash.clone())
        }
        None => (0, GENESIS_HASH.to_owned()),
    };
    // The head is read first: events past it were appended while verifying.
    let head = store.chain_head(chain).await?;
    if let Some(position) = &head
        && !key.verify_seal(PositionKind::Head, chain, position)
    {
        result.report(chain, position.seq, BreakReason::HeadUnsealed);
    }
    let limit = head.as_ref().map(|h| h.seq);
    let mut seen = 0_u64;
    let mut past_head = false;
    'segments: loop {
        let segment = store.chain_segment(chain, seq, VERIFY_SEGMENT).await?;
        if segment.is_empty() {
            break;
        }
        for stored in segment {
            if limit.is_some_and(|limit| stored.seq > limit) {
                past_head = true;
                break 'segments;
            }
            seen += 1;
            if stored.seq > seq + 1 {
                result.report(chain, seq + 1, BreakReason::Missing);
            } else if stored.prev_hash != hash {
                result.report(chain, stored.seq, BreakReason::Unlinked);
            }
            if key.hash(chain, stored.seq, &stored.prev_hash, &stored.event) != stored.hash {
                result.report(chain, stored.seq, BreakReason::Tampered);
            }
            seq = stored.seq;
            hash = stored.hash;
        }
    }
    result.checked += seen;
    match &head {
        None if seen > 0 || checkpoint.is_some() => {
            result.report(chain, seq, BreakReason::HeadMissing);
        }
        None => {}
        Some(head) if head.seq > seq => result.report(chain, seq + 1, BreakReason::Truncated),
        Some(head) if head.seq < seq => result.report(chain, head.seq + 1, BreakReason::HeadBehind),
        Some(head) if head.hash != hash => result.report(chain, seq, BreakReason::HeadMismatch),
        Some(_) => {}
    }
    // Events past the head are legitimate only if the head has moved since it was read:
    // the writer moves both in one transaction.
    if past_head && store.chain_head(chain).await?.map(|h| h.seq) == limit {
        result.report(chain, seq + 1, BreakReason::HeadBehind);
    }
    Ok(())
}

/// Compares the store with a SIEM's copy of the chains: every authentic exported event (its
/// hash is the audit key's HMAC of its content) and every position an authentic head
/// statement names must be in the store with the same hash, unless retention has removed it
/// (at or before the chain's sealed checkpoint). This catches what the store alone cannot:
/// a chain cut back to an earlier head together with that head's old, validly sealed row,
/// or a chain deleted outright.
pub async fn compare_with_siem(
    store: &dyn AuditStore,
    key: &ChainKey,
    exported: &[ChainedEvent],
    result: &mut Verification,
) -> Result<(), StoreError> {
    let mut comparison = SiemComparison::default();
    let mut expected: std::collections::BTreeMap<&str, std::collections::BTreeMap<i64, String>> =
        Default::default();
    for entry in exported {
        if key.hash(&entry.chain, entry.seq, &entry.prev_hash, &entry.event) != entry.hash {
            comparison.not_authentic += 1;
            continue;
        }
        comparison.events += 1;
        let positions = expected.entry(entry.chain.as_str()).or_default();
        positions.insert(entry.seq, entry.hash.clone());
        if entry.event.event_type == HEAD_STATEMENT_EVENT
            && let (Some(seq), Some(hash)) = (
                entry.event.details["seq"].as_i64(),
                entry.event.details["hash"].as_str(),
            )
        {
            comparison.statements += 1;
            positions.insert(seq, hash.to_owned());
        }
    }
    for (chain, positions) in expected {
        let removed = match store.audit_checkpoint(chain).await? {
            Some(cp) if key.verify_seal(PositionKind::Checkpoint, chain, &cp) => cp.seq,
            _ => 0,
        };
        let mut wanted = positions.range(removed + 1..).peekable();
        let Some(first) = wanted.peek().map(|(seq, _)| **seq) else {
            continue;
        };
        let mut after = first - 1;
        while wanted.peek().is_some() {
            let segment = store.chain_segment(chain, after, VERIFY_SEGMENT).await?;
            let Some(last) = segment.last().map(|e| e.seq) else {
                break;
            };
            for stored in &segment {
                while let Some((seq, hash)) = wanted.peek().map(|(s, h)| (**s, *h)) {
                    if seq > stored.seq {
                        break;
                    }
                    if seq < stored.seq {
                        result.report(chain, seq, BreakReason::MissingFromStore);
                    } else if *hash != stored.hash {
                        result.report(chain, seq, BreakReason::DiffersFromSiem);
                    }
                    wanted.next();
                }
            }
            after = last;
        }
        for (&seq, _) in wanted {
            result.report(chain, seq, BreakReason::MissingFromStore);
        }
    }
    result.siem = Some(comparison);
    Ok(())
}

/// The name a writer's chain has in audit generation `generation`: its own name in the
/// first, then `<name>~<generation>` — a restored store never continues a chain whose
/// later events a SIEM may already hold.
pub fn chain_of_generation(name: &str, generation: u32) -> String {
    if generation == 0 {
        name.to_owned()
    } else {
        format!("{name}~{generation}")
    }
}

/// Where an event landed on its chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainPosition {
    /// Chain name.
    pub chain: String,
    /// Sequence number.
    pub seq: i64,
}

/// Why an event was not recorded.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// The store refused or could not be reached; the event was not committed.
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
    /// The writer is restarting or did not answer in time.
    #[error("audit writer unavailable")]
    WriterUnavailable,
}

/// Messages of the [`AuditWriter`].
pub enum AuditMessage {
    /// Records an event; the reply is sent once the event is committed. An event whose
    /// deadline passed before its commit started is dropped: its caller has given up.
    Record(Box<AuditEvent>, Instant, Reply),
    /// Commits every pending event.
    Flush,
    /// Records a sealed statement of the chain head if the chain moved since the last one.
    StateHead,
    /// Makes the writer panic, to prove supervision restarts it.
    #[cfg(feature = "fault-injection")]
    Panic,
}

impl Message for AuditMessage {}

/// The actor.
#[derive(Debug, Default)]
pub struct AuditWriter {
    /// Where its own timers count their messages in.
    pub mailbox: Mailbox,
}

/// Where a writer finds its chain's key when it starts: the key may be kept in the store,
/// sealed, and so be at hand only once the store answers.
#[async_trait]
pub trait ChainKeySource: Send + Sync {
    /// The chain key.
    async fn chain_key(&self) -> Result<ChainKey, StoreError>;
}

#[async_trait]
impl ChainKeySource for ChainKey {
    async fn chain_key(&self) -> Result<ChainKey, StoreError> {
        Ok(self.clone())
    }
}

/// What the writer starts with.
pub struct AuditWriterArguments {
    /// Where events are committed.
    pub store: Arc<dyn AuditStore>,
    /// This node's chain name.
    pub chain: String,
    /// Where the HMAC key of the chain is found.
    pub key: Arc<dyn ChainKeySource>,
    /// SIEM sinks that receive a copy of every event through the outbox.
    pub sinks: Vec<String>,
    /// Events per commit at most.
    pub max_batch: usize,
    /// Metrics.
    pub metrics: ActorMetrics,
    /// Stamps the events the writer records itself.
    pub clock: SharedClock,
    /// The node named on the events the writer records itself.
    pub node_id: String,
    /// How often to state the chain head while the chain moves; `None` for never.
    pub head_statements: Option<Duration>,
}

type Reply = RpcReplyPort<Result<ChainPosition, AuditError>>;

struct Pending {
    event: AuditEvent,
    deadline: Instant,
    /// `None` for the events the writer records itself.
    reply: Option<Reply>,
}

/// The writer's state: the chain head as committed, and the events waiting for a commit.
pub struct AuditWriterState {
    args: AuditWriterArguments,
    key: ChainKey,
    head_seq: i64,
    head_hash: String,
    /// The sequence number of the last head statement this instance recorded.
    stated_seq: i64,
    pending: Vec<Pending>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

impl AuditWriter {
    async fn flush(state: &mut AuditWriterState) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        let pending: Vec<Pending> = std::mem::take(&mut state.pending)
            .into_iter()
            .filter(|p| p.deadline > now)
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let events: Vec<AuditEvent> = pending.iter().map(|p| p.event.clone()).collect();
        match Self::commit(state, &events).await {
            Ok(positions) => {
                for (p, position) in pending.into_iter().zip(positions) {
                    p.answer(Ok(position));
                }
                Ok(())
            }
            // One refused event must not fail its neighbours: commit them one by one.
            Err(StoreError::Invalid(_)) if pending.len() > 1 => {
                for p in pending {
                    let result = Self::commit(state, std::slice::from_ref(&p.event)).await;
                    match result {
                        Ok(mut positions) => {
                            p.answer(positions.pop().ok_or(AuditError::WriterUnavailable));
                        }
                        Err(err) => Self::failed(state, vec![p], err)?,
                    }
                }
                Ok(())
            }
            Err(err) => Self::failed(state, pending, err),
        }
    }

    /// Answers the callers of a failed commit; crashes the writer when the chain head is
    /// no longer known, so its restart reloads it from the store.
    fn failed(
        state: &AuditWriterState,
        pending: Vec<Pending>,
        err: StoreError,
    ) -> Result<(), ActorProcessingErr> {
        state.args.metrics.audit_commit_failures.inc();
        let reply_err = AuditError::Unavailable(err.to_string());
        for p in pending {
            p.answer(Err(reply_err.clone()));
        }
        if let StoreError::Contended(_) = err {
            error!(chain = state.args.chain, error = %err, "audit chain head uncertain; restarting the writer");
            return Err(Box::new(err));
        }
        warn!(chain = state.args.chain, error = %err, "audit commit failed");
        Ok(())
    }

    /// Places `events` on the chain after the current head and commits them in one
    /// transaction; moves the head only on success.
    async fn commit(
        state: &mut AuditWriterState,
        events: &[AuditEvent],
    ) -> Result<Vec<ChainPosition>, StoreError> {
        let chain = state.args.chain.clone();
        let mut prev_hash = state.head_hash.clone();
        let mut chained = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let seq = state.head_seq + 1 + i as i64;
            let hash = state.key.hash(&chain, seq, &prev_hash, event);
            chained.push(ChainedEvent {
                event: event.clone(),
                chain: chain.clone(),
                seq,
                prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
                hash,
            });
        }
        state
            .args
            .metrics
            .audit_batch_size
            .observe(chained.len() as f64);
        let head_mac = chained.last().map_or_else(String::new, |last| {
            state.key.seal(
                PositionKind::Head,
                &chain,
                last.seq,
                &last.hash,
                last.event.timestamp,
            )
        });
        let append = state.args.store.append_audit(
            &chain,
            state.head_seq,
            &chained,
            &head_mac,
            &state.args.sinks,
        );
        match tokio::time::timeout(COMMIT_TIMEOUT, append).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            // The transaction may or may not have committed.
            Err(_) => {
                return Err(StoreError::Contended(format!(
                    "audit commit on chain {chain} timed out"
                )));
            }
        }
        state
            .args
            .metrics
            .audit_committed
            .inc_by(chained.len() as u64);
        state.head_seq += chained.len() as i64;
        state.head_hash = prev_hash;
        Ok(chained
            .iter()
            .map(|e| ChainPosition {
                chain: chain.clone(),
                seq: e.seq,
            })
            .collect())
    }
}

impl Pending {
    fn answer(self, result: Result<ChainPosition, AuditError>) {
        if let Some(reply) = self.reply {
            let _ = reply.send(result);
        }
    }
}

impl AuditWriterState {
    /// An event the writer records itself, about its own chain.
    fn own_event(&self, event_type: &str, outcome: &str, details: Value) -> AuditEvent {
        AuditEvent {
            id: Uuid::now_v7(),
            timestamp: self.args.clock.now().trunc_subsecs(6),
            event_type: event_type.to_owned(),
            actor: None,
            ip: None,
            resource: Some(format!("audit_chain:{}", self.args.chain)),
            outcome: outcome.to_owned(),
            details,
            node_id: self.args.node_id.clone(),
        }
    }

    /// Queues an event the writer records itself; no one waits for it.
    fn queue_own(&mut self, event: AuditEvent) {
        self.pending.push(Pending {
            event,
            deadline: Instant::now() + COMMIT_TIMEOUT,
            reply: None,
        });
    }

    /// A sealed statement of the current head, unless nothing moved since the last one.
    fn state_head(&mut self) {
        if self.head_seq <= self.stated_seq {
            return;
        }
        let at = self.args.clock.now().trunc_subsecs(6);
        let mac = self.key.seal(
            PositionKind::Head,
            &self.args.chain,
            self.head_seq,
            &self.head_hash,
            at,
        );
        let details = serde_json::json!({
            "seq": self.head_seq,
            "hash": self.head_hash,
            "at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "mac": mac,
        });
        let event = self.own_event(HEAD_STATEMENT_EVENT, "success", details);
        self.queue_own(event);
        // The statement itself moves the head by one: that is not news for the next one.
        self.stated_seq = self.head_seq + 1;
    }
}

/// Replaces NUL characters, which PostgreSQL refuses in text and JSON, so hostile input
/// (a username with a NUL in a failed login) is still recorded, and hashed as stored.
fn sanitize(event: &mut AuditEvent) {
    fn clean(s: &mut String) {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{fffd}");
        }
    }
    fn clean_value(v: &mut Value) {
        match v {
            Value::String(s) => clean(s),
            Value::Array(items) => items.iter_mut().for_each(clean_value),
            Value::Object(map) => {
                let dirty: Vec<String> = map.keys().filter(|k| k.contains('\0')).cloned().collect();
                for key in dirty {
                    if let Some(value) = map.remove(&key) {
                        map.insert(key.replace('\0', "\u{fffd}"), value);
                    }
                }
                map.values_mut().for_each(clean_value);
            }
            _ => {}
        }
    }
    clean(&mut event.event_type);
    clean(&mut event.outcome);
    clean(&mut event.node_id);
    for field in [&mut event.actor, &mut event.ip, &mut event.resource]
        .into_iter()
        .flatten()
    {
        clean(field);
    }
    clean_value(&mut event.details);
}

impl Actor for AuditWriter {
    type Msg = AuditMessage;
    type State = AuditWriterState;
    type Arguments = AuditWriterArguments;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        mut args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.chain = chain_of_generation(&args.chain, args.store.audit_generation().await?);
        let key = args.key.chain_key().await?;
        let head = args.store.chain_head(&args.chain).await?;
        let timer = args.head_statements.map(|every| {
            let mailbox = self.mailbox.clone();
            myself.send_interval(every, move || mailbox.post(AuditMessage::StateHead))
        });
        let mut state = AuditWriterState {
            head_seq: head.as_ref().map_or(0, |h| h.seq),
            head_hash: head
                .as_ref()
                .map_or_else(|| GENESIS_HASH.to_owned(), |h| h.hash.clone()),
            stated_seq: 0,
            pending: Vec::new(),
            timer,
            args,
            key,
        };
        // The chain goes on from the recorded head either way (refusing to audit helps no
        // one), but a head without a valid seal is put on the chain itself, and so reaches
        // the SIEM, before anything follows it.
        if let Some(head) = head
            && !state
                .key
                .verify_seal(PositionKind::Head, &state.args.chain, &head)
        {
            error!(
                chain = state.args.chain,
                seq = head.seq,
                "the recorded audit chain head has no valid seal"
            );
            let details = serde_json::json!({
                "seq": head.seq,
                "hash": head.hash,
                "recorded_at": head.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "sealed": head.mac.is_some(),
            });
            let event = state.own_event(HEAD_UNSEALED_EVENT, "failure", details);
            state.queue_own(event);
            myself.cast(self.mailbox.post(AuditMessage::Flush))?;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.timer.take() {
            timer.abort();
        }
        // A graceful stop commits what is pending rather than dropping acknowledged work.
        Self::flush(state).await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AuditMessage::Record(mut event, deadline, reply) => {
                // Stored timestamps keep microseconds (PostgreSQL's precision), so the
                // hash covers exactly what a verifier will read back.
                event.timestamp = event.timestamp.trunc_subsecs(6);
                sanitize(&mut event);
                if state.pending.is_empty() {
                    myself.cast(self.mailbox.post(AuditMessage::Flush))?;
                }
                state.pending.push(Pending {
                    event: *event,
                    deadline,
                    reply: Some(reply),
                });
                if state.pending.len() >= state.args.max_batch {
                    Self::flush(state).await?;
                }
            }
            AuditMessage::Flush => Self::flush(state).await?,
            AuditMessage::StateHead => {
                state.state_head();
                Self::flush(state).await?;
            }
            #[cfg(feature = "fault-injection")]
            AuditMessage::Panic => {
                #[allow(clippy::panic)]
                {
                    panic!("fault injection: audit writer panic");
                }
            }
        }
        Ok(())
    }
}

/// Spawns the AuditWriter under the NodeSupervisor.
pub struct AuditWriterSpec {
    /// Where events are committed.
    pub store: Arc<dyn AuditStore>,
    /// This node's chain name.
    pub chain: String,
    /// Where the HMAC key of the chain is found.
    pub key: Arc<dyn ChainKeySource>,
    /// SIEM sinks that receive a copy of every event.
    pub sinks: Vec<String>,
    /// Where the running instance is published.
    pub slot: Slot<AuditMessage>,
    /// Metrics.
    pub metrics: ActorMetrics,
    /// Stamps the events the writer records itself.
    pub clock: SharedClock,
    /// How often to state the chain head while the chain moves.
    pub head_statements: Duration,
}

#[async_trait]
impl ChildSpec for AuditWriterSpec {
    fn kind(&self) -> &'static str {
        "audit_writer"
    }

    fn mailbox(&self) -> Mailbox {
        self.slot.mailbox()
    }

    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = AuditWriterArguments {
            store: self.store.clone(),
            chain: self.chain.clone(),
            key: self.key.clone(),
            sinks: self.sinks.clone(),
            max_batch: 256,
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            node_id: self.chain.clone(),
            head_statements: Some(self.head_statements),
        };
        spawn_into(
            |mailbox| AuditWriter { mailbox },
            args,
            supervisor,
            &self.slot,
        )
        .await
    }
}

/// Records audit events through whichever AuditWriter instance is running.
#[derive(Clone, Debug)]
pub struct AuditHandle {
    slot: Slot<AuditMessage>,
    clock: SharedClock,
    node_id: String,
    timeout: Duration,
}

impl AuditHandle {
    /// A handle on the writer published in `slot`.
    pub fn new(slot: Slot<AuditMessage>, clock: SharedClock, node_id: String) -> Self {
        Self {
            slot,
            clock,
            node_id,
            timeout: Duration::from_secs(10),
        }
    }

    /// Starts an event of `event_type` stamped with this node and the current time.
    pub fn event(&self, event_type: &str, outcome: &str) -> AuditEvent {
        AuditEvent {
            id: Uuid::now_v7(),
            timestamp: self.clock.now(),
            event_type: event_type.to_owned(),
            actor: None,
            ip: None,
            resource: None,
            outcome: outcome.to_owned(),
            details: Value::Object(Default::default()),
            node_id: self.node_id.clone(),
        }
    }

    /// Records an event and waits until it is committed (or the handle's timeout passes).
    pub async fn record(&self, event: AuditEvent) -> Result<ChainPosition, AuditError> {
        let deadline = Instant::now() + self.timeout;
        // A writer being restarted (after a crash, or a store that was down at start-up)
        // is waited for within the deadline: the event was never sent, so waiting loses
        // and duplicates nothing.
        while self.slot.get().is_none() {
            if Instant::now() >= deadline {
                return Err(AuditError::WriterUnavailable);
            }
            tokio::time::sleep(WRITER_POLL).await;
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let event = Box::new(event);
        self.slot
            .call(|reply| AuditMessage::Record(event, deadline, reply), left)
            .await
            .unwrap_or(Err(AuditError::WriterUnavailable))
    }

    /// The current writer instance (for tests and fault injection).
    pub fn writer(&self) -> Option<ActorRef<AuditMessage>> {
        self.slot.get()
    }

    /// Now, by the handle's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(details: Value) -> AuditEvent {
        AuditEvent {
            id: Uuid::nil(),
            timestamp: DateTime::parse_from_rfc3339("2026-11-26T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            event_type: "login_succeeded".into(),
            actor: Some("alice".into()),
            ip: None,
            resource: None,
            outcome: "success".into(),
            details,
            node_id: "n1".into(),
        }
    }

    #[test]
    fn canonical_encoding_sorts_object_keys_at_every_depth() {
        let a = canonical_encoding(
            "c",
            1,
            GENESIS_HASH,
            &event(json!({"b": 1, "a": {"y": 2, "x": 3}})),
        );
        let b = canonical_encoding(
            "c",
            1,
            GENESIS_HASH,
            &event(json!({"a": {"x": 3, "y": 2}, "b": 1})),
        );
        assert_eq!(a, b);
        assert!(a.contains(r#"{"a":{"x":3,"y":2},"b":1}"#), "{a}");
        assert!(a.contains("2026-11-26T10:00:00.123456Z"), "{a}");
    }

    #[test]
    fn hash_depends_on_key_position_and_content() {
        let key = ChainKey::derive(b"secret one");
        let other = ChainKey::derive(b"secret two");
        let e = event(json!({}));
        let h = key.hash("c", 1, GENESIS_HASH, &e);
        assert_eq!(h.len(), 64);
        assert_eq!(h, key.hash("c", 1, GENESIS_HASH, &e));
        assert_ne!(h, other.hash("c", 1, GENESIS_HASH, &e));
        assert_ne!(h, key.hash("c", 2, GENESIS_HASH, &e));
        assert_ne!(h, key.hash("d", 1, GENESIS_HASH, &e));
        let mut tampered = e.clone();
        tampered.outcome = "failure".into();
        assert_ne!(h, key.hash("c", 1, GENESIS_HASH, &tampered));
    }

    #[test]
    fn nul_characters_are_replaced_everywhere() {
        let mut e = event(json!({"user\u{0}name": ["a\u{0}b", {"k": "\u{0}"}]}));
        e.actor = Some("ev\u{0}il".into());
        sanitize(&mut e);
        assert_eq!(e.actor.as_deref(), Some("ev\u{fffd}il"));
        assert_eq!(
            e.details,
            json!({"user\u{fffd}name": ["a\u{fffd}b", {"k": "\u{fffd}"}]})
        );
        assert!(!canonical_encoding("c", 1, GENESIS_HASH, &e).contains('\0'));
    }

    #[test]
    fn chain_key_debug_hides_the_key() {
        assert_eq!(
            format!("{:?}", ChainKey::derive(b"k")),
            "ChainKey(<redacted>)"
        );
    }
}
