//! `balancer` scenarios: the nodes behind a real HAProxy (`src/balancer.rs`), as pods behind
//! a Kubernetes Service, under a mixed load sent through it, while the cluster changes:
//!
//! - `scale_up_and_down`: two nodes join a cluster of three at once and leave again with
//!   SIGTERM; no request through the balancer fails and the three never leave rotation;
//! - `rolling_restart`: five nodes stopped with SIGTERM and started again one after another;
//! - `unclean_loss`: three of five nodes killed with SIGKILL one after another, each
//!   forgotten by the survivors (`SARK_CLUSTER__FORGET_AFTER_SECONDS`) before the next, so
//!   the survivors keep a majority and stay ready;
//! - `lone_survivor`: the other of two nodes killed; the survivor is unready and may not
//!   forget it alone, until `sark admin forget-member` does; then the dead node rejoins;
//! - `secrets_key_rotation`: the secrets key replaced on three nodes with three rolling
//!   restarts and `sark admin rotate-secrets-key` while they serve.
//!
//! A readiness monitor (`src/readiness.rs`) records when each node was unready and out of
//! rotation. Each scenario writes the load's report, the monitor's summary and its own
//! figures to `$CHAOS_REPORT_DIR` (default `target/chaos-reports`) as `<scenario>.json` and
//! `<scenario>.txt`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sark_chaos::balancer::Balancer;
use sark_chaos::history::{Failures, FaultWindow, History, Report};
use sark_chaos::load::{Load, Target};
use sark_chaos::readiness::{ReadinessMonitor, ReadinessSummary};
use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions, fresh_postgres_database};

const HEARTBEAT_MS: u64 = 200;
const LEASE_SECONDS: u64 = 2;
const FORGET_AFTER_SECONDS: u64 = 4;
/// Longer than HAProxy takes to see a node unready (two checks 500 ms apart), so a stopping
/// node is out of rotation before it stops serving.
const SHUTDOWN_DELAY_SECONDS: u64 = 2;
const ADMIN_PASSWORD: &str = "chaos root passphrase, long enough";
const WORKERS: usize = 6;
/// Revocations during joins, graceful leaves and restarts answer within this (p99).
const REVOCATION_P99: Duration = Duration::from_secs(1);
/// A joining node is ready within 2 s of its database answering; from its process start,
/// with a margin for a debug build on a busy machine, within this.
const JOIN_READY_WITHIN: Duration = Duration::from_secs(4);

fn options() -> SandboxOptions {
    SandboxOptions::with_env(&[
        ("SARK_DATABASE__URL", fresh_postgres_database().unwrap()),
        ("SARK_SECRETS__KEY", "5e".repeat(32)),
        ("SARK_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ("SARK_CLUSTER__HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
        ("SARK_CLUSTER__LEASE_SECONDS", LEASE_SECONDS.to_string()),
        (
            "SARK_CLUSTER__FORGET_AFTER_SECONDS",
            FORGET_AFTER_SECONDS.to_string(),
        ),
        (
            "SARK_HTTP__SHUTDOWN_DELAY_SECONDS",
            SHUTDOWN_DELAY_SECONDS.to_string(),
        ),
        (
            "SARK_RATE_LIMIT__UNAUTHENTICATED_PER_MINUTE",
            "1000000".to_owned(),
        ),
        (
            "SARK_RATE_LIMIT__AUTHENTICATED_PER_MINUTE",
            "1000000".to_owned(),
        ),
    ])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A cluster behind a balancer, under load, watched by a readiness monitor.
struct Scenario {
    name: &'static str,
    sandbox: ClusterSandbox,
    balancer: Balancer,
    history: Arc<History>,
    monitor: ReadinessMonitor,
    load: Load,
    client: reqwest::Client,
    admin: String,
    figures: BTreeMap<String, Value>,
}

/// What a scenario's run left to assert on.
struct Finished {
    report: Report,
    readiness: ReadinessSummary,
    /// Every request of the run through the balancer, and those that failed.
    failures: Failures,
    sandbox: ClusterSandbox,
    /// Kept alive until the end of the test, so the sandbox's nodes stop behind it.
    _balancer: Balancer,
}

impl Scenario {
    /// `slots` nodes, the first `running` started and formed; the balancer in front of all
    /// slots; the monitor and the load through the balancer started.
    async fn start(name: &'static str, slots: usize, running: usize) -> Self {
        let sandbox = ClusterSandbox::start_with_slots(slots, running, options())
            .await
            .unwrap();
        let admin = sandbox.login(0, "admin", ADMIN_PASSWORD).await.unwrap();
        sandbox
            .wait_formed(&admin, Duration::from_secs(LEASE_SECONDS * 15))
            .await
            .unwrap();
        let balancer = Balancer::start(&sandbox).await.unwrap();
        let history = Arc::new(History::new());
        let monitor = ReadinessMonitor::start(&sandbox, Some(&balancer), history.clone()).unwrap();
        let target = Target {
            bases: vec![balancer.base()],
            password: ADMIN_PASSWORD.to_owned(),
            policy_source: std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../policies/authorization/authorization.rego"
            ))
            .unwrap(),
        };
        let load = Load::start(target, WORKERS, history.clone());
        Self {
            name,
            sandbox,
            balancer,
            history,
            monitor,
            load,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            admin,
            figures: BTreeMap::new(),
        }
    }

    /// Lets the load run for `seconds` with nothing changing.
    async fn calm(&self, seconds: f64) {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    }

    fn figure(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.insert(key.to_owned(), value.into());
    }

    fn window(&self, name: &str, from: Duration, figures: &[(&str, f64)]) {
        self.history.fault(FaultWindow {
            name: name.to_owned(),
            from,
            until: self.history.now(),
            figures: figures.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        });
    }

    fn name_of(&self, i: usize) -> String {
        self.sandbox.nodes()[i].name.clone()
    }

    /// A node that runs, for the checks at the end.
    fn running_node(&self) -> usize {
        (0..self.sandbox.nodes().len())
            .find(|&i| self.sandbox.is_running(i))
            .expect("a node runs")
    }

    /// Logs the admin in through the balancer.
    async fn login_through_balancer(&self) -> (u16, Value) {
        let request = self
            .client
            .post(format!("{}/api/v1/auth/login", self.balancer.base()))
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}));
        sark_chaos::sandbox::send_json(request)
            .await
            .unwrap_or((0, Value::Null))
    }

    /// The members node `i` lists (name and status), or `None` while it does not answer.
    async fn members(&self, i: usize) -> Option<Vec<(String, String)>> {
        let (status, cluster) = self.sandbox.get_as(i, "/api/v1/cluster", &self.admin).await;
        if status != 200 {
            return None;
        }
        Some(
            cluster["members"]
                .as_array()?
                .iter()
                .map(|m| {
                    (
                        m["node_id"].as_str().unwrap_or_default().to_owned(),
                        m["status"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        )
    }

    /// Polls every running node's member list until none lists `name`; returns how long
    /// that took.
    async fn wait_forgotten(&self, name: &str, within: Duration) -> Duration {
        let started = Instant::now();
        for i in (0..self.sandbox.nodes().len()).filter(|&i| self.sandbox.is_running(i)) {
            loop {
                let members = self.members(i).await;
                if members
                    .as_ref()
                    .is_some_and(|m| m.iter().all(|(n, _)| n != name))
                {
                    break;
                }
                assert!(
                    started.elapsed() < within,
                    "node-{} still lists {name} after {within:?}: {members:?}",
                    i + 1
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        started.elapsed()
    }

    /// Polls node `i`'s `/health/ready` until `wanted` holds for its status; returns how
    /// long that took, failing after `within`.
    async fn until_ready_status(
        &self,
        i: usize,
        wanted: impl Fn(u16) -> bool,
        within: Duration,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let (status, body) = self
                .sandbox
                .get_json(i, "/health/ready")
                .await
                .unwrap_or((0, Value::Null));
            if wanted(status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "node-{} readiness stayed {status} {body} for {within:?}",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Restarts every node with SIGTERM, one after another, with `env` changed, each back
    /// in the balancer's rotation before the next stops; returns each node's stop, time to
    /// ready, downtime and time back in rotation (ms), by name.
    async fn roll(
        &mut self,
        step: &str,
        env: &[(&str, &str)],
    ) -> Vec<(String, [(&'static str, f64); 4])> {
        let mut timings = Vec::new();
        for i in 0..self.sandbox.nodes().len() {
            let from = self.history.now();
            let began = Instant::now();
            let status = self.sandbox.stop(i).await.unwrap();
            assert!(status.success(), "node-{} exited {status:?}", i + 1);
            let stopped = began.elapsed();
            for (key, value) in env {
                self.sandbox.set_env(i, key, value);
            }
            let ready = self.sandbox.restart(i).await.unwrap();
            let down = began.elapsed();
            self.balancer
                .wait_in_rotation(|r| r[i], Duration::from_secs(10))
                .await
                .unwrap();
            let back = began.elapsed();
            let name = self.name_of(i);
            let figures = [
                ("stop_ms", ms(stopped)),
                ("time_to_ready_ms", ms(ready)),
                ("downtime_ms", ms(down)),
                ("back_in_rotation_ms", ms(back)),
            ];
            self.window(&format!("{step} {name}"), from, &figures);
            timings.push((name, figures));
        }
        timings
    }

    /// Stops the load and the monitor, counts acknowledged writes and audit events that
    /// are missing, writes the report and prints its summary.
    async fn finish(self) -> Finished {
        let node = self.running_node();
        self.load.stop().await;
        let readiness = self.monitor.stop().await;
        let end = self.history.now();
        let failures = self.history.failures_between(Duration::ZERO, end);
        let admin = self
            .sandbox
            .login(node, "admin", ADMIN_PASSWORD)
            .await
            .unwrap();
        let (lost_writes, lost_events) = self
            .sandbox
            .lost_writes(node, &admin, &self.history.acknowledged_servers())
            .await
            .unwrap();
        let mut report = self.history.report(self.name, lost_writes, lost_events);
        report.0["readiness"] = readiness.to_json();
        report.0["figures"] = json!(self.figures);
        report.0["through_balancer"] = json!({
            "requests": failures.requests,
            "failed": failures.failed,
        });
        let dir = sark_chaos::history::report_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let json_path = dir.join(format!("{}.json", self.name));
        std::fs::write(&json_path, serde_json::to_vec_pretty(&report.0).unwrap()).unwrap();
        let paragraph = paragraph(self.name, &report, &readiness, failures, &self.figures);
        let text = format!(
            "{paragraph}\n\n{}{}figures: {}\n",
            report.summary(),
            readiness.text(),
            serde_json::to_string_pretty(&self.figures).unwrap()
        );
        std::fs::write(dir.join(format!("{}.txt", self.name)), &text).unwrap();
        println!("{text}report: {}", json_path.display());
        Finished {
            report,
            readiness,
            failures,
            sandbox: self.sandbox,
            _balancer: self.balancer,
        }
    }
}

/// The one-paragraph summary: failures through the balancer, revocation latency, the
/// scenario's figures and each node's unready and out-of-rotation time.
fn paragraph(
    name: &str,
    report: &Report,
    readiness: &ReadinessSummary,
    failures: Failures,
    figures: &BTreeMap<String, Value>,
) -> String {
    let latency = &report.0["revocation_latency_ms"];
    let figures: Vec<String> = figures.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let nodes: Vec<String> = readiness
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{} unready {:.2} s in {} intervals, out of rotation {:.2} s in {}",
                n.name,
                n.unready_total_s,
                n.unready.len(),
                n.out_of_rotation_total_s,
                n.out_of_rotation.len()
            )
        })
        .collect();
    format!(
        "{name}: {} of {} requests through the balancer failed ({:.3} %); revocation latency p50 {} ms, p99 {} ms, max {} ms over {}; {}; {}.",
        failures.failed,
        failures.requests,
        100.0 * failures.failed as f64 / failures.requests.max(1) as f64,
        latency["p50"],
        latency["p99"],
        latency["max"],
        latency["count"],
        figures.join(", "),
        nodes.join("; "),
    )
}

impl Finished {
    /// Asserts that no revoked credential was accepted and no decision was stale, and
    /// that no acknowledged write or its audit event was lost.
    fn assert_invariants(&self) {
        assert_eq!(
            self.report.broken_invariants(),
            [],
            "{}",
            self.report.summary()
        );
    }

    fn failure_rate(&self) -> f64 {
        self.failures.failed as f64 / self.failures.requests.max(1) as f64
    }

    /// Asserts that at most `rate` of the requests through the balancer failed.
    fn assert_failure_rate_at_most(&self, rate: f64) {
        assert!(
            self.failure_rate() <= rate,
            "{} of {} requests through the balancer failed: {}",
            self.failures.failed,
            self.failures.requests,
            self.report.summary()
        );
    }

    /// Asserts that acknowledged revocations answered within `REVOCATION_P99` (p99): no
    /// member that stays up, joins, leaves gracefully or restarts is waited out.
    fn assert_revocations_fast(&self) {
        let p99 = self.report.0["revocation_latency_ms"]["p99"]
            .as_f64()
            .expect("revocations were acknowledged");
        assert!(
            p99 <= REVOCATION_P99.as_secs_f64() * 1000.0,
            "revocation p99 {p99} ms: {}",
            self.report.summary()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_and_down() {
    let mut s = Scenario::start("scale_up_and_down", 5, 3).await;
    let watched_from = s.history.now();
    s.calm(3.0).await;

    // Two nodes join at once, as a Deployment scaled from 3 to 5 starts two pods.
    let joining = s.history.now();
    let ready = s.sandbox.start_nodes(&[3, 4]).await.unwrap();
    for (i, took) in ready.iter().enumerate() {
        assert!(
            *took <= JOIN_READY_WITHIN,
            "node-{} took {took:?} to be ready",
            i + 4
        );
    }
    s.figure("node-4_time_to_ready_ms", ms(ready[0]));
    s.figure("node-5_time_to_ready_ms", ms(ready[1]));
    let in_rotation = s
        .balancer
        .wait_in_rotation(|r| r.iter().all(|up| *up), Duration::from_secs(10))
        .await
        .unwrap();
    s.figure("joined_in_rotation_after_ready_ms", ms(in_rotation));
    s.window(
        "nodes 4 and 5 join",
        joining,
        &[
            ("node-4_time_to_ready_ms", ms(ready[0])),
            ("node-5_time_to_ready_ms", ms(ready[1])),
        ],
    );
    s.calm(4.0).await;

    // Scaled back to 3: the newest pods are stopped first, each with SIGTERM.
    let mut stopped_at = BTreeMap::new();
    for i in [4, 3] {
        let from = s.history.now();
        stopped_at.insert(i, from);
        let began = Instant::now();
        let status = s.sandbox.stop(i).await.unwrap();
        assert!(status.success(), "node-{} exited {status:?}", i + 1);
        let took = ms(began.elapsed());
        s.figure(&format!("node-{}_stop_ms", i + 1), took);
        s.window(
            &format!("SIGTERM node-{}", i + 1),
            from,
            &[("stop_ms", took)],
        );
    }
    s.calm(3.0).await;
    let until = s.history.now();
    let f = s.finish().await;

    assert_eq!(
        f.failures.failed,
        0,
        "failed requests through the balancer: {}",
        f.report.summary()
    );
    for i in 0..3 {
        let node = &f.readiness.nodes[i];
        assert!(
            node.unready_between(watched_from, until).is_empty(),
            "{} was unready: {}",
            node.name,
            f.readiness.text()
        );
        assert!(
            node.out_of_rotation_between(watched_from, until).is_empty(),
            "{} was out of rotation: {}",
            node.name,
            f.readiness.text()
        );
    }
    for (i, stopped) in stopped_at {
        let node = &f.readiness.nodes[i];
        assert!(
            node.ready_during(joining, stopped) && node.in_rotation_during(joining, stopped),
            "{} was not ready and in rotation before its stop: {}",
            node.name,
            f.readiness.text()
        );
    }
    f.assert_revocations_fast();
    f.assert_invariants();
    let statuses = f.sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart() {
    let mut s = Scenario::start("rolling_restart", 5, 5).await;
    s.calm(2.0).await;
    let restarts = s.roll("restart", &[]).await;
    for (name, figures) in restarts {
        for (key, value) in figures {
            s.figure(&format!("{name}_{key}"), value);
        }
    }
    s.calm(2.0).await;
    let f = s.finish().await;

    f.assert_failure_rate_at_most(0.001);
    f.assert_revocations_fast();
    f.assert_invariants();
    // Every node has already exited 0 on SIGTERM once; five more leaves would only add
    // 2 s of shutdown delay each.
    drop(f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_loss() {
    let mut s = Scenario::start("unclean_loss", 5, 5).await;
    s.calm(2.0).await;
    let first_kill = s.history.now();
    // Forgotten within the forget delay plus time for a lease holder to act on it.
    let within = Duration::from_secs(FORGET_AFTER_SECONDS + 3 * LEASE_SECONDS);
    for victim in [4, 3, 2] {
        let name = s.name_of(victim);
        let from = s.history.now();
        s.sandbox.kill(victim).await.unwrap();
        let forgotten = s.wait_forgotten(&name, within).await;
        s.figure(&format!("{name}_forgotten_after_ms"), ms(forgotten));
        s.window(
            &format!("kill -9 {name} until forgotten"),
            from,
            &[("forgotten_after_ms", ms(forgotten))],
        );
    }
    s.calm(2.0).await;
    let until = s.history.now();
    let audit = {
        let (status, audit) = s
            .sandbox
            .get_as(
                0,
                "/api/v1/audit?event_type=member_forgotten&limit=500",
                &s.admin,
            )
            .await;
        assert_eq!(status, 200, "{audit}");
        audit
    };
    let forgotten: HashSet<String> = audit["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["event_type"] == "member_forgotten")
        .filter_map(|e| e["resource"].as_str().map(str::to_owned))
        .collect();
    s.figure(
        "member_forgotten_resources",
        json!(forgotten.iter().collect::<Vec<_>>()),
    );
    let f = s.finish().await;

    for survivor in 0..2 {
        let node = &f.readiness.nodes[survivor];
        let unready = node.unready_between(first_kill + Duration::from_secs(1), until);
        assert!(
            unready.is_empty(),
            "{} was unready after the first kill's first second: {}",
            node.name,
            f.readiness.text()
        );
    }
    f.assert_failure_rate_at_most(0.01);
    for name in ["node-3", "node-4", "node-5"] {
        assert!(
            forgotten.contains(&format!("node:{name}")),
            "no member_forgotten event for {name}: {audit}"
        );
    }
    f.assert_invariants();
    let statuses = f.sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_survivor() {
    let mut s = Scenario::start("lone_survivor", 2, 2).await;
    s.calm(2.0).await;

    // Alone, node 1 holds no majority: it loses its lease and is unready.
    let from = s.history.now();
    s.sandbox.kill(1).await.unwrap();
    let unready = s
        .until_ready_status(
            0,
            |status| status != 200,
            Duration::from_secs(LEASE_SECONDS + 1),
        )
        .await;
    s.figure("node-1_unready_after_kill_ms", ms(unready));
    // Holding no lease, it may not forget node 2 by itself, however long it waits.
    let hold = Duration::from_secs(FORGET_AFTER_SECONDS + 2 * LEASE_SECONDS);
    let began = Instant::now();
    while began.elapsed() < hold {
        let (status, body) = s
            .sandbox
            .get_json(0, "/health/ready")
            .await
            .unwrap_or((0, Value::Null));
        assert_ne!(
            status,
            200,
            "node-1 became ready alone {:?} after it was unready: {body}",
            began.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let members = s.members(0).await;
    s.figure("node-1_members_while_alone", json!(members));
    s.window(
        "kill -9 node-2, node-1 alone",
        from,
        &[("unready_after_kill_ms", ms(unready))],
    );

    // Break-glass: refused for a member that is up, done for the dead one.
    let from = s.history.now();
    let refused = s
        .sandbox
        .admin(0, &["forget-member", "node-1"])
        .await
        .unwrap();
    let refusal = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    s.figure("forget_up_member_output", refusal.trim());
    assert!(
        !refused.status.success(),
        "forget-member node-1 (up) was not refused: {refusal}"
    );
    let forgot = s
        .sandbox
        .admin(0, &["forget-member", "node-2"])
        .await
        .unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&forgot.stdout),
        String::from_utf8_lossy(&forgot.stderr)
    );
    s.figure("forget_dead_member_output", output.trim());
    assert!(
        forgot.status.success(),
        "forget-member node-2 failed ({:?}): {output}",
        forgot.status
    );
    let ready = s
        .until_ready_status(
            0,
            |status| status == 200,
            Duration::from_secs(5 * LEASE_SECONDS),
        )
        .await;
    s.figure("node-1_ready_after_forget_ms", ms(ready));
    s.balancer
        .wait_in_rotation(|r| r[0], Duration::from_secs(5))
        .await
        .unwrap();
    let (status, body) = s.login_through_balancer().await;
    assert_eq!(status, 200, "login through the balancer: {body}");
    s.window(
        "forget-member node-2",
        from,
        &[("ready_after_forget_ms", ms(ready))],
    );

    // Node 2 comes back and rejoins.
    let from = s.history.now();
    let restart = s.sandbox.restart(1).await.unwrap();
    s.figure("node-2_time_to_ready_ms", ms(restart));
    s.admin = s.sandbox.login(0, "admin", ADMIN_PASSWORD).await.unwrap();
    let formed = s
        .sandbox
        .wait_formed(&s.admin, Duration::from_secs(LEASE_SECONDS * 10))
        .await
        .unwrap();
    for i in 0..2 {
        let members = s.members(i).await.unwrap_or_default();
        for name in ["node-1", "node-2"] {
            assert!(
                members
                    .iter()
                    .any(|(n, status)| n == name && status == "up"),
                "node-{} does not list {name} up: {members:?}",
                i + 1
            );
        }
    }
    s.balancer
        .wait_in_rotation(|r| r[0] && r[1], Duration::from_secs(5))
        .await
        .unwrap();
    s.window(
        "node-2 rejoins",
        from,
        &[
            ("time_to_ready_ms", ms(restart)),
            ("formed_after_ready_ms", ms(formed)),
        ],
    );
    s.calm(1.0).await;
    let f = s.finish().await;

    f.assert_invariants();
    let statuses = f.sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}

/// The secrets key of `options()`, replaced by [`NEW_SECRETS_KEY`] in `secrets_key_rotation`.
fn old_secrets_key() -> String {
    "5e".repeat(32)
}

const NEW_SECRETS_KEY: &str = "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a";

/// The TOTP code an independent implementation (oathtool) computes for `secret` at `unix`.
fn oathtool(secret: &str, unix: i64) -> String {
    let output = std::process::Command::new("oathtool")
        .args(["--totp", "-b", secret, &format!("--now=@{unix}")])
        .output()
        .expect("oathtool is installed by scripts/install-deps");
    assert!(output.status.success(), "oathtool: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The wall clock, as the authenticator's clock is.
#[allow(clippy::disallowed_methods)]
fn unix_now() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_secs()).unwrap()
}

impl Scenario {
    /// Creates `username` with a confirmed TOTP enrolment; returns its secret and recovery
    /// codes.
    async fn user_with_totp(&self, username: &str, password: &str) -> (String, Vec<String>) {
        let post = |path: &'static str, token: Option<String>, body: Value| async move {
            self.sandbox
                .request(
                    0,
                    reqwest::Method::POST,
                    path,
                    token.as_deref(),
                    Some(&body),
                )
                .await
        };
        let body = json!({"username": username, "email": format!("{username}@example.org"), "role": "viewer", "password": password});
        let (status, user) = post("/api/v1/users", Some(self.admin.clone()), body).await;
        assert_eq!(status, 201, "{user}");
        let access = self.sandbox.log_in(0, username, password).await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, enrolment) = post(
            "/api/v1/auth/mfa/totp/enroll",
            Some(access.clone()),
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "{enrolment}");
        let secret = enrolment["secret"].as_str().unwrap().to_owned();
        let code = oathtool(&secret, unix_now());
        let (status, confirmed) = post(
            "/api/v1/auth/mfa/totp/confirm",
            Some(access),
            json!({"code": code}),
        )
        .await;
        assert_eq!(status, 200, "{confirmed}");
        let codes = confirmed["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        (secret, codes)
    }

    /// Logs `username` in on node `i` with its password and then `code` as the second
    /// factor; returns the status and body of the second step.
    async fn log_in_with_code(
        &self,
        i: usize,
        username: &str,
        password: &str,
        code: &str,
    ) -> (u16, Value) {
        let challenge = self.sandbox.log_in(i, username, password).await.unwrap();
        assert_eq!(challenge["mfa_required"], true, "{challenge}");
        let body = json!({"challenge_id": challenge["challenge_id"], "code": code});
        self.sandbox
            .request(
                i,
                reqwest::Method::POST,
                "/api/v1/auth/mfa/verify",
                None,
                Some(&body),
            )
            .await
    }
}

/// `secrets_key_rotation`: the secrets key replaced on a running cluster of three, as
/// docs/operations.md ("Replacing the secrets key") tells: a rolling restart adding the
/// new key to `secrets.previous_keys`, one making it `secrets.key` with the old one
/// previous, `sark admin rotate-secrets-key` while the nodes serve, and one dropping the
/// old key. No request through the balancer fails; afterwards a TOTP secret and a
/// recovery code made under the old key still log in, a token signed before still
/// verifies, the audit chains verify, and the old key alone is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_key_rotation() {
    const USER: &str = "rotor";
    const PASSWORD: &str = "rotating keys on a calm day";
    let mut s = Scenario::start("secrets_key_rotation", 3, 3).await;
    let (secret, recovery_codes) = s.user_with_totp(USER, PASSWORD).await;
    let signed_before = s.sandbox.login(0, "admin", ADMIN_PASSWORD).await.unwrap();
    s.calm(1.0).await;

    let old = old_secrets_key();
    s.roll(
        "add the new key",
        &[("SARK_SECRETS__PREVIOUS_KEYS", NEW_SECRETS_KEY)],
    )
    .await;
    s.roll(
        "seal with the new key",
        &[
            ("SARK_SECRETS__KEY", NEW_SECRETS_KEY),
            ("SARK_SECRETS__PREVIOUS_KEYS", &old),
        ],
    )
    .await;
    let from = s.history.now();
    let began = Instant::now();
    let rotated = s.sandbox.admin(0, &["rotate-secrets-key"]).await.unwrap();
    let took = began.elapsed();
    let said = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(
        rotated.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    assert!(said.contains("sealed again with key"), "{said}");
    assert!(
        said.contains("Totp 1"),
        "the TOTP secret was sealed again: {said}"
    );
    s.figure("rotate_secrets_key_ms", ms(took));
    s.window("sark admin rotate-secrets-key", from, &[("ms", ms(took))]);
    let again = s.sandbox.admin(0, &["rotate-secrets-key"]).await.unwrap();
    let said_again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{said_again}");
    assert!(
        said_again.contains("nothing is sealed with a previous key"),
        "{said_again}"
    );
    s.roll("drop the old key", &[("SARK_SECRETS__PREVIOUS_KEYS", "")])
        .await;
    s.calm(1.0).await;

    for node in 0..3 {
        let (status, me) = s
            .sandbox
            .get_as(node, "/api/v1/auth/me", &signed_before)
            .await;
        assert_eq!(
            status, 200,
            "node {node} verifies a token signed before: {me}"
        );
    }
    let (status, tokens) = s
        .log_in_with_code(1, USER, PASSWORD, &oathtool(&secret, unix_now() + 30))
        .await;
    assert_eq!(
        status, 200,
        "the TOTP secret opens with the new key: {tokens}"
    );
    let (status, tokens) = s
        .log_in_with_code(2, USER, PASSWORD, &recovery_codes[0])
        .await;
    assert_eq!(
        status, 200,
        "a recovery code made before still works: {tokens}"
    );
    let admin = s.sandbox.login(0, "admin", ADMIN_PASSWORD).await.unwrap();
    let (status, verification) = s.sandbox.get_as(0, "/api/v1/audit/verify", &admin).await;
    assert_eq!(
        (status, &verification["ok"]),
        (200, &json!(true)),
        "{verification}"
    );
    let (status, events) = s
        .sandbox
        .get_as(0, "/api/v1/audit?event_type=secrets_key_rotated", &admin)
        .await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(
        events["items"].as_array().map(Vec::len),
        Some(1),
        "{events}"
    );

    // The old key alone no longer opens the store.
    s.sandbox.set_env(0, "SARK_SECRETS__KEY", &old);
    let refused = s.sandbox.admin(0, &["audit-verify"]).await.unwrap();
    let err = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success());
    assert!(
        err.contains("`secrets.key`") && err.contains("different secrets key"),
        "{err}"
    );
    s.sandbox.set_env(0, "SARK_SECRETS__KEY", NEW_SECRETS_KEY);

    let f = s.finish().await;
    f.assert_failure_rate_at_most(0.001);
    f.assert_invariants();
    drop(f);
}
