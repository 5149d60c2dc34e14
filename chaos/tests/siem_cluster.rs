//! `siem_cluster` scenario: two nodes on one PostgreSQL database forward to one Splunk
//! collector that hangs; the node holding leases is killed with `kill -9`; once its leases
//! expire the other node delivers its batches, and every audit event of both nodes arrives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sark_chaos::receivers::HecReceiver;
use sark_chaos::sandbox::{
    ClusterSandbox, SandboxOptions, audit_events, fresh_postgres_database, send_json,
};

const TOKEN: &str = "0b7e6c1a-cluster-hec-token";
const ADMIN_PASSWORD: &str = "chaos root passphrase, long enough";
const LEASE_SECONDS: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_forwarders_leases_expire_and_another_node_delivers() {
    let hec = HecReceiver::local(TOKEN).await.unwrap();
    hec.set_stalled(true);
    let options = SandboxOptions::with_env(&[
        ("SARK_DATABASE__URL", fresh_postgres_database().unwrap()),
        ("SARK_SECRETS__KEY", "7c".repeat(32)),
        ("SARK_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ("SARK_SIEM__SPLUNK__URL", hec.url()),
        ("SARK_SIEM__SPLUNK__TOKEN", TOKEN.to_owned()),
        ("SARK_SIEM__LEASE_SECONDS", LEASE_SECONDS.to_string()),
        ("SARK_SIEM__TIMEOUT_SECONDS", "60".to_owned()),
        ("SARK_SIEM__BACKOFF_MAX_SECONDS", "1".to_owned()),
    ]);
    let mut sandbox = ClusterSandbox::start(2, options).await.unwrap();
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
    // Both forwarders are now waiting on the hung collector, each holding a leased batch.
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
    sandbox.kill(0).await.unwrap();
    let killed = Instant::now();
    hec.set_stalled(false);

    let expected: HashSet<String> = audit_events(&client, &bases[1], &token)
        .await
        .unwrap()
        .into_keys()
        .collect();
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECONDS * 10);
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
    let all_in = killed.elapsed();
    let chains: HashSet<String> = received
        .events()
        .iter()
        .filter_map(|e: &Value| e["chain"].as_str().map(str::to_owned))
        .collect();
    assert!(
        chains.len() >= 2,
        "events of both nodes' chains: {chains:?}"
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    println!(
        "siem cluster: {} events of {} chains delivered {all_in:?} after the lease holder was \
         killed (lease {LEASE_SECONDS} s); duplicates: {duplicates}",
        expected.len(),
        chains.len()
    );
    let statuses = sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
