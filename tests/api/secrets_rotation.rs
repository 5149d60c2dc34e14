//! Replacing the secrets key of a node on SQLite, as docs/operations.md ("Replacing the
//! secrets key") runs it: the node restarted with the new key sealing and the old one
//! previous, `sark admin rotate-secrets-key` while it serves, and the node restarted with
//! the new key alone. What the old key sealed or hashed keeps working; the old key alone
//! is refused. (The `secrets_key_rotation` chaos scenario runs it on a cluster on
//! PostgreSQL behind HAProxy.)

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{SarkProcess, oathtool, poll, run_to_exit};

const ADMIN_PASSWORD: &str = "rotation drill passphrase, long enough";
const USER_PASSWORD: &str = "violet kettle swims at dawn";

fn env(dir: &Path, key: &str, previous: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SARK_HTTP__BIND", "127.0.0.1:0".to_owned()),
        ("SARK_DATA_DIR", dir.join("data").display().to_string()),
        ("SARK_SECRETS__KEY", key.to_owned()),
        ("SARK_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
    ];
    if let Some(previous) = previous {
        env.push(("SARK_SECRETS__PREVIOUS_KEYS", previous.to_owned()));
    }
    env
}

async fn start(dir: &Path, env: &[(&'static str, String)]) -> (SarkProcess, SocketAddr) {
    let mut node = SarkProcess::spawn(dir, env, &[]);
    let addr = node.wait_listening().await;
    poll("the node to be ready", Duration::from_secs(60), || async {
        let response = reqwest::get(format!("http://{addr}/health/ready"))
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    (node, addr)
}

async fn stop(mut node: SarkProcess) {
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);
}

async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn login(addr: SocketAddr, username: &str, password: &str) -> Value {
    let (status, body) = call(
        addr,
        Method::POST,
        "/api/v1/auth/login",
        None,
        json!({"username": username, "password": password}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// `GET path` with a bearer `token`.
async fn get(addr: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    call(addr, Method::GET, path, Some(token), Value::Null).await
}

/// The second factor of a fresh login of `username` with `code`.
async fn log_in_with_code(addr: SocketAddr, username: &str, code: &str) -> (u16, Value) {
    let challenge = login(addr, username, USER_PASSWORD).await;
    assert_eq!(challenge["mfa_required"], true, "{challenge}");
    call(
        addr,
        Method::POST,
        "/api/v1/auth/mfa/verify",
        None,
        json!({"challenge_id": challenge["challenge_id"], "code": code}),
    )
    .await
}

/// `sark admin ARGS` with `env`; its exit status and what it printed on either stream.
fn admin(dir: &Path, env: &[(&'static str, String)], args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sark"))
        .arg("admin")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[allow(clippy::disallowed_methods)]
fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_key_is_replaced_and_what_it_sealed_and_hashed_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = ("4b".repeat(32), "6c".repeat(32));
    let (node, addr) = start(dir.path(), &env(dir.path(), &old, None)).await;
    let admin_token = login(addr, "admin", ADMIN_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, user) = call(
        addr,
        Method::POST,
        "/api/v1/users",
        Some(&admin_token),
        json!({"username": "tess", "email": "tess@example.org", "role": "viewer", "password": USER_PASSWORD}),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    let access = login(addr, "tess", USER_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, enrolment) = call(
        addr,
        Method::POST,
        "/api/v1/auth/mfa/totp/enroll",
        Some(&access),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{enrolment}");
    let secret = enrolment["secret"].as_str().unwrap().to_owned();
    let (status, confirmed) = call(
        addr,
        Method::POST,
        "/api/v1/auth/mfa/totp/confirm",
        Some(&access),
        json!({"code": oathtool(&secret, now())}),
    )
    .await;
    assert_eq!(status, 200, "{confirmed}");
    let recovery_code = confirmed["recovery_codes"][0].as_str().unwrap().to_owned();
    stop(node).await;

    let rotating = env(dir.path(), &new, Some(&old));
    let (node, addr) = start(dir.path(), &rotating).await;
    let (ok, said) = admin(dir.path(), &rotating, &["rotate-secrets-key"]);
    assert!(ok, "{said}");
    for part in [
        "sealed again with key",
        "SigningKey 1",
        "Totp 1",
        "1 TOTP secrets",
    ] {
        assert!(said.contains(part), "{part}: {said}");
    }
    let (status, me) = get(addr, "/api/v1/auth/me", &admin_token).await;
    assert_eq!(
        status, 200,
        "the node serves on while its store is sealed again: {me}"
    );
    let (ok, said) = admin(dir.path(), &rotating, &["rotate-secrets-key"]);
    assert!(
        ok && said.contains("nothing is sealed with a previous key"),
        "{said}"
    );
    stop(node).await;

    let (code, stderr) = run_to_exit(dir.path(), &env(dir.path(), &old, None));
    assert_ne!(code, 0);
    assert!(
        stderr.contains("`secrets.key`") && stderr.contains("different secrets key"),
        "the old key alone is refused: {stderr}"
    );

    let (node, addr) = start(dir.path(), &env(dir.path(), &new, None)).await;
    let (status, me) = get(addr, "/api/v1/auth/me", &admin_token).await;
    assert_eq!(status, 200, "a token signed before verifies: {me}");
    let (status, tokens) = log_in_with_code(addr, "tess", &oathtool(&secret, now() + 30)).await;
    assert_eq!(
        status, 200,
        "the TOTP secret opens with the new key: {tokens}"
    );
    let (status, tokens) = log_in_with_code(addr, "tess", &recovery_code).await;
    assert_eq!(status, 200, "a recovery code made before works: {tokens}");
    let fresh = login(addr, "admin", ADMIN_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, verification) = get(addr, "/api/v1/audit/verify", &fresh).await;
    assert_eq!(
        (status, &verification["ok"]),
        (200, &json!(true)),
        "{verification}"
    );
    let (status, events) = get(addr, "/api/v1/audit?event_type=secrets_key_rotated", &fresh).await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(
        events["items"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );
    stop(node).await;
}
