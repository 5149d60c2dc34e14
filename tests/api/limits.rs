//! Rate limits counted in Redis: shared by every node, unchanged to clients when Redis
//! stops (counting moves to the owner node, which mirrored the keys it owns) and when
//! Sentinel fails the master over.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sark::config::Secret;

use crate::helpers::{TestApp, poll, spawn_app_with};

const LIMIT: u32 = 6;

/// A redis-server of this test's own, on a free loopback port; killed on drop.
struct PrivateRedis {
    child: Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/install-deps");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).unwrap();
        poll(
            "redis-server to answer",
            Duration::from_secs(10),
            || async {
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            },
        )
        .await;
        Self { child, url }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn node_on(redis: &PrivateRedis) -> TestApp {
    let url = redis.url.clone();
    spawn_app_with(move |c| {
        c.redis.url = Some(Secret::new(url));
        c.rate_limit.unauthenticated_per_minute = LIMIT;
    })
    .await
}

/// An unauthenticated request's status (counted per client address).
async fn knock(app: &TestApp) -> u16 {
    app.get("/api/v1/servers").await.status().as_u16()
}

async fn checks(app: &TestApp, backend: &str) -> u64 {
    let metrics = app.metrics().await;
    let series = format!("sark_rate_limit_checks_total{{backend=\"{backend}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn nodes_on_one_redis_share_each_limit() {
    let redis = PrivateRedis::start().await;
    let (a, b) = (node_on(&redis).await, node_on(&redis).await);
    for i in 0..LIMIT {
        let node = if i % 2 == 0 { &a } else { &b };
        assert_eq!(knock(node).await, 401, "request {i} is within the limit");
    }
    assert_eq!(knock(&a).await, 429, "the limit holds across both nodes");
    assert_eq!(knock(&b).await, 429);
    assert!(checks(&a, "redis").await >= 4);
    assert_eq!(checks(&a, "owner_node").await, 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_redis_outage_changes_nothing_but_the_metrics() {
    let mut redis = PrivateRedis::start().await;
    let app = node_on(&redis).await;
    for _ in 0..LIMIT / 2 {
        assert_eq!(knock(&app).await, 401);
    }
    redis.stop();
    for i in LIMIT / 2..LIMIT {
        assert_eq!(knock(&app).await, 401, "request {i} is within the limit");
    }
    let refused = app.get("/api/v1/servers").await;
    assert_eq!(refused.status(), 429, "no fresh allowance after the outage");
    assert!(refused.headers().contains_key("retry-after"));
    assert!(checks(&app, "redis_error").await >= 1);
    assert!(checks(&app, "owner_node").await >= 3);
    app.stop().await;
}

async fn locked_node_on(redis: &PrivateRedis) -> TestApp {
    let url = redis.url.clone();
    spawn_app_with(move |c| {
        c.redis.url = Some(Secret::new(url));
        c.auth.lockout_threshold = 3;
    })
    .await
}

async fn fail_login(app: &TestApp, username: &str) -> u16 {
    app.post(
        "/api/v1/auth/login",
        &serde_json::json!({"username": username, "password": "not the password at all"}),
        None,
    )
    .await
    .status()
    .as_u16()
}

async fn lockout_steps(app: &TestApp, backend: &str) -> u64 {
    let series = format!("sark_lockout_steps_total{{backend=\"{backend}\"}} ");
    app.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn lockout_counts_live_in_redis_shared_by_nodes_and_cleared_by_an_unlock() {
    let redis = PrivateRedis::start().await;
    let (a, b) = (locked_node_on(&redis).await, locked_node_on(&redis).await);
    assert_eq!(fail_login(&a, "mallory").await, 401);
    assert_eq!(fail_login(&b, "mallory").await, 401);
    assert_eq!(
        fail_login(&a, "mallory").await,
        423,
        "three failures over two nodes"
    );
    assert_eq!(fail_login(&b, "mallory").await, 423, "locked on both");
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let failures: Option<u32> = redis::cmd("HGET")
        .arg("sark:lockout:mallory")
        .arg("f")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(failures >= Some(3), "counted in Redis: {failures:?}");
    assert_eq!(
        a.node().store.lock_state("mallory").await.unwrap(),
        None,
        "not in the store"
    );
    assert!(lockout_steps(&a, "redis").await >= 2);

    let admin = a.admin_token().await;
    let unlocked = a
        .post(
            "/api/v1/users/mallory/unlock",
            &serde_json::json!({}),
            Some(&admin),
        )
        .await;
    assert_eq!(unlocked.status(), 204);
    let left: bool = redis::cmd("EXISTS")
        .arg("sark:lockout:mallory")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!left, "the unlock removed the Redis counter");
    assert_eq!(fail_login(&b, "mallory").await, 401, "counting starts over");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn without_redis_lockout_counts_in_the_store_never_not_at_all() {
    let mut redis = PrivateRedis::start().await;
    let app = locked_node_on(&redis).await;
    redis.stop();
    for _ in 0..2 {
        assert_eq!(fail_login(&app, "trudy").await, 401);
    }
    assert_eq!(
        fail_login(&app, "trudy").await,
        423,
        "Redis down: the store counts"
    );
    let state = app.node().store.lock_state("trudy").await.unwrap().unwrap();
    assert_eq!(state.failures, 3);
    assert!(lockout_steps(&app, "store").await >= 3);
    app.stop().await;
}

/// Free loopback ports, all distinct.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// A Redis master, its replica and three sentinels (quorum 2) of this test's own, all on
/// loopback; killed on drop.
struct PrivateSentinels {
    servers: Vec<Child>,
    replica: u16,
    sentinels: [u16; 3],
    url: String,
    _dir: tempfile::TempDir,
}

impl PrivateSentinels {
    const MASTER_NAME: &'static str = "sark";

    fn spawn(args: &[String]) -> Child {
        Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/install-deps")
    }

    async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async(&mut conn).await.ok()
    }

    async fn start() -> Self {
        let [master, replica, s1, s2, s3] = free_ports::<5>();
        let dir = tempfile::tempdir().unwrap();
        // A replica writes the synced snapshot to its directory: keep it in ours.
        let server = |port: u16| {
            vec![
                "--bind".into(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
                "--dir".into(),
                dir.path().display().to_string(),
                "--dbfilename".into(),
                format!("dump-{port}.rdb"),
            ]
        };
        let mut servers = vec![Self::spawn(&server(master))];
        let mut replica_args = server(replica);
        replica_args.extend(["--replicaof".into(), "127.0.0.1".into(), master.to_string()]);
        servers.push(Self::spawn(&replica_args));
        for port in [s1, s2, s3] {
            // A sentinel rewrites its configuration file, so each gets a writable one.
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 5000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = dir.path().display(),
                    name = Self::MASTER_NAME,
                ),
            )
            .unwrap();
            servers.push(Self::spawn(&[
                conf.display().to_string(),
                "--sentinel".into(),
            ]));
        }
        let sentinels = [s1, s2, s3];
        poll(
            "the replica to sync and every sentinel to see it and the others",
            Duration::from_secs(30),
            || async {
                let info: String =
                    Self::query(replica, redis::cmd("INFO").arg("replication")).await?;
                if !info.contains("master_link_status:up") {
                    return None;
                }
                for port in sentinels {
                    let fields: Vec<String> = Self::query(
                        port,
                        redis::cmd("SENTINEL").arg("MASTER").arg(Self::MASTER_NAME),
                    )
                    .await?;
                    let field = |name: &str| {
                        let at = fields.iter().position(|f| f == name)?;
                        fields.get(at + 1).cloned()
                    };
                    if field("num-other-sentinels")? != "2" || field("num-slaves")? != "1" {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        let url = format!(
            "redis+sentinel://127.0.0.1:{s1},127.0.0.1:{s2},127.0.0.1:{s3}/{}",
            Self::MASTER_NAME
        );
        Self {
            servers,
            replica,
            sentinels,
            url,
            _dir: dir,
        }
    }

    /// The master's port as the first sentinel reports it.
    async fn master_port(&self) -> Option<u16> {
        let addr: Vec<String> = Self::query(
            self.sentinels[0],
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(Self::MASTER_NAME),
        )
        .await?;
        addr.get(1)?.parse().ok()
    }
}

impl Drop for PrivateSentinels {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

#[tokio::test]
async fn limits_follow_a_sentinel_failover_without_errors() {
    let sentinels = PrivateSentinels::start().await;
    let url = sentinels.url.clone();
    // One a minute: the bucket does not refill while the failover runs.
    let app = spawn_app_with(move |c| {
        c.redis.url = Some(Secret::new(url));
        c.rate_limit.unauthenticated_per_minute = 1;
    })
    .await;
    assert_eq!(knock(&app).await, 401);
    assert_eq!(knock(&app).await, 429);
    assert_eq!(
        checks(&app, "redis").await,
        2,
        "counted in the master the sentinels named"
    );

    let old_master = sentinels.master_port().await.unwrap();
    let failover: String = PrivateSentinels::query(
        sentinels.sentinels[0],
        redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(PrivateSentinels::MASTER_NAME),
    )
    .await
    .unwrap();
    assert_eq!(failover, "OK");
    poll(
        "the replica to be promoted and the old master demoted",
        Duration::from_secs(20),
        || async {
            let promoted = sentinels.master_port().await == Some(sentinels.replica);
            let role: Vec<redis::Value> =
                PrivateSentinels::query(old_master, &redis::cmd("ROLE")).await?;
            let demoted =
                matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"slave");
            (promoted && demoted).then_some(())
        },
    )
    .await;
    // Clients see no difference: the limit holds, and nothing fails, while the node finds
    // the new master; then it counts there again (the old master now refuses writes).
    let before = checks(&app, "redis").await;
    poll(
        "checks answered by the new master",
        Duration::from_secs(20),
        || async {
            assert_eq!(
                knock(&app).await,
                429,
                "the limit holds through the failover"
            );
            (checks(&app, "redis").await > before).then_some(())
        },
    )
    .await;
    let (status, health) = app.get_json("/health/detailed").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["services"]["redis"], "UP", "{health}");
    app.stop().await;
}
