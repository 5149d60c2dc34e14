//! API keys: shown once, stored hashed, scoped no wider than their creator, revocable.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

const PASSWORD: &str = "violet kettle swims at dawn";

#[tokio::test]
async fn api_keys_authenticate_as_bearer_and_x_api_key_and_revoke_instantly() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "ops", "operator", PASSWORD).await;
    let session = app.login("ops", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app.post("/api/v1/api-keys", &json!({"name": "deploy bot", "scopes": ["read:servers", "write:servers"], "expires_in_days": 30}), Some(&session)).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sark_"));
    assert_eq!(created["prefix"].as_str().unwrap().len(), 8);
    assert!(created["expires_at"].is_string());

    let (status, me) = app.get_as("/api/v1/auth/me", &key).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["principal_type"], "api_key");
    assert_eq!(me["email"], "ops@example.org");
    assert_eq!(me["scopes"], json!(["read:servers", "write:servers"]));
    assert_eq!(me["session_id"], Value::Null);
    let by_header = app
        .client
        .get(app.url("/api/v1/auth/me"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 200);

    let (_, listed) = app.get_as("/api/v1/api-keys", &session).await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let text = listed.to_string();
    assert!(
        !text.contains(&key) && !text.contains("hash"),
        "a key is shown once: {text}"
    );

    let wrong = format!("{}x", &key[..key.len() - 1]);
    assert_eq!(app.get_as("/api/v1/auth/me", &wrong).await.0, 401);
    let response = app
        .call(
            Method::POST,
            "/api/v1/api-keys",
            &key,
            Some(&json!({"name": "chain", "scopes": ["read:servers"]})),
        )
        .await;
    assert_eq!(response.status(), 403, "a key cannot mint keys");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_a_session");
    for (method, path) in [
        (Method::GET, "/api/v1/sessions"),
        (Method::DELETE, "/api/v1/sessions"),
        (Method::GET, "/api/v1/api-keys"),
    ] {
        let response = app.call(method.clone(), path, &key, None).await;
        assert_eq!(response.status(), 403, "{method} {path} with a key");
    }

    let path = format!("/api/v1/api-keys/{}", created["id"].as_str().unwrap());
    let response = app.call(Method::DELETE, &path, &session, None).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked"], true);
    assert!(body["propagation_ms"].is_u64());
    assert_eq!(
        app.get_as("/api/v1/auth/me", &key).await.0,
        401,
        "refused from the next request"
    );
    let kinds: Vec<String> = app.audit_types().await;
    assert!(
        kinds.iter().any(|k| k == "api_key_created")
            && kinds.iter().any(|k| k == "api_key_revoked")
    );
    app.stop().await;
}

#[tokio::test]
async fn scopes_never_exceed_the_creators_rights_and_bad_input_names_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "val", "viewer", PASSWORD).await;
    let viewer = app.login("val", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    for scope in ["write:servers", "read:policies", "admin", "write:users"] {
        let response = app
            .post(
                "/api/v1/api-keys",
                &json!({"name": "k", "scopes": [scope]}),
                Some(&viewer),
            )
            .await;
        assert_eq!(response.status(), 403, "{scope}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "scope_exceeds_rights");
    }
    let response = app
        .post(
            "/api/v1/api-keys",
            &json!({"name": "k", "scopes": ["read:servers"]}),
            Some(&viewer),
        )
        .await;
    assert_eq!(response.status(), 201);
    let invalid = [
        (json!({"name": "", "scopes": ["read:servers"]}), "name"),
        (json!({"name": "k", "scopes": []}), "scopes"),
        (json!({"name": "k", "scopes": ["fly:planes"]}), "scopes"),
        (
            json!({"name": "k", "scopes": ["read:servers"], "expires_in_days": 0}),
            "expires_in_days",
        ),
        (
            json!({"name": "k".repeat(200), "scopes": ["read:servers"]}),
            "name",
        ),
    ];
    for (body, field) in invalid {
        let response = app.post("/api/v1/api-keys", &body, Some(&viewer)).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    let response = app
        .post(
            "/api/v1/api-keys",
            &json!({"name": "admin key", "scopes": ["admin"]}),
            Some(&admin),
        )
        .await;
    assert_eq!(response.status(), 201, "an admin may grant admin");
    let (_, all) = app.get_as("/api/v1/api-keys", &admin).await;
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        2,
        "admins see every key"
    );
    let (_, own) = app.get_as("/api/v1/api-keys", &viewer).await;
    assert_eq!(own["items"].as_array().unwrap().len(), 1);
    let admin_key_id = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "admin key")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{admin_key_id}"),
            &viewer,
            None,
        )
        .await;
    assert_eq!(response.status(), 404, "other users' keys are invisible");
    app.stop().await;
}

/// Logs `username` in and mints an API key from that session; returns (session, key).
async fn key_from_session(
    app: &crate::helpers::TestApp,
    username: &str,
    password: &str,
) -> (String, String) {
    let session = app.login(username, password).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .post(
            "/api/v1/api-keys",
            &json!({"name": "minted", "scopes": ["read:servers"]}),
            Some(&session),
        )
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(app.get_as("/api/v1/auth/me", &key).await.0, 200);
    (session, key)
}

#[tokio::test]
async fn a_new_password_or_role_revokes_every_api_key_of_the_user() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "victim", "operator", PASSWORD)
        .await;

    // Self-service: the victim changes the password a thief knew.
    let (session, key) = key_from_session(&app, "victim", PASSWORD).await;
    let new_password = "a different kettle at dusk";
    let response = app
        .post(
            "/api/v1/auth/password",
            &json!({"current_password": PASSWORD, "new_password": new_password}),
            Some(&session),
        )
        .await;
    assert_eq!(response.status(), 204);
    let (status, body) = app.get_as("/api/v1/auth/me", &key).await;
    assert_eq!(status, 401, "a key minted before the new password: {body}");

    // An admin sets a new password.
    let (_, key) = key_from_session(&app, "victim", new_password).await;
    let admin_password = "an admin chose this one";
    let response = app
        .call(
            Method::PATCH,
            "/api/v1/users/victim",
            &admin,
            Some(&json!({"password": admin_password})),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.get_as("/api/v1/auth/me", &key).await.0, 401);

    // An admin changes the role.
    let (_, key) = key_from_session(&app, "victim", admin_password).await;
    let response = app
        .call(
            Method::PATCH,
            "/api/v1/users/victim",
            &admin,
            Some(&json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.get_as("/api/v1/auth/me", &key).await.0, 401);
    app.stop().await;
}

#[tokio::test]
async fn guessed_api_keys_are_rate_limited_by_address_before_any_lookup() {
    let app = crate::helpers::spawn_app_with(|c| c.rate_limit.authenticated_per_minute = 5).await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        let response = app
            .client
            .get(app.url("/api/v1/servers"))
            .header("x-api-key", format!("sark_guess{i:03}_{}", "x".repeat(40)))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(&statuses[..5], [401; 5], "{statuses:?}");
    assert_eq!(&statuses[5..], [429; 3], "{statuses:?}");
    app.stop().await;
}
