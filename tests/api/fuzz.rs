//! Fuzzing through the front door: arbitrary bearer tokens, JSON bodies and cursors sent to
//! a running node get a 4xx, never a 5xx, and never stop it answering.
//!
//! Each property runs `PROPTEST_CASES` cases (`scripts/test` bounds them); seeds that once
//! mattered live in `fuzz/corpus/<target>/` and run first; a failure found is kept by
//! proptest in `proptest-regressions/` and replayed from then on.

use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// One node and one runtime for every case of a property.
struct Target {
    runtime: tokio::runtime::Runtime,
    app: TestApp,
    admin: String,
}

fn target() -> &'static Target {
    static TARGET: OnceLock<Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (app, admin) = runtime.block_on(async {
            let app = spawn_app().await;
            let admin = app.admin_token().await;
            (app, admin)
        });
        Target {
            runtime,
            app,
            admin,
        }
    })
}

/// The files of corpus `name`.
fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = format!("{}/fuzz/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect()
}

/// Routes that take a JSON body, with the method; sent as the admin.
const JSON_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/mfa/verify"),
    ("POST", "/api/v1/auth/password"),
    ("POST", "/api/v1/auth/exchange"),
    ("POST", "/api/v1/users"),
    ("PATCH", "/api/v1/users/nobody"),
    ("POST", "/api/v1/api-keys"),
    ("POST", "/api/v1/policies/test"),
    ("POST", "/api/v1/authz/evaluate"),
    ("POST", "/api/v1/servers"),
    ("PATCH", "/api/v1/servers/nothing"),
];

impl Target {
    fn send(&self, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> u16 {
        self.runtime.block_on(async {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = self.app.client.request(method, self.app.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body);
            }
            request.send().await.unwrap().status().as_u16()
        })
    }

    /// The node still answers, quickly.
    fn alive(&self) -> bool {
        self.send("GET", "/health", None, None) == 200
    }
}

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("username".to_owned()),
                    Just("password".to_owned()),
                    Just("name".to_owned()),
                    Just("source".to_owned()),
                    Just("input".to_owned()),
                    Just("scopes".to_owned()),
                    Just("resource".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn the_corpora_get_4xx_from_a_running_node() {
    let t = target();
    for body in corpus("json_body") {
        for (method, path) in JSON_ROUTES {
            let status = t.send(method, path, Some(&t.admin), Some(body.clone()));
            assert!((400..500).contains(&status), "{method} {path}: {status}");
        }
    }
    for token in corpus("bearer") {
        let token = String::from_utf8_lossy(&token).into_owned();
        let status = t.send("GET", "/api/v1/auth/me", Some(&token), None);
        assert_eq!(status, 401, "{token}");
    }
    for cursor in corpus("cursor") {
        let cursor = String::from_utf8_lossy(&cursor).into_owned();
        let path = format!("/api/v1/users?cursor={}", urlencode(&cursor));
        let status = t.send("GET", &path, Some(&t.admin), None);
        assert!([200, 400].contains(&status), "{cursor}: {status}");
    }
    assert!(t.alive());
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

proptest! {
    #[test]
    fn fuzz_json_bodies_of_every_route(body in json_value(), route in 0..JSON_ROUTES.len()) {
        let t = target();
        let (method, path) = JSON_ROUTES[route];
        let status = t.send(method, path, Some(&t.admin), Some(serde_json::to_vec(&body).unwrap()));
        prop_assert!(status < 500, "{method} {path} {body}: {status}");
    }

    #[test]
    fn fuzz_raw_bodies(body in prop::collection::vec(any::<u8>(), 0..512), route in 0..JSON_ROUTES.len()) {
        let t = target();
        let (method, path) = JSON_ROUTES[route];
        let status = t.send(method, path, Some(&t.admin), Some(body));
        prop_assert!((400..500).contains(&status), "{method} {path}: {status}");
    }

    #[test]
    fn fuzz_bearer_tokens(token in "[A-Za-z0-9_.=+/-]{0,400}") {
        let t = target();
        let status = t.send("GET", "/api/v1/auth/me", Some(&token), None);
        prop_assert_eq!(status, 401, "{}", token);
    }

    #[test]
    fn fuzz_mutated_access_tokens(position in 0usize..400, byte in any::<u8>()) {
        let t = target();
        let mut token = t.admin.clone().into_bytes();
        // Not the last characters: their unused low bits may decode to the same signature.
        let at = position % (token.len() - 3);
        prop_assume!(token[at] != byte && byte.is_ascii_graphic());
        token[at] = byte;
        let token = String::from_utf8(token).unwrap();
        let status = t.send("GET", "/api/v1/auth/me", Some(&token), None);
        prop_assert!(status == 401 || status == 400, "{}: {}", token, status);
    }

    #[test]
    fn fuzz_cursors(cursor in "(?s).{0,600}") {
        let t = target();
        let path = format!("/api/v1/users?cursor={}", urlencode(&cursor));
        let status = t.send("GET", &path, Some(&t.admin), None);
        prop_assert!(status == 200 || status == 400, "{:?}: {}", cursor, status);
    }
}
