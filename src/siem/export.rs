//! Reading back what a SIEM holds: the audit events in an export of Splunk or Datadog, for
//! `sark admin audit-verify --siem-export FILE`.
//!
//! An export is JSON lines, one JSON array, or a search answer with a `data` array. Each entry is an audit event as SARK sends it
//! (`id`, `chain`, `seq`, `hash`, …), or that event wrapped the way the SIEM keeps it:
//! Splunk's `{"event": …}` or `{"result": {"_raw": "…"}}`, Datadog's `{"message": "…"}` or
//! `{"attributes": {"message": "…"}}`. Entries that are not audit events (another source's
//! logs) are skipped and counted.

use serde_json::Value;

use crate::store::ChainedEvent;

/// How deep wrappers may nest around one event.
const MAX_WRAPPING: usize = 4;

/// The audit events found in an export.
#[derive(Debug, Default)]
pub struct Export {
    /// The events, in the export's order.
    pub events: Vec<ChainedEvent>,
    /// Entries that held no audit event.
    pub skipped: u64,
}

/// Why an export could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct ExportError {
    /// The 1-based line of the entry at fault.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Reads the audit events of an export.
pub fn read_export(text: &str) -> Result<Export, ExportError> {
    let mut export = Export::default();
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let entries: Vec<Value> = serde_json::from_str(trimmed).map_err(|e| ExportError {
            line: e.line(),
            reason: format!("not a JSON array of entries: {e}"),
        })?;
        entries.into_iter().for_each(|entry| export.take(entry));
        return Ok(export);
    }
    // Datadog's log search answers `{"data": [{"attributes": {"message": …}}, …]}`.
    if let Ok(Value::Object(mut answer)) = serde_json::from_str::<Value>(trimmed)
        && let Some(Value::Array(entries)) = answer.remove("data")
    {
        entries.into_iter().for_each(|entry| export.take(entry));
        return Ok(export);
    }
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: Value = serde_json::from_str(line).map_err(|e| ExportError {
            line: i + 1,
            reason: format!("not JSON: {e}"),
        })?;
        export.take(entry);
    }
    Ok(export)
}

impl Export {
    fn take(&mut self, entry: Value) {
        match unwrap_event(entry, MAX_WRAPPING) {
            Some(event) => self.events.push(event),
            None => self.skipped += 1,
        }
    }
}

/// The audit event inside `entry`, through at most `depth` wrappers.
fn unwrap_event(entry: Value, depth: usize) -> Option<ChainedEvent> {
    if depth == 0 {
        return None;
    }
    let Value::Object(mut fields) = entry else {
        return None;
    };
    if fields.contains_key("chain") && fields.contains_key("seq") {
        return serde_json::from_value(Value::Object(fields)).ok();
    }
    for wrapper in ["event", "result", "attributes", "message", "_raw"] {
        match fields.remove(wrapper) {
            Some(Value::String(raw)) => {
                if let Ok(inner) = serde_json::from_str(&raw) {
                    return unwrap_event(inner, depth - 1);
                }
            }
            Some(inner @ Value::Object(_)) => return unwrap_event(inner, depth - 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({
            "id": "0192f7a0-0000-7000-8000-000000000001",
            "timestamp": "2026-12-04T10:00:00.123456Z",
            "event_type": "login_succeeded",
            "actor": "alice",
            "ip": null,
            "resource": null,
            "outcome": "success",
            "details": {},
            "node_id": "n1",
            "chain": "n1",
            "seq": 7,
            "prev_hash": "00",
            "hash": "11",
        })
    }

    #[test]
    fn every_wrapping_the_sinks_and_their_exports_use_is_read() {
        let raw = event().to_string();
        let lines = [
            event(),
            json!({"time": 1.5, "host": "n1", "event": event()}),
            json!({"result": {"_raw": raw}}),
            json!({"message": raw}),
            json!({"attributes": {"message": raw}}),
            json!({"message": "some other service's log line"}),
        ]
        .map(|v| v.to_string())
        .join("\n");
        let export = read_export(&lines).unwrap();
        assert_eq!(export.events.len(), 5);
        assert!(export.events.iter().all(|e| e.seq == 7 && e.chain == "n1"));
        assert_eq!(export.skipped, 1);

        let array = format!("[{}, {}]", event(), json!({"event": event()}));
        assert_eq!(read_export(&array).unwrap().events.len(), 2);

        let search = json!({"data": [{"id": "x", "attributes": {"message": raw}}]}).to_string();
        assert_eq!(read_export(&search).unwrap().events.len(), 1);
    }

    #[test]
    fn a_line_that_is_not_json_is_named() {
        let text = format!("{}\n\n{{broken\n", event());
        let err = read_export(&text).unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn wrappers_nested_without_end_are_skipped() {
        let mut entry = event();
        for _ in 0..10 {
            entry = json!({ "event": entry });
        }
        let export = read_export(&entry.to_string()).unwrap();
        assert!(export.events.is_empty());
        assert_eq!(export.skipped, 1);
    }
}
