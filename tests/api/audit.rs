//! The audit log over the API: listing, and verification that catches tampering done
//! directly in the database.

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use std::time::Duration;

use sark::store::ChainedEvent;
use sark_actors::audit::{HEAD_STATEMENT_EVENT, HEAD_UNSEALED_EVENT};
use sark_chaos::receivers::HecReceiver;

use crate::helpers::{TestApp, poll, spawn_app, spawn_app_with, spawn_pg_app_with};

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
    assert!(
        reasons(&verified).contains(&("tampered".into(), events[2].seq)),
        "{verified}"
    );
    assert!(
        reasons(&verified).contains(&("missing".into(), events[4].seq)),
        "{verified}"
    );
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

    // The newest events deleted and the head moved back onto the last one left: the head's
    // seal no longer matches. The node is writing meanwhile, so the head is read at once.
    let pg = app.node().config.database.url.is_some();
    let truncate = if pg {
        "WITH head AS (SELECT hash FROM audit_logs WHERE chain = $1 AND seq = $2::bigint), \
         gone AS (DELETE FROM audit_logs WHERE chain = $1 AND seq > $2::bigint) \
         UPDATE audit_chain_heads SET seq = $2::bigint, hash = (SELECT hash FROM head) WHERE chain = $1"
    } else {
        "UPDATE audit_chain_heads SET seq = CAST($2 AS INTEGER), hash = \
         (SELECT hash FROM audit_logs WHERE chain = $1 AND seq = CAST($2 AS INTEGER)) WHERE chain = $1"
    };
    tamper(app, truncate, &[&chain, &seq(5)]).await;
    if !pg {
        sqlx_sqlite(
            app,
            "DELETE FROM audit_logs WHERE chain = $1 AND seq > CAST($2 AS INTEGER)",
            &[&chain, &seq(5)],
        )
        .await;
    }
    // Retention's checkpoint moved forward by hand over deleted oldest events.
    let forward = if pg {
        "INSERT INTO audit_checkpoints (chain, seq, hash, updated_at, mac) \
         SELECT chain, seq, hash, now(), 'ab12' FROM audit_logs WHERE chain = $1 AND seq = $2::bigint"
    } else {
        "INSERT INTO audit_checkpoints (chain, seq, hash, updated_at, mac) \
         SELECT chain, seq, hash, '2026-12-04 10:00:00+00:00', 'ab12' FROM audit_logs \
         WHERE chain = $1 AND seq = CAST($2 AS INTEGER)"
    };
    tamper(app, forward, &[&chain, &seq(1)]).await;
    let (_, verified) = get(app, &admin, "/api/v1/audit/verify").await;
    let found = reasons(&verified);
    assert!(
        found.contains(&("head_unsealed".into(), events[5].seq)),
        "{verified}"
    );
    assert!(
        found.contains(&("checkpoint_unsealed".into(), events[1].seq)),
        "{verified}"
    );
}

/// `(reason, seq)` of every break a verification reports.
fn reasons(verified: &Value) -> Vec<(String, i64)> {
    verified["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["reason"].as_str().unwrap().to_owned(),
                b["seq"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Runs SQL on a SQLite node's database, whatever it affects.
async fn sqlx_sqlite(app: &TestApp, sql: &'static str, binds: &[&str]) {
    let url = format!(
        "sqlite://{}",
        app.node().config.data_dir.join("sark.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mut query = sqlx::query(sql);
    for b in binds {
        query = query.bind(*b);
    }
    query.execute(&pool).await.unwrap();
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

/// Runs `sark admin audit-verify` on a stopped node's data directory; returns whether it
/// passed and what it printed.
fn audit_verify_cli(
    data_dir: &std::path::Path,
    export: Option<&std::path::Path>,
) -> (bool, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sark"));
    command
        .args(["admin", "--data-dir"])
        .arg(data_dir)
        .arg("audit-verify")
        .env_clear();
    if let Some(export) = export {
        command.arg("--siem-export").arg(export);
    }
    let output = command.output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// Events of `chain` the collector received, up to which seq.
fn received_up_to(hec: &HecReceiver, chain: &str) -> i64 {
    hec.received()
        .events()
        .iter()
        .filter(|e| e["chain"] == chain)
        .filter_map(|e| e["seq"].as_i64())
        .max()
        .unwrap_or(0)
}

/// The head row of `chain`, as stored text.
async fn head_row(pool: &sqlx::SqlitePool, chain: &str) -> (i64, String, String, Option<String>) {
    sqlx::query_as("SELECT seq, hash, updated_at, mac FROM audit_chain_heads WHERE chain = $1")
        .bind(chain)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_chain_cut_back_to_an_old_sealed_head_is_caught_by_the_siem_copy() {
    let hec = HecReceiver::local(crate::siem::HEC_TOKEN).await.unwrap();
    let app = spawn_app_with(|c| {
        c.siem.splunk = Some(crate::siem::splunk(hec.url()));
        c.audit.head_statement_seconds = 1;
    })
    .await;
    let admin = app.admin_token().await;
    let chain = app.node().node_id.clone();
    let db = format!(
        "sqlite://{}",
        app.node().config.data_dir.join("sark.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    for i in 0..3 {
        app.create_user(&admin, &format!("early-{i}"), "viewer", PASSWORD)
            .await;
    }
    // A head statement reaches the SIEM while the chain moves.
    poll(
        "a head statement at the collector",
        Duration::from_secs(20),
        || async {
            hec.received()
                .events()
                .iter()
                .any(|e| e["event_type"] == HEAD_STATEMENT_EVENT && e["chain"] == chain)
                .then_some(())
        },
    )
    .await;
    // What an attacker copied from the database at this point: the head row, sealed.
    let old_head = head_row(&pool, &chain).await;
    for i in 0..3 {
        app.create_user(&admin, &format!("late-{i}"), "viewer", PASSWORD)
            .await;
    }
    let newest = head_row(&pool, &chain).await.0;
    poll(
        "every event at the collector",
        Duration::from_secs(20),
        || async { (received_up_to(&hec, &chain) >= newest).then_some(()) },
    )
    .await;
    pool.close().await;
    let data = app.stop_keeping_data().await;
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let export = data.path().join("splunk-export.json");
    let lines: Vec<String> = hec
        .received()
        .events()
        .into_iter()
        .map(|e| json!({"result": {"_raw": e.to_string()}}).to_string())
        .collect();
    std::fs::write(&export, lines.join("\n")).unwrap();

    let (ok, printed) = audit_verify_cli(data.path(), Some(&export));
    assert!(ok, "untouched, the store and the SIEM agree: {printed}");
    assert!(printed.contains("\"statements\""), "{printed}");

    // The newest events deleted and the head row pointed at the last one left.
    let (k, _, _, _) = old_head;
    sqlx::query("DELETE FROM audit_logs WHERE chain = $1 AND seq > $2")
        .bind(&chain)
        .bind(k)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_chain_heads SET seq = $2, \
         hash = (SELECT hash FROM audit_logs WHERE chain = $1 AND seq = $2) WHERE chain = $1",
    )
    .bind(&chain)
    .bind(k)
    .execute(&pool)
    .await
    .unwrap();
    let (ok, printed) = audit_verify_cli(data.path(), None);
    assert!(!ok, "{printed}");
    assert!(printed.contains("\"head_unsealed\""), "{printed}");

    // The old head row put back whole, seal included: the store alone is consistent again,
    // as docs/security.md says; the SIEM's copy is not.
    sqlx::query("UPDATE audit_chain_heads SET updated_at = $2, mac = $3 WHERE chain = $1")
        .bind(&chain)
        .bind(&old_head.2)
        .bind(&old_head.3)
        .execute(&pool)
        .await
        .unwrap();
    let (ok, printed) = audit_verify_cli(data.path(), None);
    assert!(ok, "{printed}");
    let (ok, printed) = audit_verify_cli(data.path(), Some(&export));
    assert!(!ok, "{printed}");
    let report: Value = serde_json::from_str(printed.split_once('\n').unwrap().1).unwrap();
    let missing: Vec<i64> = report["broken"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["reason"] == "missing_from_store")
        .map(|b| b["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(missing.first(), Some(&(k + 1)), "{report}");
    assert_eq!(missing.len() as i64, newest - k, "{report}");

    // A head whose seal was removed: the next node to start says so on its chain, which the
    // SIEM receives, before it writes anything after it.
    sqlx::query("UPDATE audit_chain_heads SET mac = NULL WHERE chain = $1")
        .bind(&chain)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let dir = data.path().to_path_buf();
    let restarted = spawn_app_with(|c| {
        c.data_dir = dir;
        c.siem.splunk = Some(crate::siem::splunk(hec.url()));
    })
    .await;
    let flagged = poll(
        "the unsealed head at the collector",
        Duration::from_secs(20),
        || async {
            hec.received()
                .events()
                .into_iter()
                .find(|e| e["event_type"] == HEAD_UNSEALED_EVENT)
        },
    )
    .await;
    assert_eq!(flagged["chain"], chain.as_str());
    assert_eq!(flagged["seq"], k + 1, "{flagged}");
    assert_eq!(flagged["details"]["seq"], k, "{flagged}");
    assert_eq!(flagged["details"]["sealed"], false, "{flagged}");
    restarted.stop().await;
    drop(data);
}
