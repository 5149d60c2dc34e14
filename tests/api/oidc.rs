//! OpenID Connect logins against the real provider that `scripts/test` starts
//! (npm oidc-provider, `scripts/peers/oidc.sh`), driven headlessly: a test "browser" with
//! its own cookie jar follows the redirects between the node and the provider.

use std::collections::BTreeMap;

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use sark::config::{Config, OidcConfig};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, config_error, documented_config, free_port, peer_env, spawn_app_with,
};

/// The callback URL registered at the provider. Nothing listens on it: the browser below
/// carries the provider's redirect to the node under test.
const CALLBACK: &str = "http://127.0.0.1:59999/api/v1/auth/oidc/callback";
/// The allow-listed application that receives login codes.
const APP: &str = "https://app.example.org/after-login";

/// The `[oidc]` example of docs/providers/oidc.md, pointed at the test provider.
fn documented_oidc() -> Config {
    let dir = tempfile::tempdir().unwrap();
    let issuer = peer_env("TEST_OIDC_ISSUER");
    documented_config(
        "providers/oidc.md",
        &[("http://127.0.0.1:59000", &issuer)],
        dir.path(),
    )
}

async fn oidc_app_with(adjust: impl FnOnce(&mut OidcConfig)) -> TestApp {
    let documented = documented_oidc();
    let mut oidc = documented.oidc.expect("it configures OIDC");
    adjust(&mut oidc);
    let app = spawn_app_with(|c| {
        c.oidc = Some(oidc);
        c.auth.allowed_redirects = documented.auth.allowed_redirects;
        c.auth.lockout_threshold = 3;
    })
    .await;
    app.wait_ready().await;
    app
}

async fn oidc_app() -> TestApp {
    oidc_app_with(|_| {}).await
}

/// A browser: follows nothing by itself, keeps cookies by name.
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(SET_COOKIE) {
            let pair = value.to_str().unwrap().split(';').next().unwrap();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, url: &str) -> reqwest::Response {
        let response = self
            .http
            .get(url)
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let response = self
            .http
            .post(url)
            .header(COOKIE, self.cookie_header())
            .form(form)
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }
}

fn location(response: &reqwest::Response, base: &str) -> String {
    let to = response
        .headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location in a {} answer", response.status()))
        .to_str()
        .unwrap();
    url::Url::parse(base).unwrap().join(to).unwrap().to_string()
}

fn param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Logs in at the provider from its authorization URL and returns where the provider
/// sends the browser back (the callback URL with `code` and `state`, or an error).
async fn at_provider(browser: &mut Browser, authorize: &str, user: &str, password: &str) -> String {
    let issuer = peer_env("TEST_OIDC_ISSUER");
    let response = browser.get(authorize).await;
    assert_eq!(response.status(), 303, "{}", response.text().await.unwrap());
    let interaction = location(&response, &issuer);
    let response = browser
        .post_form(&interaction, &[("username", user), ("password", password)])
        .await;
    assert_eq!(response.status(), 303);
    let resume = location(&response, &issuer);
    let response = browser.get(&resume).await;
    assert_eq!(response.status(), 303);
    location(&response, &issuer)
}

/// Starts a login at the node; returns the provider's authorization URL.
async fn start(app: &TestApp, browser: &mut Browser, redirect: Option<&str>) -> String {
    let mut url = url::Url::parse(&app.url("/api/v1/auth/oidc/login")).unwrap();
    if let Some(redirect) = redirect {
        url.query_pairs_mut().append_pair("redirect_uri", redirect);
    }
    let response = browser.get(url.as_str()).await;
    assert_eq!(response.status(), 302, "{}", response.text().await.unwrap());
    assert!(
        browser.cookies.contains_key("sark_login"),
        "binding cookie set"
    );
    location(&response, &app.url("/"))
}

/// Carries the provider's redirect (to the registered callback) to the node.
async fn callback(app: &TestApp, browser: &mut Browser, back: &str) -> reqwest::Response {
    let query = url::Url::parse(back)
        .unwrap()
        .query()
        .unwrap_or_default()
        .to_owned();
    assert!(back.starts_with(CALLBACK), "{back}");
    browser
        .get(&app.url(&format!("/api/v1/auth/oidc/callback?{query}")))
        .await
}

/// A whole login; the node's answer to the callback.
async fn full_login(app: &TestApp, redirect: Option<&str>) -> (Browser, reqwest::Response, String) {
    let mut browser = Browser::new();
    let authorize = start(app, &mut browser, redirect).await;
    let back = at_provider(&mut browser, &authorize, "test.user", "testpass").await;
    let response = callback(app, &mut browser, &back).await;
    (browser, response, back)
}

async fn audit_reasons(app: &TestApp) -> Vec<String> {
    app.audit_events(100)
        .await
        .into_iter()
        .filter(|e| e.event.event_type == "login_failed")
        .filter_map(|e| e.event.details["reason"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_without_a_redirect_answers_the_token_response() {
    let app = oidc_app().await;
    let (_, response, _) = full_login(&app, None).await;
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["user"]["username"], "oidc:test.user");
    assert_eq!(
        tokens["user"]["role"], "admin",
        "groups sark-admins maps to admin"
    );
    assert_eq!(tokens["user"]["email"], "test.user@example.org");
    let access = tokens["access_token"].as_str().unwrap();
    let (status, me) = app.get_as("/api/v1/auth/me", access).await;
    assert_eq!(status, 200);
    assert_eq!(me["auth_method"], "oidc");

    // The same subject logs in to the same account.
    let (_, again, _) = full_login(&app, None).await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["user"]["user_id"], tokens["user"]["user_id"]);

    let (_, providers) = app.get_json("/api/v1/auth/providers").await;
    assert!(
        providers["providers"]
            .as_array()
            .unwrap()
            .contains(&json!({"id": "oidc", "type": "oidc", "enabled": true, "login_url": "/api/v1/auth/oidc/login"})),
        "{providers}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_with_an_allowed_redirect_hands_over_a_one_time_code() {
    let app = oidc_app().await;
    let (_, response, _) = full_login(&app, Some(APP)).await;
    assert_eq!(response.status(), 302);
    let to = location(&response, &app.url("/"));
    assert!(to.starts_with(APP), "{to}");
    let code = param(&to, "code").expect("a login code");
    let exchange = |code: String| {
        let app = &app;
        async move {
            let response = app
                .post("/api/v1/auth/exchange", &json!({"code": code}), None)
                .await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, tokens) = exchange(code.clone()).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["user"]["username"], "oidc:test.user");
    let (status, replay) = exchange(code).await;
    assert_eq!(status, 401, "a login code works once: {replay}");
    assert_eq!(replay["error"]["code"], "invalid_code");
    for bad in [
        json!({"code": ""}),
        json!({}),
        json!({"code": "x", "more": 1}),
    ] {
        let response = app.post("/api/v1/auth/exchange", &bad, None).await;
        assert_eq!(response.status(), 400, "{bad}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_states_and_codes_and_foreign_browsers_are_refused() {
    let app = oidc_app().await;
    let (mut browser, response, back) = full_login(&app, None).await;
    assert_eq!(response.status(), 200);

    // The same callback again: the state was used.
    let replay = callback(&app, &mut browser, &back).await;
    assert_eq!(replay.status(), 401);
    assert_eq!(audit_reasons(&app).await[0], "unknown_state");

    // The used code with a fresh state of the same browser: the provider refuses it.
    let authorize = start(&app, &mut browser, None).await;
    let state = param(&authorize, "state").unwrap();
    let code = param(&back, "code").unwrap();
    let forged = format!("{CALLBACK}?code={code}&state={state}");
    let response = callback(&app, &mut browser, &forged).await;
    assert_eq!(response.status(), 401, "{}", response.text().await.unwrap());
    assert_eq!(audit_reasons(&app).await[0], "code_refused");

    // A login finished in another browser than the one that started it.
    let mut victim = Browser::new();
    let authorize = start(&app, &mut victim, None).await;
    let back = at_provider(&mut victim, &authorize, "test.user", "testpass").await;
    let mut attacker = Browser::new();
    let response = callback(&app, &mut attacker, &back).await;
    assert_eq!(response.status(), 401);
    assert_eq!(audit_reasons(&app).await[0], "browser_mismatch");

    // A wrong password at the provider comes back as an error.
    let mut browser = Browser::new();
    let authorize = start(&app, &mut browser, None).await;
    let back = at_provider(&mut browser, &authorize, "test.user", "wrong").await;
    assert_eq!(param(&back, "error").as_deref(), Some("access_denied"));
    let response = callback(&app, &mut browser, &back).await;
    assert_eq!(response.status(), 401);
    assert_eq!(audit_reasons(&app).await[0], "provider_error");

    // Missing and unknown parameters are named.
    for (query, field) in [
        ("code=x", "state"),
        ("state=x", "code"),
        ("state=x&code=y&evil=1", "evil"),
    ] {
        let response = browser
            .get(&app.url(&format!("/api/v1/auth/oidc/callback?{query}")))
            .await;
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_off_the_allow_list_is_refused_before_the_provider() {
    let app = oidc_app().await;
    for bad in [
        "https://evil.example.net/after-login",
        "https://app.example.org.evil.example.net/after-login",
        "https://app.example.org/elsewhere",
        "javascript:alert(1)",
    ] {
        let mut url = url::Url::parse(&app.url("/api/v1/auth/oidc/login")).unwrap();
        url.query_pairs_mut().append_pair("redirect_uri", bad);
        let response = Browser::new().get(url.as_str()).await;
        assert_eq!(response.status(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "redirect_not_allowed", "{bad}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("redirect_uri")
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_issued_to_another_client_is_refused() {
    let app = oidc_app().await;
    let issuer = peer_env("TEST_OIDC_ISSUER");
    let mut browser = Browser::new();
    let authorize = start(&app, &mut browser, None).await;
    let nonce = param(&authorize, "nonce").unwrap();

    // A real, validly signed ID token for the client `sark-other`, with the node's nonce.
    let verifier = "a-pkce-verifier-of-the-other-client-0123456789-abcdefgh";
    let challenge = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    let mut other = url::Url::parse(&format!("{issuer}/auth")).unwrap();
    other
        .query_pairs_mut()
        .append_pair("client_id", "sark-other")
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email groups")
        .append_pair("redirect_uri", CALLBACK)
        .append_pair("state", "other-state")
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut other_browser = Browser::new();
    let back = at_provider(&mut other_browser, other.as_str(), "test.user", "testpass").await;
    let code = param(&back, "code").unwrap();
    let tokens: Value = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .basic_auth("sark-other", Some("sark-other-secret"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", verifier),
            ("redirect_uri", CALLBACK),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let foreign = tokens["id_token"].as_str().expect("an ID token").to_owned();

    // The next token response the provider sends carries that token instead.
    let response = reqwest::Client::new()
        .post(format!("{issuer}/test/substitute-id-token"))
        .body(foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let back = at_provider(&mut browser, &authorize, "test.user", "testpass").await;
    let response = callback(&app, &mut browser, &back).await;
    assert_eq!(response.status(), 401, "{}", response.text().await.unwrap());
    let event = app
        .audit_events(50)
        .await
        .into_iter()
        .find(|e| e.event.event_type == "login_failed")
        .unwrap();
    assert_eq!(event.event.details["reason"], "invalid_id_token");
    let detail = event.event.details["detail"].as_str().unwrap();
    assert!(detail.to_lowercase().contains("audience"), "{detail}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_account_cannot_log_in_through_the_provider() {
    let app = oidc_app().await;
    let (_, response, _) = full_login(&app, None).await;
    assert_eq!(response.status(), 200);
    let admin = app.admin_token().await;
    let response = app
        .call(
            reqwest::Method::PATCH,
            "/api/v1/users/oidc:test.user",
            &admin,
            Some(&json!({"is_active": false})),
        )
        .await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let (_, response, _) = full_login(&app, None).await;
    assert_eq!(response.status(), 401);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mfa_and_lockout_apply_to_provider_logins() {
    let app = oidc_app().await;
    let (_, response, _) = full_login(&app, None).await;
    let tokens: Value = response.json().await.unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    let enrollment: Value = app
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/mfa/totp/enroll",
            access,
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let secret = enrollment["secret"].as_str().unwrap();
    #[allow(clippy::disallowed_methods)]
    let now = chrono::Utc::now().timestamp();
    let confirmed = app
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/mfa/totp/confirm",
            access,
            Some(&json!({"code": crate::helpers::oathtool(secret, now)})),
        )
        .await;
    assert_eq!(confirmed.status(), 200);

    // The provider's word is the first factor; the second is still asked for.
    let (_, response, _) = full_login(&app, None).await;
    assert_eq!(response.status(), 200);
    let challenge: Value = response.json().await.unwrap();
    assert_eq!(challenge["mfa_required"], true, "{challenge}");
    let verify = |code: &'static str| {
        let app = &app;
        let id = challenge["challenge_id"].clone();
        async move {
            app.post(
                "/api/v1/auth/mfa/verify",
                &json!({"challenge_id": id, "code": code}),
                None,
            )
            .await
            .status()
        }
    };
    assert_eq!(verify("000000").await, 401);
    assert_eq!(verify("000001").await, 401);
    assert_eq!(
        verify("000002").await,
        423,
        "the third wrong code locks the account"
    );
    // Locked: the provider vouching for the user again does not help.
    let (_, response, _) = full_login(&app, None).await;
    assert_eq!(response.status(), 423);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_is_reported_and_answers_503() {
    let app = oidc_app_with(|oidc| {
        oidc.issuer = format!("http://127.0.0.1:{}", free_port());
        oidc.timeout_seconds = 1;
    })
    .await;
    let response = Browser::new()
        .get(&app.url("/api/v1/auth/oidc/login"))
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "oidc_unavailable");
    let (_, health) = app.get_json("/health/detailed").await;
    assert_eq!(health["services"]["oidc"], "DOWN", "{health}");
    assert_eq!(health["status"], "degraded");
    app.stop().await;
}

#[test]
fn incomplete_oidc_configuration_names_the_missing_key() {
    let err = config_error(&[("SARK_OIDC__ISSUER", "https://idp.example.org")]);
    assert!(err.contains("client_id"), "{err}");
    let with_issuer = |issuer| {
        config_error(&[
            ("SARK_OIDC__ISSUER", issuer),
            ("SARK_OIDC__CLIENT_ID", "sark"),
            ("SARK_OIDC__CLIENT_SECRET", "s"),
            (
                "SARK_OIDC__REDIRECT_URL",
                "https://sark.example.org/api/v1/auth/oidc/callback",
            ),
        ])
    };
    let err = with_issuer("idp.example.org");
    assert!(err.contains("oidc.issuer"), "{err}");
    let err = with_issuer("http://idp.example.org");
    assert!(
        err.contains("oidc.issuer") && err.contains("https"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_binding_is_never_reused_and_a_provider_error_is_not_echoed() {
    let app = oidc_app().await;
    let mut browser = Browser::new();
    let planted = "P".repeat(43);
    browser
        .cookies
        .insert("sark_login".to_owned(), planted.clone());
    start(&app, &mut browser, None).await;
    let minted = browser.cookies["sark_login"].clone();
    assert_ne!(minted, planted, "a fresh binding for every login");
    assert_eq!(minted.len(), 43);
    start(&app, &mut browser, None).await;
    assert_ne!(browser.cookies["sark_login"], minted, "and again");

    let authorize = start(&app, &mut browser, None).await;
    let state = param(&authorize, "state").unwrap();
    let hostile = format!("<script>alert(1)</script>{}", "x".repeat(500));
    let mut url = url::Url::parse(&app.url("/api/v1/auth/oidc/callback")).unwrap();
    url.query_pairs_mut()
        .append_pair("state", &state)
        .append_pair("error", &hostile);
    let response = browser.get(url.as_str()).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_client_error(), "{status} {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("an unrecognised error") && !message.contains("script"),
        "{message}"
    );
    let events = app.audit_events(100).await;
    assert!(
        events
            .iter()
            .all(|e| !e.event.details.to_string().contains("<script>")),
        "the provider's text stays out of the audit log"
    );
    let mut url = url::Url::parse(&app.url("/api/v1/auth/oidc/callback")).unwrap();
    let authorize = start(&app, &mut browser, None).await;
    url.query_pairs_mut()
        .append_pair("state", &param(&authorize, "state").unwrap())
        .append_pair("error", "access_denied");
    let response = browser.get(url.as_str()).await;
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("access_denied"),
        "{body}"
    );
    app.stop().await;
}
