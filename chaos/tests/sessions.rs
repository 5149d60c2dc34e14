//! `sessions` scenario: three nodes on one PostgreSQL database. Each session has an owner,
//! the winner of rendezvous hashing of its id over the live members; a refresh, a logout or
//! a session listing sent to any other node is forwarded to the owner and answered from
//! there. When the owner
//! is killed, its sessions are served again by their new owners, re-activated from the
//! store, within the configured lease. A node stopped with SIGTERM hands its sessions over
//! first: their new owners have them running before it stops.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions, fresh_postgres_database};

const HEARTBEAT_MS: u64 = 200;
const LEASE_SECONDS: u64 = 2;
const ADMIN_PASSWORD: &str = "chaos root passphrase, long enough";

struct Cluster {
    sandbox: ClusterSandbox,
    client: reqwest::Client,
}

impl Cluster {
    fn base(&self, node: usize) -> String {
        format!("http://{}", self.sandbox.nodes()[node].http)
    }

    async fn post(
        &self,
        node: usize,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        self.sandbox
            .request(node, reqwest::Method::POST, path, token, Some(&body))
            .await
    }

    async fn get(&self, node: usize, path: &str, token: &str) -> (u16, Value) {
        self.sandbox.get_as(node, path, token).await
    }

    async fn login(&self, node: usize) -> Value {
        self.sandbox
            .log_in(node, "admin", ADMIN_PASSWORD)
            .await
            .unwrap()
    }

    /// The index of the node that owns `session`, as node `asking` lists it.
    async fn owner(&self, token: &str, session: &str, asking: usize) -> usize {
        let owner = self
            .sandbox
            .session_owner(asking, token, session)
            .await
            .expect("the session is listed");
        self.sandbox
            .nodes()
            .iter()
            .position(|n| n.name == owner)
            .unwrap()
    }

    /// `sark_session_forwards_total{op,ran}` on `node`.
    async fn forwards(&self, node: usize, op: &str, ran: &str) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base(node)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = format!("sark_session_forwards_total{{op=\"{op}\",ran=\"{ran}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_operations_run_on_the_owner_and_fail_over_when_it_dies() {
    let options = SandboxOptions::with_env(&[
        ("SARK_DATABASE__URL", fresh_postgres_database().unwrap()),
        ("SARK_SECRETS__KEY", "6b".repeat(32)),
        ("SARK_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ("SARK_CLUSTER__HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
        ("SARK_CLUSTER__LEASE_SECONDS", LEASE_SECONDS.to_string()),
    ]);
    let mut cluster = Cluster {
        sandbox: ClusterSandbox::start(3, options).await.unwrap(),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    let first = cluster.login(0).await;
    let admin = first["access_token"].as_str().unwrap().to_owned();
    cluster
        .sandbox
        .wait_formed(&admin, Duration::from_secs(LEASE_SECONDS * 10))
        .await
        .unwrap();

    // Logins until one session is owned by a node other than the one it was created on,
    // then refresh it on the third node: the owner answers.
    let (tokens, owner, other) = loop {
        let tokens = cluster.login(0).await;
        let session = tokens["session_id"].as_str().unwrap();
        let owner = cluster.owner(&admin, session, 0).await;
        for asking in 1..3 {
            assert_eq!(
                cluster.owner(&admin, session, asking).await,
                owner,
                "every node agrees on the owner"
            );
        }
        if owner != 0 {
            let other = (1..3).find(|n| *n != owner).unwrap();
            break (tokens, owner, other);
        }
    };
    // Node 0 listed a session another node owns: that owner described it.
    assert!(cluster.forwards(0, "list", "owner").await >= 1);
    assert_eq!(cluster.forwards(0, "list", "owner_unreachable").await, 0);
    let before = cluster.forwards(other, "refresh", "owner").await;
    let (status, refreshed) = cluster
        .post(
            other,
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(
        cluster.forwards(other, "refresh", "owner").await,
        before + 1
    );
    // The rotated-away token, presented again anywhere, is a reuse: the owner revokes the
    // whole session.
    let (status, body) = cluster
        .post(
            0,
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "refresh_token_reused");
    let (status, _) = cluster
        .post(
            other,
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": refreshed["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 401, "the whole session is revoked");
    println!("session owned by node {owner}; refreshed through node {other}");

    // A logout sent to a non-owner runs on the owner and reaches every node.
    let fresh = cluster.login(0).await;
    let fresh_owner = cluster
        .owner(&admin, fresh["session_id"].as_str().unwrap(), 0)
        .await;
    let sender = (0..3).find(|n| *n != fresh_owner).unwrap();
    let access = fresh["access_token"].as_str().unwrap();
    let (status, revoked) = cluster
        .post(sender, "/api/v1/auth/logout", Some(access), json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked"], true);
    assert_eq!(cluster.forwards(sender, "logout", "owner").await, 1);
    for node in 0..3 {
        assert_eq!(cluster.get(node, "/api/v1/auth/me", access).await.0, 401);
    }

    // The owner dies: the session is served by its new owner, from the store.
    let doomed = cluster.login(0).await;
    let session = doomed["session_id"].as_str().unwrap().to_owned();
    let owner = cluster.owner(&admin, &session, 0).await;
    let other = (0..3).find(|n| *n != owner).unwrap();
    let admin = cluster.login(other).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    cluster.sandbox.kill(owner).await.unwrap();
    let killed = Instant::now();
    let (status, after) = cluster
        .post(
            other,
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": doomed["refresh_token"]}),
        )
        .await;
    let served_again = killed.elapsed();
    assert_eq!(status, 200, "{after}");
    assert!(
        served_again < Duration::from_secs(LEASE_SECONDS * 3),
        "a dead owner's session was served again after {served_again:?}"
    );
    println!("time to serve a dead owner's session again: {served_again:?}");
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECONDS * 10);
    loop {
        let new_owner = cluster.owner(&admin, &session, other).await;
        if new_owner != owner {
            println!("the session moved from node {owner} to node {new_owner}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead owner still owns the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new_owner = cluster.owner(&admin, &session, other).await;
    let (status, again) = cluster
        .post(
            other,
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": after["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    let ran = if new_owner == other { "here" } else { "owner" };
    assert!(
        cluster.forwards(other, "refresh", ran).await >= 1,
        "ran {ran}"
    );

    cluster.sandbox.restart(owner).await.unwrap();
    cluster
        .sandbox
        .wait_formed(&admin, Duration::from_secs(LEASE_SECONDS * 10))
        .await
        .unwrap();

    // A graceful leave: the leaving owner hands its running sessions over before it stops.
    let (handed, leaver) = loop {
        let tokens = cluster.login(0).await;
        let owner = cluster
            .owner(&admin, tokens["session_id"].as_str().unwrap(), 0)
            .await;
        if owner != 0 {
            break (tokens, owner);
        }
    };
    let (status, handed) = cluster
        .post(
            0,
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": handed["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "the leaver runs the session: {handed}");
    let status = cluster.sandbox.stop(leaver).await.unwrap();
    assert!(status.success(), "{status:?}");
    let session = handed["session_id"].as_str().unwrap();
    let heir = cluster.owner(&admin, session, 0).await;
    assert_ne!(heir, leaver, "the leave took effect at once");
    let took_over = cluster.sandbox.nodes()[heir].log().iter().any(|line| {
        serde_json::from_str::<Value>(line).is_ok_and(|l| {
            l["message"] == "took over the sessions of a leaving member"
                && l["taken"].as_u64().unwrap_or(0) >= 1
        })
    });
    assert!(took_over, "node {heir} took over the leaver's session");
    let (status, body) = cluster
        .post(
            0,
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": handed["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    println!("node {leaver} left; node {heir} had its session running before it stopped");

    cluster.sandbox.restart(leaver).await.unwrap();
    let statuses = cluster.sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
