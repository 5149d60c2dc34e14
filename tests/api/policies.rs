//! Policy bundles over the API: upload, versions, rollback, tests, evaluation, the decision
//! cache, and SARK's own routes guarded by the `authorization` bundle.

use std::time::Duration;

use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{TestApp, poll, spawn_app, spawn_app_with};

const PASSWORD: &str = "violet kettle swims at dawn";

/// The policy of the handoff document SARK descends from, in Rego v0 syntax.
const HANDOFF: &str = "package sark.authz\n\
allow { input.user.role == \"admin\" }\n\
allow { input.action == \"read\"; input.user.role == \"viewer\" }\n";

async fn upload(app: &TestApp, token: &str, name: &str, source: &str) -> reqwest::Response {
    let form = Form::new()
        .text("name", name.to_owned())
        .text("description", "uploaded by a test")
        .part(
            "file",
            Part::bytes(source.as_bytes().to_vec()).file_name(format!("{name}.rego")),
        );
    app.client
        .post(app.url("/api/v1/policies"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn evaluate(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    json_of(
        app.call(Method::POST, "/api/v1/authz/evaluate", token, Some(&body))
            .await,
    )
    .await
}

fn token(tokens: &Value) -> String {
    tokens["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_handoff_policy_uploads_as_written_and_decides_server_deletes() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "vera", "viewer", PASSWORD).await;

    let (status, body) = json_of(upload(&app, &admin, "authorization", HANDOFF).await).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "authorization");
    assert_eq!(body["version"], 2);
    assert_eq!(body["sha256"].as_str().unwrap().len(), 64);
    assert!(body["activated_at"].is_string() && body["propagation_ms"].is_u64());

    let delete = |user: Option<&str>| {
        let mut body = json!({"resource": "servers", "action": "delete"});
        if let Some(user) = user {
            body["user_id"] = json!(user);
        }
        body
    };
    let (status, decision) = evaluate(&app, &admin, delete(None)).await;
    assert_eq!(status, 200, "{decision}");
    assert_eq!(decision["allowed"], true);
    assert_eq!(decision["policy"], "authorization");
    assert_eq!(decision["policy_version"], 2);
    let (_, decision) = evaluate(&app, &admin, delete(Some("vera"))).await;
    assert_eq!(decision["allowed"], false, "{decision}");
    let vera = app.create_user(&admin, "vic", "viewer", PASSWORD).await;
    let (_, decision) = evaluate(&app, &admin, delete(vera["user_id"].as_str())).await;
    assert_eq!(
        decision["allowed"], false,
        "a user id works as well: {decision}"
    );
    let (status, _) = evaluate(&app, &admin, delete(Some("nobody-here"))).await;
    assert_eq!(status, 404);

    // The active bundle now guards SARK's own routes: viewers may read, not evaluate.
    let viewer = token(&app.login("vera", PASSWORD).await);
    let (status, body) = evaluate(&app, &viewer, delete(None)).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = json_of(
        app.call(Method::GET, "/api/v1/policies", &viewer, None)
            .await,
    )
    .await;
    assert_eq!(
        status, 200,
        "reading is allowed to viewers by the handoff policy"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_uploads_are_refused_with_a_4xx_naming_the_problem() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let cases = [
        (
            "authorization",
            "package sark.authz\n\nallow if {\n  input.x ==\n",
            400,
            "policy_invalid",
            "line 5",
        ),
        (
            "outside",
            "package p\nallow if {\n  r := http.send({\"method\": \"get\", \"url\": \"http://127.0.0.1/\"})\n  r.status_code == 200\n}\n",
            400,
            "policy_invalid",
            "http.send",
        ),
        (
            "lookup",
            "package p\nallow if count(net.lookup_ip_addr(\"example.org\")) > 0\n",
            400,
            "policy_invalid",
            "net.lookup_ip_addr",
        ),
        (
            "authorization",
            "package sark.authz\nallow := false\n",
            400,
            "policy_would_lock_out_admins",
            "could write policies",
        ),
        (
            "authorization",
            "package sark.authz\nallow if input.user.role == \"viewer\"\n",
            400,
            "policy_would_lock_out_admins",
            "admin",
        ),
        (
            "Bad-Name",
            "package p\nallow := true\n",
            400,
            "invalid_request",
            "`name`",
        ),
        (
            "test",
            "package p\nallow := true\n",
            400,
            "invalid_request",
            "reserved",
        ),
        ("empty", "  \n", 400, "invalid_request", "`file`"),
    ];
    for (name, source, status, code, mentions) in cases {
        let (got, body) = json_of(upload(&app, &admin, name, source).await).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{name}: {message}");
    }
    // The pure net.cidr_* helpers stay allowed.
    let cidr = "package p\nallow if net.cidr_contains(\"10.0.0.0/8\", input.context.ip)\n";
    assert_eq!(upload(&app, &admin, "office", cidr).await.status(), 201);

    let big = format!("package p\n{}", "# padding\n".repeat(27_000));
    let (status, body) = json_of(upload(&app, &admin, "big", &big).await).await;
    assert_eq!(status, 413, "{body}");

    let missing_name = Form::new().part("file", Part::bytes(b"package p\n".to_vec()));
    let response = app
        .client
        .post(app.url("/api/v1/policies"))
        .bearer_auth(&admin)
        .multipart(missing_name)
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(response).await;
    assert_eq!(
        (
            status,
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("`name`")
        ),
        (400, true),
        "{body}"
    );
    let extra = Form::new()
        .text("name", "x")
        .text("owner", "me")
        .part("file", Part::bytes(b"package p\n".to_vec()));
    let response = app
        .client
        .post(app.url("/api/v1/policies"))
        .bearer_auth(&admin)
        .multipart(extra)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let not_multipart = app
        .call(
            Method::POST,
            "/api/v1/policies",
            &admin,
            Some(&json!({"name": "x"})),
        )
        .await;
    assert_eq!(not_multipart.status(), 400);

    app.create_user(&admin, "opal", "operator", PASSWORD).await;
    let operator = token(&app.login("opal", PASSWORD).await);
    let response = upload(&app, &operator, "mine", "package p\nallow := true\n").await;
    assert_eq!(
        response.status(),
        403,
        "operators may read policies, not write them"
    );

    // Nothing of the refused uploads was stored.
    let (_, versions) = json_of(
        app.call(
            Method::GET,
            "/api/v1/policies/authorization/versions",
            &admin,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(versions["items"].as_array().unwrap().len(), 1, "{versions}");
    app.stop().await;
}

#[tokio::test]
async fn versions_rollback_and_tests_of_stored_and_draft_policies() {
    let owned = spawn_app_with(|c| c.policy.eval_timeout_ms = 50).await;
    let admin = owned.admin_token().await;
    let app = &owned;
    let v1 = "package team.rules\nallow if input.team == \"blue\"\n";
    let v2 = "package team.rules\nallow if input.team == \"red\"\n";
    let (_, first) = json_of(upload(app, &admin, "team_rules", v1).await).await;
    assert_eq!(first["version"], 1, "{first}");
    let (_, second) = json_of(upload(app, &admin, "team_rules", v2).await).await;
    assert_eq!(second["version"], 2);

    let (status, versions) = json_of(
        app.call(
            Method::GET,
            "/api/v1/policies/team_rules/versions",
            &admin,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let items = versions["items"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|v| v["version"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 1]
    );
    assert_eq!(items[0]["created_by"], "admin");

    let admin = &admin;
    let rollback = |version: i64| async move {
        let body = json!({"version": version});
        app.call(
            Method::POST,
            "/api/v1/policies/team_rules/rollback",
            admin,
            Some(&body),
        )
        .await
    };
    let (status, rolled) = json_of(rollback(1).await).await;
    assert_eq!(status, 201, "{rolled}");
    assert_eq!(rolled["version"], 3);
    assert_eq!(
        rolled["sha256"], first["sha256"],
        "version 3 is version 1 again"
    );
    let (status, _) = json_of(rollback(9).await).await;
    assert_eq!(status, 400);

    let (_, shown) = json_of(
        app.call(Method::GET, "/api/v1/policies/team_rules", admin, None)
            .await,
    )
    .await;
    assert_eq!(shown["active_version"], 3);
    assert_eq!(
        shown["loaded_version"], 3,
        "active on this node before the answer"
    );
    assert_eq!(shown["source"], v1);
    let (_, list) = json_of(app.call(Method::GET, "/api/v1/policies", admin, None).await).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"team_rules") && names.contains(&"authorization"),
        "{names:?}"
    );
    assert_eq!(
        app.call(Method::GET, "/api/v1/policies/nothing", admin, None)
            .await
            .status(),
        404
    );

    let test = |body: Value| async move {
        app.call(Method::POST, "/api/v1/policies/test", admin, Some(&body))
            .await
    };
    let (status, result) =
        json_of(test(json!({"policy_name": "team_rules", "input": {"team": "blue"}})).await).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["allowed"], true);
    assert_eq!(result["result"], json!({"allow": true}));
    assert_eq!(result["policy_version"], 3);
    assert!(result["duration_us"].is_u64());

    let draft = "package draft\nallow if input.n > 2\nsize := count(input.items)\n";
    let (status, result) =
        json_of(test(json!({"source": draft, "input": {"n": 1, "items": [1, 2]}})).await).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["allowed"], false);
    assert_eq!(result["result"], json!({"size": 2}));
    assert_eq!(result["policy_version"], Value::Null);

    let slow = "package slow\nallow if count([1 | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000)]) > 0\n";
    let (status, result) = json_of(test(json!({"source": slow, "input": {}})).await).await;
    assert_eq!(status, 400, "{result}");
    assert_eq!(result["error"]["code"], "policy_timeout");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("sark_policy_evaluation_limit_exceeded_total{bundle=\"draft\"} 1"),
        "the stop is counted"
    );
    for (body, code) in [
        (
            json!({"source": "package p\nallow if http.send({})\n", "input": {}}),
            "policy_invalid",
        ),
        (
            json!({"source": "package p\nallow if {", "input": {}}),
            "policy_invalid",
        ),
        (
            json!({"policy_name": "team_rules", "source": draft, "input": {}}),
            "invalid_request",
        ),
        (json!({"policy_name": "team_rules"}), "invalid_request"),
    ] {
        let (status, result) = json_of(test(body.clone()).await).await;
        assert_eq!(
            (status, result["error"]["code"].as_str().unwrap()),
            (400, code),
            "{body}"
        );
    }
    owned.stop().await;
}

#[tokio::test]
async fn the_decision_cache_hits_never_serves_an_old_version_and_skips_clock_readers() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    let op = app.create_user(&admin, "otto", "operator", PASSWORD).await;
    let ask = json!({"user_id": op["user_id"], "resource": "servers", "action": "write"});

    let (_, first) = evaluate(&app, &admin, ask.clone()).await;
    let (_, second) = evaluate(&app, &admin, ask.clone()).await;
    assert_eq!(
        (first["allowed"].clone(), first["cached"].clone()),
        (json!(true), json!(false)),
        "{first}"
    );
    assert_eq!(
        (second["allowed"].clone(), second["cached"].clone()),
        (json!(true), json!(true)),
        "{second}"
    );

    // A new version: operators may no longer write servers. The very next answer is its.
    let stricter = "package sark.authz\nimport rego.v1\nallow if input.user.role == \"admin\"\n";
    assert_eq!(
        upload(&app, &admin, "authorization", stricter)
            .await
            .status(),
        201
    );
    let (_, after) = evaluate(&app, &admin, ask.clone()).await;
    assert_eq!(after["allowed"], false, "{after}");
    assert_eq!(after["policy_version"], 2);
    assert_eq!(after["cached"], false);

    // A bundle that reads the clock is never answered from the cache.
    let timed = "package sark.authz\nimport rego.v1\n\
        allow if input.user.role == \"admin\"\n\
        allow if {\n  input.user.role == \"operator\"\n  time.parse_rfc3339_ns(input.context.time) > 0\n}\n";
    assert_eq!(
        upload(&app, &admin, "authorization", timed).await.status(),
        201
    );
    for _ in 0..3 {
        let (_, answer) = evaluate(&app, &admin, ask.clone()).await;
        assert_eq!(
            (answer["allowed"].clone(), answer["cached"].clone()),
            (json!(true), json!(false)),
            "{answer}"
        );
        assert_eq!(answer["policy_version"], 3);
    }
    let metrics = app.metrics().await;
    assert!(
        metrics
            .contains("sark_policy_decision_cache_total{bundle=\"authorization\",result=\"hit\"}"),
        "hit/miss metrics exist"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_evaluation_that_fails_denies_is_audited_and_counted() {
    let app = spawn_app_with(|c| c.policy.eval_timeout_ms = 30).await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "olga", "operator", PASSWORD).await;
    let runaway = "package sark.authz\nimport rego.v1\n\
        allow if input.user.role == \"admin\"\n\
        allow if {\n  input.user.role == \"operator\"\n  count([1 | some x in numbers.range(1, 5000); some y in numbers.range(1, 5000)]) > 0\n}\n";
    let (status, body) = json_of(upload(&app, &admin, "authorization", runaway).await).await;
    assert_eq!(status, 201, "{body}");
    let operator = token(&app.login("olga", PASSWORD).await);
    let (status, body) = json_of(
        app.call(Method::GET, "/api/v1/policies", &operator, None)
            .await,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ran out of time"),
        "{body}"
    );

    let denials = poll(
        "the denial's audit event",
        Duration::from_secs(10),
        || async {
            let events = app.audit_events(50).await;
            let denial = events.into_iter().find(|e| {
                e.event.event_type == "authz_denied" && e.event.actor.as_deref() == Some("olga")
            })?;
            Some(denial)
        },
    )
    .await;
    assert!(
        denials.event.details["error"]
            .as_str()
            .unwrap()
            .contains("limit"),
        "{:?}",
        denials.event.details
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("sark_policy_evaluation_limit_exceeded_total{bundle=\"authorization\"}"),
        "counted"
    );
    app.stop().await;
}

#[tokio::test]
async fn no_policy_can_take_self_service_away() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    app.create_user(&admin, "sam", "viewer", PASSWORD).await;
    let admins_only = "package sark.authz\nimport rego.v1\nallow if input.user.role == \"admin\"\n";
    assert_eq!(
        upload(&app, &admin, "authorization", admins_only)
            .await
            .status(),
        201
    );

    let tokens = app.login("sam", PASSWORD).await;
    let sam = token(&tokens);
    assert_eq!(app.get_as("/api/v1/auth/me", &sam).await.0, 200);
    assert_eq!(app.get_as("/api/v1/sessions", &sam).await.0, 200);
    assert_eq!(app.get_as("/api/v1/api-keys", &sam).await.0, 200);
    let enroll = app
        .call(Method::POST, "/api/v1/auth/mfa/totp/enroll", &sam, None)
        .await;
    assert_eq!(enroll.status(), 200);
    let refreshed = app
        .post(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": tokens["refresh_token"]}),
            None,
        )
        .await;
    assert_eq!(refreshed.status(), 200);
    let sam = token(&refreshed.json().await.unwrap());
    assert_eq!(
        app.call(Method::POST, "/api/v1/auth/logout", &sam, None)
            .await
            .status(),
        200
    );
    // Resource routes follow the policy.
    let viewer = token(&app.login("sam", PASSWORD).await);
    assert_eq!(
        app.call(Method::GET, "/api/v1/policies", &viewer, None)
            .await
            .status(),
        403
    );
    app.stop().await;
}

#[tokio::test]
async fn the_admin_cli_rolls_back_in_the_store_and_nodes_follow() {
    let app = spawn_app_with(|c| c.policy.sync_seconds = 1).await;
    let admin = app.admin_token().await;
    let op = app.create_user(&admin, "oren", "operator", PASSWORD).await;
    let admins_only = "package sark.authz\nimport rego.v1\nallow if input.user.role == \"admin\"\n";
    assert_eq!(
        upload(&app, &admin, "authorization", admins_only)
            .await
            .status(),
        201
    );

    crate::helpers::sark_admin(
        &app.node().config.data_dir,
        &["policy-rollback", "authorization", "1"],
    );

    let ask = json!({"user_id": op["user_id"], "resource": "servers", "action": "write"});
    let answer = poll(
        "the node to load the rolled-back version",
        Duration::from_secs(30),
        || async {
            let (_, answer) = evaluate(&app, &admin, ask.clone()).await;
            (answer["policy_version"] == 3).then_some(answer)
        },
    )
    .await;
    assert_eq!(
        answer["allowed"], true,
        "version 1's rules are back: {answer}"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_rate_limiting_policy_shapes_the_limits_and_defaults_apply_elsewhere() {
    let app = spawn_app_with(|c| {
        c.rate_limit.unauthenticated_per_minute = 30;
        c.rate_limit.authenticated_per_minute = 1000;
    })
    .await;
    let admin = app.admin_token().await;
    let limit_of = |response: &reqwest::Response| -> u32 {
        response.headers()["ratelimit-limit"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let jwks = app.get("/.well-known/jwks.json").await;
    assert_eq!(
        limit_of(&jwks),
        30,
        "undefined in the policy: the configured default"
    );
    let login = app
        .post(
            "/api/v1/auth/login",
            &json!({"username": "nobody", "password": "x"}),
            None,
        )
        .await;
    assert_eq!(
        limit_of(&login),
        10,
        "credential routes: a third of the default"
    );

    // A new version changes the limits from the next request on.
    let custom = "package sark.rate_limiting\nimport rego.v1\nlimit := 7 if input.route == \"/.well-known/jwks.json\"\n";
    assert_eq!(
        upload(&app, &admin, "rate_limiting", custom).await.status(),
        201
    );
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = app.get("/.well-known/jwks.json").await;
        assert_eq!(limit_of(&response), 7);
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    let login = app
        .post(
            "/api/v1/auth/login",
            &json!({"username": "nobody", "password": "x"}),
            None,
        )
        .await;
    assert_eq!(limit_of(&login), 30, "no longer shaped: the default again");
    app.stop().await;
}

/// A source whose nested literals would take regorus minutes to compile.
fn nested_source(depth: usize) -> String {
    format!(
        "package x\nv := {}1{}\nallow if v\n",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[tokio::test]
async fn a_policy_built_to_hang_the_compiler_is_refused_at_once_and_nobody_waits() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for depth in [13, 40, 1000] {
        let started = std::time::Instant::now();
        let body = json!({"source": nested_source(depth), "input": {}});
        let (status, refused) = json_of(
            app.call(Method::POST, "/api/v1/policies/test", &admin, Some(&body))
                .await,
        )
        .await;
        assert_eq!(status, 400, "depth {depth}: {refused}");
        assert_eq!(refused["error"]["code"], "policy_invalid", "{refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains("12 levels"), "names the limit: {message}");
        assert!(started.elapsed() < Duration::from_secs(2), "depth {depth}");
        let (status, refused) =
            json_of(upload(&app, &admin, "deep", &nested_source(depth)).await).await;
        assert_eq!(status, 400, "upload at depth {depth}: {refused}");
    }
    // Many literals each within the depth limit are refused by their total cost.
    let many: String = (0..40)
        .map(|i| format!("v{i} := {}1{}\n", "[".repeat(12), "]".repeat(12)))
        .collect();
    let body = json!({"source": format!("package x\n{many}allow if v0\n"), "input": {}});
    let (status, refused) = json_of(
        app.call(Method::POST, "/api/v1/policies/test", &admin, Some(&body))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    // A slow draft within the bounds compiles off the async workers: the node keeps
    // answering while it runs.
    let slow: String = (0..60)
        .map(|i| format!("v{i} := {}1{}\n", "[".repeat(9), "]".repeat(9)))
        .collect();
    let body = json!({"source": format!("package x\n{slow}allow if v0\n"), "input": {}});
    let drafts = {
        let (client, url, admin) = (
            app.client.clone(),
            app.url("/api/v1/policies/test"),
            admin.clone(),
        );
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let response = client
                    .post(&url)
                    .bearer_auth(&admin)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        })
    };
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(app.get("/health").await.status(), 200);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "/health waited {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for status in drafts.await.unwrap() {
        assert!(
            [200, 503].contains(&status),
            "a draft within the bounds compiles (or waits its turn): {status}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_rate_limiting_version_that_cannot_be_cached_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin_token().await;
    for source in [
        "package sark.rate_limiting\nimport rego.v1\nlimit := 5 if time.now_ns() > 0\n",
        "package sark.rate_limiting\nimport rego.v1\nlimit := 5 if input.context.time\n",
    ] {
        let (status, refused) = json_of(upload(&app, &admin, "rate_limiting", source).await).await;
        assert_eq!(status, 400, "{source}: {refused}");
        assert_eq!(
            refused["error"]["code"], "policy_not_cacheable",
            "{refused}"
        );
    }
    let (status, _) = json_of(
        upload(
            &app,
            &admin,
            "rate_limiting",
            "package sark.rate_limiting\nimport rego.v1\nlimit := 5 if input.route == \"/x\"\n",
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "a cacheable version is taken");
    app.stop().await;
}

#[tokio::test]
async fn a_stored_bundle_over_the_bounds_is_a_reported_load_failure_not_a_node_that_does_not_start()
{
    let app = spawn_app().await;
    let data = app.stop_keeping_data().await;
    // A version written around the API, as a database writer or an older release could.
    let db = format!("sqlite://{}", data.path().join("sark.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let source = nested_source(40);
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(source.as_bytes()));
    let active: i64 = sqlx::query_scalar(
        "SELECT active_version FROM policy_bundles WHERE name = 'authorization'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO policy_versions (bundle, version, source, sha256, description, created_at, created_by) \
         SELECT bundle, version + 1, $1, $2, 'deep', created_at, created_by FROM policy_versions \
         WHERE bundle = 'authorization' AND version = $3",
    )
    .bind(&source)
    .bind(&sha)
    .bind(active)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE policy_bundles SET active_version = $1 WHERE name = 'authorization'")
        .bind(active + 1)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let dir = data.path().to_path_buf();
    let started = std::time::Instant::now();
    let app = spawn_app_with(|c| {
        c.data_dir = dir;
        c.policy.sync_seconds = 1;
    })
    .await;
    assert_eq!(app.get("/health").await.status(), 200);
    let detailed = poll(
        "the load failure to be reported",
        Duration::from_secs(10),
        || async {
            let (_, detailed) = app.get_json("/health/detailed").await;
            detailed["policy_load_failures"]["authorization"]
                .is_object()
                .then_some(detailed)
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "reported {:?} after the start",
        started.elapsed()
    );
    let failure = &detailed["policy_load_failures"]["authorization"];
    assert_eq!(failure["version"], active + 1, "{detailed}");
    assert!(
        failure["error"].as_str().unwrap().contains("12 levels"),
        "{detailed}"
    );
    assert_eq!(detailed["services"]["opa"], "DOWN", "{detailed}");
    assert_eq!(detailed["status"], "degraded", "{detailed}");
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sark_policy_load_failures_total{bundle=\"authorization\"}")),
        "{metrics}"
    );
    let (status, ready) = app.get_json("/health/ready").await;
    assert_eq!(status, 503);
    assert!(ready["failing"].to_string().contains("policies"), "{ready}");

    // The operator's way out: a rollback from the command line. It runs with the node
    // stopped: against a running SQLite node whose policy actor is failing to load, the
    // command can find the database locked (issue 13's note).
    app.stop().await;
    crate::helpers::sark_admin(
        data.path(),
        &["policy-rollback", "authorization", &active.to_string()],
    );
    let dir = data.path().to_path_buf();
    let app = spawn_app_with(|c| {
        c.data_dir = dir;
        c.policy.sync_seconds = 1;
    })
    .await;
    poll("the node to be ready", Duration::from_secs(30), || async {
        (app.get("/health/ready").await.status() == 200).then_some(())
    })
    .await;
    // The detailed view is cached for a second.
    let detailed = poll("the failure to clear", Duration::from_secs(5), || async {
        let (_, detailed) = app.get_json("/health/detailed").await;
        (detailed["policy_load_failures"] == json!({})).then_some(detailed)
    })
    .await;
    let restored = detailed["policy_versions"]["authorization"]
        .as_i64()
        .unwrap();
    assert!(
        restored > active + 1,
        "a version after the broken one: {detailed}"
    );
    app.stop().await;
    drop(data);
}
