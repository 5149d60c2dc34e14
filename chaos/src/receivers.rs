//! SIEM receivers for tests and benchmarks: a Splunk HTTP Event Collector and a Datadog logs
//! intake that check what the real services check, and record what they accept.
//!
//! - [`HecReceiver`] answers `POST /services/collector/event` as Splunk does: 401 without a
//!   token, 403 with a wrong one, 400 with Splunk's codes for bodies that are not a series of
//!   JSON objects with a non-blank `event` and a numeric `time`, 503 "Server is busy" on
//!   demand; with indexer acknowledgement on, it requires the channel header, answers with an
//!   `ackId` and reports it through `/services/collector/ack`.
//! - [`DatadogReceiver`] answers `POST /api/v2/logs` as the intake does: 403 without the
//!   right `DD-API-KEY`, 413 over 1,000 entries or 5 MB (uncompressed), 400 for an entry
//!   over 1 MB or without the fields SARK must send, 202 otherwise.
//!
//! Both accept gzip bodies, and both can be stopped and started again on the same address,
//! which is how tests take a sink down.

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// Largest request body either receiver reads (compressed).
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Datadog's intake limits.
const DD_MAX_ENTRIES: usize = 1000;
const DD_MAX_PAYLOAD: usize = 5 * 1024 * 1024;
const DD_MAX_ENTRY: usize = 1024 * 1024;

/// What a receiver has accepted, shared with the test.
#[derive(Debug, Default)]
pub struct Received {
    events: Mutex<Vec<Value>>,
    requests: AtomicU64,
    gzip_requests: AtomicU64,
    refused: AtomicU64,
    held: AtomicU64,
    largest_request: AtomicUsize,
}

impl Received {
    /// The SARK events accepted, in arrival order (duplicates included).
    pub fn events(&self) -> Vec<Value> {
        self.lock().clone()
    }

    /// How many events were accepted (duplicates included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was accepted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times each event id arrived.
    pub fn id_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for event in self.lock().iter() {
            if let Some(id) = event["id"].as_str() {
                *counts.entry(id.to_owned()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Requests answered (accepted or not).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests that came gzipped.
    pub fn gzip_requests(&self) -> u64 {
        self.gzip_requests.load(Ordering::Relaxed)
    }

    /// Requests held while the receiver was stalled.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Requests answered with an error status.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The largest uncompressed body accepted, in bytes.
    pub fn largest_request(&self) -> usize {
        self.largest_request.load(Ordering::Relaxed)
    }

    /// Polls until at least `n` events have arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let len = self.len();
            if len >= n {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{len} of {n} events arrived within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Value>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn accept(&self, events: Vec<Value>, size: usize) {
        self.largest_request.fetch_max(size, Ordering::Relaxed);
        self.lock().extend(events);
    }
}

/// An HTTP server on loopback that can be stopped and started again on its address.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start(addr: SocketAddr, app: Router) -> anyhow::Result<Self> {
        let listener = bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops answering: the listener closes and idle connections are shut.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `addr`, retrying briefly while the port is still held by the previous listener.
async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(err).with_context(|| format!("binding {addr}")),
        }
    }
}

/// The request body, gunzipped when it says it is gzip.
fn body(headers: &HeaderMap, bytes: &Bytes, received: &Received) -> Result<Vec<u8>, String> {
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(bytes.to_vec());
    }
    received.gzip_requests.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .take(BODY_LIMIT as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("bad gzip body: {e}"))?;
    Ok(out)
}

/// Settings of a Splunk HEC receiver.
#[derive(Clone, Debug)]
pub struct HecOptions {
    /// The token clients must present.
    pub token: String,
    /// Indexer acknowledgement on: the channel header is required and batches get an ackId.
    pub ack: bool,
}

struct HecState {
    token: Mutex<String>,
    ack: bool,
    busy: AtomicBool,
    stalled: tokio::sync::watch::Sender<bool>,
    /// Held requests are refused when released (the hung indexer lost them).
    lose_held: AtomicBool,
    reject_resource: Mutex<Option<String>>,
    next_ack: AtomicU64,
    acked: Mutex<HashMap<String, Vec<u64>>>,
    received: Arc<Received>,
}

/// A refusal in Splunk's shape: `{"text", "code"}`.
struct HecRefusal(StatusCode, u32, &'static str);

impl IntoResponse for HecRefusal {
    fn into_response(self) -> Response {
        let HecRefusal(status, code, text) = self;
        (status, axum::Json(json!({ "text": text, "code": code }))).into_response()
    }
}

fn hec_error(status: StatusCode, code: u32, text: &'static str) -> Response {
    HecRefusal(status, code, text).into_response()
}

/// A Splunk HTTP Event Collector.
pub struct HecReceiver {
    state: Arc<HecState>,
    server: Server,
}

impl HecReceiver {
    /// Starts a collector on `addr` (port 0 picks one).
    pub async fn start(addr: SocketAddr, options: HecOptions) -> anyhow::Result<Self> {
        let state = Arc::new(HecState {
            token: Mutex::new(options.token),
            ack: options.ack,
            busy: AtomicBool::new(false),
            stalled: tokio::sync::watch::Sender::new(false),
            lose_held: AtomicBool::new(false),
            reject_resource: Mutex::new(None),
            next_ack: AtomicU64::new(0),
            acked: Mutex::new(HashMap::new()),
            received: Arc::new(Received::default()),
        });
        let server = Server::start(addr, Self::app(state.clone())).await?;
        Ok(Self { state, server })
    }

    /// A collector on a free loopback port, accepting `token`, without indexer
    /// acknowledgement.
    pub async fn local(token: &str) -> anyhow::Result<Self> {
        Self::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            HecOptions {
                token: token.to_owned(),
                ack: false,
            },
        )
        .await
    }

    fn app(state: Arc<HecState>) -> Router {
        Router::new()
            .route("/services/collector/event", post(hec_event))
            .route("/services/collector/ack", post(hec_ack))
            .fallback(|| async {
                hec_error(
                    StatusCode::NOT_FOUND,
                    404,
                    "The requested URL was not found on this server.",
                )
            })
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(state)
    }

    /// The collector's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// The collector's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// What it has accepted.
    pub fn received(&self) -> Arc<Received> {
        self.state.received.clone()
    }

    /// Answers every event request with 503 "Server is busy" while `busy`.
    pub fn set_busy(&self, busy: bool) {
        self.state.busy.store(busy, Ordering::Relaxed);
    }

    /// While `stalled`, event requests are held without an answer (a hung indexer); they
    /// are answered once it is released, unless the client gave up.
    pub fn set_stalled(&self, stalled: bool) {
        self.state.stalled.send_replace(stalled);
    }

    /// Releases the hung indexer having lost what it held: every held request is answered
    /// 503 "Server is busy" and indexes nothing, so its events arrive only if a forwarder
    /// sends them again. New requests are answered normally.
    pub fn release_losing_held(&self) {
        self.state.lose_held.store(true, Ordering::Relaxed);
        self.state.stalled.send_replace(false);
    }

    /// Changes the token it accepts.
    pub fn set_token(&self, token: &str) {
        *self
            .state
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = token.to_owned();
    }

    /// Refuses, as Splunk refuses an event it cannot parse, any request holding an event
    /// whose `resource` is `resource`.
    pub fn reject_resource(&self, resource: &str) {
        *self
            .state
            .reject_resource
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(resource.to_owned());
    }

    /// Stops answering (connections are refused) until [`HecReceiver::resume`].
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// Answers again on the same address.
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.server = Server::start(self.server.addr, Self::app(self.state.clone())).await?;
        Ok(())
    }
}

/// Checks `Authorization: Splunk <token>` as the collector does.
fn hec_authorized(state: &HecState, headers: &HeaderMap) -> Result<(), HecRefusal> {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err(HecRefusal(StatusCode::UNAUTHORIZED, 2, "Token is required"));
    };
    let Some(token) = value.strip_prefix("Splunk ") else {
        return Err(HecRefusal(
            StatusCode::UNAUTHORIZED,
            3,
            "Invalid authorization",
        ));
    };
    if *state.token.lock().unwrap_or_else(PoisonError::into_inner) != token {
        return Err(HecRefusal(StatusCode::FORBIDDEN, 4, "Invalid token"));
    }
    Ok(())
}

fn hec_channel(state: &HecState, headers: &HeaderMap) -> Result<Option<String>, HecRefusal> {
    let channel = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match channel {
        None if state.ack => Err(HecRefusal(
            StatusCode::BAD_REQUEST,
            10,
            "Data channel is missing",
        )),
        Some(channel) if uuid_like(&channel).is_none() => Err(HecRefusal(
            StatusCode::BAD_REQUEST,
            11,
            "Invalid data channel",
        )),
        channel => Ok(channel),
    }
}

fn uuid_like(value: &str) -> Option<()> {
    let groups: Vec<&str> = value.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    (lengths == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit())))
    .then_some(())
}

async fn hec_event(
    State(state): State<Arc<HecState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let received = state.received.clone();
    received.requests.fetch_add(1, Ordering::Relaxed);
    let mut stalled = state.stalled.subscribe();
    if *stalled.borrow_and_update() {
        received.held.fetch_add(1, Ordering::Relaxed);
        let _ = stalled.wait_for(|stalled| !*stalled).await;
        if state.lose_held.load(Ordering::Relaxed) {
            received.refused.fetch_add(1, Ordering::Relaxed);
            return hec_error(StatusCode::SERVICE_UNAVAILABLE, 9, "Server is busy");
        }
    }
    let answer = hec_accept(&state, &headers, &bytes);
    if answer.status() != StatusCode::OK {
        received.refused.fetch_add(1, Ordering::Relaxed);
    }
    answer
}

fn hec_accept(state: &HecState, headers: &HeaderMap, bytes: &Bytes) -> Response {
    if state.busy.load(Ordering::Relaxed) {
        return hec_error(StatusCode::SERVICE_UNAVAILABLE, 9, "Server is busy");
    }
    if let Err(refusal) = hec_authorized(state, headers) {
        return refusal.into_response();
    }
    let channel = match hec_channel(state, headers) {
        Ok(channel) => channel,
        Err(refusal) => return refusal.into_response(),
    };
    let raw = match body(headers, bytes, &state.received) {
        Ok(raw) => raw,
        Err(_) => return hec_error(StatusCode::BAD_REQUEST, 6, "Invalid data format"),
    };
    let mut events = Vec::new();
    let reject = state
        .reject_resource
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for (n, entry) in serde_json::Deserializer::from_slice(&raw)
        .into_iter::<Value>()
        .enumerate()
    {
        let invalid = |code: u32, text: &str| {
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "text": text, "code": code, "invalid-event-number": n })),
            )
                .into_response()
        };
        let Ok(entry) = entry else {
            return invalid(6, "Invalid data format");
        };
        let Some(object) = entry.as_object() else {
            return invalid(6, "Invalid data format");
        };
        let Some(event) = object.get("event") else {
            return invalid(12, "Event field is required");
        };
        if event.is_null() || event == "" || event.as_object().is_some_and(|o| o.is_empty()) {
            return invalid(13, "Event field cannot be blank");
        }
        if object.get("time").is_some_and(|t| !t.is_number()) {
            return invalid(6, "Invalid data format");
        }
        for field in ["host", "source", "sourcetype", "index"] {
            if object.get(field).is_some_and(|v| !v.is_string()) {
                return invalid(6, "Invalid data format");
            }
        }
        if reject.is_some() && event["resource"].as_str() == reject.as_deref() {
            return invalid(6, "Invalid data format");
        }
        events.push(event.clone());
    }
    if events.is_empty() {
        return hec_error(StatusCode::BAD_REQUEST, 5, "No data");
    }
    state.received.accept(events, raw.len());
    if !state.ack {
        return (
            StatusCode::OK,
            axum::Json(json!({"text": "Success", "code": 0})),
        )
            .into_response();
    }
    let ack_id = state.next_ack.fetch_add(1, Ordering::Relaxed);
    state
        .acked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(channel.unwrap_or_default())
        .or_default()
        .push(ack_id);
    (
        StatusCode::OK,
        axum::Json(json!({"text": "Success", "code": 0, "ackId": ack_id})),
    )
        .into_response()
}

async fn hec_ack(State(state): State<Arc<HecState>>, headers: HeaderMap, bytes: Bytes) -> Response {
    if let Err(refusal) = hec_authorized(&state, &headers) {
        return refusal.into_response();
    }
    if !state.ack {
        return hec_error(StatusCode::BAD_REQUEST, 14, "ACK is disabled");
    }
    let channel = match hec_channel(&state, &headers) {
        Ok(channel) => channel.unwrap_or_default(),
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(raw) = body(&headers, &bytes, &state.received) else {
        return hec_error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
    };
    let Ok(query) = serde_json::from_slice::<Value>(&raw) else {
        return hec_error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
    };
    let Some(ids) = query["acks"].as_array() else {
        return hec_error(StatusCode::BAD_REQUEST, 6, "Invalid data format");
    };
    let acked = state.acked.lock().unwrap_or_else(PoisonError::into_inner);
    let known = acked.get(&channel);
    let answer: serde_json::Map<String, Value> = ids
        .iter()
        .filter_map(Value::as_u64)
        .map(|id| {
            (
                id.to_string(),
                json!(known.is_some_and(|k| k.contains(&id))),
            )
        })
        .collect();
    (StatusCode::OK, axum::Json(json!({ "acks": answer }))).into_response()
}

struct DatadogState {
    api_key: String,
    received: Arc<Received>,
}

/// A Datadog logs intake (v2).
pub struct DatadogReceiver {
    state: Arc<DatadogState>,
    server: Server,
}

impl DatadogReceiver {
    /// Starts an intake on `addr` (port 0 picks one) that accepts `api_key`.
    pub async fn start(addr: SocketAddr, api_key: &str) -> anyhow::Result<Self> {
        let state = Arc::new(DatadogState {
            api_key: api_key.to_owned(),
            received: Arc::new(Received::default()),
        });
        let app = Router::new()
            .route("/api/v2/logs", post(datadog_logs))
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .with_state(state.clone());
        let server = Server::start(addr, app).await?;
        Ok(Self { state, server })
    }

    /// The intake's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// What it has accepted.
    pub fn received(&self) -> Arc<Received> {
        self.state.received.clone()
    }
}

fn dd_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "errors": [{ "status": status.as_str(), "detail": message }] })),
    )
        .into_response()
}

async fn datadog_logs(
    State(state): State<Arc<DatadogState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let received = state.received.clone();
    received.requests.fetch_add(1, Ordering::Relaxed);
    let answer = datadog_accept(&state, &headers, &bytes);
    if answer.status() != StatusCode::ACCEPTED {
        received.refused.fetch_add(1, Ordering::Relaxed);
    }
    answer
}

fn datadog_accept(state: &DatadogState, headers: &HeaderMap, bytes: &Bytes) -> Response {
    let key = headers.get("dd-api-key").and_then(|v| v.to_str().ok());
    if key != Some(state.api_key.as_str()) {
        return dd_error(StatusCode::FORBIDDEN, "Forbidden");
    }
    let json_body = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return dd_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported content type",
        );
    }
    let raw = match body(headers, bytes, &state.received) {
        Ok(raw) => raw,
        Err(message) => return dd_error(StatusCode::BAD_REQUEST, &message),
    };
    if raw.len() > DD_MAX_PAYLOAD {
        return dd_error(StatusCode::PAYLOAD_TOO_LARGE, "Payload over 5 MB");
    }
    let Ok(Value::Array(entries)) = serde_json::from_slice::<Value>(&raw) else {
        return dd_error(
            StatusCode::BAD_REQUEST,
            "The body must be a JSON array of logs",
        );
    };
    if entries.len() > DD_MAX_ENTRIES {
        return dd_error(StatusCode::PAYLOAD_TOO_LARGE, "Over 1000 entries");
    }
    let mut events = Vec::with_capacity(entries.len());
    for entry in &entries {
        if serde_json::to_vec(entry).map_or(usize::MAX, |b| b.len()) > DD_MAX_ENTRY {
            return dd_error(StatusCode::BAD_REQUEST, "A log entry is over 1 MB");
        }
        for field in ["ddsource", "ddtags", "service", "hostname", "message"] {
            if !entry[field].is_string() {
                return dd_error(StatusCode::BAD_REQUEST, &format!("{field} missing"));
            }
        }
        let message = entry["message"].as_str().unwrap_or_default();
        match serde_json::from_str::<Value>(message) {
            Ok(event) => events.push(event),
            Err(_) => {
                return dd_error(StatusCode::BAD_REQUEST, "message is not a SARK event");
            }
        }
    }
    state.received.accept(events, raw.len());
    (StatusCode::ACCEPTED, axum::Json(json!({}))).into_response()
}
