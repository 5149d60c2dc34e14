//! Test harness: in-process nodes on port 0 (`spawn_app`) and real `sark` processes
//! (`SarkProcess`), against the peers that `scripts/test` starts.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sark::config::{Config, Secret};
use serde_json::Value;

/// A peer URL from the environment that `scripts/test` prepares; a clear failure otherwise.
pub fn peer_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test, which starts the peers")
    })
}

/// A loopback port nothing listens on at the moment.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The configuration in the first TOML block of `docs/<doc>`, with each `(from, to)` of
/// `replacements` applied, loaded from a 0600 file in `dir` as `sark serve --config`
/// would load it: the docs' examples are the ones the tests run.
pub fn documented_config(doc: &str, replacements: &[(&str, &str)], dir: &Path) -> Config {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(doc))
            .unwrap();
    let mut toml = text
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("a toml block in docs/{doc}"))
        .to_owned();
    for (from, to) in replacements {
        assert!(toml.contains(from), "docs/{doc} has no `{from}`");
        toml = toml.replace(from, to);
    }
    let file = dir.join("sark.toml");
    std::fs::write(&file, toml).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Config::load(Some(&file), [], serde_json::json!({}))
        .unwrap_or_else(|e| panic!("the configuration of docs/{doc} loads: {e}"))
}

/// The error of loading a configuration from the `SARK_*` variables `vars` alone.
pub fn config_error(vars: &[(&str, &str)]) -> String {
    let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    match Config::load(None, env, serde_json::json!({})) {
        Ok(_) => panic!("{vars:?} was accepted"),
        Err(err) => err.to_string(),
    }
}

/// Polls `check` until it returns `Some`, failing after `timeout`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates an empty database on the test PostgreSQL server named by `admin_env`.
pub async fn fresh_database(admin_env: &str) -> String {
    let admin_url = peer_env(admin_env);
    let name = format!("sark_api_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// An in-process node serving on an ephemeral port.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub server: Option<sark::Server>,
    /// Keeps the data directory until the app is dropped.
    _data_dir: tempfile::TempDir,
}

impl TestApp {
    /// Polls `/health/ready` until the node reports ready (its background loads finished).
    pub async fn wait_ready(&self) {
        poll("the node to be ready", Duration::from_secs(60), || async {
            self.client
                .get(self.url("/health/ready"))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn node(&self) -> &Arc<sark::core::Core> {
        self.server.as_ref().expect("server running").node()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request failed")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// The node's newest `limit` audit events, read from its store.
    pub async fn audit_events(&self, limit: u32) -> Vec<sark::store::ChainedEvent> {
        self.node()
            .store
            .list_audit(&sark::store::AuditQuery {
                limit,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// The types of the node's newest 100 audit events.
    pub async fn audit_types(&self) -> Vec<String> {
        self.audit_events(100)
            .await
            .into_iter()
            .map(|e| e.event.event_type)
            .collect()
    }

    /// The node's Prometheus text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// The bootstrap admin's password in test nodes.
    pub const ADMIN_PASSWORD: &'static str = "bootstrap-admin-password-for-tests";

    /// POSTs JSON, with a bearer token if given.
    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request failed")
    }

    /// A request with a bearer token.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("request failed")
    }

    /// GET with a bearer token; status and JSON body.
    pub async fn get_as(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self.call(reqwest::Method::GET, path, token, None).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Logs in and returns the token response, failing the test otherwise.
    pub async fn login(&self, username: &str, password: &str) -> Value {
        let response = self
            .post(
                "/api/v1/auth/login",
                &serde_json::json!({"username": username, "password": password}),
                None,
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "login of {username} failed: {body}");
        body
    }

    /// The admin's access token.
    pub async fn admin_token(&self) -> String {
        self.login("admin", Self::ADMIN_PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Creates a user through the API as admin and returns the user JSON.
    pub async fn create_user(
        &self,
        admin: &str,
        username: &str,
        role: &str,
        password: &str,
    ) -> Value {
        let body = serde_json::json!({
            "username": username,
            "email": format!("{username}@example.org"),
            "role": role,
            "password": password,
        });
        let response = self.post("/api/v1/users", &body, Some(admin)).await;
        let status = response.status();
        let user: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "creating {username}: {user}");
        user
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
    }

    /// Stops the node and hands over its data directory, for a look at what it left.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
        self._data_dir
    }
}

/// A node on a fresh PostgreSQL database of the test server.
pub async fn spawn_pg_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let url = fresh_database("TEST_DATABASE_URL").await;
    let app = spawn_app_with(|c| {
        c.database.url = Some(Secret::new(url));
        adjust(c);
    })
    .await;
    app.wait_ready().await;
    app
}

/// The code an independent TOTP implementation (oathtool) computes for `secret` at `unix`.
pub fn oathtool(secret: &str, unix: i64) -> String {
    let output = Command::new("oathtool")
        .args(["--totp", "-b", secret, &format!("--now=@{unix}")])
        .output()
        .expect("oathtool is installed by scripts/install-deps");
    assert!(
        output.status.success(),
        "oathtool failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A node on SQLite in a fresh data directory.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A node whose test configuration `adjust` may change.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    sark::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.bootstrap_admin_password = Some(Secret::new(TestApp::ADMIN_PASSWORD));
    adjust(&mut config);
    let server = sark::Server::start(config).await.expect("node starts");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    TestApp {
        addr: server.addr(),
        client,
        server: Some(server),
        _data_dir: dir,
    }
}

/// A real `sark serve` process whose stdout lines are collected.
pub struct SarkProcess {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl SarkProcess {
    /// Starts `sark serve` in `cwd` with `env` (and nothing else from the environment but PATH).
    pub fn spawn(cwd: &Path, env: &[(&str, String)], args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sark"));
        command
            .arg("serve")
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn sark");
        let lines = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for the "listening" log line and returns the HTTP address.
    pub async fn wait_listening(&mut self) -> SocketAddr {
        let lines = self.lines.clone();
        let stderr = self.stderr.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = lines.lock().unwrap().iter().find_map(|line| {
                let json: Value = serde_json::from_str(line).ok()?;
                (json["message"] == "listening").then(|| json["addr"].as_str()?.parse().ok())?
            });
            if let Some(addr) = found {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sark exited with {status} before listening; stderr: {:?}",
                    stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sark did not start listening; stdout: {:?}",
                lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "sark did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// All stdout so far.
    pub fn stdout(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for SarkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Runs `sark serve` to completion (for configurations that must be refused).
pub fn run_to_exit(cwd: &Path, env: &[(&str, String)]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sark"));
    command
        .arg("serve")
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The data directory's file, for assertions.
pub fn data_file(dir: &Path, name: &str) -> PathBuf {
    dir.join("sark-data").join(name)
}

/// Runs `sark admin --data-dir DIR ARGS…` with an empty environment and expects it to
/// succeed; returns what it printed.
pub fn sark_admin(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sark"))
        .args(["admin", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "sark admin {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
