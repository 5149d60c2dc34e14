//! `kill` scenario: nodes die with `kill -9` and come back from their durable state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::ExitStatusExt;

use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions};

#[tokio::test]
async fn a_node_killed_with_sigkill_restarts_from_its_durable_state() {
    let mut sandbox = ClusterSandbox::start(1, SandboxOptions::default())
        .await
        .unwrap();
    let node = &sandbox.nodes()[0];
    assert_eq!(
        node.http.ip().to_string(),
        "127.0.0.2",
        "nodes run on their own loopback address"
    );
    let password_file = node.data_dir.join("bootstrap-admin-password");
    let password = std::fs::read_to_string(&password_file).unwrap();
    let key = std::fs::read(node.data_dir.join("secrets.key")).unwrap();

    let status = sandbox.kill(0).await.unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the node died of SIGKILL, not a clean exit"
    );

    let took = sandbox.restart(0).await.unwrap();
    println!("time to serve again after kill -9: {took:?}");
    let (status, detailed) = sandbox.get_json(0, "/health/detailed").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(detailed["status"], "healthy", "{detailed}");
    assert_eq!(detailed["policy_versions"]["authorization"], 1);
    let node = &sandbox.nodes()[0];
    assert_eq!(
        std::fs::read_to_string(&password_file).unwrap(),
        password,
        "first-start state is reused"
    );
    assert_eq!(
        std::fs::read(node.data_dir.join("secrets.key")).unwrap(),
        key
    );
    assert!(
        !node
            .log()
            .iter()
            .skip_while(|l| !l.contains("listening"))
            .any(|l| l.contains("created the bootstrap admin"))
    );

    let statuses = sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
