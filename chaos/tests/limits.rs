//! `limits` scenario: three nodes without Redis count each rate-limit key on its owner node,
//! so a limit holds across the cluster instead of being multiplied by three.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions};

const LIMIT: u16 = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_holds_across_three_nodes_without_redis() {
    let options = SandboxOptions::with_env(&[
        ("SARK_CLUSTER__HEARTBEAT_MS", "200".into()),
        ("SARK_CLUSTER__LEASE_SECONDS", "2".into()),
        (
            "SARK_RATE_LIMIT__UNAUTHENTICATED_PER_MINUTE",
            LIMIT.to_string(),
        ),
    ]);
    let sandbox = ClusterSandbox::start(3, options).await.unwrap();
    // Health endpoints are not rate limited: wait on them until every node places keys on
    // all three (a node still starting owns none yet).
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in 0..3 {
        loop {
            let (_, detailed) = sandbox.get_json(node, "/health/detailed").await.unwrap();
            if detailed["cluster"]["placement_members"] == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "node {node}: {detailed}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The client's address is one key, counted by its owner whichever node is asked.
    for i in 0..LIMIT {
        let (status, body) = sandbox
            .get_json(usize::from(i % 3), "/api/v1/servers")
            .await
            .unwrap();
        assert_eq!(status, 401, "request {i} is within the limit: {body}");
    }
    let mut counted = Vec::new();
    for node in 0..3 {
        let metrics = reqwest::get(format!("http://{}/metrics", sandbox.nodes()[node].http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        counted.extend(
            sandbox.nodes()[node]
                .log()
                .into_iter()
                .filter(|l| l.contains("rate check") || l.contains("panic") || l.contains("ERROR"))
                .map(|l| format!("node {node}: {l}")),
        );
        counted.extend(
            metrics
                .lines()
                .filter(|l| l.starts_with("sark_rate_limit_checks_total"))
                .map(|l| format!("node {node}: {l}")),
        );
    }
    for node in 0..3 {
        let (status, body) = sandbox.get_json(node, "/api/v1/servers").await.unwrap();
        assert_eq!(
            status, 429,
            "node {node} refuses past the cluster-wide limit: {body}; {counted:?}"
        );
    }
    let statuses = sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
