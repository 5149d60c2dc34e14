//! `broadcast` scenario: three nodes on one PostgreSQL database. A session revoked on one
//! node is refused by the others on the very next request; a policy uploaded on one node
//! answers every evaluation on the others at once; failed logins spread over the nodes lock
//! the account everywhere; a node cut off by iptables rules refuses a token revoked while it
//! was cut off (its lease lapsed, so it asks the store); and a revocation made on the cut-off
//! node before it noticed the cut is answered 503 (no majority confirmed it), then reaches
//! the others once the cut heals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use sark_chaos::faults::Partition;
use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions, fresh_postgres_database, send_json};

const HEARTBEAT_MS: u64 = 200;
const LEASE_SECONDS: u64 = 2;
const ADMIN_PASSWORD: &str = "chaos root passphrase, long enough";
const USER_PASSWORD: &str = "chaos user passphrase, long enough";

struct Api {
    client: reqwest::Client,
    bases: Vec<String>,
}

impl Api {
    async fn call(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.bases[node]))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        send_json(request).await.unwrap()
    }

    async fn login(&self, node: usize, username: &str, password: &str) -> Value {
        let response = self
            .client
            .post(format!("{}/api/v1/auth/login", self.bases[node]))
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "login on node {node}");
        response.json().await.unwrap()
    }

    async fn me(&self, node: usize, token: &str) -> u16 {
        self.call(node, reqwest::Method::GET, "/api/v1/auth/me", token, None)
            .await
            .0
    }

    async fn member_status(&self, node: usize, token: &str, member: &str) -> String {
        let (_, cluster) = self
            .call(node, reqwest::Method::GET, "/api/v1/cluster", token, None)
            .await;
        cluster["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node_id"] == member)
            .map(|m| m["status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    async fn wait_member(&self, node: usize, token: &str, member: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(LEASE_SECONDS * 10);
        while self.member_status(node, token, member).await != status {
            assert!(
                Instant::now() < deadline,
                "{member} never {status} on node {node}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn session(login: &Value) -> (String, String) {
    (
        login["access_token"].as_str().unwrap().to_owned(),
        login["session_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_policies_reach_every_node_and_a_cut_off_node_asks_the_store() {
    let options = SandboxOptions::with_env(&[
        ("SARK_DATABASE__URL", fresh_postgres_database().unwrap()),
        ("SARK_SECRETS__KEY", "5a".repeat(32)),
        ("SARK_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ("SARK_CLUSTER__HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
        ("SARK_CLUSTER__LEASE_SECONDS", LEASE_SECONDS.to_string()),
    ]);
    let sandbox = ClusterSandbox::start(3, options).await.unwrap();
    let names: Vec<String> = sandbox.nodes().iter().map(|n| n.name.clone()).collect();
    let ips: Vec<Ipv4Addr> = sandbox.nodes().iter().map(|n| n.ip).collect();
    let api = Api {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        bases: sandbox
            .nodes()
            .iter()
            .map(|n| format!("http://{}", n.http))
            .collect(),
    };
    let admin = sandbox.login(0, "admin", ADMIN_PASSWORD).await.unwrap();
    // The cluster is formed once every node sees every other up.
    for node in 0..3 {
        for (other, name) in names.iter().enumerate() {
            if other != node {
                api.wait_member(node, &admin, name, "up").await;
            }
        }
    }
    let (status, _) = api
        .call(
            0,
            reqwest::Method::POST,
            "/api/v1/users",
            &admin,
            Some(json!({"username": "bob", "email": "bob@example.org", "role": "operator", "password": USER_PASSWORD})),
        )
        .await;
    assert_eq!(status, 201);
    let (first, first_id) = session(&api.login(0, "bob", USER_PASSWORD).await);
    let (second, second_id) = session(&api.login(1, "bob", USER_PASSWORD).await);
    let (third, _) = session(&api.login(2, "bob", USER_PASSWORD).await);
    for node in 0..3 {
        assert_eq!(
            api.me(node, &first).await,
            200,
            "tokens of one node work on all"
        );
    }

    // Failed logins of one name spread over the three nodes lock it everywhere.
    for attempt in 0..5 {
        let (status, _) = send_json(
            api.client
                .post(format!("{}/api/v1/auth/login", api.bases[attempt % 3]))
                .json(&json!({"username": "carol", "password": "not her password at all"})),
        )
        .await
        .unwrap();
        let expected = if attempt < 4 { 401 } else { 423 };
        assert_eq!(
            status, expected,
            "attempt {attempt}: the fifth failure locks"
        );
    }
    for node in 0..3 {
        let (status, body) = send_json(
            api.client
                .post(format!("{}/api/v1/auth/login", api.bases[node]))
                .json(&json!({"username": "carol", "password": "not her password at all"})),
        )
        .await
        .unwrap();
        assert_eq!(status, 423, "node {node}: {body}");
    }

    // Revoke on the third node; the very next request on the others is refused.
    let (status, revoked) = api
        .call(
            2,
            reqwest::Method::DELETE,
            &format!("/api/v1/sessions/{first_id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["waited_out"], json!([]), "{revoked}");
    let revoke_ms = revoked["propagation_ms"].as_u64().unwrap();
    assert_eq!(api.me(0, &first).await, 401);
    assert_eq!(api.me(1, &first).await, 401);

    // Upload on the second node; the very next evaluation elsewhere uses the new version.
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/authorization/authorization.rego"
    ))
    .unwrap();
    let form = Form::new()
        .text("name", "authorization")
        .text("description", "chaos broadcast")
        .part(
            "file",
            Part::bytes(format!("{source}\n# chaos broadcast\n").into_bytes())
                .file_name("authorization.rego"),
        );
    let (_, uploaded) = send_json(
        api.client
            .post(format!("{}/api/v1/policies", api.bases[1]))
            .bearer_auth(&admin)
            .multipart(form),
    )
    .await
    .unwrap();
    let version = uploaded["version"].as_i64().unwrap();
    assert!(version >= 2, "{uploaded}");
    let upload_ms = uploaded["propagation_ms"].as_u64().unwrap();
    for node in [0, 2] {
        let (status, decision) = api
            .call(
                node,
                reqwest::Method::POST,
                "/api/v1/authz/evaluate",
                &admin,
                Some(json!({"resource": "servers", "action": "read"})),
            )
            .await;
        assert_eq!(status, 200, "{decision}");
        assert_eq!(
            decision["policy_version"], version,
            "node {node}: {decision}"
        );
    }

    // Cut the third node off; a revocation on the first waits its lease out, and the cut-off
    // node then refuses the token too, having asked the store.
    assert_eq!(api.me(2, &second).await, 200);
    let partition = Partition::cut(ips[2], &ips[..2]).unwrap();
    let (status, revoked) = api
        .call(
            0,
            reqwest::Method::DELETE,
            &format!("/api/v1/sessions/{second_id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["waited_out"], json!([names[2]]), "{revoked}");
    let fenced_ms = revoked["propagation_ms"].as_u64().unwrap();
    assert_eq!(
        api.me(2, &second).await,
        401,
        "the cut-off node must not serve a revoked session from memory"
    );
    assert_eq!(api.me(2, &third).await, 200, "it still serves live ones");
    drop(partition);
    api.wait_member(0, &admin, &names[2], "up").await;
    assert_eq!(api.me(2, &third).await, 200);

    // The cut-off node's own revocation, made before it noticed the cut (its lease still
    // runs), reaches no majority: it is not confirmed (503), since the other two keep their
    // leases through each other. Once the cut heals they learn they missed it.
    let (fourth, fourth_id) = session(&api.login(0, "bob", USER_PASSWORD).await);
    // A throwaway revocation tells when the healed node can fence again.
    let (probe, probe_id) = session(&api.login(2, "bob", USER_PASSWORD).await);
    let probe_path = format!("/api/v1/sessions/{probe_id}");
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECONDS * 10);
    loop {
        let (status, body) = api
            .call(2, reqwest::Method::DELETE, &probe_path, &probe, None)
            .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "the healed node never settled: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let partition = Partition::cut(ips[2], &ips[..2]).unwrap();
    let path = format!("/api/v1/sessions/{fourth_id}");
    let (status, unconfirmed) = api
        .call(2, reqwest::Method::DELETE, &path, &admin, None)
        .await;
    assert_eq!(status, 503, "{unconfirmed}");
    assert_eq!(unconfirmed["error"]["code"], "cluster_unavailable");
    drop(partition);
    let healed = Instant::now();
    for node in 0..2 {
        while api.me(node, &fourth).await != 401 {
            assert!(
                healed.elapsed() < Duration::from_secs(LEASE_SECONDS * 10),
                "node {node} never learned of the unconfirmed revocation"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let learned_ms = healed.elapsed().as_millis();

    println!(
        "broadcast: revocation acknowledged by 3 nodes in {revoke_ms} ms; policy v{version} \
         active on 3 nodes in {upload_ms} ms; with one node cut off, the revocation waited its \
         lease ({LEASE_SECONDS} s) out in {fenced_ms} ms; a revocation on the cut-off node \
         was refused as unconfirmed ({}), and the others refused its token {learned_ms} ms \
         after the cut healed",
        unconfirmed["error"]["message"]
    );
    let statuses = sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
