//! LDAP logins against the real slapd that `scripts/test` starts (`scripts/peers/ldap.sh`).

use std::process::Command;
use std::time::Duration;

use sark::config::LdapConfig;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, config_error, documented_config, free_port, peer_env, poll, spawn_app_with,
};

/// The `[ldap]` example of docs/providers/ldap.md, pointed at the test directory at `url`.
fn documented_ldap(url: &str, starttls: bool) -> LdapConfig {
    let dir = tempfile::tempdir().unwrap();
    let ca = peer_env("TEST_LDAP_CA");
    let starttls = format!("starttls = {starttls}");
    documented_config(
        "providers/ldap.md",
        &[
            ("ldap://127.0.0.1:50389", url),
            ("starttls = true", &starttls),
            ("/etc/sark/ldap-ca.pem", &ca),
        ],
        dir.path(),
    )
    .ldap
    .expect("it configures LDAP")
}

async fn ldap_app(config: LdapConfig) -> TestApp {
    let app = spawn_app_with(|c| {
        c.ldap = Some(config);
        c.auth.lockout_threshold = 3;
    })
    .await;
    app.wait_ready().await;
    app
}

async fn ldap_login(app: &TestApp, username: &str, password: &str) -> (u16, Value) {
    let response = app
        .post(
            "/api/v1/auth/login/ldap",
            &json!({"username": username, "password": password}),
            None,
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The `details` of the newest audit event of `event_type`.
async fn last_event(app: &TestApp, event_type: &str) -> (Option<String>, Value) {
    let event = app
        .audit_events(100)
        .await
        .into_iter()
        .find(|e| e.event.event_type == event_type)
        .unwrap_or_else(|| panic!("no {event_type} event"));
    (event.event.actor, event.event.details)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_starttls_login_provisions_an_account_with_the_mapped_role() {
    let app = ldap_app(documented_ldap(&peer_env("TEST_LDAP_URL"), true)).await;
    let (status, tokens) = ldap_login(&app, "test.user", "testpass").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["user"]["username"], "ldap:test.user");
    assert_eq!(tokens["user"]["role"], "admin", "sark-admins maps to admin");
    assert_eq!(tokens["user"]["email"], "test.user@example.org");
    let access = tokens["access_token"].as_str().unwrap();
    let (status, me) = app.get_as("/api/v1/auth/me", access).await;
    assert_eq!(status, 200);
    assert_eq!(me["auth_method"], "ldap");
    // The mapped role is a real admin: it may list users.
    let (status, _) = app.get_as("/api/v1/users", access).await;
    assert_eq!(status, 200);
    let types = app.audit_types().await;
    assert!(types.contains(&"user_provisioned".to_owned()), "{types:?}");
    assert!(types.contains(&"login_succeeded".to_owned()), "{types:?}");

    // The second login finds the same account.
    let (status, again) = ldap_login(&app, "Test.User", "testpass").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["user"]["user_id"], tokens["user"]["user_id"]);

    // A user in an unmapped group is a viewer, and the refresh token works as for any login.
    let (status, plain) = ldap_login(&app, "plain.user", "plainpass").await;
    assert_eq!(status, 200, "{plain}");
    assert_eq!(plain["user"]["role"], "operator", "staff maps to operator");
    let refreshed = app
        .post(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": plain["refresh_token"]}),
            None,
        )
        .await;
    assert_eq!(refreshed.status(), 200);

    let (_, providers) = app.get_json("/api/v1/auth/providers").await;
    let ldap = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "ldap")
        .unwrap()
        .clone();
    assert_eq!(
        ldap,
        json!({"id": "ldap", "type": "ldap", "enabled": true, "login_url": "/api/v1/auth/login/ldap"})
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldaps_login_works_and_a_directory_admin_is_not_the_local_admin() {
    let mut config = documented_ldap(&peer_env("TEST_LDAPS_URL"), false);
    config.role_mapping = Default::default();
    let app = ldap_app(config).await;
    let (status, tokens) = ldap_login(&app, "admin", "ldap-admin-pass").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["user"]["username"], "ldap:admin");
    assert_eq!(tokens["user"]["role"], "viewer", "no mapping: viewer");
    let local = app.login("admin", TestApp::ADMIN_PASSWORD).await;
    assert_ne!(local["user"]["user_id"], tokens["user"]["user_id"]);
    assert_eq!(local["user"]["role"], "admin");
    // The directory's password is not the local admin's, and the other way round.
    let (status, _) = ldap_login(&app, "admin", TestApp::ADMIN_PASSWORD).await;
    assert_eq!(status, 401);
    let wrong = app
        .post(
            "/api/v1/auth/login",
            &json!({"username": "admin", "password": "ldap-admin-pass"}),
            None,
        )
        .await;
    assert_eq!(wrong.status(), 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_passwords_unknown_users_and_filter_injection_are_refused() {
    let app = ldap_app(documented_ldap(&peer_env("TEST_LDAP_URL"), true)).await;
    let (status, body) = ldap_login(&app, "test.user", "wrong").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "invalid_credentials");
    let (actor, details) = last_event(&app, "login_failed").await;
    assert_eq!(actor.as_deref(), Some("ldap:test.user"));
    assert_eq!(details["reason"], "wrong_password");

    let (status, unknown) = ldap_login(&app, "nobody", "whatever").await;
    assert_eq!(status, 401);
    for part in ["code", "message"] {
        assert_eq!(
            unknown["error"][part], body["error"][part],
            "one answer for both"
        );
    }
    assert_eq!(
        last_event(&app, "login_failed").await.1["reason"],
        "unknown_user"
    );

    // Escaped, these match no uid at all; unescaped they would match every entry (and
    // the second would turn the filter into an always-true one).
    for injection in ["*", "*)(uid=*))(|(uid=*", "test.user)(|(uid=*"] {
        let (status, body) = ldap_login(&app, injection, "testpass").await;
        assert_eq!(status, 401, "{injection}: {body}");
        assert_eq!(
            last_event(&app, "login_failed").await.1["reason"],
            "unknown_user",
            "{injection} found nothing"
        );
    }

    // An empty password is refused before any bind (and before the directory is asked).
    let (status, body) = ldap_login(&app, "test.user", "").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("password")
    );
    for (body, field) in [
        (json!({"username": "", "password": "x"}), "username"),
        (json!({"username": "a\u{0}b", "password": "x"}), "username"),
        (json!({"username": "test.user"}), "password"),
    ] {
        let response = app.post("/api/v1/auth/login/ldap", &body, None).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_ldap_logins_lock_the_account_until_an_admin_unlocks_it() {
    let app = ldap_app(documented_ldap(&peer_env("TEST_LDAP_URL"), true)).await;
    // Spellings the directory treats as one name count as one name.
    for spelling in [" plain.user", "PLAIN.USER"] {
        assert_eq!(
            ldap_login(&app, spelling, "wrong").await.0,
            401,
            "{spelling:?}"
        );
    }
    let (status, body) = ldap_login(&app, "plain.user  ", "wrong").await;
    assert_eq!(status, 423, "the third failure locks: {body}");
    let (status, _) = ldap_login(&app, "plain.user", "plainpass").await;
    assert_eq!(status, 423, "even the right password waits");
    let admin = app.admin_token().await;
    let response = app
        .post(
            "/api/v1/users/ldap:plain.user/unlock",
            &json!({}),
            Some(&admin),
        )
        .await;
    assert_eq!(response.status(), 204);
    let (status, body) = ldap_login(&app, "plain.user", "plainpass").await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_with_an_untrusted_certificate_is_unavailable_not_skipped() {
    let mut config = documented_ldap(&peer_env("TEST_LDAP_URL"), true);
    config.ca_file = None;
    let app = ldap_app(config).await;
    let (status, body) = ldap_login(&app, "test.user", "testpass").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "ldap_unavailable");
    app.stop().await;
}

fn slapd(args: &[&str]) -> String {
    let output = Command::new(peer_env("TEST_LDAP_CTL"))
        .args(args)
        .output()
        .expect("run scripts/peers/ldap.sh");
    assert!(
        output.status.success(),
        "ldap.sh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Stops its slapd instance when dropped, so a failing test leaves nothing running.
struct OwnSlapd(String);

impl Drop for OwnSlapd {
    fn drop(&mut self) {
        let _ = Command::new(peer_env("TEST_LDAP_CTL"))
            .args(["stop", &self.0])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_directory_gives_503_and_degraded_health_then_recovers() {
    let name = format!("outage-{}", std::process::id());
    let url = slapd(&[
        "init",
        &name,
        &free_port().to_string(),
        &free_port().to_string(),
    ]);
    let instance = OwnSlapd(name.clone());
    let mut config = documented_ldap(&url, false);
    config.ca_file = None;
    config.timeout_seconds = 1;
    let app = ldap_app(config).await;
    assert_eq!(ldap_login(&app, "test.user", "testpass").await.0, 200);
    let (_, health) = app.get_json("/health/detailed").await;
    assert_eq!(health["services"]["ldap"], "UP", "{health}");

    slapd(&["stop", &name]);
    let (status, body) = ldap_login(&app, "test.user", "testpass").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "ldap_unavailable");
    let health = poll(
        "health to report LDAP down",
        Duration::from_secs(10),
        || async {
            let (_, health) = app.get_json("/health/detailed").await;
            (health["services"]["ldap"] == "DOWN").then_some(health)
        },
    )
    .await;
    assert_eq!(health["status"], "degraded");
    // Local logins do not depend on the directory.
    app.login("admin", TestApp::ADMIN_PASSWORD).await;

    slapd(&["start", &name]);
    poll(
        "LDAP logins to work again",
        Duration::from_secs(10),
        || async { (ldap_login(&app, "test.user", "testpass").await.0 == 200).then_some(()) },
    )
    .await;
    drop(instance);
    app.stop().await;
}

#[test]
fn incomplete_ldap_configuration_names_the_missing_key() {
    let err = config_error(&[("SARK_LDAP__URL", "ldap://127.0.0.1:1")]);
    assert!(err.contains("bind_dn"), "{err}");
    let complete = [
        ("SARK_LDAP__BIND_DN", "cn=svc"),
        ("SARK_LDAP__BIND_PASSWORD", "pw"),
        ("SARK_LDAP__USER_BASE", "ou=people"),
    ];
    for (url, bad_key, bad_value, named) in [
        ("http://x", "SARK_LDAP__POOL_SIZE", "4", "ldap.url"),
        (
            "ldap://127.0.0.1",
            "SARK_LDAP__USER_FILTER",
            "(uid=x)",
            "ldap.user_filter",
        ),
        (
            "ldap://127.0.0.1",
            "SARK_LDAP__ROLE_MAPPING",
            "admins=>root",
            "ldap.role_mapping",
        ),
        (
            "ldaps://127.0.0.1",
            "SARK_LDAP__STARTTLS",
            "true",
            "ldap.starttls",
        ),
        (
            "ldap://ldap.example.org",
            "SARK_LDAP__POOL_SIZE",
            "4",
            "ldap.url",
        ),
    ] {
        let mut vars = complete.to_vec();
        vars.push(("SARK_LDAP__URL", url));
        vars.push((bad_key, bad_value));
        let err = config_error(&vars);
        assert!(
            err.contains(named) || err.contains(bad_key),
            "{url} {bad_key}: {err}"
        );
    }
}
