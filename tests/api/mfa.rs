//! TOTP MFA: enrolment, challenges, replay, recovery codes, lockout and reset. Codes come
//! from oathtool, an independent implementation.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, oathtool, spawn_app};

const PASSWORD: &str = "violet kettle swims at dawn";

fn now() -> i64 {
    #[allow(clippy::disallowed_methods)]
    chrono::Utc::now().timestamp()
}

/// Enrols `username` and returns (secret, recovery codes).
async fn enroll(app: &TestApp, access: &str) -> (String, Vec<String>) {
    let response = app
        .call(Method::POST, "/api/v1/auth/mfa/totp/enroll", access, None)
        .await;
    assert_eq!(response.status(), 200);
    let enrollment: Value = response.json().await.unwrap();
    let secret = enrollment["secret"].as_str().unwrap().to_owned();
    assert!(
        enrollment["otpauth_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/SARK:")
    );
    assert!(enrollment["qr_png_base64"].as_str().unwrap().len() > 100);

    let wrong = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/totp/confirm",
            access,
            Some(&json!({"code": "000000"})),
        )
        .await;
    assert_eq!(wrong.status(), 400);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_code");
    let code = oathtool(&secret, now());
    let response = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/totp/confirm",
            access,
            Some(&json!({"code": code})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let confirmed: Value = response.json().await.unwrap();
    let codes: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

async fn challenge(app: &TestApp, username: &str) -> String {
    let response = app
        .post(
            "/api/v1/auth/login",
            &json!({"username": username, "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["mfa_required"], true, "{body}");
    assert!(body["expires_in"].as_i64().unwrap() >= 120);
    assert!(body.get("access_token").is_none());
    body["challenge_id"].as_str().unwrap().to_owned()
}

async fn verify(app: &TestApp, challenge_id: &str, code: &str) -> (u16, Value) {
    let response = app
        .post(
            "/api/v1/auth/mfa/verify",
            &json!({"challenge_id": challenge_id, "code": code}),
            None,
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn totp_enrolment_challenge_replay_and_recovery_codes() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "lee", "operator", PASSWORD).await;
    let first = app.login("lee", PASSWORD).await;
    let (secret, recovery) = enroll(&app, first["access_token"].as_str().unwrap()).await;
    let again = app
        .call(
            Method::POST,
            "/api/v1/auth/mfa/totp/enroll",
            first["access_token"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(again.status(), 409, "already enabled");

    // The code that confirmed the enrolment is spent; the next step's code logs in once.
    let id = challenge(&app, "lee").await;
    let next = oathtool(&secret, now() + 30);
    let (status, tokens) = verify(&app, &id, &next).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["user"]["mfa_enabled"], true);
    let access = tokens["access_token"].as_str().unwrap();
    let (_, me) = app.get_as("/api/v1/auth/me", access).await;
    assert_eq!(me["mfa_enabled"], true);

    let (status, body) = verify(&app, &id, &next).await;
    assert_eq!(status, 401, "a challenge is answered once: {body}");
    let id2 = challenge(&app, "lee").await;
    let (status, body) = verify(&app, &id2, &next).await;
    assert_eq!(
        status, 401,
        "a TOTP code is accepted once, across challenges: {body}"
    );
    assert_eq!(body["error"]["code"], "invalid_code");

    let (status, _) = verify(&app, &id2, &recovery[3]).await;
    assert_eq!(status, 200, "a recovery code works");
    let id3 = challenge(&app, "lee").await;
    let (status, _) = verify(&app, &id3, &recovery[3]).await;
    assert_eq!(status, 401, "and only once");
    let (status, _) = verify(&app, &id3, &recovery[4].to_uppercase()).await;
    assert_eq!(status, 200, "recovery codes ignore case");

    let kinds: Vec<String> = app.audit_types().await;
    for kind in ["mfa_enrolled", "mfa_verified", "mfa_failed"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind}: {kinds:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn wrong_codes_count_toward_lockout_and_a_new_challenge_buys_no_new_guesses() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "max", "viewer", PASSWORD).await;
    let first = app.login("max", PASSWORD).await;
    let (secret, _) = enroll(&app, first["access_token"].as_str().unwrap()).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let id = challenge(&app, "max").await;
        statuses.push(verify(&app, &id, "111111").await.0);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 423]);
    let response = app
        .post(
            "/api/v1/auth/login",
            &json!({"username": "max", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(response.status(), 423, "locked for the first factor too");
    assert_eq!(
        app.call(Method::POST, "/api/v1/users/max/unlock", &admin, None)
            .await
            .status(),
        204
    );

    assert_eq!(
        app.call(Method::DELETE, "/api/v1/users/max/mfa", &admin, None)
            .await
            .status(),
        204
    );
    let tokens = app.login("max", PASSWORD).await;
    assert_eq!(
        tokens["user"]["mfa_enabled"], false,
        "after a reset the password alone logs in"
    );
    let _ = secret;
    app.stop().await;
}

#[tokio::test]
async fn an_admin_with_mfa_must_verify_it_before_writing_users() {
    let app = spawn_app().await;
    let password_only = app.admin_token().await;
    let (secret, _) = enroll(&app, &password_only).await;
    // The session from before enrolment carries no verified second factor.
    let refreshed = app.login("admin", TestApp::ADMIN_PASSWORD).await;
    assert_eq!(refreshed["mfa_required"], true);
    let id = refreshed["challenge_id"].as_str().unwrap();
    let (status, tokens) = verify(&app, id, &oathtool(&secret, now() + 30)).await;
    assert_eq!(status, 200);
    let verified = tokens["access_token"].as_str().unwrap();
    let body = json!({"username": "ned", "email": "ned@example.org", "role": "viewer", "password": PASSWORD});
    let unverified_refresh = app
        .post("/api/v1/auth/refresh", &json!({"refresh_token": ""}), None)
        .await;
    assert_eq!(unverified_refresh.status(), 400);
    let response = app.post("/api/v1/users", &body, Some(verified)).await;
    assert_eq!(response.status(), 201, "a verified admin may write users");
    app.stop().await;
}

#[tokio::test]
async fn a_stolen_token_can_neither_enrol_a_second_factor_nor_mint_a_key_without_a_recent_login() {
    let app = crate::helpers::spawn_app_with(|c| c.auth.reauth_seconds = 1).await;
    let admin = app.admin_token().await;
    let password = "a long and quiet password";
    app.create_user(&admin, "victim", "operator", password)
        .await;
    let stolen = app.login("victim", password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The thief uses the token after the re-authentication window.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let enrol = app
        .client
        .post(app.url("/api/v1/auth/mfa/totp/enroll"))
        .bearer_auth(&stolen)
        .send()
        .await
        .unwrap();
    assert_eq!(enrol.status(), 403);
    let body: serde_json::Value = enrol.json().await.unwrap();
    assert_eq!(body["error"]["code"], "reauthentication_required", "{body}");
    let key = app
        .post(
            "/api/v1/api-keys",
            &serde_json::json!({"name": "thief", "scopes": ["read:servers"]}),
            Some(&stolen),
        )
        .await;
    assert_eq!(key.status(), 403);
    let wrong = app
        .post(
            "/api/v1/auth/mfa/totp/enroll",
            &serde_json::json!({"current_password": "not the password"}),
            Some(&stolen),
        )
        .await;
    assert_eq!(wrong.status(), 403);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_current_password", "{body}");
    // The owner, who knows the password, can.
    let enrol = app
        .post(
            "/api/v1/auth/mfa/totp/enroll",
            &serde_json::json!({"current_password": password}),
            Some(&stolen),
        )
        .await;
    assert_eq!(enrol.status(), 200);
    let key = app
        .post(
            "/api/v1/api-keys",
            &serde_json::json!({"name": "owner", "scopes": ["read:servers"], "current_password": password}),
            Some(&stolen),
        )
        .await;
    assert_eq!(key.status(), 201);
    // A fresh login is recent enough without the password.
    let fresh = app.login("victim", password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = app
        .post(
            "/api/v1/api-keys",
            &serde_json::json!({"name": "fresh", "scopes": ["read:servers"]}),
            Some(&fresh),
        )
        .await;
    assert_eq!(key.status(), 201);
    app.stop().await;
}
