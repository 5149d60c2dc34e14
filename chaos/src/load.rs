//! A mixed load on every node of a cluster: logins, refreshes, evaluations, `me` lookups,
//! server writes, policy uploads and revocations, each recorded in a [`History`].
//!
//! Workers pick a node at random for every request, so requests keep reaching nodes that
//! are down or paused (and are recorded as failed): the error rate during a fault is what a
//! client without retries would see. After every acknowledged revocation the worker tries
//! the revoked token on every node. A single base (a load balancer's) sends everything
//! through it; node index 0 in the history then means "through the balancer".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::history::History;

/// What the workers need to know of the cluster.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port` of each node (stable across restarts), or of one load balancer
    /// in front of them all.
    pub bases: Vec<String>,
    /// The admin's password.
    pub password: String,
    /// The authorization bundle's source, uploaded again (as a new version) now and then.
    pub policy_source: String,
}

/// Running load workers.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` workers.
    pub fn start(target: Target, workers: usize, history: Arc<History>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|id| {
                let worker = Worker {
                    id,
                    target: target.clone(),
                    history: history.clone(),
                    client: reqwest::Client::builder()
                        .timeout(Duration::from_secs(5))
                        .build()
                        .unwrap_or_default(),
                    rng: 0x9e37_79b9_7f4a_7c15
                        ^ (id as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d),
                    session: None,
                    sent: 0,
                };
                tokio::spawn(worker.run(stop.clone()))
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops the workers once their current request is answered.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            let _ = worker.await;
        }
    }
}

/// How long a worker waits after a failed request (no answer or a 5xx) before its next:
/// a balancer with no server up refuses at once, and workers would otherwise spin on it.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(20);

struct Worker {
    id: usize,
    target: Target,
    history: Arc<History>,
    client: reqwest::Client,
    rng: u64,
    session: Option<(String, String)>,
    sent: u64,
}

impl Worker {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic per worker, enough to spread requests.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn node(&mut self) -> usize {
        (self.next() % self.target.bases.len() as u64) as usize
    }

    /// Sends `request` (a `kind` request to `node`) and records it in the history; status
    /// 0 when there was no answer.
    async fn send(
        &self,
        kind: &'static str,
        node: usize,
        request: reqwest::RequestBuilder,
    ) -> (u16, Value) {
        let started = self.history.now();
        let (status, body) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        };
        self.history.record(kind, node, started, status);
        if status == 0 || status >= 500 {
            let code = body["error"]["code"].as_str().unwrap_or("no_answer");
            // The message tells apart failures that share a code (a fenced write refused
            // before writing, or stored but unconfirmed); shown with a failed scenario.
            eprintln!(
                "load: {kind} on node {node} answered {status} {code}: {}",
                body["error"]["message"].as_str().unwrap_or("")
            );
            self.history.failure_code(kind, status, code);
            tokio::time::sleep(PAUSE_AFTER_FAILURE).await;
        }
        (status, body)
    }

    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let node = self.node();
            let Some((access, refresh)) = self.session.clone() else {
                self.login(node).await;
                continue;
            };
            self.sent += 1;
            match self.next() % 100 {
                0..30 => self.evaluate(node, &access).await,
                30..45 => self.me(node, &access).await,
                45..60 => self.refresh(node, &refresh).await,
                60..85 => self.write_server(node, &access).await,
                85..95 => self.revoke(node, &access).await,
                _ => self.upload_policy(node, &access).await,
            }
        }
    }

    async fn login(&mut self, node: usize) {
        let (status, body) = self
            .send(
                "login",
                node,
                self.client
                    .post(format!("{}/api/v1/auth/login", self.target.bases[node]))
                    .json(&json!({"username": "admin", "password": self.target.password})),
            )
            .await;
        if status == 200 {
            self.session = tokens(&body);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn evaluate(&mut self, node: usize, access: &str) {
        let started = self.history.now();
        let (status, body) = self
            .send(
                "evaluate",
                node,
                self.client
                    .post(format!("{}/api/v1/authz/evaluate", self.target.bases[node]))
                    .bearer_auth(access)
                    .json(&json!({"resource": "servers", "action": "read"})),
            )
            .await;
        if let (200, Some(version)) = (status, body["policy_version"].as_i64()) {
            self.history.decision(version, started);
        }
        self.forget_on_401(status);
    }

    async fn me(&mut self, node: usize, access: &str) {
        let (status, _) = self
            .send(
                "me",
                node,
                self.client
                    .get(format!("{}/api/v1/auth/me", self.target.bases[node]))
                    .bearer_auth(access),
            )
            .await;
        self.forget_on_401(status);
    }

    async fn refresh(&mut self, node: usize, refresh: &str) {
        let (status, body) = self
            .send(
                "refresh",
                node,
                self.client
                    .post(format!("{}/api/v1/auth/refresh", self.target.bases[node]))
                    .json(&json!({"refresh_token": refresh})),
            )
            .await;
        if status == 200 {
            self.session = tokens(&body);
        }
        self.forget_on_401(status);
    }

    async fn write_server(&mut self, node: usize, access: &str) {
        let name = format!("w{}-{}", self.id, self.sent);
        let (status, _) = self
            .send(
                "server_write",
                node,
                self.client
                    .post(format!("{}/api/v1/servers", self.target.bases[node]))
                    .bearer_auth(access)
                    .json(&json!({"name": name, "endpoint": "https://chaos.example.org"})),
            )
            .await;
        if status == 201 {
            self.history.acknowledged_server(name);
        }
        self.forget_on_401(status);
    }

    async fn revoke(&mut self, node: usize, access: &str) {
        let (status, body) = self
            .send(
                "revoke",
                node,
                self.client
                    .post(format!("{}/api/v1/auth/logout", self.target.bases[node]))
                    .bearer_auth(access),
            )
            .await;
        if status != 200 {
            self.forget_on_401(status);
            return;
        }
        self.session = None;
        if let Some(ms) = body["propagation_ms"].as_f64() {
            self.history.propagation(ms);
        }
        // Acknowledged: from now on no node may accept the token.
        for (i, base) in self.target.bases.iter().enumerate() {
            let started = self.history.now();
            let (status, me) = self
                .send(
                    "revoked_check",
                    i,
                    self.client
                        .get(format!("{base}/api/v1/auth/me"))
                        .bearer_auth(access),
                )
                .await;
            if status == 200 {
                self.history.revoked_accepted(format!(
                    "at {:.2} s node {i} accepted a token of session {} revoked via node {node} ({body})",
                    started.as_secs_f64(),
                    me["session_id"]
                ));
            }
        }
    }

    async fn upload_policy(&mut self, node: usize, access: &str) {
        let form = Form::new()
            .text("name", "authorization")
            .text("description", format!("chaos load, worker {}", self.id))
            .part(
                "file",
                Part::bytes(
                    format!(
                        "{}\n# chaos {} {}\n",
                        self.target.policy_source, self.id, self.sent
                    )
                    .into_bytes(),
                )
                .file_name("authorization.rego"),
            );
        let (status, body) = self
            .send(
                "policy_upload",
                node,
                self.client
                    .post(format!("{}/api/v1/policies", self.target.bases[node]))
                    .bearer_auth(access)
                    .multipart(form),
            )
            .await;
        if let (201, Some(version)) = (status, body["version"].as_i64()) {
            self.history
                .policy_acknowledged(version, self.history.now());
            if let Some(ms) = body["propagation_ms"].as_f64() {
                self.history.propagation(ms);
            }
        }
        self.forget_on_401(status);
    }

    /// A session that was refused (revoked by a reuse after a lost answer, say) is dropped;
    /// the next request logs in again.
    fn forget_on_401(&mut self, status: u16) {
        if status == 401 {
            self.session = None;
        }
    }
}

fn tokens(body: &Value) -> Option<(String, String)> {
    Some((
        body["access_token"].as_str()?.to_owned(),
        body["refresh_token"].as_str()?.to_owned(),
    ))
}
