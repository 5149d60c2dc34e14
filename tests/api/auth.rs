//! Logins, access tokens, refresh tokens, logout and revocation.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::Method;
use sark::idp::jwt::AccessClaims;
use serde_json::{Value, json};

use crate::helpers::{TestApp, poll, spawn_app, spawn_app_with, spawn_pg_app_with};

const PASSWORD: &str = "violet kettle swims at dawn";

async fn refresh(app: &TestApp, token: &str) -> (u16, Value) {
    let response = app
        .post(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": token}),
            None,
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn login_and_refresh_flow(app: &TestApp) {
    let admin = app.admin_token().await;
    app.create_user(&admin, "carol", "operator", PASSWORD).await;
    let tokens = app.login("carol", PASSWORD).await;
    for key in ["access_token", "refresh_token", "session_id"] {
        assert!(tokens[key].is_string(), "{key}: {tokens}");
    }
    assert_eq!(tokens["token_type"], "bearer");
    assert_eq!(tokens["expires_in"], 900);
    let user = &tokens["user"];
    assert_eq!(user["username"], "carol");
    assert_eq!(user["role"], "operator");
    assert_eq!(user["email"], "carol@example.org");
    assert_eq!(user["teams"], json!([]));
    assert_eq!(user["mfa_enabled"], false);
    assert!(user["user_id"].is_string());

    let access = tokens["access_token"].as_str().unwrap();
    let (status, me) = app.get_as("/api/v1/auth/me", access).await;
    assert_eq!(status, 200);
    assert_eq!(me["username"], "carol");
    assert_eq!(me["email"], "carol@example.org");
    assert_eq!(me["session_id"], tokens["session_id"]);
    assert_eq!(me["principal_type"], "session");
    assert_eq!(me["auth_method"], "password");
    assert_eq!(me["scopes"], json!([]));

    let first = tokens["refresh_token"].as_str().unwrap();
    let (status, rotated) = refresh(app, first).await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(
        rotated["refresh_token"], tokens["refresh_token"],
        "a new refresh token every time"
    );
    assert_eq!(rotated["session_id"], tokens["session_id"]);
    let second = rotated["refresh_token"].as_str().unwrap().to_owned();
    let (status, _) = app
        .get_as("/api/v1/auth/me", rotated["access_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200);

    // The first token again: a reuse. The whole session dies, even its newest tokens.
    let (status, body) = refresh(app, first).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "refresh_token_reused");
    let (status, _) = refresh(app, &second).await;
    assert_eq!(status, 401, "the rotated token died with the session");
    let (status, body) = app
        .get_as("/api/v1/auth/me", rotated["access_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "token_revoked");
}

#[tokio::test]
async fn login_refresh_and_refresh_token_reuse_on_sqlite() {
    let app = spawn_app().await;
    login_and_refresh_flow(&app).await;
    let events = app.audit_events(100).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.event_type.as_str()).collect();
    for kind in [
        "user_created",
        "login_succeeded",
        "token_refreshed",
        "refresh_token_reused",
    ] {
        assert!(kinds.contains(&kind), "{kind} not audited: {kinds:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn login_refresh_and_refresh_token_reuse_on_postgres() {
    let app = spawn_pg_app_with(|_| {}).await;
    login_and_refresh_flow(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_accept_it_at_most_once() {
    let app = spawn_app().await;
    let tokens = app.login("admin", TestApp::ADMIN_PASSWORD).await;
    let token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/api/v1/auth/refresh");
            let token = token.clone();
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"refresh_token": token}))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 1,
        "{statuses:?}"
    );
    assert!(statuses.contains(&401), "{statuses:?}");
    // The losers are told their token is dead, not to retry a session that has ended.
    assert!(
        statuses.iter().all(|s| [200, 401].contains(s)),
        "{statuses:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_get_the_same_answer_after_the_same_work() {
    let owned = spawn_app().await;
    let app = &owned;
    let attempt = |username: &'static str| async move {
        let started = Instant::now();
        let response = app
            .post(
                "/api/v1/auth/login",
                &json!({"username": username, "password": "not the password at all"}),
                None,
            )
            .await;
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (status, body["error"].clone(), elapsed)
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..3 {
        let (status, error, elapsed) = attempt("admin").await;
        assert_eq!(status, 401);
        known.push((error, elapsed));
        let (status, error, elapsed) = attempt("no-such-user").await;
        assert_eq!(status, 401);
        unknown.push((error, elapsed));
    }
    assert_eq!(known[0].0["code"], unknown[0].0["code"]);
    assert_eq!(known[0].0["message"], unknown[0].0["message"]);
    // Both paths run one argon2 verification; allow for a noisy machine.
    let median = |v: &mut Vec<(Value, Duration)>| {
        v.sort_by_key(|(_, d)| *d);
        v[v.len() / 2].1
    };
    let (k, u) = (median(&mut known), median(&mut unknown));
    assert!(u > k / 4 && u < k * 4, "known {k:?} vs unknown {u:?}");
}

fn tamper(token: &str, change: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    change(&mut payload);
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    )
}

#[tokio::test]
async fn forged_and_invalid_access_tokens_are_all_refused_with_401() {
    let app = spawn_app().await;
    let tokens = app.login("admin", TestApp::ADMIN_PASSWORD).await;
    let valid = tokens["access_token"].as_str().unwrap().to_owned();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(valid.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let kid = header["kid"].as_str().unwrap().to_owned();
    let payload = valid.split('.').nth(1).unwrap().to_owned();
    let keys = app.node().tokens().unwrap().clone();
    let claims: AccessClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&payload).unwrap()).unwrap();
    #[allow(clippy::disallowed_methods)]
    let now = chrono::Utc::now().timestamp();

    let none_header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string());
    let alg_none = format!("{none_header}.{payload}.");

    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();

    let signed = |change: fn(&mut AccessClaims, i64)| {
        let mut c = claims.clone();
        change(&mut c, now);
        keys.issue(&c).unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        ("alg=none", alg_none),
        ("HS256 signed with the public key", hs256),
        ("expired", signed(|c, now| c.exp = now - 120)),
        (
            "wrong audience",
            signed(|c, _| c.aud = "another-service".into()),
        ),
        (
            "wrong issuer",
            signed(|c, _| c.iss = "https://evil.example".into()),
        ),
        (
            "tampered payload",
            tamper(&valid, |p| p["username"] = json!("mallory")),
        ),
        (
            "tampered subject",
            tamper(&valid, |p| {
                p["sub"] = json!("00000000-0000-0000-0000-000000000000")
            }),
        ),
        ("unknown kid", {
            let parts: Vec<&str> = valid.split('.').collect();
            let h = URL_SAFE_NO_PAD
                .encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": "nope"}).to_string());
            format!("{h}.{}.{}", parts[1], parts[2])
        }),
        ("garbage", "not.a.jwt".into()),
        (
            "empty signature",
            format!("{}.", valid.rsplit_once('.').unwrap().0),
        ),
    ];
    assert_eq!(
        app.get_as("/api/v1/auth/me", &valid).await.0,
        200,
        "the untouched token works"
    );
    for (what, token) in cases {
        let (status, body) = app.get_as("/api/v1/auth/me", &token).await;
        assert_eq!(status, 401, "{what} was accepted: {body}");
        assert_eq!(body["error"]["code"], "invalid_token", "{what}: {body}");
    }
    let response = app.get("/api/v1/auth/me").await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .header("authorization", "Basic YWRtaW46eA==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn logout_and_session_revocation_take_effect_on_the_very_next_request() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "dan", "viewer", PASSWORD).await;
    let a = app.login("dan", PASSWORD).await;
    let b = app.login("dan", PASSWORD).await;
    let c = app.login("dan", PASSWORD).await;
    let token = |t: &Value| t["access_token"].as_str().unwrap().to_owned();

    let (status, sessions) = app.get_as("/api/v1/sessions", &token(&a)).await;
    assert_eq!(status, 200);
    let items = sessions["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for key in [
        "session_id",
        "user_id",
        "created_at",
        "last_seen_at",
        "expires_at",
        "auth_method",
        "ip",
        "node_id",
    ] {
        assert!(!items[0][key].is_null(), "{key}: {sessions}");
    }
    assert_eq!(items[0]["node_id"], app.node().node_id.as_str());

    let response = app
        .call(Method::POST, "/api/v1/auth/logout", &token(&a), None)
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked"], true);
    assert!(body["propagation_ms"].is_u64());
    assert_eq!(
        app.get_as("/api/v1/auth/me", &token(&a)).await.0,
        401,
        "refused on the very next request"
    );

    let path = format!("/api/v1/sessions/{}", b["session_id"].as_str().unwrap());
    let response = app.call(Method::DELETE, &path, &token(&c), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.get_as("/api/v1/auth/me", &token(&b)).await.0, 401);
    assert_eq!(
        refresh(&app, b["refresh_token"].as_str().unwrap()).await.0,
        401
    );

    // Someone else's session is invisible to a non-admin.
    let admin_session = app.login("admin", TestApp::ADMIN_PASSWORD).await;
    let path = format!(
        "/api/v1/sessions/{}",
        admin_session["session_id"].as_str().unwrap()
    );
    assert_eq!(
        app.call(Method::DELETE, &path, &token(&c), None)
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get_as("/api/v1/auth/me", &token(&admin_session))
            .await
            .0,
        200
    );

    let response = app
        .call(Method::DELETE, "/api/v1/sessions", &token(&c), None)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        app.get_as("/api/v1/auth/me", &token(&c)).await.0,
        401,
        "signed out everywhere"
    );
    app.stop().await;
}

#[tokio::test]
async fn changing_ones_password_revokes_the_other_sessions() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "erin", "viewer", PASSWORD).await;
    let keep = app.login("erin", PASSWORD).await;
    let other = app.login("erin", PASSWORD).await;
    let token = |t: &Value| t["access_token"].as_str().unwrap().to_owned();
    let change =
        |current: &str, new: &str| json!({"current_password": current, "new_password": new});

    let response = app
        .call(
            Method::POST,
            "/api/v1/auth/password",
            &token(&keep),
            Some(&change("wrong password here", "a brand new passphrase")),
        )
        .await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_current_password");
    let response = app
        .call(
            Method::POST,
            "/api/v1/auth/password",
            &token(&keep),
            Some(&change(PASSWORD, "password123456")),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "weak_password");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("common_password"),
        "{body}"
    );

    let response = app
        .call(
            Method::POST,
            "/api/v1/auth/password",
            &token(&keep),
            Some(&change(PASSWORD, "a brand new passphrase")),
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.get_as("/api/v1/auth/me", &token(&keep)).await.0,
        200,
        "the current session stays"
    );
    assert_eq!(
        app.get_as("/api/v1/auth/me", &token(&other)).await.0,
        401,
        "other sessions are revoked"
    );
    let response = app
        .post(
            "/api/v1/auth/login",
            &json!({"username": "erin", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(response.status(), 401);
    app.login("erin", "a brand new passphrase").await;
    app.stop().await;
}

#[tokio::test]
async fn a_killed_session_actor_is_reactivated_from_the_store() {
    let app = spawn_app().await;
    let tokens = app.login("admin", TestApp::ADMIN_PASSWORD).await;
    let session_id = uuid::Uuid::parse_str(tokens["session_id"].as_str().unwrap()).unwrap();
    let node = app.node().clone();
    let actor = node.sessions.actor(session_id).await.unwrap();
    actor.kill();
    poll("the actor to die", Duration::from_secs(5), || async {
        (actor.get_status() == ractor::ActorStatus::Stopped).then_some(())
    })
    .await;
    let (status, rotated) = refresh(&app, tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{rotated}");
    let again = node.sessions.actor(session_id).await.unwrap();
    assert_ne!(
        again.get_id(),
        actor.get_id(),
        "a new actor serves the session"
    );

    again
        .cast(sark_actors::session::SessionMessage::Panic)
        .unwrap();
    poll(
        "the crash to be counted",
        Duration::from_secs(5),
        || async {
            (node
                .actor_metrics
                .restarts
                .with_label_values(&["session"])
                .get()
                == 1)
                .then_some(())
        },
    )
    .await;
    let (status, _) = refresh(&app, rotated["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        status, 200,
        "the session keeps working after its actor crashed"
    );
    app.stop().await;
}

#[tokio::test]
async fn rotated_signing_keys_keep_verifying_old_tokens() {
    let app = spawn_app_with(|c| c.auth.sync_seconds = 1).await;
    let before = app.admin_token().await;
    let jwks: Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let old_kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");

    crate::helpers::sark_admin(&app.node().config.data_dir, &["rotate-signing-key"]);
    let jwks = poll(
        "the node to load the new key",
        Duration::from_secs(10),
        || async {
            let jwks: Value = app.get("/.well-known/jwks.json").await.json().await.ok()?;
            (jwks["keys"].as_array()?.len() == 2).then_some(jwks)
        },
    )
    .await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&old_kid.as_str()));
    assert_eq!(
        app.get_as("/api/v1/auth/me", &before).await.0,
        200,
        "tokens of the old key still verify"
    );
    let after = app.admin_token().await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(after.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_ne!(
        header["kid"],
        old_kid.as_str(),
        "new tokens use the new key"
    );
    assert_eq!(app.get_as("/api/v1/auth/me", &after).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn authenticated_callers_are_rate_limited_per_principal() {
    let app = spawn_app_with(|c| {
        c.rate_limit.authenticated_per_minute = 3;
        c.rate_limit.unauthenticated_per_minute = 100;
    })
    .await;
    let token = app.admin_token().await;
    for _ in 0..3 {
        assert_eq!(app.get_as("/api/v1/auth/me", &token).await.0, 200);
    }
    let response = app.call(Method::GET, "/api/v1/auth/me", &token, None).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["ratelimit-limit"], "3");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"sark_rate_limited_total{scope="principal"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_login_input_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"username": "", "password": "x"}), "username"),
        (
            json!({"username": "x".repeat(300), "password": "x"}),
            "username",
        ),
        (json!({"username": "admin", "password": ""}), "password"),
        (
            json!({"username": "admin", "password": "x".repeat(2000)}),
            "password",
        ),
    ];
    for (body, field) in cases {
        let response = app.post("/api/v1/auth/login", &body, None).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    let response = app
        .post("/api/v1/auth/login", &json!({"username": "admin"}), None)
        .await;
    assert_eq!(response.status(), 400);
    let response = app
        .post(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": "garbage"}),
            None,
        )
        .await;
    assert_eq!(response.status(), 401);
    let response = app
        .post(
            "/api/v1/auth/mfa/verify",
            &json!({"challenge_id": "nope", "code": "123456"}),
            None,
        )
        .await;
    assert_eq!(response.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn a_guessed_refresh_token_for_a_live_session_is_refused_and_harms_nothing() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "gus", "viewer", PASSWORD).await;
    let tokens = app.login("gus", PASSWORD).await;
    let real = tokens["refresh_token"].as_str().unwrap();
    let (session, _) = real.split_once('.').unwrap();
    // Knowing a session id (it is in every access token) must not let anyone kill it.
    let guessed = format!("{session}.{}", "A".repeat(43));
    let (status, body) = refresh(&app, &guessed).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "invalid_token");
    let (status, body) = refresh(&app, "").await;
    assert_eq!(status, 400, "an empty token is bad input: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refresh_token")
    );
    for malformed in ["no-dot", &format!("{session}.short"), "x.y.z"] {
        let (status, body) = refresh(&app, malformed).await;
        assert_eq!(status, 401, "{malformed:?}: {body}");
    }
    let (status, rotated) = refresh(&app, real).await;
    assert_eq!(status, 200, "the session survived the guesses: {rotated}");
    app.stop().await;
}

#[tokio::test]
async fn parallel_guesses_get_no_more_tries_than_the_lockout_threshold() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "hugo", "viewer", PASSWORD).await;
    let guesses = (0..20).map(|i| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/auth/login",
                &json!({"username": "hugo", "password": format!("guess number {i:02} here")}),
                None,
            )
            .await
            .status()
            .as_u16()
        }
    });
    let statuses = futures::future::join_all(guesses).await;
    let verified = statuses.iter().filter(|s| **s == 401).count();
    let locked = statuses.iter().filter(|s| **s == 423).count();
    assert_eq!(verified + locked, 20, "{statuses:?}");
    assert!(
        verified <= 5,
        "{verified} guesses were checked at once; the threshold is 5: {statuses:?}"
    );
    let response = app
        .post(
            "/api/v1/auth/login",
            &json!({"username": "hugo", "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(response.status(), 423);
    app.stop().await;
}

#[tokio::test]
async fn no_session_logged_in_with_the_old_password_outlives_a_password_change() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "iris", "viewer", PASSWORD).await;
    let keep = app.login("iris", PASSWORD).await;
    let keep = keep["access_token"].as_str().unwrap().to_owned();
    let logins = (0..12).map(|_| async {
        let response = app
            .post(
                "/api/v1/auth/login",
                &json!({"username": "iris", "password": PASSWORD}),
                None,
            )
            .await;
        let ok = response.status() == 200;
        let body: Value = response.json().await.unwrap();
        ok.then(|| body["access_token"].as_str().unwrap().to_owned())
    });
    let change = async {
        let response = app
            .call(
                Method::POST,
                "/api/v1/auth/password",
                &keep,
                Some(&json!({"current_password": PASSWORD, "new_password": "a brand new passphrase"})),
            )
            .await;
        assert_eq!(response.status(), 204);
    };
    let (tokens, ()) = tokio::join!(futures::future::join_all(logins), change);
    for token in tokens.into_iter().flatten() {
        let (status, body) = app.get_as("/api/v1/auth/me", &token).await;
        assert_eq!(
            status, 401,
            "a session from the old password survived: {body}"
        );
    }
    assert_eq!(app.get_as("/api/v1/auth/me", &keep).await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_node_that_left_its_cluster_refuses_revocations_as_leaving_and_writes_nothing() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let tokens = app.login("admin", TestApp::ADMIN_PASSWORD).await;
    let session: uuid::Uuid = tokens["session_id"].as_str().unwrap().parse().unwrap();
    sark::node::leave_cluster(app.node()).await;

    let response = app
        .call(
            Method::POST,
            "/api/v1/auth/logout",
            tokens["access_token"].as_str().unwrap(),
            None,
        )
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "node_leaving", "{body}");
    let stored = app.node().store.session(session).await.unwrap().unwrap();
    assert!(stored.revoked_at.is_none(), "refused before writing");
    app.stop().await;
}
