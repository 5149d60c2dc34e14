//! Logging: one JSON object per line on stdout (or readable text), written by a thread of
//! its own so that a request never waits on the stdout pipe's lock or its write.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber; the returned guard flushes what is queued when it is
/// dropped, so hold it until the process ends. Secrets never reach it: they are held in
/// types whose `Debug` is redacted and are never passed as log fields.
pub fn init(config: &LogConfig) -> WorkerGuard {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Not lossy: when the queue is full a request waits rather than lose its access line.
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}
