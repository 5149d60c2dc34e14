//! Datadog logs intake v2: `POST {url}/api/v2/logs` with `DD-API-KEY`.

use async_trait::async_trait;
use reqwest::header::HeaderValue;
use serde_json::json;

use sark_actors::siem::{DeliveryError, SiemSink};
use sark_actors::store::ChainedEvent;

use super::{SinkError, secret_header, send};
use crate::config::DatadogConfig;

/// The intake's limits: entries per request, bytes per request and per entry (before
/// compression).
const MAX_ENTRIES: usize = 1000;
const MAX_PAYLOAD: usize = 5 * 1024 * 1024;
const MAX_ENTRY: usize = 1024 * 1024;

/// A Datadog logs sink.
pub struct DatadogSink {
    client: reqwest::Client,
    url: String,
    api_key: HeaderValue,
    host: String,
    service: String,
    tags: Option<String>,
}

impl DatadogSink {
    /// A sink for `config`, reporting events from `host`.
    pub fn new(
        config: &DatadogConfig,
        client: reqwest::Client,
        host: &str,
    ) -> Result<Self, SinkError> {
        let api_key = secret_header("", &config.api_key).map_err(|message| SinkError {
            key: "siem.datadog.api_key".into(),
            message,
        })?;
        Ok(Self {
            client,
            url: format!("{}/api/v2/logs", config.url.trim_end_matches('/')),
            api_key,
            host: host.to_owned(),
            service: config.service.clone(),
            tags: config.tags.clone(),
        })
    }

    /// One log entry, serialised; refused when it is over the per-entry limit.
    fn entry(&self, event: &ChainedEvent) -> Result<Vec<u8>, DeliveryError> {
        let message = serde_json::to_string(event).map_err(|e| {
            DeliveryError::rejected(format!("event {} not serialisable: {e}", event.event.id))
        })?;
        let mut tags = format!(
            "source:sark,chain:{},event_type:{},outcome:{}",
            event.chain, event.event.event_type, event.event.outcome
        );
        if let Some(extra) = &self.tags {
            tags.push(',');
            tags.push_str(extra);
        }
        let entry = json!({
            "ddsource": "sark",
            "ddtags": tags,
            "hostname": self.host,
            "service": self.service,
            "message": message,
        });
        let bytes =
            serde_json::to_vec(&entry).map_err(|e| DeliveryError::rejected(e.to_string()))?;
        if bytes.len() > MAX_ENTRY {
            return Err(DeliveryError::rejected(format!(
                "event {} is {} bytes, over the intake's 1 MB per entry",
                event.event.id,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    async fn post(&self, entries: &[Vec<u8>]) -> Result<(), DeliveryError> {
        let mut body =
            Vec::with_capacity(entries.iter().map(Vec::len).sum::<usize>() + entries.len() + 1);
        body.push(b'[');
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(entry);
        }
        body.push(b']');
        let request = self
            .client
            .post(&self.url)
            .header("DD-API-KEY", self.api_key.clone());
        send(request, &body).await.map(|_| ())
    }
}

#[async_trait]
impl SiemSink for DatadogSink {
    fn name(&self) -> &str {
        "datadog"
    }

    fn kind(&self) -> &'static str {
        "datadog"
    }

    fn max_batch(&self) -> usize {
        MAX_ENTRIES
    }

    /// Sends the batch in as many requests as the intake's size limits need.
    async fn deliver(&self, events: &[ChainedEvent]) -> Result<(), DeliveryError> {
        let mut request: Vec<Vec<u8>> = Vec::new();
        let mut size = 2;
        for event in events {
            let entry = self.entry(event)?;
            if !request.is_empty()
                && (size + entry.len() + 1 > MAX_PAYLOAD || request.len() == MAX_ENTRIES)
            {
                self.post(&request).await?;
                request.clear();
                size = 2;
            }
            size += entry.len() + 1;
            request.push(entry);
        }
        if !request.is_empty() {
            self.post(&request).await?;
        }
        Ok(())
    }
}
