//! The server inventory over the API, on both backends.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_pg_app_with};

const PASSWORD: &str = "violet kettle swims at dawn";

async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let response = app.call(method, path, token, body.as_ref()).await;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn inventory_flow(app: &TestApp) {
    let admin = app.admin_token().await;
    app.create_user(&admin, "oscar", "operator", PASSWORD).await;
    app.create_user(&admin, "vivian", "viewer", PASSWORD).await;
    let operator = app.login("oscar", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let viewer = app.login("vivian", PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    let fleet = [
        ("web-1", json!({"env": "prod", "role": "web"})),
        ("web-2", json!({"env": "prod", "role": "web"})),
        ("web-3", json!({"env": "staging", "role": "web"})),
        ("db-1", json!({"env": "prod", "role": "db"})),
    ];
    for (name, tags) in &fleet {
        let body = json!({"name": name, "endpoint": format!("https://{name}.example.org:8443/"), "description": "a test server", "tags": tags});
        let (status, server) =
            call(app, Method::POST, "/api/v1/servers", &operator, Some(body)).await;
        assert_eq!(status, 201, "{server}");
        assert_eq!(server["name"], *name);
        assert_eq!(server["tags"], *tags);
        assert_eq!(server["created_by"], "oscar");
        assert!(
            server["id"].is_string()
                && server["created_at"].is_string()
                && server["updated_at"].is_string()
        );
    }
    let dup = json!({"name": "web-1", "endpoint": "http://other/"});
    let (status, body) = call(app, Method::POST, "/api/v1/servers", &operator, Some(dup)).await;
    assert_eq!(status, 409, "{body}");

    let queries: [(&str, &[&str]); 4] = [
        ("tag=env:prod&tag=role:web", &["web-1", "web-2"]),
        ("tag=env:prod", &["db-1", "web-1", "web-2"]),
        ("name_prefix=web-", &["web-1", "web-2", "web-3"]),
        ("tag=env:nowhere", &[]),
    ];
    for (query, expected) in queries {
        let path = format!("/api/v1/servers?{query}");
        let (status, list) = call(app, Method::GET, &path, &viewer, None).await;
        assert_eq!(status, 200, "{query}: {list}");
        assert_eq!(names(&list), expected, "{query}: every tag must match");
    }

    // Keyset pagination walks every server once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/servers?limit=3&cursor={c}"),
            None => "/api/v1/servers?limit=3".to_owned(),
        };
        let (status, page) = call(app, Method::GET, &path, &viewer, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["db-1", "web-1", "web-2", "web-3"]);

    let patch = json!({"tags": {"env": "staging"}, "description": null, "endpoint": "http://10.0.0.5:8080/health"});
    let (status, patched) = call(
        app,
        Method::PATCH,
        "/api/v1/servers/web-2",
        &operator,
        Some(patch),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["tags"], json!({"env": "staging"}), "tags replace");
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["endpoint"], "http://10.0.0.5:8080/health");
    let (_, list) = call(
        app,
        Method::GET,
        "/api/v1/servers?tag=role:web&tag=env:prod",
        &viewer,
        None,
    )
    .await;
    assert_eq!(
        names(&list),
        ["web-1"],
        "the old tags are gone from the index"
    );
    let (_, list) = call(
        app,
        Method::GET,
        "/api/v1/servers?tag=env:staging",
        &viewer,
        None,
    )
    .await;
    assert_eq!(names(&list), ["web-2", "web-3"]);

    let (status, _) = call(app, Method::DELETE, "/api/v1/servers/web-3", &viewer, None).await;
    assert_eq!(status, 403, "viewers only read");
    let (status, _) = call(
        app,
        Method::DELETE,
        "/api/v1/servers/web-3",
        &operator,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(app, Method::GET, "/api/v1/servers/web-3", &viewer, None).await;
    assert_eq!(status, 404);
    let (status, _) = call(
        app,
        Method::DELETE,
        "/api/v1/servers/web-3",
        &operator,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, server) = call(app, Method::GET, "/api/v1/servers/web-1", &viewer, None).await;
    assert_eq!(
        (status, server["description"].as_str()),
        (200, Some("a test server"))
    );

    let kinds: Vec<String> = app.audit_types().await;
    for kind in ["server_registered", "server_updated", "server_deleted"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

#[tokio::test]
async fn the_inventory_works_on_sqlite() {
    let app = spawn_app().await;
    inventory_flow(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn the_inventory_works_on_postgres() {
    let app = spawn_pg_app_with(|_| {}).await;
    inventory_flow(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn bad_server_input_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let long = "x".repeat(300);
    let cases = [
        (json!({"name": "Web_1", "endpoint": "https://a/"}), "name"),
        (json!({"name": "-web", "endpoint": "https://a/"}), "name"),
        (
            json!({"name": "a".repeat(64), "endpoint": "https://a/"}),
            "name",
        ),
        (json!({"name": "web", "endpoint": "ftp://a/"}), "endpoint"),
        (
            json!({"name": "web", "endpoint": "/relative/path"}),
            "endpoint",
        ),
        (
            json!({"name": "web", "endpoint": "https://user:secret@a/"}),
            "endpoint",
        ),
        (
            json!({"name": "web", "endpoint": "https://a/", "tags": {"Bad Key": "x"}}),
            "tags",
        ),
        (
            json!({"name": "web", "endpoint": "https://a/", "tags": {"k": long}}),
            "tags",
        ),
        (
            json!({"name": "web", "endpoint": "https://a/", "description": "d".repeat(1001)}),
            "description",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = call(
            &app,
            Method::POST,
            "/api/v1/servers",
            &admin,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{body}: {message}");
    }
    let (status, _) = call(
        &app,
        Method::POST,
        "/api/v1/servers",
        &admin,
        Some(json!({"name": "web"})),
    )
    .await;
    assert_eq!(status, 400, "endpoint is required");
    for (query, field) in [
        ("tag=envprod", "tag"),
        ("tag=Bad%20Key:x", "tag"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("cursor=%%%", "cursor"),
        ("name_prefix=UP", "name_prefix"),
        ("owner=me", "owner"),
    ] {
        let (status, answer) = call(
            &app,
            Method::GET,
            &format!("/api/v1/servers?{query}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{field}`")),
            "{query}: {answer}"
        );
    }
    let (status, _) = call(
        &app,
        Method::PATCH,
        "/api/v1/servers/ghost",
        &admin,
        Some(json!({"endpoint": "https://a/"})),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        Method::PATCH,
        "/api/v1/servers/ghost",
        &admin,
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, 400, "a name cannot be patched");
    app.stop().await;
}
