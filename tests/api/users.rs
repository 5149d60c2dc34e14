//! The users API, lockout, and the admin CLI's break-glass commands.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, poll, spawn_app, spawn_app_with};

const PASSWORD: &str = "violet kettle swims at dawn";

fn token(t: &Value) -> String {
    t["access_token"].as_str().unwrap().to_owned()
}

async fn error(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn admins_manage_users_and_responses_never_carry_hashes() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let user = app.create_user(&admin, "fay", "operator", PASSWORD).await;
    for key in [
        "user_id",
        "username",
        "email",
        "role",
        "teams",
        "is_active",
        "mfa_enabled",
        "created_at",
        "updated_at",
    ] {
        assert!(user.get(key).is_some(), "{key}: {user}");
    }
    let text = user.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );

    let again = json!({"username": "fay", "email": "fay@example.org", "role": "viewer", "password": PASSWORD});
    let (status, body) = error(app.post("/api/v1/users", &again, Some(&admin)).await).await;
    assert_eq!(status, 409, "{body}");

    let invalid = [
        (
            json!({"username": "Fay!", "email": "f@example.org", "role": "viewer"}),
            "username",
        ),
        (
            json!({"username": "gus", "email": "not-an-email", "role": "viewer"}),
            "email",
        ),
        (
            json!({"username": "gus", "email": "g@example.org", "role": "root"}),
            "role",
        ),
        (
            json!({"username": "gus", "email": "g@example.org", "role": "viewer", "password": "short"}),
            "min_length",
        ),
        (
            json!({"username": "gustav", "email": "g@example.org", "role": "viewer", "password": "gustav-is-great-2026"}),
            "not_username",
        ),
        (
            json!({"username": "gus", "email": "g@example.org", "role": "viewer", "password": "1qaz2wsx3edc"}),
            "common_password",
        ),
        (
            json!({"username": "gus", "email": "g@example.org", "role": "viewer", "mfa_enabled": true}),
            "mfa_enabled",
        ),
        (
            json!({"username": "gus", "email": "g@example.org", "role": "viewer", "nickname": "g"}),
            "nickname",
        ),
    ];
    for (body, named) in invalid {
        let (status, error) = error(app.post("/api/v1/users", &body, Some(&admin)).await).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(named),
            "{named} not named: {error}"
        );
    }

    let (status, fetched) = app.get_as("/api/v1/users/fay", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(fetched["role"], "operator");
    assert_eq!(app.get_as("/api/v1/users/nobody", &admin).await.0, 404);

    let patch = json!({"email": null, "teams": ["ops"], "role": "viewer"});
    let response = app
        .call(Method::PATCH, "/api/v1/users/fay", &admin, Some(&patch))
        .await;
    assert_eq!(response.status(), 200);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(
        (
            patched["email"].clone(),
            patched["teams"].clone(),
            patched["role"].clone()
        ),
        (Value::Null, json!(["ops"]), json!("viewer"))
    );

    for name in ["gil", "hal", "ida"] {
        app.create_user(&admin, name, "viewer", PASSWORD).await;
    }
    let (_, page) = app.get_as("/api/v1/users?limit=2", &admin).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = app
        .get_as(&format!("/api/v1/users?limit=2&cursor={cursor}"), &admin)
        .await;
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(next["items"].as_array().unwrap())
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "fay", "gil", "hal"]);
    assert_eq!(app.get_as("/api/v1/users?limit=0", &admin).await.0, 400);
    assert_eq!(app.get_as("/api/v1/users?cursor=%%%", &admin).await.0, 400);

    assert_eq!(
        app.call(Method::DELETE, "/api/v1/users/admin", &admin, None)
            .await
            .status(),
        409,
        "no self-deletion"
    );
    app.stop().await;
}

#[tokio::test]
async fn non_admins_are_refused_by_the_policy_and_the_denial_is_audited() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "viv", "viewer", PASSWORD).await;
    let viewer = token(&app.login("viv", PASSWORD).await);
    let (status, body) = app.get_as("/api/v1/users", &viewer).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        body["error"]["message"],
        "the role does not permit this action"
    );
    let create = json!({"username": "x", "email": "x@example.org", "role": "admin"});
    assert_eq!(
        app.post("/api/v1/users", &create, Some(&viewer))
            .await
            .status(),
        403
    );
    let events = app
        .node()
        .store
        .list_audit(&sark::store::AuditQuery {
            event_type: Some("authz_denied".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event.actor.as_deref(), Some("viv"));
    // Self-service stays open whatever the policy says.
    assert_eq!(app.get_as("/api/v1/auth/me", &viewer).await.0, 200);
    assert_eq!(app.get_as("/api/v1/sessions", &viewer).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn disabling_or_deleting_a_user_revokes_sessions_and_api_keys_before_answering() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "jay", "operator", PASSWORD).await;
    let session = token(&app.login("jay", PASSWORD).await);
    let key: Value = app
        .post(
            "/api/v1/api-keys",
            &json!({"name": "ci", "scopes": ["read:servers"]}),
            Some(&session),
        )
        .await
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    assert_eq!(app.get_as("/api/v1/auth/me", &key).await.0, 200);

    let response = app
        .call(
            Method::PATCH,
            "/api/v1/users/jay",
            &admin,
            Some(&json!({"is_active": false})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["is_active"], false);
    assert!(body["propagation_ms"].is_u64());
    assert_eq!(
        app.get_as("/api/v1/auth/me", &session).await.0,
        401,
        "session refused at once"
    );
    assert_eq!(
        app.get_as("/api/v1/auth/me", &key).await.0,
        401,
        "API key refused at once"
    );
    let response = app
        .post(
            "/api/v1/auth/login",
            &json!({"username": "jay", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(response.status(), 401);

    app.call(
        Method::PATCH,
        "/api/v1/users/jay",
        &admin,
        Some(&json!({"is_active": true})),
    )
    .await;
    let again = token(&app.login("jay", PASSWORD).await);
    assert_eq!(
        app.call(Method::DELETE, "/api/v1/users/jay", &admin, None)
            .await
            .status(),
        204
    );
    assert_eq!(app.get_as("/api/v1/auth/me", &again).await.0, 401);
    assert_eq!(app.get_as("/api/v1/users/jay", &admin).await.0, 404);
    let kinds: Vec<String> = app.audit_types().await;
    for kind in ["user_disabled", "user_deleted", "api_key_created"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind}: {kinds:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn five_failures_lock_existing_and_unknown_names_alike_until_an_admin_unlocks() {
    let owned = spawn_app().await;
    let app = &owned;
    let admin = app.admin_token().await;
    app.create_user(&admin, "kay", "viewer", PASSWORD).await;
    let attempt = |username: &'static str, password: &'static str| async move {
        error(
            app.post(
                "/api/v1/auth/login",
                &json!({"username": username, "password": password}),
                None,
            )
            .await,
        )
        .await
    };
    for name in ["kay", "ghost-account"] {
        for i in 1..=5 {
            let (status, body) = attempt(name, "wrong password, certainly").await;
            let expected = if i < 5 { 401 } else { 423 };
            assert_eq!(status, expected, "{name} attempt {i}: {body}");
        }
        let (status, body) = attempt(name, PASSWORD).await;
        assert_eq!(status, 423, "{name} is locked even with the right password");
        assert_eq!(body["error"]["code"], "account_locked");
    }
    let locked = app
        .post(
            "/api/v1/auth/login",
            &json!({"username": "KAY ", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(locked.status(), 423, "the lock ignores case and spaces");
    let retry: i64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&retry), "Retry-After {retry}");

    assert_eq!(
        app.call(Method::POST, "/api/v1/users/kay/unlock", &admin, None)
            .await
            .status(),
        204
    );
    app.login("kay", PASSWORD).await;
    assert_eq!(
        attempt("ghost-account", "x").await.0,
        423,
        "unlocking one name leaves the others"
    );
    let kinds: Vec<String> = app.audit_types().await;
    for kind in ["login_failed", "account_locked", "account_unlocked"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind}: {kinds:?}");
    }
    owned.stop().await;
}

#[tokio::test]
async fn lockout_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let start = |data_dir: std::path::PathBuf| spawn_app_with(move |c| c.data_dir = data_dir);
    let app = start(data_dir.clone()).await;
    for _ in 0..4 {
        app.post(
            "/api/v1/auth/login",
            &json!({"username": "admin", "password": "wrong password, certainly"}),
            None,
        )
        .await;
    }
    app.stop().await;
    let app = start(data_dir).await;
    let (status, _) = error(
        app.post(
            "/api/v1/auth/login",
            &json!({"username": "admin", "password": "still wrong, really"}),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 423, "the fifth failure after a restart locks");
    app.stop().await;
}

fn sark_admin(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sark"))
        .arg("admin")
        .arg("--data-dir")
        .arg(app.node().config.data_dir.as_os_str())
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_admin_cli_gets_a_locked_out_sole_admin_back_in() {
    let app = spawn_app_with(|c| c.auth.sync_seconds = 1).await;
    let old_session = app.admin_token().await;
    for _ in 0..5 {
        app.post(
            "/api/v1/auth/login",
            &json!({"username": "admin", "password": "wrong password, certainly"}),
            None,
        )
        .await;
    }
    let (ok, out, err) = sark_admin(&app, &["unlock", "admin"]);
    assert!(ok, "{err}");
    assert!(out.contains("was locked: true"), "{out}");

    let file = app.node().config.data_dir.join("new-password");
    std::fs::write(&file, "recovered keeper passphrase\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, err) = sark_admin(
        &app,
        &[
            "reset-password",
            "admin",
            "--password-file",
            file.to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("readable by other users"), "{err}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, out, err) = sark_admin(
        &app,
        &[
            "reset-password",
            "admin",
            "--password-file",
            file.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        !out.contains("recovered keeper passphrase"),
        "a given password is not echoed"
    );
    app.login("admin", "recovered keeper passphrase").await;
    poll(
        "the node to refuse the old session",
        Duration::from_secs(10),
        || async { (app.get_as("/api/v1/auth/me", &old_session).await.0 == 401).then_some(()) },
    )
    .await;

    let (ok, out, _) = sark_admin(&app, &["reset-password", "admin"]);
    assert!(ok);
    let generated = out.rsplit("new password: ").next().unwrap().trim();
    app.login("admin", generated).await;
    let (ok, _, err) = sark_admin(&app, &["reset-mfa", "nobody"]);
    assert!(!ok && err.contains("no user nobody"), "{err}");
    let (ok, out, err) = sark_admin(&app, &["reset-mfa", "admin"]);
    assert!(ok, "{err}");
    assert!(out.contains("MFA of admin reset"));
    let cli_events = app
        .node()
        .store
        .list_audit(&sark::store::AuditQuery {
            actor: Some("sark-admin".into()),
            limit: 20,
            ..Default::default()
        })
        .await
        .unwrap();
    let kinds: Vec<&str> = cli_events
        .iter()
        .map(|e| e.event.event_type.as_str())
        .collect();
    assert!(
        kinds.contains(&"account_unlocked")
            && kinds.contains(&"password_changed")
            && kinds.contains(&"mfa_reset"),
        "{kinds:?}"
    );
    assert!(
        cli_events.iter().all(|e| e.chain.starts_with("cli-")),
        "the CLI writes its own chain"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_bootstrap_admin_stays_deleted_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let start = |data_dir: std::path::PathBuf| spawn_app_with(move |c| c.data_dir = data_dir);
    let app = start(data_dir.clone()).await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "successor", "admin", PASSWORD)
        .await;
    let successor = token(&app.login("successor", PASSWORD).await);
    let response = app
        .call(Method::DELETE, "/api/v1/users/admin", &successor, None)
        .await;
    assert_eq!(response.status(), 204);
    app.stop().await;

    // The configured bootstrap password is still set: it must not bring `admin` back.
    let app = start(data_dir).await;
    let (status, body) = app
        .get_as(
            "/api/v1/users/admin",
            &token(&app.login("successor", PASSWORD).await),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = error(
        app.post(
            "/api/v1/auth/login",
            &json!({"username": "admin", "password": TestApp::ADMIN_PASSWORD}),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    app.stop().await;
}
