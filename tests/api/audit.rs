//! The audit log over the API: listing, and verification that catches tampering done
//! directly in the database.

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use sark::store::ChainedEvent;

use crate::helpers::{TestApp, spawn_app, spawn_pg_app_with};

const PASSWORD: &str = "violet kettle swims at dawn";

async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let response = app.call(Method::GET, path, token, None).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Runs SQL against the node's own database, as an attacker with database access would.
async fn tamper(app: &TestApp, sql: &'static str, binds: &[&str]) {
    let config = &app.node().config;
    match config.database.url.as_ref() {
        Some(url) => {
            let pool = sqlx::PgPool::connect(url.expose()).await.unwrap();
            let mut query = sqlx::query(sql);
            for b in binds {
                query = query.bind(*b);
            }
            let done = query.execute(&pool).await.unwrap();
            assert_eq!(done.rows_affected(), 1, "{sql}");
        }
        None => {
            let url = format!("sqlite://{}", config.data_dir.join("sark.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let mut query = sqlx::query(sql);
            for b in binds {
                query = query.bind(*b);
            }
            let done = query.execute(&pool).await.unwrap();
            assert_eq!(done.rows_affected(), 1, "{sql}");
        }
    }
}

async fn chain_events(app: &TestApp, chain: &str) -> Vec<ChainedEvent> {
    app.node()
        .store
        .chain_segment(chain, 0, 10_000)
        .await
        .unwrap()
}

async fn tampering_is_reported(app: &TestApp) {
    let admin = app.admin_token().await;
    for i in 0..6 {
        app.create_user(&admin, &format!("member-{i}"), "viewer", PASSWORD)
            .await;
    }
    let (status, verified) = get(app, &admin, "/api/v1/audit/verify").await;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(verified["checked"].as_u64().unwrap() >= 7, "{verified}");
    assert!(verified["chains"].as_u64().unwrap() >= 1);

    let chain = app.node().node_id.clone();
    let events = chain_events(app, &chain).await;
    assert!(events.len() >= 7, "{} events", events.len());
    let seq = |i: usize| events[i].seq.to_string();

    // An edited row.
    let edited = if app.node().config.database.url.is_some() {
        "UPDATE audit_logs SET actor = 'mallory' WHERE chain = $1 AND seq = $2::bigint"
    } else {
        "UPDATE audit_logs SET actor = 'mallory' WHERE chain = $1 AND seq = CAST($2 AS INTEGER)"
    };
    tamper(app, edited, &[&chain, &seq(2)]).await;
    // A row deleted from the middle.
    let deleted = if app.node().config.database.url.is_some() {
        "DELETE FROM audit_logs WHERE chain = $1 AND seq = $2::bigint"
    } else {
        "DELETE FROM audit_logs WHERE chain = $1 AND seq = CAST($2 AS INTEGER)"
    };
    tamper(app, deleted, &[&chain, &seq(4)]).await;
    // A row whose details no longer parse (a TEXT column on SQLite; JSONB refuses it).
    if app.node().config.database.url.is_none() {
        tamper(
            app,
            "UPDATE audit_logs SET details = '{not json' WHERE chain = $1 AND seq = CAST($2 AS INTEGER)",
            &[&chain, &seq(3)],
        )
        .await;
    }
    // An edited row whose hash was recomputed as a plain SHA-256 of its canonical form.
    let mut forged = events[6].clone();
    forged.event.outcome = "failure".into();
    let plain = hex::encode(Sha256::digest(
        sark_actors::audit::canonical_encoding(
            &chain,
            forged.seq,
            &forged.prev_hash,
            &forged.event,
        )
        .as_bytes(),
    ));
    let rehashed = if app.node().config.database.url.is_some() {
        "UPDATE audit_logs SET outcome = 'failure', hash = $3 WHERE chain = $1 AND seq = $2::bigint"
    } else {
        "UPDATE audit_logs SET outcome = 'failure', hash = $3 WHERE chain = $1 AND seq = CAST($2 AS INTEGER)"
    };
    tamper(app, rehashed, &[&chain, &seq(6), &plain]).await;

    let (status, verified) = get(app, &admin, "/api/v1/audit/verify").await;
    assert_eq!(status, 200);
    assert_eq!(verified["ok"], false, "{verified}");
    let broken: Vec<(String, i64)> = verified["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["chain"].as_str().unwrap().to_owned(),
                b["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    let unreadable = app.node().config.database.url.is_none();
    for i in [2, 4, 6].into_iter().chain(unreadable.then_some(3)) {
        assert!(
            broken.contains(&(chain.clone(), events[i].seq)),
            "seq {} in {broken:?}",
            events[i].seq
        );
    }
    // Untouched events do not show up.
    assert!(
        !broken.contains(&(chain.clone(), events[1].seq)),
        "{broken:?}"
    );
}

#[tokio::test]
async fn edits_deletions_and_rehashed_rows_are_reported_on_sqlite() {
    let app = spawn_app().await;
    tampering_is_reported(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn edits_deletions_and_rehashed_rows_are_reported_on_postgres() {
    let app = spawn_pg_app_with(|_| {}).await;
    tampering_is_reported(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn the_audit_log_lists_newest_first_with_filters_and_pages() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for i in 0..4 {
        app.create_user(&admin, &format!("pat-{i}"), "viewer", PASSWORD)
            .await;
    }
    let (status, all) = get(&app, &admin, "/api/v1/audit?limit=500").await;
    assert_eq!(status, 200, "{all}");
    let items = all["items"].as_array().unwrap();
    for key in [
        "id",
        "chain",
        "seq",
        "timestamp",
        "event_type",
        "actor",
        "ip",
        "resource",
        "outcome",
        "details",
        "node_id",
        "prev_hash",
        "hash",
    ] {
        assert!(items[0].get(key).is_some(), "{key} missing: {}", items[0]);
    }
    let times: Vec<&str> = items
        .iter()
        .map(|i| i["timestamp"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");

    let (_, created) = get(
        &app,
        &admin,
        "/api/v1/audit?event_type=user_created&actor=admin",
    )
    .await;
    let created = created["items"].as_array().unwrap();
    assert_eq!(created.len(), 4);
    assert!(
        created
            .iter()
            .all(|e| e["event_type"] == "user_created" && e["actor"] == "admin")
    );

    // Pages of two walk the same four events once each.
    let mut seen = Vec::new();
    let mut path = "/api/v1/audit?event_type=user_created&actor=admin&limit=2".to_owned();
    loop {
        let (status, page) = get(&app, &admin, &path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!(
                    "/api/v1/audit?event_type=user_created&actor=admin&limit=2&cursor={cursor}"
                )
            }
            None => break,
        }
    }
    let expected: Vec<String> = created
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, expected);

    let (_, none) = get(&app, &admin, "/api/v1/audit?since=2999-01-01T00:00:00Z").await;
    assert_eq!(none["items"], json!([]));
    let (_, by_actor) = get(&app, &admin, "/api/v1/audit?actor=nobody-at-all").await;
    assert_eq!(by_actor["items"], json!([]));

    for (query, field) in [
        ("since=yesterday", "since"),
        ("until=1", "until"),
        ("cursor=abc", "cursor"),
        ("limit=0", "limit"),
    ] {
        let (status, body) = get(&app, &admin, &format!("/api/v1/audit?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}`")),
            "{query}: {body}"
        );
    }
    let (status, _) = get(&app, &admin, "/api/v1/audit?colour=red").await;
    assert_eq!(status, 400);

    let viewer = app.login("pat-0", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(&app, &viewer, "/api/v1/audit").await.0, 403);
    assert_eq!(get(&app, &viewer, "/api/v1/audit/verify").await.0, 403);
    app.stop().await;
}

#[tokio::test]
async fn every_api_request_gets_a_row_but_probes_do_not() {
    let app = spawn_app().await;
    let start = app.node().clock.now() - chrono::Duration::seconds(5);
    let admin = app.admin_token().await;
    for _ in 0..5 {
        assert_eq!(app.get_as("/api/v1/auth/me", &admin).await.0, 200);
        let health = app.get("/health").await;
        assert_eq!(health.status(), 200);
    }
    let store = app.node().store.clone();
    let rows = crate::helpers::poll(
        "the request log rows",
        std::time::Duration::from_secs(10),
        || async {
            let n = store.count_requests(start).await.unwrap();
            (n >= 6).then_some(n)
        },
    )
    .await;
    assert_eq!(
        rows, 6,
        "one login and five /auth/me; /health is not logged"
    );
    let url = format!(
        "sqlite://{}",
        app.node().config.data_dir.join("sark.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let logged: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT method, route, status, principal FROM api_requests ORDER BY timestamp",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        logged[0],
        ("POST".into(), "/api/v1/auth/login".into(), 200, None)
    );
    assert_eq!(
        logged[1],
        (
            "GET".into(),
            "/api/v1/auth/me".into(),
            200,
            Some("admin".into())
        )
    );
    app.stop().await;
}
