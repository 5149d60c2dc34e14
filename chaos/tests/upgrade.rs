//! `upgrade` scenario: a rolling upgrade of three nodes on one PostgreSQL database. They
//! start speaking the previous cluster protocol version (`SARK_CLUSTER__PROTOCOL_VERSION`),
//! then are restarted one at a time speaking this build's. At every step, with both
//! versions side by side, `GET /api/v1/cluster` shows what each member speaks; a session
//! revoked through a node that does not own it (a forwarded logout) is acknowledged by
//! every other member and refused everywhere; and session listings answer on every node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{Value, json};

use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions, fresh_postgres_database};
use sark_cluster::wire::PROTOCOL_VERSION;

const HEARTBEAT_MS: u64 = 200;
const LEASE_SECONDS: u64 = 2;
const ADMIN_PASSWORD: &str = "chaos root passphrase, long enough";
const VERSION_KEY: &str = "SARK_CLUSTER__PROTOCOL_VERSION";

struct Cluster {
    sandbox: ClusterSandbox,
}

impl Cluster {
    async fn login(&self, node: usize) -> Value {
        self.sandbox
            .log_in(node, "admin", ADMIN_PASSWORD)
            .await
            .unwrap()
    }

    async fn get(&self, node: usize, path: &str, token: &str) -> (u16, Value) {
        self.sandbox.get_as(node, path, token).await
    }

    /// The protocol version each member speaks, as node `asking` sees them, by node name.
    async fn versions(&self, asking: usize, token: &str) -> Vec<(String, u64)> {
        let (status, cluster) = self.get(asking, "/api/v1/cluster", token).await;
        assert_eq!(status, 200, "{cluster}");
        let mut versions: Vec<(String, u64)> = cluster["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["node_id"].as_str().unwrap().to_owned(),
                    m["protocol_version"].as_u64().unwrap(),
                )
            })
            .collect();
        versions.sort();
        versions
    }

    /// Revokes a fresh session through a node that does not own it, and checks that
    /// every other member acknowledged it and that every node refuses its token.
    async fn revocation_reaches_everyone(&self, token: &str, step: &str) {
        let names: Vec<String> = self
            .sandbox
            .nodes()
            .iter()
            .map(|n| n.name.clone())
            .collect();
        let session = self.login(0).await;
        let id = session["session_id"].as_str().unwrap();
        let owner = self
            .sandbox
            .session_owner(1, token, id)
            .await
            .unwrap_or_else(|| panic!("{step}: the session is listed"));
        let sender = names.iter().position(|n| *n != owner).unwrap();
        let access = session["access_token"].as_str().unwrap();
        let (status, revoked) = self
            .sandbox
            .request(
                sender,
                reqwest::Method::POST,
                "/api/v1/auth/logout",
                Some(access),
                Some(&json!({})),
            )
            .await;
        assert_eq!(status, 200, "{step}: {revoked}");
        // A refusal crosses versions whole: the owner refuses the dead session's refresh
        // token, and the sender answers with the owner's status and code.
        let refresh = json!({"refresh_token": session["refresh_token"]});
        let (status, refused) = self
            .sandbox
            .request(
                sender,
                reqwest::Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(&refresh),
            )
            .await;
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (401, Some("invalid_token")),
            "{step}: {refused}"
        );
        let owner_index = names.iter().position(|n| *n == owner).unwrap();
        let mut others: Vec<&str> = names
            .iter()
            .filter(|n| **n != owner)
            .map(String::as_str)
            .collect();
        others.sort_unstable();
        assert_eq!(
            revoked["acknowledged_by"],
            json!(others),
            "{step}: the owner (node {owner_index}) broadcast the revocation to both others"
        );
        for node in 0..3 {
            let (status, _) = self.get(node, "/api/v1/auth/me", access).await;
            assert_eq!(status, 401, "{step}: node {node} refuses the revoked token");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_runs_both_protocol_versions_side_by_side() {
    let previous = PROTOCOL_VERSION - 1;
    let options = SandboxOptions::with_env(&[
        ("SARK_DATABASE__URL", fresh_postgres_database().unwrap()),
        ("SARK_SECRETS__KEY", "3d".repeat(32)),
        ("SARK_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ("SARK_CLUSTER__HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
        ("SARK_CLUSTER__LEASE_SECONDS", LEASE_SECONDS.to_string()),
        (VERSION_KEY, previous.to_string()),
    ]);
    let mut cluster = Cluster {
        sandbox: ClusterSandbox::start(3, options).await.unwrap(),
    };
    let within = Duration::from_secs(LEASE_SECONDS * 15);
    let admin = cluster.login(0).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    cluster.sandbox.wait_formed(&admin, within).await.unwrap();
    let names: Vec<String> = cluster
        .sandbox
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let all_previous: Vec<(String, u64)> = names
        .iter()
        .map(|n| (n.clone(), u64::from(previous)))
        .collect();
    assert_eq!(cluster.versions(0, &admin).await, all_previous);
    cluster
        .revocation_reaches_everyone(&admin, "all previous")
        .await;

    for upgraded in 0..3 {
        let status = cluster.sandbox.stop(upgraded).await.unwrap();
        assert!(status.success(), "{status:?}");
        cluster
            .sandbox
            .set_env(upgraded, VERSION_KEY, &PROTOCOL_VERSION.to_string());
        let restarted = cluster.sandbox.restart(upgraded).await.unwrap();
        let admin = cluster.login(upgraded).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        cluster.sandbox.wait_formed(&admin, within).await.unwrap();
        let expected: Vec<(String, u64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let version = if i <= upgraded {
                    PROTOCOL_VERSION
                } else {
                    previous
                };
                (n.clone(), u64::from(version))
            })
            .collect();
        for asking in 0..3 {
            assert_eq!(cluster.versions(asking, &admin).await, expected);
        }
        let step = format!("{} of 3 upgraded", upgraded + 1);
        cluster.revocation_reaches_everyone(&admin, &step).await;
        println!(
            "upgrade: {step} (restarted in {restarted:?}); revocations, refusals and session \
             listings work across versions {previous} and {PROTOCOL_VERSION}"
        );
    }
    // Nothing was sent that the other side could not read: no version was refused, and no
    // session call of the newer version went to a node speaking the older one.
    for node in cluster.sandbox.nodes() {
        for line in node.log() {
            for refusal in [
                "refusing a cluster peer",
                "malformed session call",
                "refused a session call",
            ] {
                assert!(!line.contains(refusal), "{}: {line}", node.name);
            }
        }
    }
    let statuses = cluster.sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
