//! Splunk HTTP Event Collector: `POST {url}/services/collector/event`, with indexer
//! acknowledgement (`/services/collector/ack`) when the collector has it on.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

use sark_actors::siem::{DeliveryError, SiemSink};
use sark_actors::store::ChainedEvent;

use super::{SinkError, secret_header, send};
use crate::config::SplunkConfig;

/// How long to wait for the indexers to acknowledge a batch before sending it again.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const ACK_POLL: Duration = Duration::from_millis(200);

/// Splunk's limits are configurable per collector; a few hundred events per request is
/// well inside the default `max_content_length` of 800 MB.
const MAX_BATCH: usize = 500;

/// A Splunk HEC sink.
pub struct SplunkSink {
    client: reqwest::Client,
    events_url: String,
    ack_url: String,
    authorization: HeaderValue,
    /// The request channel: required by collectors with indexer acknowledgement on,
    /// ignored by the others.
    channel: String,
    host: String,
    source: String,
    sourcetype: String,
    index: Option<String>,
}

impl SplunkSink {
    /// A sink for `config`, reporting events from `host`.
    pub fn new(
        config: &SplunkConfig,
        client: reqwest::Client,
        host: &str,
    ) -> Result<Self, SinkError> {
        let base = config.url.trim_end_matches('/');
        let authorization =
            secret_header("Splunk ", &config.token).map_err(|message| SinkError {
                key: "siem.splunk.token".into(),
                message,
            })?;
        Ok(Self {
            client,
            events_url: format!("{base}/services/collector/event"),
            ack_url: format!("{base}/services/collector/ack"),
            authorization,
            channel: uuid::Uuid::new_v4().to_string(),
            host: host.to_owned(),
            source: config.source.clone(),
            sourcetype: config.sourcetype.clone(),
            index: config.index.clone(),
        })
    }

    /// The HEC body: one JSON object per event, concatenated.
    fn body(&self, events: &[ChainedEvent]) -> Result<Vec<u8>, DeliveryError> {
        let mut body = Vec::new();
        for event in events {
            let time = event.event.timestamp.timestamp_micros() as f64 / 1e6;
            let mut entry = json!({
                "time": time,
                "host": self.host,
                "source": self.source,
                "sourcetype": self.sourcetype,
                "event": event,
            });
            if let Some(index) = &self.index {
                entry["index"] = json!(index);
            }
            serde_json::to_writer(&mut body, &entry).map_err(|e| {
                DeliveryError::rejected(format!("event {} not serialisable: {e}", event.event.id))
            })?;
        }
        Ok(body)
    }

    fn request(&self, url: &str) -> reqwest::RequestBuilder {
        self.client
            .post(url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .header("X-Splunk-Request-Channel", &self.channel)
    }

    /// Waits until the indexers acknowledge `ack_id`.
    async fn acknowledged(&self, ack_id: u64) -> Result<(), DeliveryError> {
        let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
        let body = serde_json::to_vec(&json!({ "acks": [ack_id] }))
            .map_err(|e| DeliveryError::retryable(e.to_string()))?;
        loop {
            let (_, text) = send(self.request(&self.ack_url), &body).await?;
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if answer["acks"][ack_id.to_string()] == true {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DeliveryError::retryable(format!(
                    "batch {ack_id} not acknowledged by the indexers within {} s",
                    ACK_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(ACK_POLL).await;
        }
    }
}

#[async_trait]
impl SiemSink for SplunkSink {
    fn name(&self) -> &str {
        "splunk"
    }

    fn kind(&self) -> &'static str {
        "splunk_hec"
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn deliver(&self, events: &[ChainedEvent]) -> Result<(), DeliveryError> {
        let body = self.body(events)?;
        let (_, text) = send(self.request(&self.events_url), &body).await?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if answer["code"] != 0 {
            return Err(DeliveryError::retryable(format!(
                "unexpected answer: {text}"
            )));
        }
        // A collector with indexer acknowledgement on answers with an ackId: the events
        // count as delivered only once the indexers have them.
        match answer["ackId"].as_u64() {
            Some(ack_id) => self.acknowledged(ack_id).await,
            None => Ok(()),
        }
    }
}
