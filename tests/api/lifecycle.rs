//! Real `sark serve` processes: first start, restarts, configuration errors, racing
//! first starts, and graceful shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;

use crate::helpers::{SarkProcess, data_file, fresh_database, peer_env, poll, run_to_exit};

/// Binds every listener to an ephemeral port (the defaults are fixed ports).
fn ephemeral() -> Vec<(&'static str, String)> {
    vec![
        ("SARK_HTTP__BIND", "127.0.0.1:0".into()),
        ("SARK_CLUSTER__BIND", "127.0.0.1:0".into()),
    ]
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn wait_ready(addr: std::net::SocketAddr) {
    let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = last.clone();
    let ready = tokio::time::timeout(
        Duration::from_secs(60),
        poll("the node to be ready", Duration::from_secs(120), || {
            let seen = seen.clone();
            async move {
                let response = reqwest::get(format!("http://{addr}/health/ready"))
                    .await
                    .ok()?;
                let status = response.status();
                *seen.lock().unwrap() = response.text().await.unwrap_or_default();
                (status == 200).then_some(())
            }
        }),
    )
    .await;
    assert!(
        ready.is_ok(),
        "node at {addr} not ready after 60 s; last answer: {}",
        last.lock().unwrap()
    );
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

async fn admin_hash(db: &std::path::Path) -> Vec<String> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let rows = sqlx::query("SELECT password_hash FROM users WHERE username = 'admin'")
        .fetch_all(&pool)
        .await
        .unwrap();
    let hashes = rows
        .iter()
        .map(|r| r.get::<String, _>("password_hash"))
        .collect();
    pool.close().await;
    hashes
}

#[tokio::test]
async fn the_embedded_default_starts_without_configuration_and_restarts_idempotently() {
    let cwd = tempfile::tempdir().unwrap();
    let mut node = SarkProcess::spawn(cwd.path(), &ephemeral(), &[]);
    let addr = node.wait_listening().await;
    wait_ready(addr).await;
    let (_, detailed) = get_json(addr, "/health/detailed").await;
    assert_eq!(detailed["status"], "healthy", "{detailed}");
    assert_eq!(detailed["storage"]["backend"], "sqlite");

    let db = data_file(cwd.path(), "sark.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    pool.close().await;
    assert_eq!(mode(&cwd.path().join("sark-data")), 0o700);

    let key = data_file(cwd.path(), "secrets.key");
    assert_eq!(mode(&key), 0o600);
    let password_file = data_file(cwd.path(), "bootstrap-admin-password");
    assert_eq!(mode(&password_file), 0o600);
    let password = std::fs::read_to_string(&password_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(password.len() >= 20 && password.chars().all(|c| c.is_ascii_alphanumeric()));
    let hashes = admin_hash(&db).await;
    assert_eq!(hashes.len(), 1);
    assert!(hashes[0].starts_with("$argon2id$"));
    assert!(sark::idp::password::verify_password(&password, &hashes[0]));

    // One JSON access-log line per request, carrying the request id; never the password.
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/health?probe=1"))
        .header("x-request-id", "lifecycle-probe")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let access = poll("the access-log line", Duration::from_secs(5), || {
        let lines = node.lines.clone();
        async move {
            lines.lock().unwrap().iter().find_map(|l| {
                let json: Value = serde_json::from_str(l).ok()?;
                (json["request_id"] == "lifecycle-probe").then_some(json)
            })
        }
    })
    .await;
    assert_eq!(access["route"], "/health");
    assert_eq!(access["path"], "/health", "query strings are not logged");
    assert_eq!(access["status"], 200);
    assert_eq!(access["method"], "GET");
    let stdout = node.stdout();
    assert!(
        stdout.contains("sark-data/bootstrap-admin-password"),
        "the password file's path is printed"
    );
    assert!(
        !stdout.contains(&password),
        "the generated password was logged"
    );
    for line in stdout.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }

    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);

    let key_before = std::fs::read(&key).unwrap();
    let mut again = SarkProcess::spawn(cwd.path(), &ephemeral(), &[]);
    let addr = again.wait_listening().await;
    wait_ready(addr).await;
    assert_eq!(
        std::fs::read(&key).unwrap(),
        key_before,
        "the key is reused"
    );
    assert_eq!(
        std::fs::read_to_string(&password_file).unwrap().trim(),
        password,
        "the password is written once"
    );
    assert_eq!(admin_hash(&db).await, hashes, "the admin is created once");
    assert!(!again.stdout().contains("created the bootstrap admin"));
    again.signal("TERM");
    assert_eq!(again.wait_exit(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn a_configured_bootstrap_password_is_used_and_never_written_or_logged() {
    let cwd = tempfile::tempdir().unwrap();
    let password = "Configured-Bootstrap-Pw-7731";
    let mut env = ephemeral();
    env.push(("SARK_BOOTSTRAP_ADMIN_PASSWORD", password.into()));
    let mut node = SarkProcess::spawn(cwd.path(), &env, &[]);
    let addr = node.wait_listening().await;
    wait_ready(addr).await;
    assert!(!data_file(cwd.path(), "bootstrap-admin-password").exists());
    let hashes = admin_hash(&data_file(cwd.path(), "sark.db")).await;
    assert!(sark::idp::password::verify_password(password, &hashes[0]));
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);
    assert!(!node.stdout().contains(password));
    assert!(!node.stderr.lock().unwrap().join("\n").contains(password));
}

#[tokio::test]
async fn invalid_configuration_exits_nonzero_naming_the_key() {
    let cwd = tempfile::tempdir().unwrap();
    let file = cwd.path().join("sark.toml");
    std::fs::write(&file, "[http]\nbind = \"127.0.0.1:0\"\nbody_limit = 5\n").unwrap();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("SARK_HTTP__BIND", "not-an-address".into())],
            "http.bind",
        ),
        (
            vec![("SARK_DATABASE__URL", "mysql://db/sark".into())],
            "database.url",
        ),
        (
            vec![("SARK_HTTP__CLIENT_IP_HEADER", "x-real-ip".into())],
            "http.client_ip_header",
        ),
        (
            vec![
                ("SARK_CLUSTER__LEASE_SECONDS", "10".into()),
                ("SARK_CLUSTER__FORGET_AFTER_SECONDS", "5".into()),
            ],
            "cluster.forget_after_seconds",
        ),
        (
            vec![("SARK_RATE_LIMIT__UNAUTHENTICATED_PER_MINUTE", "-3".into())],
            "rate_limit.unauthenticated_per_minute",
        ),
        (
            vec![("SARK_SECRETS__KEY", "too-short".into())],
            "secrets.key",
        ),
        (
            vec![("SARK_HTTP__TLS_CERT_FILE", "/nonexistent/cert.pem".into())],
            "http.tls_key_file",
        ),
        (
            vec![("SARK_CLUSTER__SEEDS", "127.0.0.2:7400".into())],
            "cluster.cookie",
        ),
        (
            vec![
                (
                    "SARK_SIEM__SPLUNK__URL",
                    "http://splunk.example.org:8088".into(),
                ),
                ("SARK_SIEM__SPLUNK__TOKEN", "hec-token".into()),
            ],
            "siem.splunk.url",
        ),
        (
            vec![(
                "SARK_SIEM__SPLUNK__URL",
                "https://splunk.example.org:8088".into(),
            )],
            "token",
        ),
        (
            vec![
                (
                    "SARK_SIEM__DATADOG__URL",
                    "https://http-intake.logs.datadoghq.eu".into(),
                ),
                ("SARK_SIEM__DATADOG__API_KEY", "dd-key".into()),
                ("SARK_SIEM__DATADOG__CA_FILE", "/nonexistent/ca.pem".into()),
            ],
            "siem.datadog.ca_file",
        ),
        (
            vec![("SARK_SIEM__BATCH_SIZE", "0".into())],
            "siem.batch_size",
        ),
        (
            vec![("SARK_CLUSTER__TLS_CERT_FILE", "/etc/sark/node.pem".into())],
            "cluster.tls_cert_file",
        ),
        (
            vec![(
                "SARK_CLUSTER__PROTOCOL_VERSION",
                (sark_cluster::wire::PROTOCOL_VERSION + 1).to_string(),
            )],
            "cluster.protocol_version",
        ),
        (
            vec![(
                "SARK_CLUSTER__PROTOCOL_VERSION",
                (sark_cluster::wire::PROTOCOL_VERSION - 2).to_string(),
            )],
            "cluster.protocol_version",
        ),
        (
            vec![(
                "SARK_CLUSTER__TLS_CERT_FILE",
                concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").into(),
            )],
            "cluster.tls_key_file",
        ),
    ];
    for (env, key) in cases {
        let (code, stderr) = run_to_exit(cwd.path(), &env);
        assert_eq!(code, 2, "{env:?}: {stderr}");
        assert!(
            stderr.contains(key),
            "{env:?}: `{stderr}` does not name {key}"
        );
    }
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sark"));
    let output = command
        .args(["serve", "--config"])
        .arg(&file)
        .current_dir(cwd.path())
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("body_limit"), "{stderr}");
}

#[tokio::test]
async fn postgres_credentials_that_are_refused_stop_the_node_naming_the_key() {
    let cwd = tempfile::tempdir().unwrap();
    let url = peer_env("TEST_DATABASE_URL").replace(":sarkpw@", ":wrong-password@");
    let mut env = ephemeral();
    env.push(("SARK_DATABASE__URL", url));
    env.push(("SARK_SECRETS__KEY", hex::encode([3u8; 32])));
    let mut node = SarkProcess::spawn(cwd.path(), &env, &[]);
    let code = node.wait_exit(Duration::from_secs(60)).await;
    assert_ne!(code, 0);
    let stderr = node.stderr.lock().unwrap().join("\n");
    assert!(stderr.contains("database.url"), "{stderr}");
    assert!(
        !stderr.contains("wrong-password") && !node.stdout().contains("wrong-password"),
        "the password leaked"
    );
}

#[tokio::test]
async fn nodes_starting_together_on_one_postgres_database_bootstrap_once() {
    let url = fresh_database("TEST_DATABASE_URL").await;
    let key = hex::encode([7u8; 32]);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<SarkProcess> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let mut env = ephemeral();
            env.push(("SARK_DATABASE__URL", url.clone()));
            env.push(("SARK_SECRETS__KEY", key.clone()));
            env.push(("SARK_CLUSTER__NODE_NAME", format!("race-{i}")));
            SarkProcess::spawn(dir.path(), &env, &[])
        })
        .collect();
    for node in &mut nodes {
        let addr = node.wait_listening().await;
        wait_ready(addr).await;
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE username = 'admin'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(admins, 1);
    let versions: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, active_version FROM policy_bundles ORDER BY name")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        [
            ("authorization".to_string(), 1),
            ("rate_limiting".to_string(), 1)
        ]
    );
    let written: usize = dirs
        .iter()
        .filter(|d| data_file(d.path(), "bootstrap-admin-password").exists())
        .count();
    assert_eq!(
        written, 1,
        "exactly the node that created the admin wrote its password"
    );

    // A node with another secrets key is refused rather than silently unable to decrypt.
    let other = tempfile::tempdir().unwrap();
    let mut env = ephemeral();
    env.push(("SARK_DATABASE__URL", url.clone()));
    env.push(("SARK_SECRETS__KEY", hex::encode([8u8; 32])));
    let mut wrong = SarkProcess::spawn(other.path(), &env, &[]);
    assert_ne!(wrong.wait_exit(Duration::from_secs(60)).await, 0);
    assert!(
        wrong
            .stderr
            .lock()
            .unwrap()
            .join("\n")
            .contains("secrets.key")
    );
    for mut node in nodes {
        node.signal("TERM");
        assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);
    }
    pool.close().await;
}

#[tokio::test]
async fn nodes_starting_together_on_one_sqlite_data_directory_bootstrap_once() {
    let cwd = tempfile::tempdir().unwrap();
    let mut nodes: Vec<SarkProcess> = (0..3)
        .map(|_| SarkProcess::spawn(cwd.path(), &ephemeral(), &[]))
        .collect();
    for node in &mut nodes {
        let addr = node.wait_listening().await;
        wait_ready(addr).await;
    }
    let hashes = admin_hash(&data_file(cwd.path(), "sark.db")).await;
    assert_eq!(hashes.len(), 1);
    let password =
        std::fs::read_to_string(data_file(cwd.path(), "bootstrap-admin-password")).unwrap();
    assert!(sark::idp::password::verify_password(
        password.trim(),
        &hashes[0]
    ));
    for mut node in nodes {
        node.signal("TERM");
        assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let url = fresh_database("TEST_DATABASE_URL").await;
    let cwd = tempfile::tempdir().unwrap();
    let mut env = ephemeral();
    env.push(("SARK_DATABASE__URL", url.clone()));
    env.push(("SARK_SECRETS__KEY", hex::encode([5u8; 32])));
    let mut node = SarkProcess::spawn(cwd.path(), &env, &[]);
    let addr = node.wait_listening().await;
    wait_ready(addr).await;

    // Hold a lock that /health/detailed's server count must wait for: that request is
    // then in flight, inside a handler, when the signal arrives.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE servers IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let in_flight =
        tokio::spawn(async move { reqwest::get(format!("http://{addr}/health/detailed")).await });
    poll(
        "the request to wait on the lock",
        Duration::from_secs(10),
        || {
            let pool = pool.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE NOT l.granted AND a.application_name = 'sark'",
                )
                .fetch_one(&pool)
                .await
                .ok()?;
                (waiting > 0).then_some(())
            }
        },
    )
    .await;
    node.signal("TERM");
    poll(
        "the listener to stop accepting",
        Duration::from_secs(10),
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "the node exited before its in-flight request finished"
    );
    blocker.commit().await.unwrap();
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(
        body["metrics"]["total_servers"], 0,
        "the handler waited out the lock: {body}"
    );
    assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);
    pool.close().await;
}

#[tokio::test]
async fn single_nodes_with_default_cluster_settings_open_no_cluster_port_and_run_side_by_side() {
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Only the HTTP port is moved: the cluster settings stay at their defaults.
    let env = vec![("SARK_HTTP__BIND", "127.0.0.1:0".to_owned())];
    let mut first = SarkProcess::spawn(first_dir.path(), &env, &[]);
    let mut second = SarkProcess::spawn(second_dir.path(), &env, &[]);
    for node in [&mut first, &mut second] {
        let addr = node.wait_listening().await;
        wait_ready(addr).await;
        let listening = listening_ports(node.child.id());
        assert_eq!(
            listening,
            [addr.port()],
            "a single node listens on its HTTP port only"
        );
    }
    for mut node in [first, second] {
        node.signal("TERM");
        assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);
        assert!(!node.stdout().contains("panicked"), "{}", node.stdout());
    }
}

/// The TCP ports process `pid` listens on, read from /proc.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN; field 9 is the socket's inode.
            if fields.get(3) == Some(&"0A") && fields.get(9).is_some_and(|i| inodes.contains(*i)) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}

#[tokio::test]
async fn a_taken_port_stops_start_up_with_one_line_naming_the_key_and_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (key, env) in [
        (
            "http.bind",
            vec![
                ("SARK_HTTP__BIND", addr.clone()),
                ("SARK_CLUSTER__BIND", "127.0.0.1:0".to_owned()),
            ],
        ),
        (
            "cluster.bind",
            vec![
                ("SARK_HTTP__BIND", "127.0.0.1:0".to_owned()),
                ("SARK_CLUSTER__BIND", addr.clone()),
            ],
        ),
    ] {
        let cwd = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let (code, stderr) = run_to_exit(cwd.path(), &env);
        assert_ne!(code, 0, "{key}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{key}: one line, not {stderr}");
        assert!(
            lines[0].contains(key) && lines[0].contains(&addr),
            "{key}: `{}` names the key and the address",
            lines[0]
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{key}: no retry loop"
        );
    }
}

#[tokio::test]
async fn sigterm_fails_readiness_at_once_keeps_serving_through_the_delay_and_closes_connections() {
    let cwd = tempfile::tempdir().unwrap();
    let mut env = ephemeral();
    env.push(("SARK_HTTP__SHUTDOWN_DELAY_SECONDS", "3".into()));
    let mut node = SarkProcess::spawn(cwd.path(), &env, &[]);
    let addr = node.wait_listening().await;
    wait_ready(addr).await;
    let client = reqwest::Client::new();
    let before = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert!(before.headers().get("connection").is_none());
    let signalled = std::time::Instant::now();
    node.signal("TERM");
    let (status, body) = poll("readiness to fail", Duration::from_secs(2), || async move {
        let (status, body) = get_json(addr, "/health/ready").await;
        (status == 503).then_some((status, body))
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        body["failing"],
        serde_json::json!(["shutting_down"]),
        "{body}"
    );
    assert!(signalled.elapsed() < Duration::from_secs(2));
    // Still serving, and telling each client to close its connection.
    let during = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(during.status(), 200);
    assert_eq!(
        during.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "served through the whole delay"
    );
}
