//! Backup and restore with the project's scripts, as docs/disaster-recovery.md runs them:
//! a node with users, sessions, API keys, servers, policies and audit events is backed
//! up while it serves, keeps writing, loses its database, and is restored and started
//! again on what the backup held — with nothing revoked after the backup alive again, and
//! no audit sequence number handed out twice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{SarkProcess, fresh_database, peer_env, poll};

const ADMIN_PASSWORD: &str = "restore drill passphrase, long enough";
const USER_PASSWORD: &str = "violet kettle swims at dawn";

/// Where the drill's database lives.
enum Database {
    Postgres { url: String },
    Sqlite,
}

struct Drill {
    dir: tempfile::TempDir,
    database: Database,
    client: reqwest::Client,
}

impl Drill {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("SARK_HTTP__BIND", "127.0.0.1:0".to_owned()),
            ("SARK_CLUSTER__BIND", "127.0.0.1:0".to_owned()),
            ("SARK_DATA_DIR", self.data_dir().display().to_string()),
            ("SARK_SECRETS__KEY", "5a".repeat(32)),
            ("SARK_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ];
        if let Database::Postgres { url } = &self.database {
            env.push(("SARK_DATABASE__URL", url.clone()));
        }
        env
    }

    async fn start(&self) -> (SarkProcess, SocketAddr) {
        let mut node = SarkProcess::spawn(self.dir.path(), &self.env(), &[]);
        let addr = node.wait_listening().await;
        poll("the node to be ready", Duration::from_secs(60), || async {
            let response = self
                .client
                .get(format!("http://{addr}/health/ready"))
                .send()
                .await
                .ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
        (node, addr)
    }

    /// Runs one of the project's scripts with the node's environment.
    fn script(&self, name: &str, args: &[&std::ffi::OsStr]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name);
        let output = Command::new(script)
            .args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "scripts/{name} failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Destroys the database: dropped and created empty, or the files deleted.
    async fn destroy_database(&self) {
        match &self.database {
            Database::Postgres { url } => {
                let (_, name) = url.rsplit_once('/').unwrap();
                let admin = sqlx::PgPool::connect(&peer_env("TEST_DATABASE_URL"))
                    .await
                    .unwrap();
                for sql in [
                    format!("DROP DATABASE {name} WITH (FORCE)"),
                    format!("CREATE DATABASE {name}"),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&admin)
                        .await
                        .unwrap();
                }
                admin.close().await;
            }
            Database::Sqlite => {
                for suffix in ["", "-wal", "-shm"] {
                    let file = self.data_dir().join(format!("sark.db{suffix}"));
                    let _ = std::fs::remove_file(file);
                }
            }
        }
    }

    /// Rows per table and the last sequence number of every audit chain, read from the
    /// database itself.
    async fn census(&self) -> Census {
        const TABLES: [&str; 6] = [
            "users",
            "sessions",
            "api_keys",
            "servers",
            "policy_versions",
            "audit_logs",
        ];
        let mut rows = BTreeMap::new();
        let mut chains = BTreeMap::new();
        macro_rules! read {
            ($pool:expr) => {{
                let pool = $pool;
                for table in TABLES {
                    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT COUNT(*) FROM {table}"
                    )))
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    rows.insert(table, n);
                }
                let heads: Vec<(String, i64)> =
                    sqlx::query_as("SELECT chain, MAX(seq) FROM audit_logs GROUP BY chain")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                chains.extend(heads);
                pool.close().await;
            }};
        }
        match &self.database {
            Database::Postgres { url } => read!(sqlx::PgPool::connect(url).await.unwrap()),
            Database::Sqlite => read!(
                sqlx::SqlitePool::connect(&format!(
                    "sqlite://{}",
                    self.data_dir().join("sark.db").display()
                ))
                .await
                .unwrap()
            ),
        }
        Census { rows, chains }
    }

    async fn call(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.client.request(method, format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = if token.starts_with("sark_") {
                request.header("x-api-key", token)
            } else {
                request.bearer_auth(token)
            };
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn login(&self, addr: SocketAddr, username: &str, password: &str) -> Value {
        let (status, tokens) = self
            .call(
                addr,
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, 200, "login of {username}: {tokens}");
        tokens
    }

    async fn created(&self, addr: SocketAddr, path: &str, token: &str, body: Value) -> Value {
        let (status, created) = self
            .call(addr, Method::POST, path, Some(token), Some(body))
            .await;
        assert_eq!(status, 201, "POST {path}: {created}");
        created
    }
}

#[derive(Debug)]
struct Census {
    rows: BTreeMap<&'static str, i64>,
    chains: BTreeMap<String, i64>,
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap()
}

async fn run_drill(database: Database) {
    let drill = Drill {
        dir: tempfile::tempdir().unwrap(),
        database,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    let (mut node, addr) = drill.start().await;
    let admin = drill.login(addr, "admin", ADMIN_PASSWORD).await;
    let admin_token = text(&admin["access_token"]).to_owned();
    for (name, role) in [("bob", "operator"), ("carol", "viewer")] {
        let body = json!({"username": name, "email": format!("{name}@example.org"), "role": role, "password": USER_PASSWORD});
        drill
            .created(addr, "/api/v1/users", &admin_token, body)
            .await;
    }
    let bob = drill.login(addr, "bob", USER_PASSWORD).await;
    let key = drill
        .created(
            addr,
            "/api/v1/api-keys",
            &admin_token,
            json!({"name": "deploy bot", "scopes": ["read:servers"]}),
        )
        .await;
    let key_secret = text(&key["key"]).to_owned();
    for name in ["web-1", "web-2"] {
        let body = json!({"name": name, "endpoint": format!("https://{name}.example.org/")});
        drill
            .created(addr, "/api/v1/servers", &admin_token, body)
            .await;
    }
    let form = Form::new().text("name", "backup_probe").part(
        "file",
        Part::bytes(
            b"package sark.backup_probe\n\nallow if input.user.role == \"admin\"\n".to_vec(),
        )
        .file_name("backup_probe.rego"),
    );
    let uploaded = drill
        .client
        .post(format!("http://{addr}/api/v1/policies"))
        .bearer_auth(&admin_token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201, "{:?}", uploaded.text().await);
    let (status, jwks) = drill
        .call(addr, Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(status, 200);

    // The backup, taken while the node serves.
    let backup = drill.dir.path().join("backup");
    let said = drill.script("backup", &[backup.as_os_str()]);
    assert!(said.contains("saved to"), "{said}");
    let at_backup = drill.census().await;

    // Afterwards: a server, a user, and revocations the backup cannot know about.
    drill
        .created(
            addr,
            "/api/v1/servers",
            &admin_token,
            json!({"name": "web-3", "endpoint": "https://web-3.example.org/"}),
        )
        .await;
    let body = json!({"username": "dave", "email": "dave@example.org", "role": "viewer", "password": USER_PASSWORD});
    drill
        .created(addr, "/api/v1/users", &admin_token, body)
        .await;
    let (status, _) = drill
        .call(
            addr,
            Method::POST,
            "/api/v1/auth/logout",
            Some(text(&bob["access_token"])),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = drill
        .call(
            addr,
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", text(&key["id"])),
            Some(&admin_token),
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "key revoked: {status}");
    // A session the backup never saw: its access token must not outlive the restore.
    let carol = drill.login(addr, "carol", USER_PASSWORD).await;
    // Token times are whole seconds, and those of the restore's own second are accepted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // What a SIEM has received by the time the database is lost.
    let delivered = drill.census().await;
    assert!(delivered.rows["audit_logs"] > at_backup.rows["audit_logs"]);
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(30)).await, 0);

    drill.destroy_database().await;
    let said = drill.script(
        "restore",
        &[
            "--sark".as_ref(),
            env!("CARGO_BIN_EXE_sark").as_ref(),
            backup.as_os_str(),
        ],
    );
    assert!(
        said.contains("audit chains continue in generation 1"),
        "{said}"
    );
    let restored = drill.census().await;
    for table in ["users", "servers", "policy_versions"] {
        assert_eq!(
            restored.rows[table], at_backup.rows[table],
            "{table}: the rows of the backup, and only those"
        );
    }
    assert_eq!(restored.rows["sessions"], at_backup.rows["sessions"]);
    assert_eq!(restored.rows["api_keys"], at_backup.rows["api_keys"]);

    let (_node, addr) = drill.start().await;
    // Once the node answers token checks from memory (not from the store), only what it
    // loaded at start-up refuses a token of a session the restored store never held.
    poll("answers from memory", Duration::from_secs(30), || async {
        let (_, detailed) = drill
            .call(addr, Method::GET, "/health/detailed", None, None)
            .await;
        (detailed["cluster"]["local_answers"] == true).then_some(())
    })
    .await;
    // Every credential from before the restore is refused: the logged-out session and
    // the revoked key the backup still held as live, and those it never knew.
    for token in [
        text(&bob["access_token"]),
        text(&admin["access_token"]),
        text(&carol["access_token"]),
        key_secret.as_str(),
    ] {
        let (status, body) = drill
            .call(addr, Method::GET, "/api/v1/auth/me", Some(token), None)
            .await;
        assert_eq!(status, 401, "{body}");
    }
    for refresh in [
        &bob["refresh_token"],
        &admin["refresh_token"],
        &carol["refresh_token"],
    ] {
        let (status, body) = drill
            .call(
                addr,
                Method::POST,
                "/api/v1/auth/refresh",
                None,
                Some(json!({"refresh_token": refresh})),
            )
            .await;
        assert_eq!(status, 401, "{body}");
    }
    // The restored signing keys sign and verify: a new login works, under a key the
    // backup held.
    let again = drill.login(addr, "bob", USER_PASSWORD).await;
    let (status, me) = drill
        .call(
            addr,
            Method::GET,
            "/api/v1/auth/me",
            Some(text(&again["access_token"])),
            None,
        )
        .await;
    assert_eq!(status, 200, "{me}");
    let (_, jwks_after) = drill
        .call(addr, Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(jwks_after["keys"], jwks["keys"]);
    let (status, servers) = drill
        .call(
            addr,
            Method::GET,
            "/api/v1/servers",
            Some(text(&again["access_token"])),
            None,
        )
        .await;
    assert_eq!(status, 200, "{servers}");
    let names: Vec<&str> = servers["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| text(&s["name"]))
        .collect();
    assert_eq!(names, ["web-1", "web-2"]);

    let admin_again = drill.login(addr, "admin", ADMIN_PASSWORD).await;
    let (status, verified) = drill
        .call(
            addr,
            Method::GET,
            "/api/v1/audit/verify",
            Some(text(&admin_again["access_token"])),
            None,
        )
        .await;
    assert_eq!(status, 200, "{verified}");
    assert_eq!(verified["ok"], true, "{verified}");
    // No chain the SIEM knows grew again: what follows the restore is on new chains.
    let after = drill.census().await;
    for (chain, seq) in &after.chains {
        match delivered.chains.get(chain) {
            Some(_) => assert_eq!(
                Some(seq),
                at_backup.chains.get(chain),
                "chain {chain} continued past its backed-up head"
            ),
            None => assert!(chain.ends_with("~1"), "new chain {chain}"),
        }
    }
    assert!(
        after.chains.keys().any(|c| c.ends_with("~1")),
        "{:?}",
        after.chains
    );
}

#[tokio::test]
async fn a_postgres_backup_restores_what_it_held_and_nothing_revoked_since_comes_back() {
    let url = fresh_database("TEST_DATABASE_URL").await;
    run_drill(Database::Postgres { url }).await;
}

#[tokio::test]
async fn a_sqlite_backup_restores_what_it_held_and_nothing_revoked_since_comes_back() {
    run_drill(Database::Sqlite).await;
}
