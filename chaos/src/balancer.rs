//! A real HAProxy in front of the sandbox's nodes, as a Kubernetes Service stands in front
//! of pods: round robin over the nodes whose `GET /health/ready` answers 200, checked every
//! 500 ms (out after two failed checks, back after two good ones).
//!
//! Requests that reached a node are never retried (HAProxy retries only connections that
//! failed), so a client sees every failure a node causes. Which servers are in rotation is
//! read from HAProxy's stats socket (`show stat`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sandbox::{ClusterSandbox, capture_output, free_port};

/// The HAProxy binary: `CHAOS_HAPROXY_BIN`, else `haproxy` on the `PATH`, else Debian's
/// `/usr/sbin/haproxy`.
pub fn haproxy_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CHAOS_HAPROXY_BIN") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"))
}

/// The backend every node is a server of.
const BACKEND: &str = "nodes";

/// HAProxy's stats socket, and the order of the servers it reports on (one per sandbox
/// slot); cheap to clone, so a monitor can poll it from a task of its own.
#[derive(Clone, Debug)]
pub struct StatsSocket {
    path: PathBuf,
    servers: Vec<String>,
}

impl StatsSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The servers' names, in slot order (`node-1`, …).
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Sends one command and reads the whole answer (HAProxy closes the connection after
    /// answering a command outside interactive mode).
    pub async fn command(&self, command: &str) -> anyhow::Result<String> {
        let exchange = async {
            let mut stream = tokio::net::UnixStream::connect(&self.path).await?;
            stream.write_all(format!("{command}\n").as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            anyhow::Ok(answer)
        };
        tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .map_err(|_| anyhow!("{} did not answer {command:?}", self.path.display()))?
            .with_context(|| format!("{command:?} on {}", self.path.display()))
    }

    /// Each server's `status` as `show stat` reports it (`UP`, `DOWN`, `UP 1/2` when one
    /// check failed, `DOWN 1/2` when one passed, `MAINT`, …), in slot order; with it, the
    /// server's last check (`check_status`, `INI` before any ran).
    pub async fn statuses(&self) -> anyhow::Result<Vec<ServerStatus>> {
        let csv = self.command("show stat").await?;
        let mut lines = csv.lines();
        let header = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .ok_or_else(|| anyhow!("show stat answered without a header: {csv:?}"))?;
        let column = |name: &str| {
            header
                .split(',')
                .position(|c| c == name)
                .ok_or_else(|| anyhow!("show stat has no {name} column: {header}"))
        };
        let (pxname, svname, status, check) = (
            column("pxname")?,
            column("svname")?,
            column("status")?,
            column("check_status")?,
        );
        let mut found: Vec<Option<ServerStatus>> = vec![None; self.servers.len()];
        for line in lines {
            let fields: Vec<&str> = line.split(',').collect();
            if fields.get(pxname) != Some(&BACKEND) {
                continue;
            }
            let Some(slot) = fields
                .get(svname)
                .and_then(|name| self.servers.iter().position(|s| s == name))
            else {
                continue;
            };
            found[slot] = Some(ServerStatus {
                status: fields.get(status).copied().unwrap_or_default().to_owned(),
                last_check: fields.get(check).copied().unwrap_or_default().to_owned(),
            });
        }
        found
            .into_iter()
            .zip(&self.servers)
            .map(|(s, name)| s.ok_or_else(|| anyhow!("show stat does not list {name}: {csv}")))
            .collect()
    }

    /// Whether each server (in slot order) is in rotation: HAProxy sends it requests.
    pub async fn in_rotation(&self) -> anyhow::Result<Vec<bool>> {
        Ok(self
            .statuses()
            .await?
            .iter()
            .map(ServerStatus::in_rotation)
            .collect())
    }
}

/// One server's state in HAProxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// `UP`, `DOWN`, `UP 1/2`, `DOWN 1/2`, `MAINT`, `no check`, …
    pub status: String,
    /// The last check's result (`L7OK`, `L7STS`, `L4CON`, …; `INI` before the first,
    /// prefixed with `* ` while one runs).
    pub last_check: String,
}

impl ServerStatus {
    /// Whether HAProxy sends it requests: `UP`, also while one check failed (`UP 1/2`), or
    /// a server without checks.
    pub fn in_rotation(&self) -> bool {
        self.status.starts_with("UP") || self.status == "no check"
    }

    /// Whether at least one check has run.
    pub fn checked(&self) -> bool {
        !self.last_check.is_empty() && !self.last_check.contains("INI")
    }
}

/// HAProxy's configuration for `servers` (name and `ip:port` of each node), listening on
/// `port` of 127.0.0.1, with its stats socket at `socket`.
fn config(port: u16, socket: &Path, servers: &[(String, String)]) -> String {
    let mut cfg = format!(
        "\
global
    stats socket {socket} level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # As long as the readiness monitor waits for an answer.
    timeout check 1s
    # Only connections that failed are tried again, elsewhere: a request a node received
    # is never sent twice.
    retries 3
    retry-on conn-failure
    option redispatch

frontend sark
    bind 127.0.0.1:{port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
    option httpchk GET /health/ready
    http-reuse safe
    default-server inter 500ms fall 2 rise 2
",
        socket = socket.display(),
    );
    for (name, address) in servers {
        // Writing into a String cannot fail.
        let _ = writeln!(cfg, "    server {name} {address} check");
    }
    cfg
}

/// A running HAProxy in front of a sandbox's nodes; killed when dropped.
pub struct Balancer {
    child: Child,
    port: u16,
    config: PathBuf,
    stats: StatsSocket,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Balancer {
    /// Starts HAProxy with one server per slot of `sandbox` (a slot whose node is not
    /// running is simply down, as a pod without endpoints), its configuration and stats
    /// socket in the sandbox's scratch directory, and waits until its rotation matches the
    /// nodes' readiness: every running node that answers `/health/ready` with 200 is up,
    /// every other one down, each having been checked.
    pub async fn start(sandbox: &ClusterSandbox) -> anyhow::Result<Self> {
        let dir = sandbox.root().join("haproxy");
        std::fs::create_dir_all(&dir)?;
        let port = free_port(std::net::Ipv4Addr::LOCALHOST)?.port();
        let socket = dir.join("haproxy.sock");
        let servers: Vec<(String, String)> = sandbox
            .nodes()
            .iter()
            .map(|n| (n.name.clone(), n.http.to_string()))
            .collect();
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config(port, &socket, &servers))?;
        let binary = haproxy_binary();
        let mut child = Command::new(&binary)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        capture_output(&mut child, &log);
        let mut balancer = Self {
            child,
            port,
            config: config_path,
            stats: StatsSocket {
                path: socket,
                servers: servers.into_iter().map(|(name, _)| name).collect(),
            },
            log,
        };
        balancer.settle(sandbox, Duration::from_secs(30)).await?;
        Ok(balancer)
    }

    /// Waits until every server has been checked and is in rotation exactly when its node
    /// runs and is ready (HAProxy counts servers up before their first checks).
    async fn settle(&mut self, sandbox: &ClusterSandbox, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("haproxy exited with {status}: {:?}", self.log());
            }
            let mut expected = Vec::with_capacity(sandbox.nodes().len());
            for (i, node) in sandbox.nodes().iter().enumerate() {
                let ready = sandbox.is_running(i)
                    && client
                        .get(format!("http://{}/health/ready", node.http))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200);
                expected.push(ready);
            }
            let statuses = self.stats.statuses().await;
            if let Ok(statuses) = &statuses
                && statuses.iter().all(ServerStatus::checked)
                && statuses
                    .iter()
                    .map(ServerStatus::in_rotation)
                    .eq(expected.iter().copied())
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "haproxy's rotation {statuses:?} does not match the nodes' readiness \
                     {expected:?} after {timeout:?}: {:?}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>`: where clients send requests.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The frontend's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The configuration file HAProxy runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The stats socket, to poll from elsewhere.
    pub fn stats(&self) -> StatsSocket {
        self.stats.clone()
    }

    /// Each server's state, in slot order.
    pub async fn statuses(&self) -> anyhow::Result<Vec<ServerStatus>> {
        self.stats.statuses().await
    }

    /// Whether each server (in slot order) is in rotation.
    pub async fn in_rotation(&self) -> anyhow::Result<Vec<bool>> {
        self.stats.in_rotation().await
    }

    /// Polls the rotation every 50 ms until `wanted` holds for it; returns how long that
    /// took, or fails after `timeout` with the last rotation seen.
    pub async fn wait_in_rotation(
        &self,
        wanted: impl Fn(&[bool]) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let rotation = self.in_rotation().await;
            if let Ok(rotation) = &rotation
                && wanted(rotation)
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!(
                    "rotation {rotation:?} not as wanted after {timeout:?}: {:?}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines HAProxy printed (warnings and server state changes).
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
