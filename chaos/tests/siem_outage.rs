//! `siem_outage` scenario: the Splunk collector is down while 10,000 audit events are
//! produced, the node is killed with `kill -9` half-way and restarted, the collector comes
//! back, and every event id arrives. Duplicates (allowed by at-least-once delivery) are
//! counted and printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sark_chaos::receivers::HecReceiver;
use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions, audit_events};

const EVENTS: usize = 10_000;
const WORKERS: usize = 16;
const TOKEN: &str = "5f0c2d9e-outage-hec-token";

/// Creates servers until `done` holds `EVENTS` names; a request cut by the kill is retried
/// under the same name, and a 409 then means the first attempt's commit survived.
async fn produce(
    client: reqwest::Client,
    base: String,
    token: String,
    worker: usize,
    done: Arc<std::sync::Mutex<HashSet<String>>>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("outage-{worker}-{i}");
        let body = json!({"name": name, "endpoint": format!("https://{name}.example.org/")});
        let response = client
            .post(format!("{base}/api/v1/servers"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await;
        match response.map(|r| r.status().as_u16()) {
            Ok(201) => {
                done.lock().unwrap().insert(name);
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(409) => i += 1,
            // The node is down or starting again: retry the same name.
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn wait_count(count: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while count.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "fewer than {n} events produced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_sink_after_an_outage_and_a_kill() {
    let mut hec = HecReceiver::local(TOKEN).await.unwrap();
    hec.stop().await;
    let options = SandboxOptions::with_env(&[
        ("SARK_SIEM__SPLUNK__URL", hec.url()),
        ("SARK_SIEM__SPLUNK__TOKEN", TOKEN.into()),
        ("SARK_SIEM__BACKOFF_MAX_SECONDS", "2".into()),
        ("SARK_SIEM__BREAKER_OPEN_SECONDS", "2".into()),
        (
            "SARK_RATE_LIMIT__AUTHENTICATED_PER_MINUTE",
            "1000000".into(),
        ),
    ]);
    let mut sandbox = ClusterSandbox::start(1, options).await.unwrap();
    let base = format!("http://{}", sandbox.nodes()[0].http);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = sandbox
        .login(0, "admin", &sandbox.bootstrap_password(0).unwrap())
        .await
        .unwrap();

    let done = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(produce(
                client.clone(),
                base.clone(),
                token.clone(),
                w,
                done.clone(),
                count.clone(),
                stop.clone(),
            ))
        })
        .collect();
    wait_count(&count, EVENTS / 2).await;
    let killed = sandbox.kill(0).await.unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(9)
    );
    let at_kill = count.load(Ordering::Relaxed);
    let back = sandbox.restart(0).await.unwrap();
    wait_count(&count, EVENTS).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let produced = started.elapsed();

    let (_, status) = sandbox.get_json(0, "/health/detailed").await.unwrap();
    assert_ne!(status["services"]["siem_splunk"], "UP", "{status}");
    assert_eq!(hec.received().len(), 0, "the collector was down");

    hec.resume().await.unwrap();
    let resumed = Instant::now();
    let audit = audit_events(&client, &base, &token).await.unwrap();
    let received = hec.received();
    let deadline = Instant::now() + Duration::from_secs(300);
    let counts = loop {
        let counts = received.id_counts();
        if audit.keys().all(|id| counts.contains_key(id)) {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} audit events arrived",
            audit.keys().filter(|id| counts.contains_key(*id)).count(),
            audit.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drained = resumed.elapsed();

    let registered: HashSet<String> = received
        .events()
        .iter()
        .filter(|e| e["event_type"] == "server_registered")
        .filter_map(|e| {
            e["resource"]
                .as_str()?
                .strip_prefix("server:")
                .map(str::to_owned)
        })
        .collect();
    let acknowledged = done.lock().unwrap().clone();
    assert!(acknowledged.len() >= EVENTS);
    let missing: Vec<&String> = acknowledged.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged servers have no event at the sink, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    // The sink holds the chain: per chain, every seq from 1 to the last, hashes linked.
    let mut chains: BTreeMap<String, BTreeMap<i64, Value>> = BTreeMap::new();
    for event in received.events() {
        chains
            .entry(event["chain"].as_str().unwrap().to_owned())
            .or_default()
            .insert(event["seq"].as_i64().unwrap(), event);
    }
    for (chain, events) in &chains {
        let last = *events.keys().last().unwrap();
        assert_eq!(
            events.len() as i64,
            last,
            "chain {chain} has gaps at the sink"
        );
        for (seq, event) in events.range(2..) {
            assert_eq!(
                event["prev_hash"],
                events[&(seq - 1)]["hash"],
                "chain {chain} seq {seq}"
            );
        }
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "siem outage: {} events acknowledged ({at_kill} before the kill), {} audit events in \
         all; produced in {produced:?}; node serving again {back:?} after kill -9; all arrived \
         {drained:?} after the collector came back, in {} requests; duplicates: {duplicates}",
        acknowledged.len(),
        audit.len(),
        received.requests()
    );
    let statuses = sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
