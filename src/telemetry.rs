//! Logging: one JSON object per line on stdout (or readable text).
//!
//! A request pays for formatting its lines and appending them to a buffer in memory; a
//! thread of its own writes that buffer to stdout every 10 ms, so a request never waits on
//! the stdout pipe's lock or its `write`, and a busy node makes one `write` per interval
//! rather than one per line.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogConfig, LogFormat};

/// Longest time a line waits in memory before it is written.
const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// Bytes of lines waiting at most; past that a logging thread waits for the writer rather
/// than lose a line (an access line is a record of a request).
const MAX_PENDING: usize = 8 * 1024 * 1024;

/// Installs the global subscriber; the returned guard writes what is pending and stops the
/// writer when it is dropped, so hold it until the process ends. Fails only if the writer
/// thread cannot be started. Secrets never reach it: they are held in types whose `Debug`
/// is redacted and are never passed as log fields.
pub fn init(config: &LogConfig) -> std::io::Result<LogGuard> {
    let filter = EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (lines, guard) = Lines::start(std::io::stdout())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(lines);
    let _ = match config.format {
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(guard)
}

/// Formats an event as one JSON object: `timestamp`, `level`, the event's fields (its
/// message as `message`) and `target`, written straight into the line without building a
/// map of values first.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\"", metadata.level())?;
        let mut fields = JsonFields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        write_json_str(&mut writer, metadata.target())?;
        writer.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct JsonFields<'w, W> {
    out: &'w mut W,
    result: fmt::Result,
}

impl<W: fmt::Write> JsonFields<'_, W> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = write!(self.out, ",\"{}\":", field.name()).and_then(|()| value(self.out));
        }
    }
}

impl<W: fmt::Write> Visit for JsonFields<'_, W> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; serde_json writes those as null too.
        if value.is_finite() {
            self.field(field, |out| write!(out, "{value}"));
        } else {
            self.field(field, |out| out.write_str("null"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| write_json_str(out, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaping(&mut *out), "{value}")?;
            out.write_char('"')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaping(&mut *out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `value` as a JSON string, quotes included.
fn write_json_str(out: &mut impl fmt::Write, value: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaping(&mut *out).write_str(value)?;
    out.write_char('"')
}

/// Passes text on with JSON string escapes.
struct Escaping<'w, W: ?Sized>(&'w mut W);

impl<W: fmt::Write + ?Sized> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = at + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

/// Lines waiting for the writer thread, shared by every logging thread.
struct Pending {
    state: Mutex<PendingState>,
    /// Signalled when the writer has taken the lines (for threads waiting on a full buffer)
    /// and when the node stops (for the writer).
    changed: Condvar,
}

#[derive(Default)]
struct PendingState {
    lines: Vec<u8>,
    stopping: bool,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        // A thread that panicked while appending left whole lines or none: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer the subscriber formats into: appends each formatted line to [`Pending`].
#[derive(Clone)]
struct Lines(Arc<Pending>);

impl Lines {
    /// Starts the writer thread over `out`.
    fn start(out: impl std::io::Write + Send + 'static) -> std::io::Result<(Self, LogGuard)> {
        let pending = Arc::new(Pending {
            state: Mutex::default(),
            changed: Condvar::new(),
        });
        let writer = {
            let pending = Arc::clone(&pending);
            std::thread::Builder::new()
                .name("sark-log".to_owned())
                .spawn(move || write_lines(&pending, out))?
        };
        let guard = LogGuard {
            pending: Arc::clone(&pending),
            writer: Some(writer),
        };
        Ok((Self(pending), guard))
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut state = self.0.lock();
        while state.lines.len() >= MAX_PENDING && !state.stopping {
            state = self
                .0
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.lines.extend_from_slice(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The writer thread: every [`FLUSH_EVERY`], or at once when stopping, takes what is pending
/// and writes it with one `write_all`.
fn write_lines(pending: &Pending, mut out: impl std::io::Write) {
    let mut batch = Vec::new();
    loop {
        let stopping = {
            let state = pending.lock();
            let (mut state, _) = pending
                .changed
                .wait_timeout_while(state, FLUSH_EVERY, |state| !state.stopping)
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut batch, &mut state.lines);
            state.stopping
        };
        pending.changed.notify_all();
        if !batch.is_empty() {
            // Nowhere to report a failed write to stdout: the lines are dropped.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
        }
        if stopping {
            return;
        }
    }
}

/// Keeps the log writer running; dropping it writes what is pending and stops the writer.
pub struct LogGuard {
    pending: Arc<Pending>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.pending.lock().stopping = true;
        self.pending.changed.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what the writer thread writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let sink = Sink::default();
        let (lines, guard) = Lines::start(sink.clone()).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(lines)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn every_field_is_written_as_json_of_its_type() {
        let error = std::io::Error::other("disk \"full\"");
        let lines = logged(|| {
            tracing::info!(
                target: "sark::access",
                route = "/api/v1/servers/{name}",
                status = 404_u16,
                offset = -3_i64,
                duration_ms = 0.25,
                nan = f64::NAN,
                draining = false,
                error = &error as &dyn std::error::Error,
                client = %"127.0.0.1",
                detail = ?"tab\there",
                "request {}",
                "done"
            );
        });
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "sark::access");
        assert_eq!(line["message"], "request done");
        assert_eq!(line["route"], "/api/v1/servers/{name}");
        assert_eq!(line["status"], 404);
        assert_eq!(line["offset"], -3);
        assert_eq!(line["duration_ms"], 0.25);
        assert!(line["nan"].is_null());
        assert_eq!(line["draining"], false);
        assert_eq!(line["error"], "disk \"full\"");
        assert_eq!(line["client"], "127.0.0.1");
        assert_eq!(line["detail"], "\"tab\\there\"");
        let stamp = line["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
            "{stamp}"
        );
    }

    #[test]
    fn any_text_stays_one_valid_json_line() {
        let nasty: String = (0u8..=0x7f)
            .map(char::from)
            .chain("é\u{2028}🦀".chars())
            .collect();
        let lines = logged(|| tracing::warn!(path = nasty.as_str(), "{nasty}"));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["path"], nasty.as_str());
        assert_eq!(lines[0]["message"], nasty.as_str());
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_all_are_written_on_stop() {
        let lines = logged(|| {
            let dispatch = tracing::dispatcher::get_default(Clone::clone);
            let threads: Vec<_> = (0..4)
                .map(|thread| {
                    let dispatch = dispatch.clone();
                    std::thread::spawn(move || {
                        tracing::dispatcher::with_default(&dispatch, || {
                            for n in 0..2_000 {
                                tracing::info!(thread, n, "line");
                            }
                        });
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
        });
        assert_eq!(lines.len(), 8_000);
        for thread in 0..4 {
            let mut seen: Vec<u64> = lines
                .iter()
                .filter(|line| line["thread"] == thread)
                .map(|line| line["n"].as_u64().unwrap())
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..2_000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_full_buffer_holds_the_logging_thread_until_the_writer_drains_it() {
        let sink = Sink::default();
        let (lines, guard) = Lines::start(sink.clone()).unwrap();
        let big = vec![b'x'; MAX_PENDING / 2 + 1];
        let mut writer = lines.make_writer();
        for _ in 0..4 {
            std::io::Write::write_all(&mut writer, &big).unwrap();
        }
        drop(guard);
        assert_eq!(sink.0.lock().unwrap().len(), 4 * big.len());
    }
}
