//! Rate limits counted in Redis: shared by every node, and unchanged to clients when Redis
//! stops (counting moves to the owner node, which mirrored the keys it owns).

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
