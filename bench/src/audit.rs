//! The audit and SIEM benchmark, in process against the real stores:
//!
//! - audit events committed per second through the AuditWriter (group commit, `concurrency`
//!   callers each waiting for their commit), next to one event per transaction written
//!   straight to the store (the baseline without group commit);
//! - SIEM delivery events per second from the durable outbox to a local Splunk HEC receiver
//!   through a SiemForwarder, next to the same sink posting the same batches straight from
//!   memory (the baseline without the outbox).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use prometheus::Registry;
use ractor::Actor;
use serde_json::json;

use sark::config::{Config, Secret, SplunkConfig};
use sark::siem::SplunkSink;
use sark::store::{AuditEvent, Backend, ChainedEvent, PositionKind, PositionSeal, Store};
use sark_actors::audit::{AuditMessage, AuditWriter, AuditWriterArguments, ChainKey};
use sark_actors::clock::{SharedClock, SystemClock};
use sark_actors::metrics::ActorMetrics;
use sark_actors::siem::{
    ForwarderArguments, ForwarderSettings, SiemForwarder, SiemMetrics, SiemRegistry, SiemSink,
};
use sark_chaos::receivers::HecReceiver;

use crate::Sample;

const HEC_TOKEN: &str = "bench-hec-token";
/// Events per SIEM request, as the forwarder sends them by default.
const SIEM_BATCH: usize = 500;

/// A store to measure, with the directory it may live in.
pub struct BenchStore {
    /// `sqlite` or `postgres`.
    pub label: &'static str,
    backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl BenchStore {
    /// A fresh SQLite database in a temporary directory.
    pub async fn sqlite() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = Config::for_test(dir.path());
        let backend = Backend::open(&config)
            .await
            .map_err(|e| anyhow!("opening SQLite: {e}"))?;
        Ok(Self {
            label: "sqlite",
            backend,
            _dir: Some(dir),
        })
    }

    /// The PostgreSQL database at `url`, migrated.
    pub async fn postgres(url: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = Config::for_test(dir.path());
        config.database.url = Some(Secret::new(url));
        let backend = Backend::open(&config)
            .await
            .map_err(|e| anyhow!("opening PostgreSQL: {e}"))?;
        let ready = backend
            .initialize(clock().now())
            .await
            .map_err(|e| anyhow!("migrating PostgreSQL: {e}"))?;
        ensure!(ready, "PostgreSQL at the --database-url is not reachable");
        Ok(Self {
            label: "postgres",
            backend,
            _dir: None,
        })
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        self.backend.store()
    }
}

fn chain_key() -> ChainKey {
    ChainKey::derive(b"bench audit chain key, 32 bytes!")
}

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

fn event(clock: &SharedClock, i: usize) -> AuditEvent {
    AuditEvent {
        id: uuid::Uuid::now_v7(),
        timestamp: clock.now(),
        event_type: "server_registered".into(),
        actor: Some("bench".into()),
        ip: Some("127.0.0.1".into()),
        resource: Some(format!("server:bench-{i}")),
        outcome: "success".into(),
        details: json!({"endpoint": format!("https://bench-{i}.example.org/"), "tags": {"env": "bench"}}),
        node_id: "bench".into(),
    }
}

/// Places `event` at `seq` on `chain`, after `prev_hash`, which becomes its hash.
fn link(
    key: &ChainKey,
    chain: &str,
    seq: i64,
    prev_hash: &mut String,
    event: AuditEvent,
) -> ChainedEvent {
    let hash = key.hash(chain, seq, prev_hash, &event);
    ChainedEvent {
        event,
        chain: chain.to_owned(),
        seq,
        prev_hash: std::mem::replace(prev_hash, hash.clone()),
        hash,
    }
}

/// `events` chained on a new chain, as the writer would chain them.
fn chained(clock: &SharedClock, key: &ChainKey, chain: &str, events: usize) -> Vec<ChainedEvent> {
    let mut prev_hash = "0".repeat(64);
    (0..events)
        .map(|i| {
            let seq = i64::try_from(i).unwrap_or(i64::MAX) + 1;
            link(key, chain, seq, &mut prev_hash, event(clock, i))
        })
        .collect()
}

fn latency_sample(mut latencies: Vec<Duration>, elapsed: Duration) -> Sample {
    latencies.sort();
    let pct = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Sample {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(50),
        p99_ms: pct(99),
    }
}

/// Events committed per second through an AuditWriter with `concurrency` callers.
pub async fn group_commits(
    store: &BenchStore,
    concurrency: usize,
    seconds: u64,
) -> anyhow::Result<Sample> {
    let args = AuditWriterArguments {
        store: store.store(),
        chain: format!("bench-{}", uuid::Uuid::new_v4().simple()),
        key: Arc::new(chain_key()),
        sinks: Vec::new(),
        max_batch: 256,
        metrics: ActorMetrics::register(&Registry::new())?,
        clock: clock(),
        node_id: "bench".into(),
        head_statements: None,
    };
    let (writer, handle) = Actor::spawn(None, AuditWriter::default(), args)
        .await
        .map_err(|e| anyhow!("spawning the audit writer: {e}"))?;
    let clock = clock();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let callers: Vec<_> = (0..concurrency)
        .map(|c| {
            let writer = writer.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let committed = ractor::call_t!(
                        writer,
                        AuditMessage::Record,
                        10_000,
                        Box::new(event(&clock, c)),
                        tokio::time::Instant::now() + Duration::from_secs(10)
                    );
                    match committed {
                        Ok(Ok(_)) => latencies.push(sent.elapsed()),
                        Ok(Err(e)) => return Err(anyhow!("audit commit failed: {e}")),
                        Err(e) => return Err(anyhow!("audit writer did not answer: {e}")),
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for caller in callers {
        latencies.extend(caller.await??);
    }
    let elapsed = started.elapsed();
    writer.stop(None);
    handle.await.context("audit writer")?;
    Ok(latency_sample(latencies, elapsed))
}

/// Events committed per second one per transaction, straight to the store, one caller.
pub async fn single_commits(store: &BenchStore, seconds: u64) -> anyhow::Result<Sample> {
    let store = store.store();
    let clock = clock();
    let key = chain_key();
    let chain = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut prev_hash = "0".repeat(64);
    let mut seq = 0;
    while Instant::now() < deadline {
        let sent = Instant::now();
        let chained = link(&key, &chain, seq + 1, &mut prev_hash, event(&clock, 0));
        let head_mac = head_seal(&key, &chained);
        store
            .append_audit(&chain, seq, &[chained], &head_mac, &[])
            .await
            .map_err(|e| anyhow!("append_audit: {e}"))?;
        seq += 1;
        latencies.push(sent.elapsed());
    }
    Ok(latency_sample(latencies, started.elapsed()))
}

/// A Splunk HEC receiver and a sink that posts to it.
async fn hec() -> anyhow::Result<(HecReceiver, Arc<SplunkSink>)> {
    let receiver = HecReceiver::local(HEC_TOKEN).await?;
    let config = SplunkConfig {
        url: receiver.url(),
        token: Secret::new(HEC_TOKEN),
        index: Some("bench".into()),
        source: "sark".into(),
        sourcetype: "sark:audit".into(),
        tls_verify: true,
        ca_file: None,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let sink = SplunkSink::new(&config, client, "bench").map_err(|e| anyhow!("{e}"))?;
    Ok((receiver, Arc::new(sink)))
}

async fn wait_received(receiver: &HecReceiver, n: usize) -> anyhow::Result<()> {
    receiver
        .received()
        .wait_for(n, Duration::from_secs(600))
        .await
}

/// `events` audit events put in the outbox, then forwarded by a SiemForwarder to a local
/// collector: events delivered per second, from the forwarder's start to the last arrival.
pub async fn outbox_delivery(store: &BenchStore, events: usize) -> anyhow::Result<Sample> {
    let (receiver, sink) = hec().await?;
    let clock = clock();
    let key = chain_key();
    let chain = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let batch = chained(&clock, &key, &chain, events);
    let queue = [sink.name().to_owned()];
    let store_port = store.store();
    for (i, chunk) in batch.chunks(SIEM_BATCH).enumerate() {
        let prev = i64::try_from(i * SIEM_BATCH).unwrap_or(i64::MAX);
        let head_mac = chunk.last().map(|e| head_seal(&key, e)).unwrap_or_default();
        store_port
            .append_audit(&chain, prev, chunk, &head_mac, &queue)
            .await
            .map_err(|e| anyhow!("filling the outbox: {e}"))?;
    }
    let registry = Registry::new();
    let args = ForwarderArguments {
        sink,
        store: store_port,
        clock,
        owner: format!("bench/{chain}"),
        settings: ForwarderSettings {
            batch: SIEM_BATCH,
            ..ForwarderSettings::default()
        },
        registry: Arc::new(SiemRegistry::default()),
        metrics: SiemMetrics::register(&registry)?,
        stopping: tokio::sync::watch::channel(false).1,
    };
    let started = Instant::now();
    let (forwarder, handle) = Actor::spawn(None, SiemForwarder::default(), args)
        .await
        .map_err(|e| anyhow!("spawning the forwarder: {e}"))?;
    wait_received(&receiver, events).await?;
    let elapsed = started.elapsed();
    forwarder.stop(None);
    handle.await.context("forwarder")?;
    Ok(Sample {
        per_second: events as f64 / elapsed.as_secs_f64(),
        ..Sample::default()
    })
}

/// The same events posted by the same sink straight from memory, batch after batch.
pub async fn direct_delivery(events: usize) -> anyhow::Result<Sample> {
    let (receiver, sink) = hec().await?;
    let clock = clock();
    let key = chain_key();
    let batch = chained(&clock, &key, "bench-direct", events);
    let started = Instant::now();
    for chunk in batch.chunks(SIEM_BATCH) {
        sink.deliver(chunk)
            .await
            .map_err(|e| anyhow!("delivery: {e}"))?;
    }
    wait_received(&receiver, events).await?;
    Ok(Sample {
        per_second: events as f64 / started.elapsed().as_secs_f64(),
        ..Sample::default()
    })
}

/// The seal of the head that `last` becomes, as the writer computes it.
fn head_seal(key: &ChainKey, last: &ChainedEvent) -> String {
    key.seal(
        PositionKind::Head,
        &last.chain,
        last.seq,
        &last.hash,
        last.event.timestamp,
    )
}
