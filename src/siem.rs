//! The SIEM sinks: Splunk HEC and Datadog logs, as [`SiemSink`]s for the forwarder actors.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use sark_actors::siem::{DeliveryError, SiemSink};

use crate::config::{Config, Secret};

mod datadog;
pub mod export;
mod splunk;

pub use datadog::DatadogSink;
pub use splunk::SplunkSink;

/// Why a sink could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SinkError {
    /// The configuration key at fault.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// The sinks the configuration names.
pub fn sinks(config: &Config, host: &str) -> Result<Vec<Arc<dyn SiemSink>>, SinkError> {
    let timeout = Duration::from_secs(config.siem.timeout_seconds);
    let mut sinks: Vec<Arc<dyn SiemSink>> = Vec::new();
    if let Some(splunk) = &config.siem.splunk {
        let client = client(
            "siem.splunk",
            timeout,
            splunk.tls_verify,
            splunk.ca_file.as_deref(),
        )?;
        sinks.push(Arc::new(SplunkSink::new(splunk, client, host)?));
    }
    if let Some(datadog) = &config.siem.datadog {
        let client = client(
            "siem.datadog",
            timeout,
            datadog.tls_verify,
            datadog.ca_file.as_deref(),
        )?;
        sinks.push(Arc::new(DatadogSink::new(datadog, client, host)?));
    }
    Ok(sinks)
}

fn client(
    key: &str,
    timeout: Duration,
    tls_verify: bool,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::Client, SinkError> {
    let fail = |field: &str, message: String| SinkError {
        key: format!("{key}.{field}"),
        message,
    };
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("sark/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| fail("ca_file", format!("{}: {e}", path.display())))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| fail("ca_file", format!("not a PEM certificate: {e}")))?;
        builder = builder.add_root_certificate(ca);
    }
    if !tls_verify {
        tracing::warn!(
            sink = key,
            "TLS certificate verification is off for this SIEM sink"
        );
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| fail("url", format!("the HTTP client could not be built: {e}")))
}

/// Gzips a request body.
fn gzip(body: &[u8]) -> Result<Vec<u8>, DeliveryError> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .map_err(|e| DeliveryError::retryable(format!("gzip failed: {e}")))
}

/// Sends a gzipped JSON body and classifies the outcome: transport failures, 401/403, 408,
/// 429 and 5xx are worth retrying; other 4xx refuse the events.
async fn send(
    request: reqwest::RequestBuilder,
    body: &[u8],
) -> Result<(StatusCode, String), DeliveryError> {
    let response = request
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::CONTENT_ENCODING, "gzip")
        .body(gzip(body)?)
        .send()
        .await
        .map_err(|e| DeliveryError::retryable(transport_error(e)))?;
    let status = response.status();
    // Error bodies are short; cap what is kept so a hostile sink cannot fill memory.
    let text: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(512)
        .collect();
    if status.is_success() {
        return Ok((status, text));
    }
    let message = format!("{status}: {text}");
    let retryable = status.is_server_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::TOO_MANY_REQUESTS
        );
    Err(DeliveryError { retryable, message })
}

/// A transport error without the URL's query (a token could be in it).
fn transport_error(err: reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    format!("{kind}: {}", err.without_url())
}

/// The secret of a header value.
fn secret_header(prefix: &str, secret: &Secret) -> Result<reqwest::header::HeaderValue, String> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("{prefix}{}", secret.expose()))
        .map_err(|_| "contains characters not allowed in an HTTP header".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}
