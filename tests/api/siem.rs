//! SIEM forwarding to receivers that check what Splunk HEC and Datadog's intake check:
//! formats, headers, retries, refusals, indexer acknowledgement and the intake's limits.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use sark::config::{Config, DatadogConfig, Secret, SplunkConfig};
use sark::store::{AuditEvent, ChainedEvent};
use sark_actors::siem::SiemSink;
use sark_chaos::receivers::{DatadogReceiver, HecOptions, HecReceiver, Received};

use crate::helpers::{TestApp, poll, spawn_app_with, spawn_pg_app_with};

pub(crate) const HEC_TOKEN: &str = "3c1a7f4e-hec-token-for-tests";
const DD_KEY: &str = "dd-api-key-for-tests";
const DELIVERY: Duration = Duration::from_secs(30);

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(crate) fn splunk(url: String) -> SplunkConfig {
    SplunkConfig {
        url,
        token: Secret::new(HEC_TOKEN),
        index: Some("security".into()),
        source: "sark".into(),
        sourcetype: "sark:audit".into(),
        tls_verify: true,
        ca_file: None,
    }
}

fn datadog(url: String) -> DatadogConfig {
    DatadogConfig {
        url,
        api_key: Secret::new(DD_KEY),
        service: "sark".into(),
        tags: Some("env:test".into()),
        tls_verify: true,
        ca_file: None,
    }
}

/// Fast retries so tests see a recovery within seconds.
fn quick_retries(config: &mut Config) {
    config.siem.backoff_max_seconds = 1;
    config.siem.breaker_failures = 3;
    config.siem.breaker_open_seconds = 1;
}

async fn create_servers(app: &TestApp, token: &str, names: &[String]) {
    for name in names {
        let body = json!({"name": name, "endpoint": format!("https://{name}.example.org/")});
        let response = app
            .call(Method::POST, "/api/v1/servers", token, Some(&body))
            .await;
        assert_eq!(response.status().as_u16(), 201, "creating {name}");
    }
}

/// Every audit event of the node, by id.
async fn audit_by_id(app: &TestApp, token: &str) -> HashMap<String, Value> {
    let mut all = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/audit?limit=500&cursor={c}"),
            None => "/api/v1/audit?limit=500".to_owned(),
        };
        let (status, page) = app.get_as(&path, token).await;
        assert_eq!(status, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            all.insert(item["id"].as_str().unwrap().to_owned(), item.clone());
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            return all;
        }
    }
}

async fn siem_status(app: &TestApp, token: &str, sink: &str) -> Value {
    let (status, body) = app.get_as("/api/v1/siem/status", token).await;
    assert_eq!(status, 200, "{body}");
    body["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == sink)
        .cloned()
        .unwrap_or_else(|| panic!("no sink {sink} in {body}"))
}

/// The names of the servers whose events `received` holds.
fn received_resources(received: &Received) -> HashSet<String> {
    received
        .events()
        .iter()
        .filter_map(|e| {
            e["resource"]
                .as_str()?
                .strip_prefix("server:")
                .map(str::to_owned)
        })
        .collect()
}

/// Polls until every audit event of the node has reached `received`; returns them.
async fn all_delivered(app: &TestApp, token: &str, received: &Received) -> HashMap<String, Value> {
    poll("every audit event at the sink", DELIVERY, || async {
        let audit = audit_by_id(app, token).await;
        let counts = received.id_counts();
        audit
            .keys()
            .all(|id| counts.contains_key(id))
            .then_some(audit)
    })
    .await
}

#[tokio::test]
async fn audit_events_reach_splunk_and_datadog_with_their_chain() {
    let hec = HecReceiver::local(HEC_TOKEN).await.unwrap();
    let intake = DatadogReceiver::start(any_port(), DD_KEY).await.unwrap();
    let app = spawn_app_with(|c| {
        c.siem.splunk = Some(splunk(hec.url()));
        c.siem.datadog = Some(datadog(intake.url()));
    })
    .await;
    let admin = app.admin_token().await;
    let names: Vec<String> = (0..5).map(|i| format!("siem-{i}")).collect();
    create_servers(&app, &admin, &names).await;

    for received in [hec.received(), intake.received()] {
        let audit = all_delivered(&app, &admin, &received).await;
        for event in received.events() {
            let id = event["id"].as_str().unwrap();
            let stored = &audit[id];
            for field in [
                "chain",
                "seq",
                "hash",
                "prev_hash",
                "event_type",
                "resource",
            ] {
                assert_eq!(event[field], stored[field], "{field} of {id}");
            }
        }
        let resources = received_resources(&received);
        assert!(names.iter().all(|n| resources.contains(n)), "{resources:?}");
        assert_eq!(
            received.gzip_requests(),
            received.requests(),
            "every request is gzipped"
        );
        assert_eq!(received.refused(), 0);
    }

    for (sink, kind) in [("splunk", "splunk_hec"), ("datadog", "datadog")] {
        // The sink may hold a batch a moment before the forwarder has recorded it, and the
        // queue depth is refreshed every few seconds.
        let status = poll("the status to show the deliveries", DELIVERY, || async {
            let status = siem_status(&app, &admin, sink).await;
            let delivered = status["delivered_total"].as_u64().unwrap_or(0);
            (status["queued"] == 0 && delivered >= 5).then_some(status)
        })
        .await;
        assert_eq!(status["kind"], kind);
        assert_eq!(status["state"], "healthy");
        assert_eq!(status["failed_attempts_total"], 0);
        assert!(status["last_delivery_at"].is_string(), "{status}");
        assert!(status["last_error"].is_null());
    }
    let (_, detailed) = app.get_json("/health/detailed").await;
    assert_eq!(detailed["services"]["siem_splunk"], "UP", "{detailed}");
    assert_eq!(detailed["services"]["siem_datadog"], "UP", "{detailed}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("sark_siem_delivered_total{sink=\"splunk\"}"));
    assert!(metrics.contains("sark_siem_queued{sink=\"datadog\"}"));

    let viewer = "violet kettle swims at dawn";
    app.create_user(&admin, "vera", "viewer", viewer).await;
    let token = app.login("vera", viewer).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = app.get_as("/api/v1/siem/status", &token).await;
    assert_eq!(status, 403, "only admins see the forwarders");
    app.stop().await;
}

/// `hec` is busy from the node's start.
async fn failing_sink_is_retried_until_it_accepts(app: &TestApp, hec: &HecReceiver) {
    let admin = app.admin_token().await;
    let names: Vec<String> = (0..20).map(|i| format!("retry-{i}")).collect();
    create_servers(app, &admin, &names).await;
    let status = poll("the breaker to open", DELIVERY, || async {
        let status = siem_status(app, &admin, "splunk").await;
        (status["state"] == "open").then_some(status)
    })
    .await;
    assert!(
        status["failed_attempts_total"].as_u64().unwrap() >= 3,
        "{status}"
    );
    assert!(
        status["last_error"].as_str().unwrap().contains("503"),
        "{status}"
    );
    assert!(status["queued"].as_u64().unwrap() >= 20, "{status}");
    let (_, detailed) = app.get_json("/health/detailed").await;
    assert_eq!(detailed["services"]["siem_splunk"], "DOWN", "{detailed}");
    assert_eq!(detailed["status"], "degraded");
    assert_eq!(hec.received().len(), 0);

    // A revoked token is retried as well (the operator fixes it at the collector).
    hec.set_token("a-rotated-token");
    hec.set_busy(false);
    poll("a 403 from the collector", DELIVERY, || async {
        let status = siem_status(app, &admin, "splunk").await;
        status["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("403"))
            .then_some(())
    })
    .await;
    assert_eq!(hec.received().len(), 0);

    hec.set_token(HEC_TOKEN);
    let received = hec.received();
    let audit = all_delivered(app, &admin, &received).await;
    let duplicates: usize = received.id_counts().values().map(|n| n - 1).sum();
    println!(
        "{} events delivered after the outage, {duplicates} duplicates",
        audit.len()
    );
    let status = poll("the sink to be healthy", DELIVERY, || async {
        let status = siem_status(app, &admin, "splunk").await;
        (status["state"] == "healthy" && status["queued"] == 0).then_some(status)
    })
    .await;
    assert!(status["last_delivery_at"].is_string());
}

/// A node on SQLite or PostgreSQL forwarding to a collector that is busy from the start.
async fn retried_until_accepted(postgres: bool) {
    let hec = HecReceiver::local(HEC_TOKEN).await.unwrap();
    hec.set_busy(true);
    let url = hec.url();
    let adjust = move |c: &mut Config| {
        c.siem.splunk = Some(splunk(url));
        quick_retries(c);
    };
    let app = if postgres {
        spawn_pg_app_with(adjust).await
    } else {
        spawn_app_with(adjust).await
    };
    failing_sink_is_retried_until_it_accepts(&app, &hec).await;
    app.stop().await;
}

#[tokio::test]
async fn a_failing_sink_is_retried_until_it_accepts_and_nothing_is_lost() {
    retried_until_accepted(false).await;
}

#[tokio::test]
async fn a_failing_sink_is_retried_until_it_accepts_on_postgres() {
    retried_until_accepted(true).await;
}

#[tokio::test]
async fn an_event_the_sink_refuses_is_set_aside_and_the_rest_delivered() {
    let hec = HecReceiver::local(HEC_TOKEN).await.unwrap();
    hec.reject_resource("server:poison");
    let app = spawn_app_with(|c| c.siem.splunk = Some(splunk(hec.url()))).await;
    let admin = app.admin_token().await;
    let names: Vec<String> = ["before", "poison", "after"].map(String::from).to_vec();
    create_servers(&app, &admin, &names).await;
    let status = poll("the refused event to be set aside", DELIVERY, || async {
        let status = siem_status(&app, &admin, "splunk").await;
        (status["dead_lettered_total"] == 1 && status["queued"] == 0).then_some(status)
    })
    .await;
    assert!(
        status["last_error"].as_str().unwrap().contains("400"),
        "{status}"
    );
    let resources = received_resources(&hec.received());
    assert!(resources.contains("before") && resources.contains("after"));
    assert!(!resources.contains("poison"));

    create_servers(&app, &admin, &["later".to_owned()]).await;
    poll("later events to flow", DELIVERY, || async {
        received_resources(&hec.received())
            .contains("later")
            .then_some(())
    })
    .await;
    let metrics = app.metrics().await;
    assert!(metrics.contains("sark_siem_dead_lettered_total{sink=\"splunk\"} 1"));
    app.stop().await;
}

#[tokio::test]
async fn splunk_indexer_acknowledgement_is_awaited_on_a_channel() {
    let hec = HecReceiver::start(
        any_port(),
        HecOptions {
            token: HEC_TOKEN.into(),
            ack: true,
        },
    )
    .await
    .unwrap();
    let app = spawn_app_with(|c| c.siem.splunk = Some(splunk(hec.url()))).await;
    let admin = app.admin_token().await;
    create_servers(&app, &admin, &["acked".to_owned()]).await;
    all_delivered(&app, &admin, &hec.received()).await;
    let status = poll("acknowledged delivery", DELIVERY, || async {
        let status = siem_status(&app, &admin, "splunk").await;
        (status["queued"] == 0).then_some(status)
    })
    .await;
    assert_eq!(status["failed_attempts_total"], 0, "{status}");
    assert_eq!(hec.received().refused(), 0, "the channel header was sent");
    app.stop().await;
}

fn event(i: usize, padding: usize) -> ChainedEvent {
    ChainedEvent {
        event: AuditEvent {
            id: uuid::Uuid::new_v4(),
            timestamp: chrono::DateTime::UNIX_EPOCH,
            event_type: "server_registered".into(),
            actor: Some("admin".into()),
            ip: None,
            resource: Some(format!("bulk-{i}")),
            outcome: "success".into(),
            details: json!({ "padding": "x".repeat(padding) }),
            node_id: "n1".into(),
        },
        chain: "n1".into(),
        seq: i64::try_from(i).unwrap() + 1,
        prev_hash: "0".repeat(64),
        hash: "f".repeat(64),
    }
}

#[tokio::test]
async fn datadog_batches_stay_within_the_intake_limits() {
    let intake = DatadogReceiver::start(any_port(), DD_KEY).await.unwrap();
    let client = reqwest::Client::new();
    let sink =
        sark::siem::DatadogSink::new(&datadog(intake.url()), client.clone(), "host-1").unwrap();
    let received = intake.received();

    let many: Vec<ChainedEvent> = (0..2500).map(|i| event(i, 10)).collect();
    sink.deliver(&many).await.unwrap();
    assert_eq!(received.len(), 2500);
    assert_eq!(received.requests(), 3, "1,000 entries per request at most");

    let big: Vec<ChainedEvent> = (0..12).map(|i| event(i, 900 * 1024)).collect();
    sink.deliver(&big).await.unwrap();
    assert_eq!(received.len(), 2512);
    assert!(
        received.requests() >= 3 + 3,
        "12 × 900 KB needs three 5 MB requests"
    );
    assert!(received.largest_request() <= 5 * 1024 * 1024);
    assert_eq!(received.refused(), 0);

    let too_big = sink.deliver(&[event(0, 1024 * 1024)]).await.unwrap_err();
    assert!(!too_big.retryable, "an entry over 1 MB can never be sent");
    assert!(too_big.message.contains("1 MB"), "{}", too_big.message);

    let wrong_key = DatadogConfig {
        api_key: Secret::new("not-the-key"),
        ..datadog(intake.url())
    };
    let refused = sark::siem::DatadogSink::new(&wrong_key, client, "host-1")
        .unwrap()
        .deliver(&many[..1])
        .await
        .unwrap_err();
    assert!(refused.retryable, "403 is retried: keys get fixed");
    assert!(refused.message.contains("403"), "{}", refused.message);
    assert_eq!(received.len(), 2512);
}
