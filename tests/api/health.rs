use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use sark::config::Secret;
use serde_json::Value;

use crate::helpers::{fresh_database, peer_env, poll, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_reports_the_node() {
    let app = spawn_app().await;
    let (status, body) = app.get_json("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["node_id"], app.node().node_id.as_str());
    assert!(body["hostname"].as_str().is_some_and(|h| !h.is_empty()));
    app.stop().await;
}

#[tokio::test]
async fn a_fresh_embedded_node_is_ready_and_healthy_with_every_service_listed() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let (_, ready) = app.get_json("/health/ready").await;
    assert_eq!(ready["status"], "ready");
    let (status, detailed) = app.get_json("/health/detailed").await;
    assert_eq!(status, 200);
    assert_eq!(detailed["status"], "healthy", "{detailed}");
    for (service, state) in [
        ("database", "UP"),
        ("redis", "DISABLED"),
        ("opa", "UP"),
        ("cluster", "UP"),
    ] {
        assert_eq!(
            detailed["services"][service], state,
            "{service}: {detailed}"
        );
    }
    for key in ["version", "timestamp", "hostname", "node_id"] {
        assert!(detailed[key].is_string(), "{key} missing: {detailed}");
    }
    let metrics = &detailed["metrics"];
    assert!(metrics["uptime_seconds"].is_u64());
    assert_eq!(metrics["active_sessions"], 0);
    assert_eq!(metrics["total_servers"], 0);
    assert_eq!(metrics["cluster_members"], 1);
    assert_eq!(detailed["storage"]["backend"], "sqlite");
    assert_eq!(detailed["policy_versions"]["authorization"], 1);
    app.stop().await;
}

#[tokio::test]
async fn redis_is_reported_up_when_configured_and_down_when_unreachable() {
    let url = peer_env("TEST_REDIS_URL");
    let app = spawn_app_with(|c| c.redis.url = Some(Secret::new(url))).await;
    let (_, detailed) = app.get_json("/health/detailed").await;
    assert_eq!(detailed["services"]["redis"], "UP", "{detailed}");
    assert_eq!(detailed["status"], "healthy");
    app.stop().await;

    // Nothing listens on port 1: a configured Redis that is down degrades the node but
    // never stops it from serving.
    let app = spawn_app_with(|c| c.redis.url = Some(Secret::new("redis://127.0.0.1:1"))).await;
    let (_, detailed) = app.get_json("/health/detailed").await;
    assert_eq!(detailed["services"]["redis"], "DOWN", "{detailed}");
    assert_eq!(detailed["status"], "degraded");
    let (status, _) = app.get_json("/health/ready").await;
    assert_eq!(status, 200, "Redis is optional for readiness");
    app.stop().await;
}

#[tokio::test]
async fn metrics_pass_promtool_and_label_requests_by_route_template() {
    let app = spawn_app().await;
    app.get("/health").await;
    app.get("/health/detailed").await;
    app.get("/api/v1/servers/some-raw-name-123").await;
    app.get("/definitely/not/a/route?token=secret").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by scripts/install-deps (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/health",status="200"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(
        !text.contains("some-raw-name-123") && !text.contains("definitely"),
        "raw paths leaked into labels"
    );
    assert!(text.contains("http_request_duration_seconds_bucket{"));
    for kind in [
        "audit_writer",
        "limiter",
        "membership",
        "policy",
        "policy_supervisor",
        "session_supervisor",
        "siem_supervisor",
    ] {
        assert!(
            text.contains(&format!("sark_actor_restarts_total{{kind=\"{kind}\"}} 0")),
            "{kind}: {text}"
        );
        assert!(
            text.contains(&format!("sark_actor_running{{kind=\"{kind}\"}}")),
            "{kind}"
        );
    }
    assert!(text.contains("process_resident_memory_bytes"));
    app.stop().await;
}

/// Starts the outage PostgreSQL again when dropped, so a failed assertion cannot leave it down.
struct OutageServer {
    ctl: String,
    stopped: std::cell::Cell<bool>,
}

impl OutageServer {
    fn run(&self, cmd: &str) {
        let status = Command::new(&self.ctl)
            .args([cmd, "outage"])
            .status()
            .unwrap();
        assert!(status.success(), "pg.sh {cmd} outage failed");
        self.stopped.set(cmd == "stop");
    }
}

impl Drop for OutageServer {
    fn drop(&mut self) {
        if self.stopped.get() {
            let _ = Command::new(&self.ctl).args(["start", "outage"]).status();
        }
    }
}

async fn readiness(app: &crate::helpers::TestApp) -> Option<(u16, Value)> {
    let response = app.client.get(app.url("/health/ready")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json::<Value>().await.ok()?))
}

async fn wait_ready(app: &crate::helpers::TestApp, what: &str) {
    poll(what, Duration::from_secs(60), || async {
        readiness(app).await.filter(|(s, _)| *s == 200)
    })
    .await;
}

/// Polls `/health/detailed` (whose answer is cached for a second) until `accept` holds.
async fn wait_detailed(
    app: &crate::helpers::TestApp,
    what: &str,
    accept: fn(&Value) -> bool,
) -> Value {
    poll(what, Duration::from_secs(30), || async {
        let (_, detailed) = app.get_json("/health/detailed").await;
        accept(&detailed).then_some(detailed)
    })
    .await
}

async fn assert_database_down(app: &crate::helpers::TestApp) {
    let (status, body) = poll(
        "readiness to name the database",
        Duration::from_secs(30),
        || async { readiness(app).await.filter(|(s, _)| *s == 503) },
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unready");
    assert!(
        body["failing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "database"),
        "{body}"
    );
    let detailed = wait_detailed(app, "detailed health to show the outage", |d| {
        d["services"]["database"] == "DOWN"
    })
    .await;
    assert_eq!(detailed["status"], "unhealthy");
    assert_eq!(detailed["metrics"]["total_servers"], Value::Null);
    let (status, _) = app.get_json("/health").await;
    assert_eq!(status, 200, "liveness does not depend on the database");
}

#[tokio::test]
async fn postgres_outages_degrade_the_node_and_it_recovers_without_a_restart() {
    let server = OutageServer {
        ctl: peer_env("TEST_PG_CTL"),
        stopped: std::cell::Cell::new(false),
    };
    let url = fresh_database("TEST_OUTAGE_DATABASE_URL").await;

    // Down at start-up: the node starts anyway, degraded, and bootstraps once it can.
    server.run("stop");
    let app = spawn_app_with(|c| {
        c.database.url = Some(Secret::new(url));
        c.database.acquire_timeout_ms = 1_000;
    })
    .await;
    assert_database_down(&app).await;
    server.run("start");
    wait_ready(&app, "the node to finish starting once PostgreSQL is up").await;
    let detailed = wait_detailed(&app, "a healthy node", |d| d["status"] == "healthy").await;
    assert_eq!(detailed["storage"]["backend"], "postgres");
    assert_eq!(detailed["storage"]["time_series"], "native_partitions");

    // Down while running: readiness names the database; it recovers by itself.
    server.run("stop");
    assert_database_down(&app).await;
    server.run("start");
    wait_ready(&app, "the node to recover by itself").await;
    wait_detailed(&app, "the database to be UP again", |d| {
        d["services"]["database"] == "UP"
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn on_shutdown_readiness_fails_while_the_node_still_serves_then_it_stops() {
    let mut app = spawn_app_with(|c| c.http.shutdown_delay_seconds = 2).await;
    let server = app.server.take().unwrap();
    let stopping = tokio::spawn(server.stop());
    let (status, body) = poll(
        "readiness to report shutting_down",
        Duration::from_secs(10),
        || async {
            let response = app.client.get(app.url("/health/ready")).send().await.ok()?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.ok()?;
            (status == 503).then_some((status, body))
        },
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        body["failing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "shutting_down"),
        "{body}"
    );
    assert_eq!(
        app.get("/health").await.status(),
        200,
        "still serving during the delay"
    );
    stopping.await.unwrap().expect("clean stop");
    assert!(
        app.client.get(app.url("/health")).send().await.is_err(),
        "the port is closed after the delay"
    );
}

#[tokio::test]
async fn a_management_listener_takes_the_node_details_off_the_public_port() {
    let app = spawn_app_with(|config| {
        config.http.management_bind = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    app.wait_ready().await;
    let management = app
        .server
        .as_ref()
        .unwrap()
        .management_addr()
        .expect("a management listener is bound");
    assert_ne!(management, app.addr);
    let on = |addr: std::net::SocketAddr, path: &str| format!("http://{addr}{path}");

    for path in ["/metrics", "/health/detailed"] {
        let public = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            public.status(),
            404,
            "{path} is not served on the public port"
        );
        let private = app.client.get(on(management, path)).send().await.unwrap();
        assert_eq!(private.status(), 200, "{path} on the management port");
    }
    for path in ["/health", "/health/ready"] {
        for addr in [app.addr, management] {
            let response = app.client.get(on(addr, path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path} on {addr}");
        }
    }
    let metrics_url = on(management, "/metrics");
    let metrics = poll("the sampled gauges", Duration::from_secs(10), || async {
        let text = app
            .client
            .get(&metrics_url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text.contains("sark_cluster_lease_valid 1")
            && text.contains("sark_db_pool_connections{state=\"in_use\"}")
            && text.contains("sark_actor_mailbox_depth{kind="))
        .then_some(text)
    })
    .await;
    let max = app.node().config.database.max_connections + 1;
    assert!(
        metrics.contains(&format!("sark_db_pool_max_connections {max}")),
        "SQLite: the readers and the one writer\n{metrics}"
    );
    // The API is not reachable through the management port.
    let login = app
        .client
        .post(on(management, "/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 404);
    app.stop().await;
}
