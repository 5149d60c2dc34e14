//! A whole session of a real node, logging at debug level: none of the secrets used may
//! appear in its output.

use std::time::Duration;

use serde_json::{Value, json};

use sark_chaos::receivers::{DatadogReceiver, HecOptions, HecReceiver};

use crate::helpers::{SarkProcess, oathtool, poll};

#[tokio::test]
async fn no_password_token_key_or_secret_reaches_the_logs() {
    let cwd = tempfile::tempdir().unwrap();
    let admin_password = "Logs-Never-See-This-Root-Pw";
    // SIEM credentials: one accepted (deliveries are logged), one refused (retries are).
    let hec_token = "Logs-Never-See-This-HEC-Token";
    let dd_key = "Logs-Never-See-This-Datadog-Key";
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let hec = HecReceiver::start(
        any,
        HecOptions {
            token: hec_token.into(),
            ack: true,
        },
    )
    .await
    .unwrap();
    let intake = DatadogReceiver::start(any, "another-key").await.unwrap();
    let env = vec![
        ("SARK_HTTP__BIND", "127.0.0.1:0".to_string()),
        ("SARK_CLUSTER__BIND", "127.0.0.1:0".to_string()),
        ("SARK_BOOTSTRAP_ADMIN_PASSWORD", admin_password.to_string()),
        ("SARK_LOG__LEVEL", "debug".to_string()),
        ("SARK_SIEM__SPLUNK__URL", hec.url()),
        ("SARK_SIEM__SPLUNK__TOKEN", hec_token.to_string()),
        ("SARK_SIEM__DATADOG__URL", intake.url()),
        ("SARK_SIEM__DATADOG__API_KEY", dd_key.to_string()),
    ];
    let mut node = SarkProcess::spawn(cwd.path(), &env, &[]);
    let addr = node.wait_listening().await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let post = |path: &str, body: Value, token: Option<&str>| {
        let mut request = client.post(url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let mut secrets: Vec<String> = vec![admin_password.into(), hec_token.into(), dd_key.into()];

    let login = post(
        "/api/v1/auth/login",
        json!({"username": "admin", "password": admin_password}),
        None,
    )
    .await;
    let admin = login["access_token"].as_str().unwrap().to_owned();
    secrets.push(admin.clone());
    secrets.push(login["refresh_token"].as_str().unwrap().into());

    let user_password = "Logs-Never-See-This-User-Pw";
    post("/api/v1/users", json!({"username": "quinn", "email": "q@example.org", "role": "operator", "password": user_password}), Some(&admin)).await;
    secrets.push(user_password.into());
    let login = post(
        "/api/v1/auth/login",
        json!({"username": "quinn", "password": user_password}),
        None,
    )
    .await;
    let access = login["access_token"].as_str().unwrap().to_owned();
    let refreshed = post(
        "/api/v1/auth/refresh",
        json!({"refresh_token": login["refresh_token"]}),
        None,
    )
    .await;
    secrets.push(access.clone());
    secrets.push(login["refresh_token"].as_str().unwrap().into());
    secrets.push(refreshed["refresh_token"].as_str().unwrap().into());
    secrets.push(refreshed["access_token"].as_str().unwrap().into());
    let access = refreshed["access_token"].as_str().unwrap().to_owned();

    let key = post(
        "/api/v1/api-keys",
        json!({"name": "k", "scopes": ["read:servers"]}),
        Some(&access),
    )
    .await;
    let key = key["key"].as_str().unwrap().to_owned();
    secrets.push(key.clone());
    let me = client
        .get(url("/api/v1/auth/me"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);

    let enrollment = post("/api/v1/auth/mfa/totp/enroll", json!({}), Some(&access)).await;
    let totp_secret = enrollment["secret"].as_str().unwrap().to_owned();
    #[allow(clippy::disallowed_methods)]
    let now = chrono::Utc::now().timestamp();
    let confirm_code = oathtool(&totp_secret, now);
    let confirmed = post(
        "/api/v1/auth/mfa/totp/confirm",
        json!({"code": confirm_code}),
        Some(&access),
    )
    .await;
    secrets.push(totp_secret);
    for code in confirmed["recovery_codes"].as_array().unwrap() {
        secrets.push(code.as_str().unwrap().into());
    }
    let challenge = post(
        "/api/v1/auth/login",
        json!({"username": "quinn", "password": user_password}),
        None,
    )
    .await;
    let verified = post(
        "/api/v1/auth/mfa/verify",
        json!({"challenge_id": challenge["challenge_id"], "code": confirmed["recovery_codes"][0]}),
        None,
    )
    .await;
    secrets.push(verified["access_token"].as_str().unwrap().into());
    let new_password = "Logs-Never-See-The-New-Pw";
    let changed = client
        .post(url("/api/v1/auth/password"))
        .bearer_auth(verified["access_token"].as_str().unwrap())
        .json(&json!({"current_password": user_password, "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 204);
    secrets.push(new_password.into());
    post(
        "/api/v1/auth/login",
        json!({"username": "quinn", "password": "a wrong guess for the logs"}),
        None,
    )
    .await;
    secrets.push("a wrong guess for the logs".into());
    poll(
        "events at the collector",
        Duration::from_secs(30),
        || async { (hec.received().len() > 10).then_some(()) },
    )
    .await;
    poll(
        "a refused Datadog attempt",
        Duration::from_secs(30),
        || async { (intake.received().refused() > 0).then_some(()) },
    )
    .await;

    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);
    let output = format!(
        "{}\n{}",
        node.stdout(),
        node.stderr.lock().unwrap().join("\n")
    );
    assert!(output.lines().count() > 50, "the node logged: {output}");
    for secret in &secrets {
        assert!(
            !output.contains(secret.as_str()),
            "a secret reached the logs: {secret}"
        );
    }
    assert!(
        !output.contains("$argon2id$"),
        "a password hash reached the logs"
    );

    // Nor the audit trail.
    let db = cwd.path().join("sark-data/sark.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let details: Vec<String> = sqlx::query_scalar("SELECT details FROM audit_logs")
        .fetch_all(&pool)
        .await
        .unwrap();
    let audit = details.join("\n");
    assert!(
        details.len() > 10,
        "only {} audit events: {audit}",
        details.len()
    );
    for secret in &secrets {
        assert!(
            !audit.contains(secret.as_str()),
            "a secret reached the audit log: {secret}"
        );
    }
}
