use std::time::Duration;

use ractor::ActorStatus;
use sark_actors::audit::AuditMessage;
use sark_actors::limiter::LimiterMessage;
use sark_actors::policy::PolicyMessage;

use crate::helpers::{poll, spawn_app};

#[tokio::test]
async fn a_panicking_child_is_restarted_counted_and_shown_in_the_tree() {
    let app = spawn_app().await;
    let node = app.node().clone();
    let before = node.slots.limiter.get().expect("limiter running");
    before.cast(LimiterMessage::Panic).unwrap();
    let after = poll(
        "the limiter to be restarted",
        Duration::from_secs(10),
        || async {
            let restarted = node
                .actor_metrics
                .restarts
                .with_label_values(&["limiter"])
                .get()
                == 1;
            let current = node.slots.limiter.get()?;
            (restarted && current.get_id() != before.get_id()).then_some(current)
        },
    )
    .await;
    assert_eq!(after.get_status(), ActorStatus::Running);
    assert_ne!(before.get_status(), ActorStatus::Running);

    let tree = node.actor_tree().await;
    let limiter = tree.iter().find(|c| c.kind == "limiter").unwrap();
    assert_eq!((limiter.status, limiter.restarts), ("running", 1));
    let policies = tree.iter().find(|c| c.kind == "policy_supervisor").unwrap();
    let bundles: Vec<&str> = policies.children.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(bundles, ["authorization", "rate_limiting"]);

    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"sark_actor_restarts_total{kind="limiter"} 1"#),
        "{metrics}"
    );
    // The restarted limiter still limits: requests are counted as before.
    assert_eq!(app.get("/nothing").await.status(), 404);
    app.stop().await;
}

/// Checks one entry of `/api/v1/cluster/actors` and, recursively, its children.
fn assert_actor_entry(entry: &serde_json::Value) {
    for field in ["kind", "id", "status"] {
        assert!(entry[field].is_string(), "{field} in {entry}");
    }
    for field in ["restarts", "mailbox"] {
        assert!(entry[field].is_u64(), "{field} in {entry}");
    }
    for child in entry["children"].as_array().unwrap() {
        assert_actor_entry(child);
    }
}

#[tokio::test]
async fn the_actor_tree_route_shows_kind_status_restarts_and_mailbox() {
    let app = spawn_app().await;
    let token = app.admin_token().await;
    let (status, body) = app.get_as("/api/v1/cluster/actors", &token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node_id"], app.node().node_id.as_str());
    let actors = body["actors"].as_array().unwrap();
    let kinds: Vec<&str> = actors.iter().filter_map(|a| a["kind"].as_str()).collect();
    for kind in [
        "session_supervisor",
        "policy_supervisor",
        "siem_supervisor",
        "audit_writer",
        "limiter",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {body}");
    }
    actors.iter().for_each(assert_actor_entry);

    let password = "quiet-harbour-lantern-7";
    app.create_user(&token, "watcher", "viewer", password).await;
    let viewer = app.login("watcher", password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = app.get_as("/api/v1/cluster/actors", &viewer).await;
    assert_eq!(status, 403, "viewers may not read the cluster: {body}");
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_audit_writer_continues_its_chain_from_the_store() {
    let app = spawn_app().await;
    let node = app.node().clone();
    // The bootstrap's own event must be on the chain first, or it could land between ours.
    poll(
        "the bootstrap audit event",
        Duration::from_secs(10),
        || async { node.store.chain_head(&node.node_id).await.ok().flatten() },
    )
    .await;
    let first = node
        .audit
        .record(node.audit.event("test_event", "success"))
        .await
        .unwrap();
    node.audit
        .writer()
        .unwrap()
        .cast(AuditMessage::Panic)
        .unwrap();
    poll(
        "the audit writer to be restarted",
        Duration::from_secs(10),
        || async {
            (node
                .actor_metrics
                .restarts
                .with_label_values(&["audit_writer"])
                .get()
                == 1)
                .then_some(())
        },
    )
    .await;
    let second = poll(
        "the restarted writer to accept events",
        Duration::from_secs(10),
        || async {
            node.audit
                .record(node.audit.event("test_event", "success"))
                .await
                .ok()
        },
    )
    .await;
    assert_eq!(second.chain, first.chain);
    assert_eq!(
        second.seq,
        first.seq + 1,
        "the new instance reloaded the chain head"
    );
    let events = node
        .store
        .chain_segment(&first.chain, first.seq - 1, 10)
        .await
        .unwrap();
    assert_eq!(
        events[0].hash, events[1].prev_hash,
        "the chain is unbroken across the restart"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_policy_actor_reloads_its_bundle_from_the_store() {
    let app = spawn_app().await;
    let node = app.node().clone();
    let before = node.policy_actors.get("authorization").unwrap();
    before.cast(PolicyMessage::Panic).unwrap();
    poll(
        "the policy actor to be restarted",
        Duration::from_secs(10),
        || async {
            let current = node.policy_actors.get("authorization")?;
            (current.get_id() != before.get_id() && current.get_status() == ActorStatus::Running)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        node.actor_metrics
            .restarts
            .with_label_values(&["policy"])
            .get(),
        1
    );
    assert_eq!(node.policies.versions().get("authorization"), Some(&1));
    assert_eq!(app.get("/health/ready").await.status(), 200);
    app.stop().await;
}
