//! N real `sark` processes on loopback addresses.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::faults::{self, Signal};

/// Where to find the `sark` binary: `CHAOS_SARK_BIN`, else the workspace's target directory.
pub fn sark_binary() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("CHAOS_SARK_BIN") {
        return Ok(PathBuf::from(path));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug/sark");
    if !path.is_file() {
        bail!(
            "{} does not exist: build it (cargo build -p sark) or set CHAOS_SARK_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// One node of the sandbox.
#[derive(Debug)]
pub struct SandboxNode {
    /// The node's name (`node-1`, …).
    pub name: String,
    /// Its loopback address.
    pub ip: Ipv4Addr,
    /// Its HTTP address (stable across restarts).
    pub http: SocketAddr,
    /// Its cluster address (stable across restarts).
    pub cluster: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `SARK_*` variables of this node only, set after the sandbox's.
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// Lines of output kept per node: enough to explain a failure, bounded under load (a node
/// logs one line per request).
const LOG_LINES: usize = 10_000;

impl SandboxNode {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines the node has printed (stdout and stderr, across restarts).
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Settings shared by every node of a sandbox.
#[derive(Clone, Debug, Default)]
pub struct SandboxOptions {
    /// Extra `SARK_*` variables for every node (database URL, secrets key, …).
    pub env: Vec<(String, String)>,
    /// The `sark` binary to run; [`sark_binary`] when unset.
    pub binary: Option<PathBuf>,
}

impl SandboxOptions {
    /// Options with these extra `SARK_*` variables.
    pub fn with_env(env: &[(&str, String)]) -> Self {
        Self {
            env: env
                .iter()
                .map(|(key, value)| ((*key).to_owned(), value.clone()))
                .collect(),
            ..Self::default()
        }
    }
}

/// A fresh database on the suite's PostgreSQL server (`TEST_DATABASE_URL`, set by
/// `scripts/test`), for nodes that share one.
pub fn fresh_postgres_database() -> anyhow::Result<String> {
    let admin = std::env::var("TEST_DATABASE_URL")
        .context("TEST_DATABASE_URL is not set: run the suite with scripts/test")?;
    fresh_database_on(&admin)
}

/// A fresh database on the PostgreSQL server of `admin` (a URL whose user may create
/// databases); returns its URL.
pub fn fresh_database_on(admin: &str) -> anyhow::Result<String> {
    use std::hash::{BuildHasher, Hasher};
    let name = format!(
        "chaos_{:x}",
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    );
    let status = Command::new("psql")
        .args([admin, "-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .context("running psql")?;
    if !status.success() {
        bail!("psql could not create {name}");
    }
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("{admin} has no database name"))?;
    Ok(format!("{base}/{name}"))
}

/// Every audit event of the node at `base` (`http://host:port`), by id, read page by page
/// through `GET /api/v1/audit` with an admin `token`.
pub async fn audit_events(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> anyhow::Result<std::collections::HashMap<String, serde_json::Value>> {
    let mut all = std::collections::HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/audit?limit=500");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = send_json(client.get(url).bearer_auth(token)).await?;
        if status != 200 {
            bail!("audit listing: {status} {page}");
        }
        for item in page["items"].as_array().into_iter().flatten() {
            if let Some(id) = item["id"].as_str() {
                all.insert(id.to_owned(), item.clone());
            }
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            return Ok(all);
        }
    }
}

/// Sends a request and reads the answer's status and JSON body (`null` when it has none).
pub async fn send_json(
    request: reqwest::RequestBuilder,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}

/// Real `sark` processes on 127.0.0.2, 127.0.0.3, …
pub struct ClusterSandbox {
    binary: PathBuf,
    root: tempfile::TempDir,
    options: SandboxOptions,
    nodes: Vec<SandboxNode>,
    client: reqwest::Client,
}

/// Picks a free port on `ip` (the port is released before the node binds it).
pub(crate) fn free_port(ip: Ipv4Addr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(listener.local_addr()?)
}

impl ClusterSandbox {
    /// Starts `n` nodes and waits until each is ready.
    pub async fn start(n: usize, options: SandboxOptions) -> anyhow::Result<Self> {
        let mut sandbox = Self::launch(n, options).await?;
        for i in 0..n {
            sandbox.wait_ready(i, Duration::from_secs(60)).await?;
        }
        Ok(sandbox)
    }

    /// Starts `n` nodes without waiting for them to be ready (a node that cannot join the
    /// cluster its seeds name never is).
    pub async fn launch(n: usize, options: SandboxOptions) -> anyhow::Result<Self> {
        let mut sandbox = Self::allocate(n, options)?;
        for i in 0..n {
            sandbox.spawn(i)?;
        }
        Ok(sandbox)
    }

    /// Gives `slots` nodes their addresses, ports and data directories, starts the first
    /// `running` of them and waits until those are ready. The others stay stopped until
    /// [`Self::start_node`]; every node's seeds name every slot, started or not, as a
    /// headless Service's DNS names every pod.
    pub async fn start_with_slots(
        slots: usize,
        running: usize,
        options: SandboxOptions,
    ) -> anyhow::Result<Self> {
        if running > slots {
            bail!("{running} running nodes of {slots} slots");
        }
        let mut sandbox = Self::allocate(slots, options)?;
        for i in 0..running {
            sandbox.spawn(i)?;
        }
        for i in 0..running {
            sandbox.wait_ready(i, Duration::from_secs(60)).await?;
        }
        Ok(sandbox)
    }

    fn allocate(n: usize, options: SandboxOptions) -> anyhow::Result<Self> {
        let binary = match &options.binary {
            Some(path) => path.clone(),
            None => sark_binary()?,
        };
        let root = tempfile::tempdir()?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let ip = Ipv4Addr::new(127, 0, 0, u8::try_from(i + 2).context("too many nodes")?);
            let data_dir = root.path().join(format!("node-{}", i + 1));
            std::fs::create_dir_all(&data_dir)?;
            nodes.push(SandboxNode {
                name: format!("node-{}", i + 1),
                ip,
                http: free_port(ip)?,
                cluster: free_port(ip)?,
                data_dir,
                env: Vec::new(),
                child: None,
                log: Arc::new(Mutex::new(VecDeque::new())),
            });
        }
        Ok(Self {
            binary,
            root,
            options,
            nodes,
            client,
        })
    }

    /// The cluster cookie every node of the sandbox shares.
    pub fn cookie(&self) -> String {
        format!("sandbox-{}", self.root.path().display())
    }

    /// Sets `key` for node `i` only, from its next start on (over the sandbox's value).
    pub fn set_env(&mut self, i: usize, key: &str, value: &str) {
        let env = &mut self.nodes[i].env;
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }

    /// The nodes.
    pub fn nodes(&self) -> &[SandboxNode] {
        &self.nodes
    }

    /// The sandbox's scratch directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A `sark` command (`serve`, `admin`, …) with exactly the environment node `i` runs
    /// with: its addresses, name and data directory, the sandbox's variables, the node's
    /// own, then the seeds and cookie.
    fn command(&self, i: usize, args: &[&str]) -> anyhow::Result<Command> {
        let node = self.nodes.get(i).ok_or_else(|| anyhow!("no node {i}"))?;
        // Every node knows every other slot as a seed; one cookie for the sandbox.
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.cluster.to_string())
            .collect();
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SARK_HTTP__BIND", node.http.to_string())
            .env("SARK_CLUSTER__BIND", node.cluster.to_string())
            .env("SARK_CLUSTER__NODE_NAME", &node.name)
            .env("SARK_DATA_DIR", &node.data_dir)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .envs(node.env.iter().map(|(k, v)| (k, v)));
        if !seeds.is_empty() {
            command
                .env("SARK_CLUSTER__SEEDS", seeds.join(","))
                .env("SARK_CLUSTER__COOKIE", self.cookie());
        }
        Ok(command)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let mut command = self.command(i, &["serve"])?;
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let node = &mut self.nodes[i];
        capture_output(&mut child, &node.log);
        node.child = Some(child);
        Ok(())
    }

    /// Runs `sark admin ARGS…` with exactly the environment node `i`'s `serve` gets (so a
    /// break-glass command reaches the same database and data directory) and returns its
    /// exit status and output; it is killed after 60 s.
    pub async fn admin(&self, i: usize, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        let mut command = tokio::process::Command::from(self.command(i, &all)?);
        command.kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .map_err(|_| anyhow!("sark admin {args:?} ran for over 60 s"))?
            .with_context(|| format!("running {} admin", self.binary.display()))
    }

    /// Whether node `i` has been started and not stopped or killed since.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.child.is_some())
    }

    /// Polls `/health/ready` of node `i` until it answers 200.
    pub async fn wait_ready(&mut self, i: usize, timeout: Duration) -> anyhow::Result<Duration> {
        let ready = self.wait_all_ready(&[i], Instant::now(), timeout).await?;
        Ok(ready[0])
    }

    /// Polls `/health/ready` of each of `slots` until it answers 200; returns, per slot,
    /// how long after `started` that was.
    async fn wait_all_ready(
        &mut self,
        slots: &[usize],
        started: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut ready: Vec<Option<Duration>> = vec![None; slots.len()];
        loop {
            for (k, &i) in slots.iter().enumerate() {
                if ready[k].is_some() {
                    continue;
                }
                let url = format!("http://{}/health/ready", self.nodes[i].http);
                if let Ok(response) = self.client.get(&url).send().await
                    && response.status() == 200
                {
                    ready[k] = Some(started.elapsed());
                    continue;
                }
                if let Some(child) = self.nodes[i].child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    bail!(
                        "{} exited with {status}: {:?}",
                        self.nodes[i].name,
                        self.nodes[i].log()
                    );
                }
                if started.elapsed() > timeout {
                    bail!(
                        "{} not ready after {timeout:?}: {:?}",
                        self.nodes[i].name,
                        self.nodes[i].log()
                    );
                }
            }
            if ready.iter().all(Option::is_some) {
                return Ok(ready.into_iter().flatten().collect());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a fault signal to node `i`.
    pub fn signal(&self, i: usize, signal: Signal) -> anyhow::Result<()> {
        let pid = self.nodes[i]
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.nodes[i].name))?;
        faults::send(pid, signal)
    }

    /// Kills node `i` with `kill -9` and returns its exit status.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        self.signal(i, Signal::Kill)?;
        self.wait_exit(i, Duration::from_secs(10)).await
    }

    /// Sends `method path` to node `i`, with a bearer `token` and a JSON `body` when given;
    /// returns the status and the JSON body, or status 0 when the node cannot be reached.
    pub async fn request(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .client
            .request(method, format!("http://{}{path}", self.nodes[i].http));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        send_json(request)
            .await
            .unwrap_or((0, serde_json::Value::Null))
    }

    /// Polls every running node's `/api/v1/cluster` (with an admin `token`) until each
    /// sees as many members `up` as there are running nodes; returns how long that took.
    pub async fn wait_formed(&self, token: &str, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            loop {
                let (_, cluster) = send_json(
                    self.client
                        .get(format!("http://{}/api/v1/cluster", node.http))
                        .bearer_auth(token),
                )
                .await
                .unwrap_or((0, serde_json::Value::Null));
                let up = cluster["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["status"] == "up").count());
                if up == running {
                    break;
                }
                if started.elapsed() > within {
                    bail!("{} sees {up} members up: {cluster}", node.name);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(started.elapsed())
    }

    /// Stops node `i` with SIGTERM (a graceful leave) and returns its exit status.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        self.signal(i, Signal::Term)?;
        self.wait_exit(i, Duration::from_secs(60)).await
    }

    /// Starts node `i` again (same address, same data directory) and waits until it is
    /// ready; returns how long that took.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<Duration> {
        self.start_node(i).await
    }

    /// Starts slot `i` (one never started, or stopped or killed since) and waits until it
    /// is ready; returns how long that took.
    pub async fn start_node(&mut self, i: usize) -> anyhow::Result<Duration> {
        let ready = self.start_nodes(&[i]).await?;
        Ok(ready[0])
    }

    /// Starts every one of `slots` at once (none may be running) and waits until each is
    /// ready; returns, per slot, how long after their start that was.
    pub async fn start_nodes(&mut self, slots: &[usize]) -> anyhow::Result<Vec<Duration>> {
        for &i in slots {
            let node = self.nodes.get(i).ok_or_else(|| anyhow!("no node {i}"))?;
            if node.child.is_some() {
                bail!("{} is still running", node.name);
            }
        }
        let started = Instant::now();
        for &i in slots {
            self.spawn(i)?;
        }
        self.wait_all_ready(slots, started, Duration::from_secs(60))
            .await
    }

    async fn wait_exit(&mut self, i: usize, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        let node = &mut self.nodes[i];
        let child = node
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("{} is not running", node.name))?;
        loop {
            if let Some(status) = child.try_wait()? {
                node.child = None;
                return Ok(status);
            }
            if started.elapsed() > timeout {
                bail!("{} did not exit within {timeout:?}", node.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GETs a path on node `i` and returns the status and JSON body.
    pub async fn get_json(&self, i: usize, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        send_json(
            self.client
                .get(format!("http://{}{path}", self.nodes[i].http)),
        )
        .await
    }

    /// The bootstrap admin password node `i` generated on its first start.
    pub fn bootstrap_password(&self, i: usize) -> anyhow::Result<String> {
        let file = self.nodes[i].data_dir.join("bootstrap-admin-password");
        let password = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(password.trim().to_owned())
    }

    /// Logs in on node `i` and returns the access token.
    pub async fn login(&self, i: usize, username: &str, password: &str) -> anyhow::Result<String> {
        let tokens = self.log_in(i, username, password).await?;
        tokens["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("login of {username} on node {i} without a token: {tokens}"))
    }

    /// Logs `username` in on node `i`; returns the whole token response (access and
    /// refresh tokens, session id).
    pub async fn log_in(
        &self,
        i: usize,
        username: &str,
        password: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let body = serde_json::json!({"username": username, "password": password});
        let (status, tokens) = self
            .request(
                i,
                reqwest::Method::POST,
                "/api/v1/auth/login",
                None,
                Some(&body),
            )
            .await;
        if status != 200 {
            bail!("login of {username} on node {i}: {status} {tokens}");
        }
        Ok(tokens)
    }

    /// GETs `path` on node `i` with the bearer `token`; status 0 when it cannot be reached.
    pub async fn get_as(&self, i: usize, path: &str, token: &str) -> (u16, serde_json::Value) {
        self.request(i, reqwest::Method::GET, path, Some(token), None)
            .await
    }

    /// Of the `acknowledged` server writes (the load's `w…` names), how many node `i` does
    /// not list, and how many lack their `server_registered` audit event.
    pub async fn lost_writes(
        &self,
        i: usize,
        admin: &str,
        acknowledged: &[String],
    ) -> anyhow::Result<(usize, usize)> {
        let mut stored = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/api/v1/servers?limit=500&name_prefix=w".to_owned();
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.get_as(i, &path, admin).await;
            if status != 200 {
                bail!("server listing: {status} {page}");
            }
            for item in page["items"].as_array().into_iter().flatten() {
                if let Some(name) = item["name"].as_str() {
                    stored.insert(name.to_owned());
                }
            }
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        let base = format!("http://{}", self.nodes[i].http);
        let audited: std::collections::HashSet<String> = audit_events(&self.client, &base, admin)
            .await?
            .values()
            .filter(|e| e["event_type"] == "server_registered")
            .filter_map(|e| e["resource"].as_str().map(str::to_owned))
            .collect();
        Ok((
            acknowledged.iter().filter(|n| !stored.contains(*n)).count(),
            acknowledged
                .iter()
                .filter(|n| !audited.contains(&format!("server:{n}")))
                .count(),
        ))
    }

    /// The member (by name) that owns `session`, as node `i` lists the sessions of the
    /// holder of `token`.
    pub async fn session_owner(&self, i: usize, token: &str, session: &str) -> Option<String> {
        let (_, listed) = self.get_as(i, "/api/v1/sessions?limit=500", token).await;
        listed["items"]
            .as_array()?
            .iter()
            .find(|s| s["session_id"] == session)
            .and_then(|s| s["node_id"].as_str().map(str::to_owned))
    }

    /// Stops every running node with SIGTERM and returns their exit statuses.
    pub async fn shutdown(mut self) -> anyhow::Result<Vec<ExitStatus>> {
        let mut statuses = Vec::new();
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some() {
                self.signal(i, Signal::Term)?;
                statuses.push(self.wait_exit(i, Duration::from_secs(60)).await?);
            }
        }
        Ok(statuses)
    }
}

/// Copies `child`'s stdout and stderr, line by line, into `log` (the last [`LOG_LINES`]
/// lines), from threads of their own.
pub(crate) fn capture_output(child: &mut Child, log: &Arc<Mutex<VecDeque<String>>>) {
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Ok(mut log) = log.lock() {
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            }
        });
    }
}

impl Drop for ClusterSandbox {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
