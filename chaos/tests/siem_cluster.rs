//! `siem_cluster` scenarios: two nodes on one PostgreSQL database forward to one Splunk
//! collector that hangs, so each node holds a leased batch.
//!
//! - The lease holder is killed with `kill -9` and the collector recovers having lost what it
//!   held: once the dead node's leases expire the other node delivers its batches, and
//!   every audit event of both nodes arrives.
//! - The lease holder is stopped with SIGTERM: it abandons the hung delivery and hands its
//!   batch back as it stops (without waiting out the stop grace period), so the other node
//!   delivers it long before its lease would have expired.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sark_chaos::receivers::HecReceiver;
use sark_chaos::sandbox::{
    ClusterSandbox, SandboxOptions, audit_events, fresh_postgres_database, send_json,
};

const TOKEN: &str = "0b7e6c1a-cluster-hec-token";
const ADMIN_PASSWORD: &str = "chaos root passphrase, long enough";
/// How long a stopping node waits for each actor to finish what it is doing.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Two nodes whose forwarders each wait on the hung collector with a leased batch.
struct StalledPair {
    hec: HecReceiver,
    sandbox: ClusterSandbox,
    client: reqwest::Client,
    bases: Vec<String>,
    token: String,
}

impl StalledPair {
    async fn start(lease_seconds: u64) -> Self {
        let hec = HecReceiver::local(TOKEN).await.unwrap();
        hec.set_stalled(true);
        let options = SandboxOptions::with_env(&[
            ("SARK_DATABASE__URL", fresh_postgres_database().unwrap()),
            ("SARK_SECRETS__KEY", "7c".repeat(32)),
            ("SARK_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
            ("SARK_SIEM__SPLUNK__URL", hec.url()),
            ("SARK_SIEM__SPLUNK__TOKEN", TOKEN.to_owned()),
            ("SARK_SIEM__LEASE_SECONDS", lease_seconds.to_string()),
            ("SARK_SIEM__TIMEOUT_SECONDS", "60".to_owned()),
            ("SARK_SIEM__BACKOFF_MAX_SECONDS", "1".to_owned()),
        ]);
        let sandbox = ClusterSandbox::start(2, options).await.unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let bases: Vec<String> = sandbox
            .nodes()
            .iter()
            .map(|n| format!("http://{}", n.http))
            .collect();
        let token = sandbox.login(0, "admin", ADMIN_PASSWORD).await.unwrap();
        for i in 0..200 {
            let body = json!({"name": format!("fleet-{i}"), "endpoint": format!("https://fleet-{i}.example.org/")});
            let (status, answer) = send_json(
                client
                    .post(format!("{}/api/v1/servers", bases[i % 2]))
                    .bearer_auth(&token)
                    .json(&body),
            )
            .await
            .unwrap();
            assert_eq!(status, 201, "{answer}");
        }
        let received = hec.received();
        let deadline = Instant::now() + Duration::from_secs(30);
        while received.held() < 2 {
            assert!(
                Instant::now() < deadline,
                "{} requests held",
                received.held()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            hec,
            sandbox,
            client,
            bases,
            token,
        }
    }

    /// Waits until every audit event the surviving node lists has arrived; returns how
    /// often each arrived and how many chains they came from.
    async fn all_delivered(&self, within: Duration) -> (HashMap<String, usize>, usize) {
        let expected: HashSet<String> = audit_events(&self.client, &self.bases[1], &self.token)
            .await
            .unwrap()
            .into_keys()
            .collect();
        let received = self.hec.received();
        let deadline = Instant::now() + within;
        let counts = loop {
            let counts = received.id_counts();
            if expected.iter().all(|id| counts.contains_key(id)) {
                break counts;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} events arrived",
                expected
                    .iter()
                    .filter(|id| counts.contains_key(*id))
                    .count(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let chains: HashSet<String> = received
            .events()
            .iter()
            .filter_map(|e: &Value| e["chain"].as_str().map(str::to_owned))
            .collect();
        assert!(
            chains.len() >= 2,
            "events of both nodes' chains: {chains:?}"
        );
        (counts, chains.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_forwarders_leases_expire_and_another_node_delivers() {
    const LEASE_SECONDS: u64 = 3;
    let mut pair = StalledPair::start(LEASE_SECONDS).await;
    pair.sandbox.kill(0).await.unwrap();
    let killed = Instant::now();
    // The dead node's batch can only arrive through another node once its lease expired.
    pair.hec.release_losing_held();
    let (counts, chains) = pair
        .all_delivered(Duration::from_secs(LEASE_SECONDS * 10))
        .await;
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "siem cluster: {} events of {chains} chains delivered {:?} after the lease holder was \
         killed (lease {LEASE_SECONDS} s); duplicates: {duplicates}",
        counts.len(),
        killed.elapsed(),
    );
    let statuses = pair.sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_hands_its_leases_over() {
    const LEASE_SECONDS: u64 = 300;
    let mut pair = StalledPair::start(LEASE_SECONDS).await;
    let stopping = Instant::now();
    // The collector stays hung until the node is gone, so its batch is still leased when
    // it stops.
    let status = pair.sandbox.stop(0).await.unwrap();
    assert!(status.success(), "{status:?}");
    let stopped = stopping.elapsed();
    assert!(
        pair.sandbox.nodes()[0]
            .log()
            .iter()
            .any(|line| line.contains("SIEM batch handed back as the node stops")),
        "the stopping node's forwarder handed its batch back"
    );
    assert!(
        stopped < STOP_GRACE,
        "the stop did not wait out the hung delivery: {stopped:?}"
    );
    // The stopped node's batch can only arrive through another node, and before its lease
    // expires only if it was handed over.
    pair.hec.release_losing_held();
    let within = Duration::from_secs(LEASE_SECONDS / 5);
    let (counts, chains) = pair.all_delivered(within).await;
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "siem cluster: node stopped (SIGTERM) in {stopped:?} holding a lease; {} events of \
         {chains} chains delivered {:?} after the stop began (lease {LEASE_SECONDS} s); \
         duplicates: {duplicates}",
        counts.len(),
        stopping.elapsed(),
    );
    let statuses = pair.sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
