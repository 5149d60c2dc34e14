//! The API request log: one row per API request, written in batches off the request path.
//!
//! Handlers' responses are never held up by it: rows go into a bounded queue and a
//! background task writes them in batches of `BATCH` rows, a partial batch after a second.
//! When the queue is full (the database is slow or down for long), rows are dropped and
//! counted; this log is for analysis, unlike the audit log, which never drops an
//! acknowledged event.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::mpsc;
use tracing::warn;

use crate::store::{ApiRequestRow, Store};

/// Rows written per insert at most.
const BATCH: usize = 500;
/// Rows waiting at most.
const QUEUE: usize = 20_000;
/// Longest wait before a partial batch is written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the writer takes the rows queued meanwhile: at this interval the queue holds
/// [`QUEUE`] rows for 200,000 requests a second.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// The sending side, held by the node.
#[derive(Clone, Debug)]
pub struct RequestLog {
    queue: mpsc::Sender<ApiRequestRow>,
    dropped: IntCounter,
}

impl RequestLog {
    /// Starts the writer task; returns the log and the task.
    pub fn start(
        store: Arc<dyn Store>,
        registry: &prometheus::Registry,
    ) -> prometheus::Result<(Self, tokio::task::JoinHandle<()>)> {
        let dropped = IntCounter::new(
            "sark_api_request_log_dropped_total",
            "API request log rows dropped because the queue was full or the insert failed",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        let (queue, rows) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_batches(store, rows, dropped.clone()));
        Ok((Self { queue, dropped }, task))
    }

    /// Queues a row; drops it (counted) when the queue is full.
    pub fn record(&self, row: ApiRequestRow) {
        if self.queue.try_send(row).is_err() {
            self.dropped.inc();
        }
    }
}

/// The writer task. It wakes every [`DRAIN_EVERY`] and takes what has queued meanwhile,
/// rather than once per row: a busy node would otherwise pay a task wake-up (often a
/// thread wake-up) per request.
async fn write_batches(
    store: Arc<dyn Store>,
    mut rows: mpsc::Receiver<ApiRequestRow>,
    dropped: IntCounter,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_write = tokio::time::Instant::now();
    loop {
        drain.tick().await;
        let closed = loop {
            match rows.try_recv() {
                Ok(row) => {
                    batch.push(row);
                    if batch.len() == BATCH {
                        flush(store.as_ref(), &mut batch, &dropped).await;
                        last_write = tokio::time::Instant::now();
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => break false,
                Err(mpsc::error::TryRecvError::Disconnected) => break true,
            }
        };
        if closed || last_write.elapsed() >= FLUSH_EVERY {
            flush(store.as_ref(), &mut batch, &dropped).await;
            last_write = tokio::time::Instant::now();
        }
        if closed {
            return;
        }
    }
}

async fn flush(store: &dyn Store, batch: &mut Vec<ApiRequestRow>, dropped: &IntCounter) {
    if batch.is_empty() {
        return;
    }
    if let Err(err) = store.record_requests(batch).await {
        warn!(error = %err, rows = batch.len(), "could not write the API request log");
        dropped.inc_by(batch.len() as u64);
    }
    batch.clear();
}
