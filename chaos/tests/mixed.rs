//! `mixed` scenario: three nodes on one PostgreSQL database and one Redis under a mixed load
//! (logins, refreshes, evaluations, server writes, policy uploads, revocations) for the whole
//! run, while faults come in turn: `kill -9` of a node and its restart, SIGSTOP/SIGCONT of a
//! node, Redis stopped and started, a partition of one node (iptables rules between the node
//! addresses) and its healing, and a rolling restart (SIGTERM, then start) of every node. The invariants are checked from the recorded history, and the report (JSON and a
//! readable summary) is written to `$CHAOS_REPORT_DIR` (default `target/chaos-reports`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use sark_chaos::faults::{Partition, Signal};
use sark_chaos::history::{FaultWindow, History};
use sark_chaos::load::{Load, Target};
use sark_chaos::sandbox::{ClusterSandbox, SandboxOptions, fresh_postgres_database};

const HEARTBEAT_MS: u64 = 200;
const LEASE_SECONDS: u64 = 2;
const ADMIN_PASSWORD: &str = "chaos root passphrase, long enough";
const WORKERS: usize = 6;

/// A Redis server of this scenario's own (the suite's is shared by other tests).
struct OwnRedis {
    name: String,
    port: u16,
}

impl OwnRedis {
    fn script() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/peers/redis.sh"
        ))
    }

    fn run(&self, action: &str) {
        let mut command = Command::new(Self::script());
        command.args([action, &self.name]);
        if action == "start" {
            command.arg(self.port.to_string());
        }
        let output = command.output().expect("scripts/peers/redis.sh runs");
        assert!(
            output.status.success(),
            "redis.sh {action}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redis = Self {
            name: format!("chaos-mixed-{}", std::process::id()),
            port,
        };
        redis.run("start");
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["stop", &self.name])
            .status();
    }
}

struct Run {
    sandbox: ClusterSandbox,
    history: Arc<History>,
}

impl Run {
    fn base(&self, node: usize) -> String {
        format!("http://{}", self.sandbox.nodes()[node].http)
    }

    async fn post(&self, node: usize, path: &str, body: Value) -> (u16, Value) {
        self.sandbox
            .request(node, reqwest::Method::POST, path, None, Some(&body))
            .await
    }

    async fn get(&self, node: usize, path: &str, token: &str) -> (u16, Value) {
        self.sandbox.get_as(node, path, token).await
    }

    async fn login(&self, node: usize) -> Value {
        self.sandbox
            .log_in(node, "admin", ADMIN_PASSWORD)
            .await
            .unwrap()
    }

    async fn status_of(&self, asking: usize, token: &str, member: &str) -> String {
        let (_, cluster) = self.get(asking, "/api/v1/cluster", token).await;
        cluster["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["node_id"] == member)
            .and_then(|m| m["status"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Polls node `asking`'s view of `member` until `wanted` holds for its status; returns
    /// how long that took, failing after `within`.
    async fn until_status(
        &self,
        asking: usize,
        token: &str,
        member: &str,
        wanted: impl Fn(&str) -> bool,
        within: Duration,
    ) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.status_of(asking, token, member).await;
            if wanted(&status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "{member} stayed {status} as node {asking} sees it"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn formed(&self, token: &str) {
        self.sandbox
            .wait_formed(token, Duration::from_secs(LEASE_SECONDS * 15))
            .await
            .unwrap();
    }

    /// Lets the load run for `time` with nothing wrong.
    async fn calm(&self, time: Duration) {
        tokio::time::sleep(time).await;
    }
}

fn window(history: &History, name: &str, from: Duration, figures: &[(&str, f64)]) {
    history.fault(FaultWindow {
        name: name.to_owned(),
        from,
        until: history.now(),
        figures: figures
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect::<BTreeMap<_, _>>(),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariants_hold_under_load_through_kills_pauses_redis_loss_a_partition_and_a_rolling_restart()
 {
    let redis = OwnRedis::start();
    let options = SandboxOptions::with_env(&[
        ("SARK_DATABASE__URL", fresh_postgres_database().unwrap()),
        ("SARK_REDIS__URL", redis.url()),
        ("SARK_SECRETS__KEY", "7c".repeat(32)),
        ("SARK_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ("SARK_CLUSTER__HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
        ("SARK_CLUSTER__LEASE_SECONDS", LEASE_SECONDS.to_string()),
        (
            "SARK_RATE_LIMIT__UNAUTHENTICATED_PER_MINUTE",
            "1000000".to_owned(),
        ),
        (
            "SARK_RATE_LIMIT__AUTHENTICATED_PER_MINUTE",
            "1000000".to_owned(),
        ),
    ]);
    let mut run = Run {
        sandbox: ClusterSandbox::start(3, options).await.unwrap(),
        history: Arc::new(History::new()),
    };
    let admin = run.login(0).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    run.formed(&admin).await;
    let names: Vec<String> = run.sandbox.nodes().iter().map(|n| n.name.clone()).collect();
    let target = Target {
        bases: (0..3).map(|i| run.base(i)).collect(),
        password: ADMIN_PASSWORD.to_owned(),
        policy_source: std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/authorization/authorization.rego"
        ))
        .unwrap(),
    };
    let load = Load::start(target, WORKERS, run.history.clone());
    run.calm(Duration::from_secs(3)).await;

    // 1. kill -9 of node 3, which owns a session that is in use.
    let victim = 2;
    let doomed = loop {
        let tokens = run.login(0).await;
        let session = tokens["session_id"].as_str().unwrap();
        if run
            .sandbox
            .session_owner(0, &admin, session)
            .await
            .as_deref()
            == Some(names[victim].as_str())
        {
            let (status, refreshed) = run
                .post(
                    0,
                    "/api/v1/auth/refresh",
                    json!({"refresh_token": tokens["refresh_token"]}),
                )
                .await;
            assert_eq!(status, 200, "{refreshed}");
            break refreshed;
        }
    };
    let from = run.history.now();
    run.sandbox.kill(victim).await.unwrap();
    let killed = Instant::now();
    let served_again = loop {
        let (status, _) = run
            .post(
                0,
                "/api/v1/auth/refresh",
                json!({"refresh_token": doomed["refresh_token"]}),
            )
            .await;
        if status == 200 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(LEASE_SECONDS * 3),
            "status {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    run.calm(Duration::from_secs(2)).await;
    let restart = run.sandbox.restart(victim).await.unwrap();
    run.formed(&admin).await;
    window(
        &run.history,
        "kill -9 node-3, restart",
        from,
        &[
            (
                "time_to_serve_sessions_again_ms",
                served_again.as_secs_f64() * 1e3,
            ),
            ("restart_to_ready_ms", restart.as_secs_f64() * 1e3),
        ],
    );
    run.calm(Duration::from_secs(2)).await;

    // 2. SIGSTOP of node 2: detected as suspect, then resumed.
    let paused = 1;
    let from = run.history.now();
    run.sandbox.signal(paused, Signal::Stop).unwrap();
    let detected = run
        .until_status(
            0,
            &admin,
            &names[paused],
            |s| s == "suspect",
            Duration::from_secs(LEASE_SECONDS * 3),
        )
        .await;
    run.calm(Duration::from_secs(1)).await;
    run.sandbox.signal(paused, Signal::Cont).unwrap();
    run.formed(&admin).await;
    window(
        &run.history,
        "SIGSTOP node-2, SIGCONT",
        from,
        &[("time_to_detect_hung_node_ms", detected.as_secs_f64() * 1e3)],
    );
    run.calm(Duration::from_secs(2)).await;

    // 3. Redis stopped: limits fall back to owner-node counting; clients see no difference.
    let from = run.history.now();
    redis.run("stop");
    run.calm(Duration::from_secs(3)).await;
    redis.run("start");
    run.calm(Duration::from_secs(1)).await;
    window(&run.history, "Redis stopped 3 s", from, &[]);

    // 4. Partition: node 1 is cut off from the others for two leases, then healed. Load
    // keeps reaching it (clients and the database are on other addresses), so it must
    // check every token and policy version against the store meanwhile.
    let cut = 0;
    let from = run.history.now();
    let ips: Vec<std::net::Ipv4Addr> = run.sandbox.nodes().iter().map(|n| n.ip).collect();
    let others: Vec<std::net::Ipv4Addr> =
        ips.iter().copied().filter(|ip| *ip != ips[cut]).collect();
    let partition = Partition::cut(ips[cut], &others).unwrap();
    let detected = run
        .until_status(
            1,
            &admin,
            &names[cut],
            |s| s != "up",
            Duration::from_secs(LEASE_SECONDS * 3),
        )
        .await;
    run.calm(Duration::from_secs(LEASE_SECONDS * 2)).await;
    drop(partition);
    let rejoined = run
        .until_status(
            1,
            &admin,
            &names[cut],
            |s| s == "up",
            Duration::from_secs(LEASE_SECONDS * 10),
        )
        .await;
    run.formed(&admin).await;
    window(
        &run.history,
        &format!("partition of node-1 for {} s", LEASE_SECONDS * 2),
        from,
        &[
            ("time_to_detect_partition_ms", detected.as_secs_f64() * 1e3),
            ("time_to_rejoin_after_heal_ms", rejoined.as_secs_f64() * 1e3),
        ],
    );
    run.calm(Duration::from_secs(2)).await;

    // 5. Rolling restart: each node leaves with SIGTERM and comes back.
    let from = run.history.now();
    let mut downtime = Vec::new();
    for node in 0..3 {
        let left = Instant::now();
        let status = run.sandbox.stop(node).await.unwrap();
        assert!(status.success(), "node {node} exited {status:?}");
        run.sandbox.restart(node).await.unwrap();
        downtime.push(left.elapsed().as_secs_f64() * 1e3);
        let admin_here = run.login(node).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        run.formed(&admin_here).await;
    }
    window(
        &run.history,
        "rolling restart of 3 nodes",
        from,
        &[(
            "max_node_downtime_ms",
            downtime.iter().copied().fold(0.0, f64::max),
        )],
    );
    run.calm(Duration::from_secs(2)).await;
    load.stop().await;

    // Every acknowledged write is there, with its audit event.
    let admin = run.login(0).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let acknowledged = run.history.acknowledged_servers();
    let (lost_writes, lost_events) = run
        .sandbox
        .lost_writes(0, &admin, &acknowledged)
        .await
        .unwrap();
    let (status, verify) = run.get(0, "/api/v1/audit/verify", &admin).await;
    assert_eq!(status, 200);
    assert_eq!(verify["ok"], true, "the audit chains verify: {verify}");

    let report = run.history.report("mixed", lost_writes, lost_events);
    let dir = sark_chaos::history::report_dir();
    report.write(&dir).unwrap();
    println!(
        "{}report: {}",
        report.summary(),
        dir.join("mixed.json").display()
    );
    assert!(
        report.invariant("acknowledged_writes") > 0,
        "{}",
        report.summary()
    );
    assert_eq!(report.broken_invariants(), [], "{}", report.summary());
    let statuses = run.sandbox.shutdown().await.unwrap();
    assert!(statuses.iter().all(|s| s.success()), "{statuses:?}");
}
