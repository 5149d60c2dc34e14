//! The storage contract: one suite, run against SQLite and against PostgreSQL.
//!
//! PostgreSQL tests need `TEST_DATABASE_URL` (a role allowed to create databases); each
//! test gets a fresh database. `scripts/test` starts the server and sets the variable.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::config::DatabaseConfig;

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn db_config(url: Option<String>) -> DatabaseConfig {
    DatabaseConfig {
        url: url.map(crate::config::Secret::new),
        max_connections: 8,
        min_connections: 0,
        acquire_timeout_ms: 5_000,
        statement_timeout_ms: 15_000,
    }
}

/// Keeps a test database alive for the duration of a test.
pub(crate) enum Guard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Best effort: the database is throwaway either way.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(pool) = sqlx::PgPool::connect(&admin_url).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&pool)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A store on a fresh SQLite file.
pub(crate) async fn sqlite_store() -> (Arc<dyn Store>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite::SqliteStore::open(&dir.path().join("sark.db"), &db_config(None))
        .await
        .unwrap();
    (Arc::new(store), Guard::Sqlite(dir))
}

/// Creates a fresh database on the test server and returns its URL.
pub(crate) async fn fresh_postgres_database() -> (String, String, String) {
    let admin_url = std::env::var("TEST_DATABASE_URL").expect(
        "TEST_DATABASE_URL is not set: run the suite with scripts/test, which starts PostgreSQL",
    );
    let name = format!("sark_test_{}", Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    (format!("{base}/{name}"), admin_url, name)
}

async fn pg_store() -> (Arc<dyn Store>, Guard) {
    let (url, admin_url, name) = fresh_postgres_database().await;
    let store = postgres::PgStore::new(&db_config(Some(url))).unwrap();
    assert!(
        store.initialize(Utc::now()).await.unwrap(),
        "the test database is unreachable"
    );
    (Arc::new(store), Guard::Postgres { admin_url, name })
}

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _guard) = super::sqlite_store().await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _guard) = super::pg_store().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

contract_tests!(
    users_round_trip_and_duplicates_conflict,
    concurrent_bootstrap_creates_one_user,
    user_patches_apply_only_given_fields,
    users_list_in_keyset_pages,
    deleting_a_user_revokes_their_sessions,
    a_refresh_token_rotates_exactly_once_under_races,
    sessions_revoke_and_count,
    a_session_needs_an_existing_active_user,
    servers_crud_and_conflicts,
    servers_filter_by_all_tags_prefix_and_pages,
    policy_versions_bump_atomically,
    audit_chain_appends_and_refuses_forks,
    audit_lists_filter_and_page,
    outbox_leases_are_exclusive_and_complete,
    one_transaction_marks_a_batch_and_claims_the_next,
    meta_put_if_absent_keeps_the_first_value,
    the_voting_membership_records_members_and_forgets_only_the_silent,
    health_reports_the_backend,
    the_first_signing_key_is_created_once_and_rotation_keeps_the_old_one,
    api_keys_need_an_active_user_and_revoke,
    lockout_counts_every_failure_exactly_and_windows_restart,
    a_totp_step_is_accepted_once_and_recovery_codes_once,
    challenges_are_consumed_once_and_expire,
    external_identities_and_login_state_are_taken_once,
    housekeeping_removes_only_what_has_expired,
    retention_moves_checkpoints_and_keeps_chains_verifiable,
    a_restore_revokes_what_came_before_and_starts_a_new_audit_generation,
    sealed_values_are_listed_and_replaced_only_while_unchanged,
);

fn user(name: &str) -> User {
    User {
        email: Some(format!("{name}@example.org")),
        teams: vec!["ops".into(), "db".into()],
        ..User::local(
            name.into(),
            Role::Operator,
            Some("$argon2id$fake".into()),
            now(),
        )
    }
}

fn session(user_id: Uuid, refresh: &str, expires_in: Duration) -> SessionRecord {
    let t = now();
    SessionRecord {
        id: Uuid::now_v7(),
        user_id,
        refresh_hash: refresh.into(),
        auth_method: "password".into(),
        ip: Some("127.0.0.1".into()),
        mfa_verified: false,
        created_at: t,
        last_seen_at: t,
        expires_at: t + expires_in,
        revoked_at: None,
        revoked_reason: None,
        node_id: "n1".into(),
    }
}

async fn users_round_trip_and_duplicates_conflict(store: Arc<dyn Store>) {
    let alice = user("alice");
    store.create_user(&alice).await.unwrap();
    assert_eq!(
        store.user_by_username("alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        store.user_by_id(alice.id).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(store.user_by_username("nobody").await.unwrap(), None);
    let mut again = user("alice");
    again.id = Uuid::now_v7();
    match store.create_user(&again).await {
        Err(StoreError::Conflict(what)) => assert_eq!(what, "user alice"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn concurrent_bootstrap_creates_one_user(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.create_user_if_absent(&user("admin")).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        created += usize::from(task.await.unwrap());
    }
    assert_eq!(created, 1);
    assert!(store.user_by_username("admin").await.unwrap().is_some());
}

async fn user_patches_apply_only_given_fields(store: Arc<dyn Store>) {
    let bob = user("bob");
    store.create_user(&bob).await.unwrap();
    let later = now() + Duration::seconds(5);
    let patch = UserPatch {
        role: Some(Role::Admin),
        is_active: Some(false),
        email: Some(None),
        ..Default::default()
    };
    let updated = store
        .update_user("bob", &patch, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.role, Role::Admin);
    assert!(!updated.is_active);
    assert_eq!(updated.email, None);
    assert_eq!(updated.teams, bob.teams);
    assert_eq!(updated.password_hash, bob.password_hash);
    assert_eq!(updated.updated_at, later);
    assert!(
        store
            .update_user("ghost", &patch, later)
            .await
            .unwrap()
            .is_none()
    );
}

async fn users_list_in_keyset_pages(store: Arc<dyn Store>) {
    for name in ["carol", "alice", "dave", "bob"] {
        store.create_user(&user(name)).await.unwrap();
    }
    let first = store
        .list_users(&PageRequest {
            after: None,
            limit: 2,
        })
        .await
        .unwrap();
    let names: Vec<_> = first.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);
    let second = store
        .list_users(&PageRequest {
            after: Some("bob".into()),
            limit: 10,
        })
        .await
        .unwrap();
    let names: Vec<_> = second.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["carol", "dave"]);
}

async fn deleting_a_user_revokes_their_sessions(store: Arc<dyn Store>) {
    let erin = user("erin");
    store.create_user(&erin).await.unwrap();
    let s1 = session(erin.id, "h1", Duration::hours(1));
    let s2 = session(erin.id, "h2", Duration::hours(1));
    assert!(store.create_session(&s1).await.unwrap());
    assert!(store.create_session(&s2).await.unwrap());
    let deleted = store.delete_user("erin", now()).await.unwrap().unwrap();
    assert_eq!(deleted.user.id, erin.id);
    let mut revoked = deleted.revoked_sessions.clone();
    revoked.sort();
    let mut expected = vec![s1.id, s2.id];
    expected.sort();
    assert_eq!(revoked, expected);
    assert!(store.user_by_username("erin").await.unwrap().is_none());
    let mut still_revoked = store.revoked_session_ids(now()).await.unwrap();
    still_revoked.sort();
    assert_eq!(
        still_revoked, expected,
        "revoked sessions outlive their user"
    );
    assert!(store.delete_user("erin", now()).await.unwrap().is_none());
}

async fn a_refresh_token_rotates_exactly_once_under_races(store: Arc<dyn Store>) {
    let u = user("frank");
    store.create_user(&u).await.unwrap();
    let s = session(u.id, "old", Duration::hours(1));
    assert!(store.create_session(&s).await.unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .rotate_refresh(s.id, "old", &format!("new{i}"), now())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == RotateOutcome::Rotated)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == RotateOutcome::Reused)
            .count(),
        7,
        "{outcomes:?}"
    );
    let current = store.session(s.id).await.unwrap().unwrap().refresh_hash;
    assert!(current.starts_with("new"));
    assert_eq!(
        store
            .rotate_refresh(s.id, &current, "newer", now())
            .await
            .unwrap(),
        RotateOutcome::Rotated
    );
    assert_eq!(
        store
            .rotate_refresh(Uuid::now_v7(), "x", "y", now())
            .await
            .unwrap(),
        RotateOutcome::NotFound
    );
    store.revoke_session(s.id, "logout", now()).await.unwrap();
    assert_eq!(
        store
            .rotate_refresh(s.id, "newer", "z", now())
            .await
            .unwrap(),
        RotateOutcome::NotFound
    );
}

async fn sessions_revoke_and_count(store: Arc<dyn Store>) {
    let u = user("gina");
    store.create_user(&u).await.unwrap();
    let keep = session(u.id, "a", Duration::hours(1));
    let other = session(u.id, "b", Duration::hours(1));
    let expired = session(u.id, "c", Duration::seconds(-1));
    for s in [&keep, &other, &expired] {
        assert!(store.create_session(s).await.unwrap());
    }
    assert_eq!(store.count_active_sessions(now()).await.unwrap(), 2);
    assert_eq!(store.user_sessions(u.id, now()).await.unwrap().len(), 2);
    let revoked = store
        .revoke_user_sessions(u.id, Some(keep.id), "password_changed", now())
        .await
        .unwrap();
    assert_eq!(revoked, vec![other.id]);
    assert_eq!(
        store.revoked_session_ids(now()).await.unwrap(),
        vec![other.id]
    );
    let live: Vec<Uuid> = store
        .user_sessions(u.id, now())
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(live, vec![keep.id]);
    assert!(
        store
            .revoke_session(keep.id, "logout", now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_session(keep.id, "logout", now())
            .await
            .unwrap(),
        "revoking twice reports no change"
    );
    let stored = store.session(keep.id).await.unwrap().unwrap();
    assert_eq!(stored.revoked_reason.as_deref(), Some("logout"));
    assert_eq!(store.count_active_sessions(now()).await.unwrap(), 0);
    store.touch_session(other.id, now()).await.unwrap();
}

async fn a_session_needs_an_existing_active_user(store: Arc<dyn Store>) {
    assert!(
        !store
            .create_session(&session(Uuid::now_v7(), "x", Duration::hours(1)))
            .await
            .unwrap()
    );
    let u = user("hank");
    store.create_user(&u).await.unwrap();
    let patch = UserPatch {
        is_active: Some(false),
        ..Default::default()
    };
    store.update_user("hank", &patch, now()).await.unwrap();
    let s = session(u.id, "y", Duration::hours(1));
    assert!(
        !store.create_session(&s).await.unwrap(),
        "a disabled user gets no session"
    );
    assert!(store.session(s.id).await.unwrap().is_none());
    let patch = UserPatch {
        is_active: Some(true),
        ..Default::default()
    };
    store.update_user("hank", &patch, now()).await.unwrap();
    assert!(store.create_session(&s).await.unwrap());
}

fn server(name: &str, tags: &[(&str, &str)]) -> Server {
    let t = now();
    Server {
        id: Uuid::now_v7(),
        name: name.into(),
        endpoint: format!("https://{name}.example.org"),
        description: Some("a server".into()),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        created_at: t,
        updated_at: t,
        created_by: "admin".into(),
    }
}

async fn servers_crud_and_conflicts(store: Arc<dyn Store>) {
    let web = server("web-1", &[("env", "prod")]);
    store.create_server(&web).await.unwrap();
    assert_eq!(store.server("web-1").await.unwrap(), Some(web.clone()));
    match store.create_server(&server("web-1", &[])).await {
        Err(StoreError::Conflict(what)) => assert_eq!(what, "server web-1"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let later = now() + Duration::seconds(1);
    let tags: BTreeMap<String, String> = [("env".to_string(), "staging".to_string())].into();
    let patch = ServerPatch {
        tags: Some(tags.clone()),
        description: Some(None),
        ..Default::default()
    };
    let updated = store
        .update_server("web-1", &patch, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.tags, tags);
    assert_eq!(updated.description, None);
    assert_eq!(updated.endpoint, web.endpoint);
    let by_tag = store
        .list_servers(&ServerQuery {
            tags: vec![("env".into(), "staging".into())],
            page: page(10),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_tag.len(), 1, "tag index follows updates");
    assert_eq!(store.count_servers().await.unwrap(), 1);
    assert!(store.delete_server("web-1").await.unwrap());
    assert!(!store.delete_server("web-1").await.unwrap());
    assert!(
        store
            .update_server("web-1", &patch, later)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.count_servers().await.unwrap(), 0);
}

fn page(limit: u32) -> PageRequest {
    PageRequest { after: None, limit }
}

async fn servers_filter_by_all_tags_prefix_and_pages(store: Arc<dyn Store>) {
    for (name, tags) in [
        ("web-1", vec![("env", "prod"), ("role", "web")]),
        ("web-2", vec![("env", "staging"), ("role", "web")]),
        ("db-1", vec![("env", "prod"), ("role", "db")]),
        ("web-3", vec![("env", "prod"), ("role", "web")]),
    ] {
        store.create_server(&server(name, &tags)).await.unwrap();
    }
    let names = |servers: Vec<Server>| servers.into_iter().map(|s| s.name).collect::<Vec<_>>();
    let prod_web = ServerQuery {
        tags: vec![("env".into(), "prod".into()), ("role".into(), "web".into())],
        page: page(10),
        ..Default::default()
    };
    assert_eq!(
        names(store.list_servers(&prod_web).await.unwrap()),
        ["web-1", "web-3"]
    );
    let prefix = ServerQuery {
        name_prefix: Some("web-".into()),
        page: page(2),
        ..Default::default()
    };
    assert_eq!(
        names(store.list_servers(&prefix).await.unwrap()),
        ["web-1", "web-2"]
    );
    let next = ServerQuery {
        name_prefix: Some("web-".into()),
        page: PageRequest {
            after: Some("web-2".into()),
            limit: 2,
        },
        ..Default::default()
    };
    assert_eq!(names(store.list_servers(&next).await.unwrap()), ["web-3"]);
    let none = ServerQuery {
        tags: vec![("env".into(), "dev".into())],
        page: page(10),
        ..Default::default()
    };
    assert!(store.list_servers(&none).await.unwrap().is_empty());
    let contradiction = ServerQuery {
        tags: vec![
            ("env".into(), "prod".into()),
            ("env".into(), "staging".into()),
        ],
        page: page(10),
        ..Default::default()
    };
    assert!(
        store.list_servers(&contradiction).await.unwrap().is_empty(),
        "every pair must match"
    );
    let tricky = ServerQuery {
        name_prefix: Some("%".into()),
        page: page(10),
        ..Default::default()
    };
    assert!(
        store.list_servers(&tricky).await.unwrap().is_empty(),
        "a prefix is not a pattern"
    );
}

fn policy<'a>(bundle: &'a str, source: &'a str) -> NewPolicyVersion<'a> {
    NewPolicyVersion {
        bundle,
        source,
        sha256: "abc",
        description: Some("d"),
        created_by: "admin",
        now: now(),
    }
}

async fn policy_versions_bump_atomically(store: Arc<dyn Store>) {
    assert!(
        store
            .seed_policy(&policy("authz", "package a\n"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .seed_policy(&policy("authz", "package changed\n"))
            .await
            .unwrap(),
        "seeding is insert-if-absent"
    );
    assert_eq!(
        store.active_policy("authz").await.unwrap().unwrap().source,
        "package a\n"
    );
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let source = format!("package v{i}\n");
                store
                    .add_policy_version(&policy("authz", &source))
                    .await
                    .unwrap()
                    .version
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=7).collect::<Vec<i64>>());
    let active = store.active_policy("authz").await.unwrap().unwrap();
    assert_eq!(active.version, 7);
    let history = store.policy_versions("authz").await.unwrap();
    assert_eq!(
        history.iter().map(|v| v.version).collect::<Vec<_>>(),
        (1..=7).rev().collect::<Vec<i64>>()
    );
    assert_eq!(
        store
            .policy_version("authz", 1)
            .await
            .unwrap()
            .unwrap()
            .source,
        "package a\n"
    );
    assert!(store.policy_version("authz", 99).await.unwrap().is_none());
    store
        .seed_policy(&policy("other", "package o\n"))
        .await
        .unwrap();
    let all: Vec<_> = store
        .active_policies()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.bundle, p.version))
        .collect();
    assert_eq!(all, [("authz".to_string(), 7), ("other".to_string(), 1)]);
}

fn chained(
    chain: &str,
    seq: i64,
    event_type: &str,
    actor: &str,
    at: DateTime<Utc>,
) -> ChainedEvent {
    ChainedEvent {
        event: AuditEvent {
            id: Uuid::now_v7(),
            timestamp: at,
            event_type: event_type.into(),
            actor: Some(actor.into()),
            ip: Some("127.0.0.1".into()),
            resource: Some("server:web-1".into()),
            outcome: "success".into(),
            details: json!({"k": [1, 2, {"z": true}]}),
            node_id: chain.into(),
        },
        chain: chain.into(),
        seq,
        prev_hash: format!("h{}", seq - 1),
        hash: format!("h{seq}"),
    }
}

async fn audit_chain_appends_and_refuses_forks(store: Arc<dyn Store>) {
    let t = now();
    let batch1 = vec![
        chained("n1", 1, "login_succeeded", "a", t),
        chained("n1", 2, "login_failed", "b", t),
    ];
    store
        .append_audit(
            "n1",
            0,
            &batch1,
            "mac",
            &["splunk".into(), "datadog".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        position(store.chain_head("n1").await.unwrap()),
        Some((2, "h2".into()))
    );
    let fork = vec![chained("n1", 2, "server_deleted", "evil", t)];
    assert!(matches!(
        store.append_audit("n1", 1, &fork, "mac", &[]).await,
        Err(StoreError::Contended(_))
    ));
    assert!(matches!(
        store.append_audit("n1", 0, &fork, "mac", &[]).await,
        Err(StoreError::Contended(_))
    ));
    let batch2 = vec![chained("n1", 3, "server_registered", "a", t)];
    store
        .append_audit("n1", 2, &batch2, "mac", &["splunk".into()])
        .await
        .unwrap();
    store
        .append_audit(
            "n2",
            0,
            &[chained("n2", 1, "node_joined", "system", t)],
            "mac",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(store.audit_chains().await.unwrap(), ["n1", "n2"]);
    let segment = store.chain_segment("n1", 1, 10).await.unwrap();
    assert_eq!(segment.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(segment[0], batch1[1], "events read back exactly as written");
    assert_eq!(store.outbox_stats("splunk").await.unwrap().queued, 3);
    assert_eq!(store.outbox_stats("datadog").await.unwrap().queued, 2);
    assert_eq!(
        store
            .outbox_stats("datadog")
            .await
            .unwrap()
            .oldest_queued_at,
        Some(t)
    );
}

async fn audit_lists_filter_and_page(store: Arc<dyn Store>) {
    let base = now();
    let events: Vec<ChainedEvent> = (1..=5)
        .map(|i| {
            let kind = if i % 2 == 0 {
                "login_failed"
            } else {
                "login_succeeded"
            };
            chained(
                "n1",
                i,
                kind,
                if i <= 3 { "alice" } else { "bob" },
                base + Duration::seconds(i),
            )
        })
        .collect();
    store
        .append_audit("n1", 0, &events, "mac", &[])
        .await
        .unwrap();
    let q = |f: fn(&mut AuditQuery)| {
        let mut query = AuditQuery {
            limit: 10,
            ..Default::default()
        };
        f(&mut query);
        query
    };
    let seqs = |evs: Vec<ChainedEvent>| evs.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.list_audit(&q(|_| {})).await.unwrap()),
        [5, 4, 3, 2, 1]
    );
    assert_eq!(
        seqs(
            store
                .list_audit(&q(|q| q.event_type = Some("login_failed".into())))
                .await
                .unwrap()
        ),
        [4, 2]
    );
    assert_eq!(
        seqs(
            store
                .list_audit(&q(|q| q.actor = Some("bob".into())))
                .await
                .unwrap()
        ),
        [5, 4]
    );
    let mut window = AuditQuery {
        limit: 10,
        ..Default::default()
    };
    window.since = Some(base + Duration::seconds(2));
    window.until = Some(base + Duration::seconds(4));
    assert_eq!(seqs(store.list_audit(&window).await.unwrap()), [3, 2]);
    let first = store
        .list_audit(&AuditQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let last = first.last().unwrap();
    let mut next = AuditQuery {
        limit: 2,
        ..Default::default()
    };
    next.before = Some((last.event.timestamp, last.event.id));
    assert_eq!(seqs(store.list_audit(&next).await.unwrap()), [3, 2]);
}

/// Appends events 1..=`count` of chain `n1` at `t`, each queued for the sink `hec`.
async fn queue_for_hec(store: &Arc<dyn Store>, count: i64, t: DateTime<Utc>) {
    let events: Vec<ChainedEvent> = (1..=count)
        .map(|i| chained("n1", i, "login_succeeded", "a", t))
        .collect();
    store
        .append_audit("n1", 0, &events, "mac", &["hec".into()])
        .await
        .unwrap();
}

async fn one_transaction_marks_a_batch_and_claims_the_next(store: Arc<dyn Store>) {
    let t = now();
    queue_for_hec(&store, 5, t).await;
    let lease = t + Duration::seconds(30);
    let seqs = |batch: &[OutboxEntry]| batch.iter().map(|e| e.event.seq).collect::<Vec<_>>();
    let first = store.claim_outbox("hec", "w1", t, lease, 2).await.unwrap();
    assert_eq!(seqs(&first), [1, 2]);
    let ids: Vec<i64> = first.iter().map(|e| e.id).collect();
    let second = store
        .complete_and_claim_outbox("w1", &ids, "hec", t, lease, 2)
        .await
        .unwrap();
    assert_eq!(
        seqs(&second),
        [3, 4],
        "the next batch, not the one just marked"
    );
    assert_eq!(store.outbox_stats("hec").await.unwrap().queued, 3);
    // Another owner's marks are ignored, but its claim still happens.
    let ids: Vec<i64> = second.iter().map(|e| e.id).collect();
    let third = store
        .complete_and_claim_outbox("w2", &ids, "hec", t, lease, 2)
        .await
        .unwrap();
    assert_eq!(seqs(&third), [5]);
    assert_eq!(store.outbox_stats("hec").await.unwrap().queued, 3);
    let last = store
        .complete_and_claim_outbox("w1", &ids, "hec", t, lease, 2)
        .await
        .unwrap();
    assert!(last.is_empty(), "nothing else is due");
    assert_eq!(store.outbox_stats("hec").await.unwrap().queued, 1);
}

async fn outbox_leases_are_exclusive_and_complete(store: Arc<dyn Store>) {
    let t = now();
    queue_for_hec(&store, 10, t).await;
    let lease = t + Duration::seconds(30);
    let tasks: Vec<_> = ["w1", "w2", "w3"]
        .into_iter()
        .map(|owner| {
            let store = store.clone();
            tokio::spawn(
                async move { store.claim_outbox("hec", owner, t, lease, 4).await.unwrap() },
            )
        })
        .collect();
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    let mut ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), claimed.len(), "no entry is leased twice");
    assert_eq!(claimed.len(), 10);
    let w1: Vec<i64> = claimed
        .iter()
        .filter(|e| e.event.seq <= 10)
        .map(|e| e.id)
        .collect();
    assert!(
        store
            .claim_outbox("hec", "w4", t, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased entries are not due"
    );

    store.complete_outbox("nobody", &w1, t).await.unwrap();
    assert_eq!(
        store.outbox_stats("hec").await.unwrap().queued,
        10,
        "only the lease owner completes"
    );

    let first = store
        .claim_outbox(
            "hec",
            "w5",
            lease + Duration::seconds(1),
            lease + Duration::seconds(60),
            3,
        )
        .await
        .unwrap();
    assert_eq!(first.len(), 3, "expired leases are claimed again");
    assert_eq!(first[0].event.event.event_type, "login_succeeded");
    let done: Vec<i64> = first.iter().map(|e| e.id).collect();
    store.complete_outbox("w5", &done, t).await.unwrap();
    assert_eq!(store.outbox_stats("hec").await.unwrap().queued, 7);

    // A stopping owner hands its batches over: another owner claims them at the same
    // instant (long before the leases would expire), and no attempt was counted.
    let at = lease + Duration::seconds(2);
    let held = store
        .claim_outbox("hec", "w5", at, at + Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(held.len(), 7);
    assert_eq!(
        store.hand_over_outbox("someone-else").await.unwrap(),
        0,
        "only the owner's leases are handed over"
    );
    assert_eq!(
        store.hand_over_outbox("w5").await.unwrap(),
        7,
        "delivered rows stay delivered"
    );
    let taken = store
        .claim_outbox("hec", "w5b", at, at + Duration::seconds(60), 10)
        .await
        .unwrap();
    assert_eq!(
        taken.iter().map(|e| e.id).collect::<Vec<_>>(),
        held.iter().map(|e| e.id).collect::<Vec<_>>(),
        "handed-over rows are claimed at once"
    );
    assert!(taken.iter().all(|e| e.attempts == 0));
    assert_eq!(store.hand_over_outbox("w5b").await.unwrap(), 7);
    assert_eq!(store.outbox_stats("hec").await.unwrap().queued, 7);

    let retry_at = lease + Duration::seconds(120);
    let again = store
        .claim_outbox(
            "hec",
            "w6",
            lease + Duration::seconds(61),
            lease + Duration::seconds(90),
            2,
        )
        .await
        .unwrap();
    store
        .release_outbox(
            "w6",
            &again.iter().map(|e| e.id).collect::<Vec<_>>(),
            "503 from sink",
            retry_at,
        )
        .await
        .unwrap();
    let before_retry = store
        .claim_outbox("hec", "w7", lease + Duration::seconds(100), retry_at, 10)
        .await
        .unwrap();
    assert!(
        before_retry
            .iter()
            .all(|e| !again.iter().any(|a| a.id == e.id)),
        "released entries wait for retry_at"
    );
    let after = store
        .claim_outbox(
            "hec",
            "w8",
            retry_at + Duration::seconds(200),
            retry_at + Duration::seconds(300),
            10,
        )
        .await
        .unwrap();
    let retried: Vec<&OutboxEntry> = after
        .iter()
        .filter(|e| again.iter().any(|a| a.id == e.id))
        .collect();
    assert_eq!(retried.len(), 2);
    assert!(retried.iter().all(|e| e.attempts == 1));

    // w8 holds every undelivered row: one is refused by the sink, the rest delivered.
    let later = retry_at + Duration::seconds(250);
    let (refused, rest) = after.split_first().unwrap();
    store
        .set_aside_outbox("w8", refused.id, "400: bad event", later)
        .await
        .unwrap();
    let rest: Vec<i64> = rest.iter().map(|e| e.id).collect();
    store.complete_outbox("w8", &rest, later).await.unwrap();
    assert_eq!(store.outbox_stats("hec").await.unwrap().queued, 0);
    assert!(
        store
            .claim_outbox("hec", "w9", later, later + Duration::seconds(60), 10)
            .await
            .unwrap()
            .is_empty(),
        "delivered and set-aside rows are never sent again"
    );
    let day = Duration::days(1);
    assert_eq!(
        store.prune_outbox(later - day, later - day).await.unwrap(),
        0,
        "nothing is old enough"
    );
    assert_eq!(
        store.prune_outbox(later + day, later - day).await.unwrap(),
        9,
        "delivered rows go after a day; the set-aside one stays"
    );
    assert_eq!(
        store.prune_outbox(later + day, later + day).await.unwrap(),
        1,
        "the set-aside row goes with the audit retention"
    );
}

async fn meta_put_if_absent_keeps_the_first_value(store: Arc<dyn Store>) {
    assert_eq!(store.meta("k").await.unwrap(), None);
    assert_eq!(
        store.put_meta_if_absent("k", "first").await.unwrap(),
        "first"
    );
    assert_eq!(
        store.put_meta_if_absent("k", "second").await.unwrap(),
        "first"
    );
    assert_eq!(store.meta("k").await.unwrap().as_deref(), Some("first"));
}

async fn the_voting_membership_records_members_and_forgets_only_the_silent(store: Arc<dyn Store>) {
    let t0 = now();
    store
        .record_member("a", "127.0.0.2:7400", t0)
        .await
        .unwrap();
    store
        .record_member("b", "127.0.0.3:7400", t0)
        .await
        .unwrap();
    let later = t0 + Duration::seconds(10);
    store
        .record_member("a", "127.0.0.9:7400", later)
        .await
        .unwrap();
    let members = store.cluster_members().await.unwrap();
    assert_eq!(
        members,
        [
            StoredMember {
                node_id: "a".into(),
                addr: "127.0.0.9:7400".into(),
                last_seen_at: later,
            },
            StoredMember {
                node_id: "b".into(),
                addr: "127.0.0.3:7400".into(),
                last_seen_at: t0,
            },
        ]
    );
    let cutoff = t0 + Duration::seconds(5);
    assert!(
        !store.remove_member("a", Some(cutoff)).await.unwrap(),
        "a was seen after the cutoff: kept"
    );
    assert!(store.remove_member("b", Some(cutoff)).await.unwrap());
    assert!(
        !store.remove_member("b", None).await.unwrap(),
        "gone already"
    );
    store
        .record_member("b", "127.0.0.3:7400", later)
        .await
        .unwrap();
    assert_eq!(
        store.cluster_members().await.unwrap().len(),
        2,
        "a forgotten member that records itself again is a member again"
    );
    assert!(
        store.remove_member("a", None).await.unwrap(),
        "a graceful leave"
    );
    assert_eq!(store.cluster_members().await.unwrap().len(), 1);
}

async fn health_reports_the_backend(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    match store.backend() {
        "sqlite" => assert_eq!(store.time_series(), TimeSeriesLayout::Plain),
        "postgres" => assert_ne!(store.time_series(), TimeSeriesLayout::Plain),
        other => panic!("unknown backend {other}"),
    }
}

fn signing_key(kid: &str) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.into(),
        algorithm: "EdDSA".into(),
        private_key: format!("encrypted-{kid}"),
        public_key: format!("public-{kid}"),
        created_at: now(),
        retired_at: None,
    }
}

async fn the_first_signing_key_is_created_once_and_rotation_keeps_the_old_one(
    store: Arc<dyn Store>,
) {
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert_first_signing_key(&signing_key(&format!("k{i}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut actives = Vec::new();
    for task in tasks {
        actives.push(task.await.unwrap().kid);
    }
    actives.dedup();
    assert_eq!(
        actives.len(),
        1,
        "every racer sees the same active key: {actives:?}"
    );
    let first = actives[0].clone();
    assert_eq!(store.signing_keys().await.unwrap().len(), 1);

    let later = now() + Duration::seconds(10);
    store
        .rotate_signing_key(&signing_key("next"), later)
        .await
        .unwrap();
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        (keys[0].kid.as_str(), keys[0].retired_at),
        ("next", None),
        "the active key comes first"
    );
    assert_eq!(
        (keys[1].kid.as_str(), keys[1].retired_at),
        (first.as_str(), Some(later))
    );
    assert_eq!(
        store
            .insert_first_signing_key(&signing_key("late"))
            .await
            .unwrap()
            .kid,
        "next"
    );
    assert_eq!(
        store.prune_signing_keys(later).await.unwrap(),
        0,
        "retired at the cutoff: kept"
    );
    assert_eq!(
        store
            .prune_signing_keys(later + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.signing_keys().await.unwrap().len(), 1);
}

fn api_key(user_id: Uuid, prefix: &str) -> ApiKeyRecord {
    ApiKeyRecord {
        id: Uuid::now_v7(),
        user_id,
        name: format!("key {prefix}"),
        prefix: prefix.into(),
        key_hash: format!("hash-{prefix}"),
        scopes: vec!["read:servers".into()],
        created_at: now(),
        expires_at: Some(now() + Duration::days(30)),
        last_used_at: None,
        revoked_at: None,
        revoked_reason: None,
    }
}

async fn api_keys_need_an_active_user_and_revoke(store: Arc<dyn Store>) {
    assert!(
        !store
            .create_api_key(&api_key(Uuid::now_v7(), "ghost"))
            .await
            .unwrap()
    );
    let ivy = user("ivy");
    store.create_user(&ivy).await.unwrap();
    let k1 = api_key(ivy.id, "aaaa1111");
    let k2 = api_key(ivy.id, "bbbb2222");
    assert!(store.create_api_key(&k1).await.unwrap());
    assert!(store.create_api_key(&k2).await.unwrap());
    assert!(matches!(
        store.create_api_key(&api_key(ivy.id, "aaaa1111")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.api_key_by_prefix("aaaa1111").await.unwrap().unwrap(),
        k1
    );
    assert_eq!(
        store.api_key(k2.id).await.unwrap().unwrap().scopes,
        ["read:servers"]
    );
    assert_eq!(store.api_keys(Some(ivy.id)).await.unwrap().len(), 2);
    assert_eq!(store.api_keys(None).await.unwrap().len(), 2);

    let t = now();
    store.touch_api_key(k1.id, t).await.unwrap();
    store
        .touch_api_key(k1.id, t + Duration::seconds(5))
        .await
        .unwrap();
    assert_eq!(
        store.api_key(k1.id).await.unwrap().unwrap().last_used_at,
        Some(t),
        "touches are throttled"
    );
    store
        .touch_api_key(k1.id, t + Duration::seconds(61))
        .await
        .unwrap();
    assert_eq!(
        store.api_key(k1.id).await.unwrap().unwrap().last_used_at,
        Some(t + Duration::seconds(61))
    );

    assert!(
        store
            .revoke_api_key(k1.id, "revoked by owner", now())
            .await
            .unwrap()
    );
    assert!(!store.revoke_api_key(k1.id, "again", now()).await.unwrap());
    assert_eq!(store.revoked_api_key_ids(now()).await.unwrap(), vec![k1.id]);
    let deleted = store.delete_user("ivy", now()).await.unwrap().unwrap();
    assert_eq!(
        deleted.revoked_api_keys,
        vec![k2.id],
        "deleting a user revokes its keys"
    );
    let mut revoked = store.revoked_api_key_ids(now()).await.unwrap();
    revoked.sort();
    let mut expected = vec![k1.id, k2.id];
    expected.sort();
    assert_eq!(revoked, expected);
    assert!(
        store
            .revoked_api_key_ids(now() + Duration::days(31))
            .await
            .unwrap()
            .is_empty(),
        "expired keys drop out"
    );
}

async fn lockout_counts_every_failure_exactly_and_windows_restart(store: Arc<dyn Store>) {
    let rule = LockoutRule {
        threshold: 5,
        window: Duration::minutes(15),
        lock_for: Duration::minutes(15),
    };
    let t = now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .record_failure("nobody-at-all", rule, t)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().locked_until, None);
    }
    assert_eq!(
        store
            .lock_state("nobody-at-all")
            .await
            .unwrap()
            .unwrap()
            .failures,
        4,
        "no failure lost under races"
    );
    let fifth = store
        .record_failure("nobody-at-all", rule, t + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(fifth.failures, 5);
    assert_eq!(
        fifth.locked_until,
        Some(t + Duration::seconds(1) + Duration::minutes(15))
    );
    assert!(
        store
            .clear_failures("nobody-at-all", t + Duration::seconds(2))
            .await
            .unwrap(),
        "it was locked"
    );
    assert!(store.lock_state("nobody-at-all").await.unwrap().is_none());
    assert!(!store.clear_failures("nobody-at-all", t).await.unwrap());

    for i in 0..4 {
        store
            .record_failure("slow", rule, t + Duration::seconds(i))
            .await
            .unwrap();
    }
    let after_window = store
        .record_failure("slow", rule, t + Duration::minutes(16))
        .await
        .unwrap();
    assert_eq!(
        (after_window.failures, after_window.locked_until),
        (1, None),
        "a new window starts over"
    );
}

async fn a_totp_step_is_accepted_once_and_recovery_codes_once(store: Arc<dyn Store>) {
    let jo = user("jo");
    store.create_user(&jo).await.unwrap();
    store.put_pending_totp(jo.id, "enc-1", now()).await.unwrap();
    store.put_pending_totp(jo.id, "enc-2", now()).await.unwrap();
    assert_eq!(
        store.totp(jo.id).await.unwrap().unwrap().secret,
        "enc-2",
        "a pending secret is replaced"
    );
    assert!(
        !store.accept_totp_step(jo.id, 100).await.unwrap(),
        "a pending secret accepts nothing"
    );
    let codes: Vec<String> = (0..10).map(|i| format!("hash-{i}")).collect();
    assert!(store.confirm_totp(jo.id, &codes, now()).await.unwrap());
    assert!(
        !store.confirm_totp(jo.id, &codes, now()).await.unwrap(),
        "confirming twice does nothing"
    );
    assert!(store.user_by_id(jo.id).await.unwrap().unwrap().mfa_enabled);
    assert!(matches!(
        store.put_pending_totp(jo.id, "enc-3", now()).await,
        Err(StoreError::Conflict(_))
    ));

    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.accept_totp_step(jo.id, 1000).await.unwrap() })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        accepted += usize::from(task.await.unwrap());
    }
    assert_eq!(accepted, 1, "one step, one acceptance");
    assert!(
        !store.accept_totp_step(jo.id, 999).await.unwrap(),
        "earlier steps stay refused"
    );
    assert!(store.accept_totp_step(jo.id, 1001).await.unwrap());

    assert_eq!(store.recovery_codes_left(jo.id).await.unwrap(), 10);
    assert!(
        store
            .use_recovery_code(jo.id, "hash-3", now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .use_recovery_code(jo.id, "hash-3", now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .use_recovery_code(jo.id, "unknown", now())
            .await
            .unwrap()
    );
    assert_eq!(store.recovery_codes_left(jo.id).await.unwrap(), 9);

    assert!(store.reset_mfa(jo.id).await.unwrap());
    assert!(store.totp(jo.id).await.unwrap().is_none());
    assert_eq!(store.recovery_codes_left(jo.id).await.unwrap(), 0);
    assert!(!store.user_by_id(jo.id).await.unwrap().unwrap().mfa_enabled);
    assert!(!store.reset_mfa(jo.id).await.unwrap());
}

async fn challenges_are_consumed_once_and_expire(store: Arc<dyn Store>) {
    let t = now();
    let challenge = ChallengeRecord {
        id: Uuid::now_v7(),
        user_id: Uuid::now_v7(),
        username: "kim".into(),
        auth_method: "password".into(),
        ip: Some("127.0.0.1".into()),
        created_at: t,
        expires_at: t + Duration::seconds(300),
    };
    store.create_challenge(&challenge).await.unwrap();
    assert_eq!(
        store.challenge(challenge.id, t).await.unwrap(),
        Some(challenge.clone())
    );
    assert!(
        store
            .challenge(challenge.id, t + Duration::seconds(301))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
    assert!(
        !store
            .consume_challenge(challenge.id, t + Duration::seconds(301))
            .await
            .unwrap()
    );
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.consume_challenge(challenge.id, t).await.unwrap() })
        })
        .collect();
    let mut consumed = 0;
    for task in tasks {
        consumed += usize::from(task.await.unwrap());
    }
    assert_eq!(consumed, 1);
    assert!(store.challenge(challenge.id, t).await.unwrap().is_none());
}

async fn external_identities_and_login_state_are_taken_once(store: Arc<dyn Store>) {
    let t = now();
    let local = user("sam");
    store.create_user(&local).await.unwrap();
    let external = User {
        id: Uuid::now_v7(),
        username: "ldap:sam".into(),
        password_hash: None,
        provider: "ldap".into(),
        subject: Some("uid=sam,ou=people".into()),
        ..user("ldap:sam")
    };
    store.create_user(&external).await.unwrap();
    let found = store
        .user_by_subject("ldap", "uid=sam,ou=people")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, external.id);
    assert!(
        store
            .user_by_subject("oidc", "uid=sam,ou=people")
            .await
            .unwrap()
            .is_none(),
        "subjects are per provider"
    );
    let twin = User {
        id: Uuid::now_v7(),
        username: "ldap:sam2".into(),
        ..external.clone()
    };
    assert!(
        matches!(store.create_user(&twin).await, Err(StoreError::Conflict(_))),
        "one account per (provider, subject)"
    );

    let request = AuthRequestRecord {
        id: "state-hash".into(),
        provider: "oidc".into(),
        browser_hash: "browser-hash".into(),
        data: "sealed".into(),
        redirect_uri: Some("https://app.example.org/cb".into()),
        created_at: t,
        expires_at: t + Duration::seconds(600),
    };
    store.put_auth_request(&request).await.unwrap();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_auth_request("state-hash", t).await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for racer in racers {
        taken.extend(racer.await.unwrap());
    }
    assert_eq!(taken, vec![request.clone()], "taken exactly once");
    let late = AuthRequestRecord {
        id: "late".into(),
        ..request
    };
    store.put_auth_request(&late).await.unwrap();
    assert!(
        store
            .take_auth_request("late", t + Duration::seconds(601))
            .await
            .unwrap()
            .is_none(),
        "expired"
    );

    let code = LoginCodeRecord {
        code_hash: "code-hash".into(),
        user_id: external.id,
        auth_method: "oidc".into(),
        ip: None,
        created_at: t,
        expires_at: t + Duration::seconds(60),
    };
    store.put_login_code(&code).await.unwrap();
    assert!(
        store
            .take_login_code("code-hash", t + Duration::seconds(61))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.take_login_code("code-hash", t).await.unwrap(),
        Some(code)
    );
    assert!(
        store
            .take_login_code("code-hash", t)
            .await
            .unwrap()
            .is_none()
    );
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .use_assertion_id("_assertion-1", t + Duration::minutes(5))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut first_uses = 0;
    for racer in racers {
        first_uses += usize::from(racer.await.unwrap());
    }
    assert_eq!(first_uses, 1, "an assertion is used once");
}

async fn housekeeping_removes_only_what_has_expired(store: Arc<dyn Store>) {
    let t = now();
    let rule = LockoutRule {
        threshold: 5,
        window: Duration::minutes(15),
        lock_for: Duration::minutes(15),
    };
    store
        .record_failure("old", rule, t - Duration::hours(2))
        .await
        .unwrap();
    store.record_failure("recent", rule, t).await.unwrap();
    let u = user("pat");
    store.create_user(&u).await.unwrap();
    let expired = session(u.id, "e", Duration::days(-2));
    let live = session(u.id, "l", Duration::hours(1));
    store.create_session(&expired).await.unwrap();
    store.create_session(&live).await.unwrap();
    store.rotate_refresh(live.id, "l", "l2", t).await.unwrap();
    let removed = store
        .prune_expired(t, t - Duration::minutes(15), t - Duration::days(1))
        .await
        .unwrap();
    assert_eq!(removed, 2, "one counter and one session");
    assert!(store.lock_state("old").await.unwrap().is_none());
    assert!(store.lock_state("recent").await.unwrap().is_some());
    assert!(store.session(expired.id).await.unwrap().is_none());
    assert_eq!(
        store.rotate_refresh(live.id, "l", "x", t).await.unwrap(),
        RotateOutcome::Reused,
        "live history kept"
    );
}

/// A chain of `times.len()` properly keyed events, starting after `(prev_seq, prev_hash)`.
fn signed_chain(
    key: &sark_actors::audit::ChainKey,
    chain: &str,
    (prev_seq, prev_hash): (i64, String),
    times: &[DateTime<Utc>],
) -> Vec<ChainedEvent> {
    let mut prev = prev_hash;
    times
        .iter()
        .enumerate()
        .map(|(i, at)| {
            let seq = prev_seq + 1 + i64::try_from(i).unwrap();
            let mut event = chained(chain, seq, "login_succeeded", "a", *at);
            event.prev_hash = prev.clone();
            event.hash = key.hash(chain, seq, &event.prev_hash, &event.event);
            prev = event.hash.clone();
            event
        })
        .collect()
}

/// Five events from the first minutes of the day 100 days ago (one daily partition, whatever
/// the time of day), then three recent ones, on chain `n1`.
async fn old_and_new_events(
    store: &dyn Store,
    key: &sark_actors::audit::ChainKey,
    t: DateTime<Utc>,
) -> Vec<ChainedEvent> {
    let day_start = (t - Duration::days(100))
        .date_naive()
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
    let old: Vec<DateTime<Utc>> = (0..5).map(|i| day_start + Duration::minutes(i)).collect();
    let first = signed_chain(
        key,
        "n1",
        (0, sark_actors::audit::GENESIS_HASH.into()),
        &old,
    );
    store
        .append_audit("n1", 0, &first, &head_seal(key, &first), &[])
        .await
        .unwrap();
    let head = (5, first[4].hash.clone());
    let second = signed_chain(key, "n1", head, &[t, t, t]);
    store
        .append_audit("n1", 5, &second, &head_seal(key, &second), &[])
        .await
        .unwrap();
    first.into_iter().chain(second).collect()
}

/// The seal of the head that the last of `events` becomes, as the writer computes it.
fn head_seal(key: &sark_actors::audit::ChainKey, events: &[ChainedEvent]) -> String {
    use sark_actors::store::PositionSeal;
    let last = events.last().unwrap();
    key.seal(
        sark_actors::store::PositionKind::Head,
        &last.chain,
        last.seq,
        &last.hash,
        last.event.timestamp,
    )
}

/// The `(seq, hash)` of a recorded position.
fn position(p: Option<SealedPosition>) -> Option<(i64, String)> {
    p.map(|p| (p.seq, p.hash))
}

async fn retention_moves_checkpoints_and_keeps_chains_verifiable(store: Arc<dyn Store>) {
    let key = sark_actors::audit::ChainKey::derive(b"retention test key");
    let t = now();
    let events = old_and_new_events(store.as_ref(), &key, t).await;
    let before = sark_actors::audit::verify_chains(store.as_ref(), &key)
        .await
        .unwrap();
    assert_eq!((before.ok, before.checked), (true, 8), "{before:?}");

    let pruned = store
        .prune_time_series(t - Duration::days(90), t, &key)
        .await
        .unwrap();
    assert_eq!(pruned.audit_events, 5);
    assert_eq!(
        position(store.audit_checkpoint("n1").await.unwrap()),
        Some((5, events[4].hash.clone()))
    );
    assert_eq!(store.chain_segment("n1", 0, 100).await.unwrap().len(), 3);
    let after = sark_actors::audit::verify_chains(store.as_ref(), &key)
        .await
        .unwrap();
    assert_eq!((after.ok, after.checked), (true, 3), "{after:?}");

    let again = store
        .prune_time_series(t - Duration::days(90), t, &key)
        .await
        .unwrap();
    assert_eq!(again, Pruned::default(), "nothing more to remove");
    assert_eq!(
        position(store.audit_checkpoint("n1").await.unwrap()),
        Some((5, events[4].hash.clone()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retention_drops_old_daily_partitions_whole() {
    let (url, admin_url, name) = fresh_postgres_database().await;
    let _guard = Guard::Postgres { admin_url, name };
    let store = postgres::PgStore::new(&db_config(Some(url.clone()))).unwrap();
    assert!(store.initialize(Utc::now()).await.unwrap());
    let t = now();
    let old_day = (t - Duration::days(100)).date_naive();
    let partition = format!("audit_logs_p{}", old_day.format("%Y%m%d"));
    let raw = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {partition} PARTITION OF audit_logs FOR VALUES FROM ('{old_day}') TO ('{}')",
        old_day.succ_opt().unwrap()
    )))
    .execute(&raw)
    .await
    .unwrap();
    let key = sark_actors::audit::ChainKey::derive(b"retention test key");
    let events = old_and_new_events(&store, &key, t).await;
    let in_partition: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {partition}"
    )))
    .fetch_one(&raw)
    .await
    .unwrap();
    assert_eq!(
        in_partition, 5,
        "the old events live in their day's partition"
    );

    let pruned = store
        .prune_time_series(t - Duration::days(90), t, &key)
        .await
        .unwrap();
    assert_eq!(pruned.audit_events, 5);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1)")
            .bind(&partition)
            .fetch_one(&raw)
            .await
            .unwrap();
    assert!(!exists, "the whole partition was dropped");
    assert_eq!(
        position(store.audit_checkpoint("n1").await.unwrap()),
        Some((5, events[4].hash.clone()))
    );
    let verified = sark_actors::audit::verify_chains(&store, &key)
        .await
        .unwrap();
    assert_eq!((verified.ok, verified.checked), (true, 3), "{verified:?}");
    raw.close().await;
}

async fn a_restore_revokes_what_came_before_and_starts_a_new_audit_generation(
    store: Arc<dyn Store>,
) {
    let u = user("rita");
    store.create_user(&u).await.unwrap();
    let old_session = session(u.id, "old", Duration::hours(1));
    let old_key = api_key(u.id, "0ld0ld00");
    assert!(store.create_session(&old_session).await.unwrap());
    assert!(store.create_api_key(&old_key).await.unwrap());
    let cutoff = now() + Duration::seconds(1);
    let new_session = SessionRecord {
        created_at: cutoff + Duration::seconds(1),
        ..session(u.id, "new", Duration::hours(1))
    };
    let new_key = ApiKeyRecord {
        created_at: cutoff + Duration::seconds(1),
        ..api_key(u.id, "00new000")
    };
    assert!(store.create_session(&new_session).await.unwrap());
    assert!(store.create_api_key(&new_key).await.unwrap());
    assert_eq!(store.credentials_not_before().await.unwrap(), None);

    let revoked = store
        .revoke_all_before(cutoff, "restored_from_backup", now())
        .await
        .unwrap();
    assert_eq!(
        revoked,
        RevokedAll {
            sessions: 1,
            api_keys: 1
        }
    );
    assert_eq!(
        store.revoked_session_ids(now()).await.unwrap(),
        vec![old_session.id]
    );
    assert_eq!(
        store.revoked_api_key_ids(now()).await.unwrap(),
        vec![old_key.id]
    );
    assert_eq!(store.credentials_not_before().await.unwrap(), Some(cutoff));
    // An earlier cut-off never moves the recorded one back.
    store
        .revoke_all_before(cutoff - Duration::hours(1), "revoke_all", now())
        .await
        .unwrap();
    assert_eq!(store.credentials_not_before().await.unwrap(), Some(cutoff));

    assert_eq!(store.audit_generation().await.unwrap(), 0);
    assert_eq!(store.next_audit_generation().await.unwrap(), 1);
    assert_eq!(store.next_audit_generation().await.unwrap(), 2);
    assert_eq!(store.audit_generation().await.unwrap(), 2);
}

async fn sealed_values_are_listed_and_replaced_only_while_unchanged(store: Arc<dyn Store>) {
    let jo = user("jo");
    store.create_user(&jo).await.unwrap();
    store
        .put_pending_totp(jo.id, "totp-old", now())
        .await
        .unwrap();
    store
        .insert_first_signing_key(&signing_key("k1"))
        .await
        .unwrap();
    let pending = |id: &str, data: &str| AuthRequestRecord {
        id: id.into(),
        provider: if data.is_empty() { "saml" } else { "oidc" }.into(),
        browser_hash: "browser".into(),
        data: data.into(),
        redirect_uri: None,
        created_at: now(),
        expires_at: now() + Duration::seconds(600),
    };
    store
        .put_auth_request(&pending("state-1", "oidc-old"))
        .await
        .unwrap();
    store
        .put_auth_request(&pending("saml-1", ""))
        .await
        .unwrap();
    store.set_meta("m", "one").await.unwrap();
    store.set_meta("m", "two").await.unwrap();
    assert_eq!(store.meta("m").await.unwrap().as_deref(), Some("two"));

    let values = store.sealed_values().await.unwrap();
    let listed: Vec<(SealedKind, &str, &str)> = values
        .iter()
        .map(|v| (v.kind, v.id.as_str(), v.sealed.as_str()))
        .collect();
    let jo_id = jo.id.to_string();
    assert_eq!(
        listed,
        [
            (SealedKind::SigningKey, "k1", "encrypted-k1"),
            (SealedKind::Totp, jo_id.as_str(), "totp-old"),
            (SealedKind::AuthRequest, "state-1", "oidc-old"),
        ],
        "SAML's empty login state is not a sealed value"
    );
    for value in &values {
        assert!(
            store
                .reseal(value, &format!("{}-new", value.sealed))
                .await
                .unwrap()
        );
        assert!(
            !store.reseal(value, "late").await.unwrap(),
            "a row that changed since it was read is left alone"
        );
    }
    assert_eq!(
        store.totp(jo.id).await.unwrap().unwrap().secret,
        "totp-old-new"
    );
    assert_eq!(
        store.signing_keys().await.unwrap()[0].private_key,
        "encrypted-k1-new"
    );
    let gone = SealedValue {
        kind: SealedKind::AuthRequest,
        id: "no-such-request".into(),
        sealed: "x".into(),
    };
    assert!(!store.reseal(&gone, "y").await.unwrap());
}
