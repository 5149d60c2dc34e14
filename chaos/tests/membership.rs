//! `membership` scenario: three nodes find each other from their seeds; garbage on a cluster
//! port harms nothing; a heartbeat in an unsupported protocol version is refused with a log
//! line; a paused node is suspected and a killed one marked down within the
//! configured deadlines, and both are up again once they are back (the killed one by
//! reconnection to its new process); a node stopped with SIGTERM announces its leave and is
//! dropped at once. Every change is in the audit log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use ractor::{Actor, ActorRef};
use ractor_cluster::NodeServer;
use ractor_cluster::node::NodeConnectionMode;
use sark_chaos::faults::Signal;
use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions};
use sark_cluster::wire::{Frame, Hello, NodeSummary, PEER_GROUP, PROTOCOL_VERSION, PeerMessage};

const HEARTBEAT_MS: u64 = 200;
const LEASE_SECONDS: u64 = 2;

struct Observer {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Observer {
    async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    /// `(event_type, resource)` of the membership changes in this node's audit log.
    async fn membership_changes(&self) -> Vec<(String, String)> {
        let audit = self.get("/api/v1/audit?limit=500").await;
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"].as_str().unwrap().starts_with("node_"))
            .map(|e| {
                (
                    e["event_type"].as_str().unwrap().to_owned(),
                    e["resource"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    async fn status_of(&self, node: &str) -> Option<String> {
        let cluster = self.get("/api/v1/cluster").await;
        cluster["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node_id"] == node)
            .map(|m| m["status"].as_str().unwrap().to_owned())
    }

    /// Polls until `node` has `status` here; returns how long that took.
    async fn wait_status(&self, node: &str, status: &str, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.status_of(node).await.as_deref() == Some(status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{node} not {status} within {within:?}: {}",
                self.get("/api/v1/cluster").await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_detected_suspected_lost_and_rejoined() {
    let options = SandboxOptions::with_env(&[
        ("SARK_CLUSTER__HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
        ("SARK_CLUSTER__LEASE_SECONDS", LEASE_SECONDS.to_string()),
    ]);
    let started = Instant::now();
    let mut sandbox = ClusterSandbox::start(3, options).await.unwrap();
    let names: Vec<String> = sandbox.nodes().iter().map(|n| n.name.clone()).collect();
    let token = sandbox
        .login(0, "admin", &sandbox.bootstrap_password(0).unwrap())
        .await
        .unwrap();
    let observer = Observer {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        base: format!("http://{}", sandbox.nodes()[0].http),
        token,
    };
    let within = Duration::from_secs(LEASE_SECONDS * 5);
    for name in &names[1..] {
        observer.wait_status(name, "up", within).await;
    }
    let formed = started.elapsed();
    let cluster = observer.get("/api/v1/cluster").await;
    assert_eq!(cluster["node_id"], names[0]);
    let members = cluster["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{cluster}");
    for member in members {
        assert_eq!(
            member["policy_versions"]["authorization"], 1,
            "members report their policy versions: {cluster}"
        );
        assert!(member["addr"].as_str().unwrap().starts_with("127.0.0."));
    }
    let actors = observer.get("/api/v1/cluster/actors").await;
    assert!(
        actors["actors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "membership"
                && a["status"] == "running"
                && a["mailbox"].is_u64()),
        "{actors}"
    );

    // Garbage, then a frame header announcing 4 GiB, on the first node's cluster port.
    for payload in [vec![0xA5u8; 4096], u32::MAX.to_be_bytes().to_vec()] {
        let mut garbage = tokio::net::TcpStream::connect(sandbox.nodes()[0].cluster)
            .await
            .unwrap();
        let _ = garbage.write_all(&payload).await;
        let _ = garbage.shutdown().await;
    }
    let (status, _) = sandbox.get_json(0, "/health").await.unwrap();
    assert_eq!(status, 200, "garbage on the cluster port harms nothing");
    observer.wait_status(&names[2], "up", within).await;

    // A process with the cookie that speaks an unsupported protocol version: its heartbeat
    // is refused with a log line naming both versions, and it is never listed.
    let unsupported = PROTOCOL_VERSION + 2;
    let relic = NodeServer::new(
        0,
        sandbox.cookie(),
        "relic".to_owned(),
        "127.0.0.1".to_owned(),
        None,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into());
    let (relic, relic_handle) = Actor::spawn(None, relic, ()).await.unwrap();
    ractor_cluster::client_connect(&relic, sandbox.nodes()[0].cluster)
        .await
        .unwrap();
    let deadline = Instant::now() + within;
    let peer = loop {
        let remote = ractor::pg::get_members(&PEER_GROUP.to_owned())
            .into_iter()
            .find(|cell| !cell.get_id().is_local());
        if let Some(cell) = remote {
            break ActorRef::<PeerMessage>::from(cell);
        }
        assert!(
            Instant::now() < deadline,
            "the node's Peer actor was never seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let hello = Frame::Ok(Hello {
        version: unsupported,
        node: NodeSummary {
            node_id: "relic".to_owned(),
            addr: "127.0.0.1:1".to_owned(),
            ..NodeSummary::default()
        },
    });
    let answer = ractor::call_t!(peer, PeerMessage::Heartbeat, 5_000, hello).unwrap();
    assert!(
        matches!(answer, Frame::Ok(Hello { version, .. }) if version == PROTOCOL_VERSION),
        "the node still answers with its own version"
    );
    let refusal = loop {
        let log = sandbox.nodes()[0].log();
        if let Some(line) = log
            .iter()
            .find(|l| l.contains("refusing a cluster peer") && l.contains("relic"))
        {
            break line.clone();
        }
        assert!(Instant::now() < deadline, "no refusal logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refusal.contains(&format!("\"peer_version\":{unsupported}")),
        "{refusal}"
    );
    let cluster = observer.get("/api/v1/cluster").await;
    assert!(
        !cluster["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["node_id"] == "relic"),
        "{cluster}"
    );
    relic.stop(None);
    relic_handle.await.unwrap();

    // A hung node: suspected, then up again once resumed.
    sandbox.signal(2, Signal::Stop).unwrap();
    let suspected = observer.wait_status(&names[2], "suspect", within).await;
    let (_, detailed) = sandbox.get_json(0, "/health/detailed").await.unwrap();
    assert_eq!(
        detailed["services"]["cluster"], "UP",
        "two of three members keep the lease: {detailed}"
    );
    sandbox.signal(2, Signal::Cont).unwrap();
    let resumed = observer.wait_status(&names[2], "up", within).await;

    // A killed node: down within the lease, back up once its new process is reached again.
    sandbox.kill(1).await.unwrap();
    let lost = observer.wait_status(&names[1], "down", within).await;
    sandbox.restart(1).await.unwrap();
    let rejoined = observer.wait_status(&names[1], "up", within).await;

    // A graceful stop: the member announces its leave and is dropped at once.
    sandbox.signal(2, Signal::Term).unwrap();
    let stopping = Instant::now();
    while observer.status_of(&names[2]).await.is_some() {
        assert!(
            stopping.elapsed() < Duration::from_secs(LEASE_SECONDS),
            "a leaving member must be dropped before its lease runs out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = stopping.elapsed();

    let node2_left = ("node_left".to_owned(), format!("node:{}", names[2]));
    let changes = loop {
        let changes = observer.membership_changes().await;
        if changes.contains(&node2_left) {
            break changes;
        }
        assert!(
            stopping.elapsed() < within,
            "no node_left audited: {changes:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let node1 = format!("node:{}", names[1]);
    assert!(
        changes.contains(&("node_left".into(), node1.clone())),
        "{changes:?}"
    );
    assert_eq!(
        changes
            .iter()
            .filter(|c| c.1 == node1 && c.0 == "node_joined")
            .count(),
        2,
        "joined at start and after the restart: {changes:?}"
    );
    println!(
        "membership: 3 nodes formed in {formed:?}; heartbeat {HEARTBEAT_MS} ms, lease \
         {LEASE_SECONDS} s; hung node suspected after {suspected:?}, up {resumed:?} after \
         SIGCONT; killed node down after {lost:?}, up {rejoined:?} after its restart; a \
         stopping node dropped {left:?} after SIGTERM"
    );
    let statuses = sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
