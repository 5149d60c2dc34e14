use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use sark::http::extract::AppJson;
use sark::http::{AppState, HttpMetrics};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::helpers::{TestApp, poll, spawn_app, spawn_app_with};

const SECURITY_HEADERS: [&str; 7] = [
    "strict-transport-security",
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
    "permissions-policy",
    "cross-origin-opener-policy",
];

#[derive(Deserialize)]
struct Echo {
    name: String,
    count: u32,
}

/// Serves `routes` wrapped in the production middleware stack of `app`'s node.
async fn serve_with_middleware(app: &TestApp, routes: Router<AppState>) -> SocketAddr {
    let metrics = HttpMetrics::register(&prometheus::Registry::new()).unwrap();
    let state = AppState::new(
        app.node().clone(),
        app.server.as_ref().unwrap().providers().clone(),
        metrics,
    );
    let router = sark::http::with_middleware(routes, state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

fn test_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/echo",
            post(|AppJson(body): AppJson<Echo>| async move {
                axum::Json(json!({"name": body.name, "count": body.count}))
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        )
        .route("/boom", get(boom))
}

async fn boom() -> &'static str {
    panic!("secret internal detail")
}

fn assert_error_shape(body: &Value, code: &str, request_id: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["error"]["request_id"], request_id, "{body}");
}

async fn error_of(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body: Value = response.json().await.expect("error bodies are JSON");
    (status, headers, body)
}

#[tokio::test]
async fn an_unknown_route_is_a_404_in_the_error_shape() {
    let app = spawn_app().await;
    let (status, headers, body) = error_of(app.get("/api/v1/nothing-here").await).await;
    assert_eq!(status, 404);
    let id = headers["x-request-id"].to_str().unwrap();
    assert_error_shape(&body, "not_found", id);
    app.stop().await;
}

#[tokio::test]
async fn a_wrong_method_is_a_405_in_the_error_shape_with_allow() {
    let app = spawn_app().await;
    let response = app.client.delete(app.url("/health")).send().await.unwrap();
    let (status, headers, body) = error_of(response).await;
    assert_eq!(status, 405);
    assert!(headers["allow"].to_str().unwrap().contains("GET"));
    assert_error_shape(
        &body,
        "method_not_allowed",
        headers["x-request-id"].to_str().unwrap(),
    );
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_a_request_id() {
    let app = spawn_app().await;
    let responses = [
        app.get("/health").await,
        app.get("/metrics").await,
        app.get("/nope").await,
        app.client.post(app.url("/health")).send().await.unwrap(),
    ];
    for response in responses {
        for header in SECURITY_HEADERS {
            assert!(
                response.headers().contains_key(header),
                "{header} missing on {}",
                response.url()
            );
        }
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(response.headers()["x-request-id"].to_str().unwrap().len() >= 16);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_plain_incoming_request_id_is_kept_and_a_hostile_one_replaced() {
    let app = spawn_app().await;
    let kept = app
        .client
        .get(app.url("/nope"))
        .header("x-request-id", "trace-42.a_b")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "trace-42.a_b");
    let body: Value = kept.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "trace-42.a_b");
    let replaced = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "<script>")
        .send()
        .await
        .unwrap();
    assert_ne!(replaced.headers()["x-request-id"], "<script>");
    app.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let app = spawn_app().await;
    let addr = serve_with_middleware(&app, test_routes()).await;
    let big = vec![b'a'; 1024 * 1024 + 1];
    let response = app
        .client
        .post(format!("http://{addr}/echo"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let (status, headers, body) = error_of(response).await;
    assert_eq!(status, 413);
    assert_error_shape(
        &body,
        "payload_too_large",
        headers["x-request-id"].to_str().unwrap(),
    );

    // Without a Content-Length the limit applies while the body streams in.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let response = app
        .client
        .post(format!("http://{addr}/echo"))
        .header("content-type", "application/json")
        .body(stream)
        .send()
        .await
        .unwrap();
    let (status, _, body) = error_of(response).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");

    // Even a route that reads no body refuses an oversized declared length.
    let response = app
        .client
        .post(app.url("/health"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    app.stop().await;
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_problem_and_a_wrong_content_type_is_415() {
    let app = spawn_app().await;
    let addr = serve_with_middleware(&app, test_routes()).await;
    let url = format!("http://{addr}/echo");
    let send = |body: &'static str, content_type: Option<&'static str>| {
        let mut request = app.client.post(&url).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send()
    };

    let ok: Value = send(r#"{"name":"x","count":2}"#, Some("application/json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok, json!({"name": "x", "count": 2}));

    let (status, _, body) = error_of(
        send("{\"name\": \"x\",\n \"count\": }", Some("application/json"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "malformed_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );

    let (status, _, body) = error_of(
        send(r#"{"name":"x","count":"many"}"#, Some("application/json"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_request");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("count"),
        "{body}"
    );

    let (status, _, body) = error_of(
        send(r#"{"name":"x"}"#, Some("application/json"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("count"),
        "{body}"
    );

    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, _, body) = error_of(
            send(r#"{"name":"x","count":1}"#, content_type)
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 415, "{content_type:?}");
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_request_past_the_deadline_is_a_503_and_a_panic_a_500_without_details() {
    let app = spawn_app_with(|c| c.http.request_timeout_seconds = 1).await;
    let addr = serve_with_middleware(&app, test_routes()).await;
    let (status, headers, body) = error_of(
        app.client
            .get(format!("http://{addr}/slow"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
    assert_error_shape(
        &body,
        "request_timeout",
        headers["x-request-id"].to_str().unwrap(),
    );

    let (status, headers, body) = error_of(
        app.client
            .get(format!("http://{addr}/boom"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 500);
    assert_error_shape(
        &body,
        "internal_error",
        headers["x-request-id"].to_str().unwrap(),
    );
    assert!(
        !body.to_string().contains("secret internal detail"),
        "{body}"
    );
    for header in SECURITY_HEADERS {
        assert!(headers.contains_key(header));
    }
    // The node keeps serving after a panic.
    assert_eq!(app.get("/health").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app = spawn_app_with(|c| {
        c.http.cors_allowed_origins = vec!["https://console.example.org".into()]
    })
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/health/detailed"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let allowed = preflight("https://console.example.org").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://console.example.org"
    );
    let refused = preflight("https://evil.example.net").await.unwrap();
    assert!(
        !refused
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let simple = app
        .client
        .get(app.url("/health"))
        .header("origin", "https://console.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(
        simple.headers()["access-control-allow-origin"],
        "https://console.example.org"
    );
    app.stop().await;

    let closed = spawn_app().await;
    let response = closed
        .client
        .get(closed.url("/health"))
        .header("origin", "https://console.example.org")
        .send()
        .await
        .unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin"),
        "no origins configured, no CORS"
    );
    closed.stop().await;
}

#[tokio::test]
async fn unauthenticated_clients_are_rate_limited_per_ip_except_on_health_and_metrics() {
    let app = spawn_app_with(|c| c.rate_limit.unauthenticated_per_minute = 3).await;
    for remaining in [2, 1, 0] {
        let response = app.get("/api/v1/anything").await;
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            remaining.to_string().as_str()
        );
        assert!(response.headers().contains_key("ratelimit-reset"));
    }
    let (status, headers, body) = error_of(app.get("/api/v1/anything").await).await;
    assert_eq!(status, 429);
    assert_error_shape(
        &body,
        "rate_limited",
        headers["x-request-id"].to_str().unwrap(),
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    for _ in 0..10 {
        assert_eq!(app.get("/health").await.status(), 200);
        assert_eq!(app.get("/health/ready").await.status(), 200);
        assert_eq!(app.get("/metrics").await.status(), 200);
    }
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"sark_rate_limited_total{scope="ip"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_trusted_proxy_forwards_the_client_address() {
    let app = spawn_app_with(|c| {
        c.rate_limit.unauthenticated_per_minute = 1;
        c.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let from = |ip: &'static str| {
        app.client
            .get(app.url("/x"))
            .header("x-forwarded-for", ip)
            .send()
    };
    assert_eq!(from("198.51.100.1").await.unwrap().status(), 404);
    assert_eq!(
        from("198.51.100.1").await.unwrap().status(),
        429,
        "same client, same bucket"
    );
    assert_eq!(
        from("198.51.100.2").await.unwrap().status(),
        404,
        "another client behind the proxy"
    );
    app.stop().await;

    let untrusted = spawn_app_with(|c| c.rate_limit.unauthenticated_per_minute = 1).await;
    let spoof = |ip: &'static str| {
        untrusted
            .client
            .get(untrusted.url("/x"))
            .header("x-forwarded-for", ip)
            .send()
    };
    assert_eq!(spoof("198.51.100.1").await.unwrap().status(), 404);
    assert_eq!(
        spoof("198.51.100.2").await.unwrap().status(),
        429,
        "an untrusted peer cannot pick its bucket"
    );
    untrusted.stop().await;
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server did not close the connection");
    received
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected_and_idle_connections_are_closed()
{
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|c| c.http.header_read_timeout_seconds = 1).await;

    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: sark\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        started.elapsed()
    );

    let mut idle = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: sark\r\n\r\n")
        .await
        .unwrap();
    let response = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    app.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|c| c.http.max_connections = 2).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        // A complete request proves each held connection was accepted and served.
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: sark\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut third = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /health HTTP/1.1\r\nHost: sark\r\n\r\n")
        .await;
    let response = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(response.is_empty(), "the third connection was served");
    drop(held);
    poll("a slot to free up", Duration::from_secs(10), || async {
        app.client
            .get(app.url("/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
    app.stop().await;
}

/// Sends `request` on a fresh connection; returns the status, the headers (lowercase names)
/// and the JSON body of the answer.
async fn raw_exchange(app: &TestApp, request: &[u8]) -> (u16, Vec<(String, String)>, Value) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request).await;
    let received = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8(received).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .map(|l| {
            let (name, value) = l.split_once(": ").unwrap();
            (name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    (status, headers, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn requests_refused_before_the_router_get_the_api_error_and_the_security_headers() {
    let app = spawn_app().await;
    let many_headers: String = (0..150).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        // Refused by the HTTP parser itself.
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            format!("GET /health HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        // Refused by the API's own, lower limits.
        (
            format!(
                "GET /health?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "a".repeat(9_000)
            )
            .into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            format!(
                "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-big: {}\r\n\r\n",
                "a".repeat(40_000)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let (got, headers, body) = raw_exchange(&app, &request).await;
        let shown = String::from_utf8_lossy(&request[..request.len().min(60)]).into_owned();
        assert_eq!(got, status, "{shown}: {body}");
        assert_eq!(body["error"]["code"], code, "{shown}: {body}");
        let request_id = body["error"]["request_id"].as_str().unwrap();
        for name in SECURITY_HEADERS
            .iter()
            .chain(&["x-request-id", "cache-control"])
        {
            assert!(
                headers.iter().any(|(n, _)| n == name),
                "{shown}: {name} missing from {headers:?}"
            );
        }
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == "x-request-id" && v == request_id),
            "{headers:?}"
        );
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == "content-type" && v == "application/json"),
            "{headers:?}"
        );
    }
    // The node still answers.
    assert_eq!(app.get("/health").await.status(), 200);
    app.stop().await;
}
