//! SAML 2.0 logins against the real IdP that `scripts/test` starts (pysaml2 with xmlsec1,
//! `scripts/peers/saml.sh`), and the attacks on its responses: unsigned, foreign-key,
//! expired and misaddressed assertions, replays, unlisted RelayStates and XML signature
//! wrapping.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::LOCATION;
use sark::config::Config;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, config_error, documented_config, free_port, peer_env, spawn_app_with,
};

/// The ACS URL the IdP knows; the test carries its auto-post form to the node under test.
const ACS: &str = "http://127.0.0.1:59999/api/v1/auth/saml/acs";
const APP: &str = "https://app.example.org/after-login";
/// A binding cookie an attacker planted in the browser before the login.
const PLANTED: &str = "__Host-sark_saml=planted-binding-value-0123456789abcdefghijklm";

/// The `[saml]` example of docs/providers/saml.md, pointed at the test IdP, with a fresh SP
/// key pair. The returned directory holds the key files.
fn documented_saml(metadata_url: &str) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .or_else(|_| rcgen::KeyPair::generate())
        .unwrap();
    let cert = rcgen::CertificateParams::new(vec!["sark.example.org".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (key_file, cert_file) = (dir.path().join("sp.key"), dir.path().join("sp.crt"));
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    let config = documented_config(
        "providers/saml.md",
        &[
            ("http://127.0.0.1:58080/idp/metadata", metadata_url),
            ("/etc/sark/saml-sp.key", key_file.to_str().unwrap()),
            ("/etc/sark/saml-sp.crt", cert_file.to_str().unwrap()),
        ],
        dir.path(),
    );
    (config, dir)
}

async fn saml_app_at(metadata_url: &str) -> (TestApp, tempfile::TempDir) {
    let (documented, keys) = documented_saml(metadata_url);
    let app = spawn_app_with(|c| {
        c.saml = documented.saml;
        c.auth.allowed_redirects = documented.auth.allowed_redirects;
    })
    .await;
    app.wait_ready().await;
    (app, keys)
}

async fn saml_app() -> (TestApp, tempfile::TempDir) {
    saml_app_at(&peer_env("TEST_SAML_METADATA_URL")).await
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of the hidden form field `name` in the IdP's auto-post page.
fn form_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(
        html[start..end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#x3D;", "=")
            .replace("&#61;", "=")
            .replace("&amp;", "&"),
    )
}

/// A login started at the node in a fresh browser and answered by the IdP (`variant`
/// selects a misbehaving answer): the SAMLResponse XML, the RelayState the IdP posts back,
/// and the browser's binding cookie (`name=value`).
async fn idp_response(
    app: &TestApp,
    relay: Option<&str>,
    variant: Option<&str>,
) -> (String, Option<String>, String) {
    let mut login = url::Url::parse(&app.url("/api/v1/auth/saml/login")).unwrap();
    if let Some(relay) = relay {
        login.query_pairs_mut().append_pair("relay_state", relay);
    }
    let response = no_redirects()
        .get(login.as_str())
        .header(reqwest::header::COOKIE, PLANTED)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302, "{}", response.text().await.unwrap());
    let set_cookie = response.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap();
    let (browser, attributes) = set_cookie.split_once("; ").unwrap();
    assert!(browser.starts_with("__Host-sark_saml="), "{set_cookie}");
    assert_ne!(browser, PLANTED, "a planted binding is never taken over");
    assert!(attributes.contains("Path=/;"), "{set_cookie}");
    assert!(attributes.contains("SameSite=None; Secure"), "{set_cookie}");
    let browser = browser.to_owned();
    let mut sso = url::Url::parse(response.headers()[LOCATION].to_str().unwrap()).unwrap();
    assert!(
        sso.query_pairs().any(|(k, _)| k == "Signature"),
        "signed AuthnRequest"
    );
    if let Some(variant) = variant {
        sso.query_pairs_mut().append_pair("variant", variant);
    }
    let page = no_redirects()
        .get(sso.as_str())
        .basic_auth("test.user", Some("testpass"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let encoded = form_field(&html, "SAMLResponse").expect("a SAMLResponse in the form");
    let xml = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
    (
        xml,
        form_field(&html, "RelayState").filter(|r| !r.is_empty()),
        browser,
    )
}

/// Posts to the ACS from the browser whose cookie header is `cookie`.
async fn post_acs_from(
    app: &TestApp,
    cookie: &str,
    xml: &str,
    relay: Option<&str>,
) -> reqwest::Response {
    let encoded = STANDARD.encode(xml);
    let mut form = vec![("SAMLResponse", encoded.as_str())];
    if let Some(relay) = relay {
        form.push(("RelayState", relay));
    }
    no_redirects()
        .post(app.url("/api/v1/auth/saml/acs"))
        .header(reqwest::header::COOKIE, cookie)
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// The reason of the newest `login_failed` event.
async fn last_reason(app: &TestApp) -> String {
    app.audit_events(50)
        .await
        .into_iter()
        .find(|e| e.event.event_type == "login_failed")
        .and_then(|e| e.event.details["reason"].as_str().map(str::to_owned))
        .expect("a login_failed event")
}

/// Posts `xml` (described by `what`) from `browser` and expects 401 with an audit event
/// for `reason`.
async fn refused(app: &TestApp, browser: &str, what: &str, xml: &str, reason: &str) {
    let response = post_acs_from(app, browser, xml, None).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 401, "{what}: {body}");
    assert_eq!(body["error"]["code"], "saml_login_failed", "{what}");
    assert_eq!(last_reason(app).await, reason, "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_response_logs_in_and_a_replay_is_refused() {
    let (app, _keys) = saml_app().await;
    let (xml, relay, browser) = idp_response(&app, None, None).await;
    assert_eq!(relay, None);
    let response = post_acs_from(&app, &browser, &xml, None).await;
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["user"]["username"], "saml:test.user");
    assert_eq!(tokens["user"]["role"], "admin", "sark-admins maps to admin");
    assert_eq!(tokens["user"]["email"], "test.user@example.org");
    let (status, me) = app
        .get_as("/api/v1/auth/me", tokens["access_token"].as_str().unwrap())
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["auth_method"], "saml");

    refused(&app, &browser, "a replay", &xml, "assertion_replayed").await;

    let (_, providers) = app.get_json("/api/v1/auth/providers").await;
    assert!(
        providers["providers"].as_array().unwrap().contains(
            &json!({"id": "saml", "type": "saml", "enabled": true, "login_url": "/api/v1/auth/saml/login"})
        ),
        "{providers}"
    );
    let metadata = app
        .get("/api/v1/auth/saml/metadata")
        .await
        .text()
        .await
        .unwrap();
    for part in [
        "entityID=\"urn:sark:sp\"",
        &format!("Location=\"{ACS}\""),
        "WantAssertionsSigned=\"true\"",
        "AuthnRequestsSigned=\"true\"",
        "<ds:X509Certificate>",
    ] {
        assert!(metadata.contains(part), "{part} in {metadata}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_posted_from_another_browser_is_refused() {
    let (app, _keys) = saml_app().await;
    // Login CSRF: the attacker's own valid response, posted from the victim's browser.
    for cookie in ["", PLANTED] {
        let (xml, _, _) = idp_response(&app, None, None).await;
        let response = post_acs_from(&app, cookie, &xml, None).await;
        assert_eq!(response.status(), 401, "cookie {cookie:?}");
        assert_eq!(last_reason(&app).await, "browser_mismatch");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_may_be_on_the_response_or_on_the_assertion() {
    let (app, _keys) = saml_app().await;
    for variant in ["assertion_only", "response_only"] {
        let (xml, _, browser) = idp_response(&app, None, Some(variant)).await;
        let response = post_acs_from(&app, &browser, &xml, None).await;
        let status = response.status();
        let body = response.text().await.unwrap();
        // The IdP's document goes with a refusal: an intermittent one is diagnosable only
        // from what was refused.
        assert_eq!(status, 200, "{variant}: {body}\nthe IdP's response:\n{xml}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_state_gets_a_login_code_and_an_unlisted_one_is_refused() {
    let (app, _keys) = saml_app().await;
    let (xml, relay, browser) = idp_response(&app, Some(APP), None).await;
    assert_eq!(relay.as_deref(), Some(APP));
    let response = post_acs_from(&app, &browser, &xml, relay.as_deref()).await;
    assert_eq!(response.status(), 302);
    let to = response.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(to.starts_with(APP), "{to}");
    let code = url::Url::parse(&to)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let exchanged = app
        .post("/api/v1/auth/exchange", &json!({"code": code}), None)
        .await;
    assert_eq!(exchanged.status(), 200);

    // A RelayState off the allow-list: refused before the response is even looked at.
    let (xml, _, browser) = idp_response(&app, Some(APP), None).await;
    let response =
        post_acs_from(&app, &browser, &xml, Some("https://evil.example.net/steal")).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "redirect_not_allowed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("RelayState")
    );
    assert_eq!(last_reason(&app).await, "relay_state");
    // ... and at the start of a login.
    let response = no_redirects()
        .get(app.url("/api/v1/auth/saml/login?relay_state=https%3A%2F%2Fevil.example.net%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_foreign_expired_and_misaddressed_assertions_are_refused() {
    let (app, _keys) = saml_app().await;
    for (variant, reason) in [
        ("unsigned", "unsigned"),
        ("foreign_key", "invalid_signature"),
        ("expired", "expired"),
        ("audience", "audience"),
    ] {
        let (xml, _, browser) = idp_response(&app, None, Some(variant)).await;
        refused(&app, &browser, variant, &xml, reason).await;
    }
    let users = app
        .get_as("/api/v1/users", &app.admin_token().await)
        .await
        .1;
    assert!(
        !users.to_string().contains("saml:"),
        "no account was provisioned: {users}"
    );
    app.stop().await;
}

/// The one `<prefix:Assertion …>…</prefix:Assertion>` of `xml`, and where it is.
fn assertion_span(xml: &str) -> (usize, usize, String) {
    let open = xml.find(":Assertion ").expect("an Assertion");
    let start = xml[..open].rfind('<').unwrap();
    let prefix = &xml[start + 1..open];
    let close = format!("</{prefix}:Assertion>");
    let end = xml.find(&close).unwrap() + close.len();
    (start, end, prefix.to_owned())
}

/// A copy of the signed assertion with a new ID, another subject and no signature: what
/// an attacker wants the SP to read.
fn evil_copy(assertion: &str, new_id: Option<&str>) -> String {
    let mut evil = assertion.replace("test.user", "evil.user");
    if let Some(id) = new_id {
        let at = evil.find(" ID=\"").unwrap() + 5;
        let end = evil[at..].find('"').unwrap() + at;
        evil.replace_range(at..end, id);
    }
    let sig = evil
        .find(":Signature")
        .map(|i| evil[..i].rfind('<').unwrap());
    if let Some(sig_start) = sig {
        let tag = &evil[sig_start + 1..evil[sig_start..].find(' ').unwrap() + sig_start];
        let close = format!("</{tag}>");
        let sig_end = evil.find(&close).unwrap() + close.len();
        evil.replace_range(sig_start..sig_end, "");
    }
    evil
}

/// A description, a rewrite of a good response, and the audit reason of its refusal.
type Attack = (&'static str, fn(&str) -> String, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_wrapping_attacks_are_refused() {
    let (app, _keys) = saml_app().await;
    // Built on responses whose assertion alone is signed, so moving things around the
    // envelope breaks no other signature.
    let attacks: [Attack; 5] = [
        (
            "an unsigned assertion before the signed one",
            |xml: &str| {
                let (start, end, _) = assertion_span(xml);
                let evil = evil_copy(&xml[start..end], Some("_evil1"));
                format!("{}{evil}{}", &xml[..start], &xml[start..])
            },
            "multiple_assertions",
        ),
        (
            "an unsigned assertion after the signed one",
            |xml: &str| {
                let (start, end, _) = assertion_span(xml);
                let evil = evil_copy(&xml[start..end], Some("_evil2"));
                format!("{}{evil}{}", &xml[..end], &xml[end..])
            },
            "multiple_assertions",
        ),
        (
            "the signed assertion moved inside an unsigned one that takes its place",
            |xml: &str| {
                let (start, end, prefix) = assertion_span(xml);
                let signed = &xml[start..end];
                let evil = evil_copy(signed, Some("_evil3"));
                let close = format!("</{prefix}:Assertion>");
                let wrapped = format!(
                    "{}<{prefix}:Advice>{signed}</{prefix}:Advice>{close}",
                    &evil[..evil.len() - close.len()]
                );
                format!("{}{wrapped}{}", &xml[..start], &xml[end..])
            },
            "multiple_assertions",
        ),
        (
            "an unsigned assertion with the signed one's ID, the signed one in Extensions",
            |xml: &str| {
                let (start, end, _) = assertion_span(xml);
                let signed = &xml[start..end];
                let evil = evil_copy(signed, None);
                let response_open = xml[..xml.find(":Response ").unwrap()].rfind('<').unwrap();
                let response_open_end = xml[response_open..].find('>').unwrap() + response_open + 1;
                let head = &xml[..response_open_end];
                let protocol_prefix = &xml
                    [response_open + 1..response_open + xml[response_open..].find(':').unwrap()];
                let extensions = format!(
                    "<{protocol_prefix}:Extensions>{signed}</{protocol_prefix}:Extensions>"
                );
                format!(
                    "{head}{extensions}{}{evil}{}",
                    &xml[response_open_end..start],
                    &xml[end..]
                )
            },
            "multiple_assertions",
        ),
        (
            "the signed assertion replaced by an unsigned one",
            |xml: &str| {
                let (start, end, _) = assertion_span(xml);
                let evil = evil_copy(&xml[start..end], None);
                format!("{}{evil}{}", &xml[..start], &xml[end..])
            },
            "unsigned",
        ),
    ];
    for (what, attack, reason) in attacks {
        let (xml, _, browser) = idp_response(&app, None, Some("assertion_only")).await;
        refused(&app, &browser, what, &attack(&xml), reason).await;
    }
    // On a fully signed response the envelope signature breaks as well.
    let (xml, _, browser) = idp_response(&app, None, None).await;
    let (start, end, _) = assertion_span(&xml);
    let evil = evil_copy(&xml[start..end], None);
    refused(
        &app,
        &browser,
        "the assertion of a signed response replaced",
        &format!("{}{evil}{}", &xml[..start], &xml[end..]),
        "invalid_signature",
    )
    .await;
    // A tampered signed assertion.
    let (xml, _, browser) = idp_response(&app, None, Some("assertion_only")).await;
    let tampered = xml.replacen("test.user@example.org", "evil@example.org", 1);
    refused(
        &app,
        &browser,
        "a tampered assertion",
        &tampered,
        "invalid_signature",
    )
    .await;

    let users = app
        .get_as("/api/v1/users", &app.admin_token().await)
        .await
        .1;
    assert!(!users.to_string().contains("evil"), "{users}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_acs_input_is_a_400_naming_the_field() {
    let (app, _keys) = saml_app().await;
    let client = no_redirects();
    for (form, field) in [
        (vec![("RelayState", APP)], "SAMLResponse"),
        (vec![("SAMLResponse", "%%%not-base64")], "SAMLResponse"),
        (vec![("SAMLResponse", "PHg+"), ("Other", "1")], "Other"),
    ] {
        let response = client
            .post(app.url("/api/v1/auth/saml/acs"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{form:?}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    // Entity expansion and external entities are refused with the DTD.
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol">&b;</samlp:Response>"#;
    refused(&app, PLANTED, "entity expansion", bomb, "malformed").await;
    refused(&app, PLANTED, "broken XML", "<unclosed>", "malformed").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_idp_is_reported_and_answers_503() {
    let metadata = format!("http://127.0.0.1:{}/idp/metadata", free_port());
    let (app, _keys) = saml_app_at(&metadata).await;
    let response = no_redirects()
        .get(app.url("/api/v1/auth/saml/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "saml_unavailable");
    let (_, health) = app.get_json("/health/detailed").await;
    assert_eq!(health["services"]["saml"], "DOWN", "{health}");
    assert_eq!(health["status"], "degraded");
    app.stop().await;
}

#[test]
fn incomplete_saml_configuration_names_the_missing_key() {
    let err = config_error(&[
        ("SARK_SAML__SP_ENTITY_ID", "urn:sark:sp"),
        ("SARK_SAML__ACS_URL", ACS),
    ]);
    assert!(err.contains("saml.idp_metadata_url"), "{err}");
    let err = config_error(&[("SARK_SAML__IDP_METADATA_URL", "http://127.0.0.1:1/md")]);
    assert!(err.contains("sp_entity_id"), "{err}");
}

/// One SAML node, one runtime and one genuine signed response for every case of the fuzz
/// property.
struct FuzzTarget {
    runtime: tokio::runtime::Runtime,
    app: TestApp,
    _keys: tempfile::TempDir,
    xml: String,
    browser: String,
}

fn fuzz_target() -> &'static FuzzTarget {
    static TARGET: std::sync::OnceLock<FuzzTarget> = std::sync::OnceLock::new();
    TARGET.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (app, keys, xml, browser) = runtime.block_on(async {
            let (app, keys) = saml_app().await;
            // The set-up works: a genuine response of the same kind logs in.
            let (xml, _, browser) = idp_response(&app, None, Some("assertion_only")).await;
            let accepted = post_acs_from(&app, &browser, &xml, None).await;
            assert_eq!(accepted.status(), 200);
            let (xml, _, browser) = idp_response(&app, None, Some("assertion_only")).await;
            (app, keys, xml, browser)
        });
        FuzzTarget {
            runtime,
            app,
            _keys: keys,
            xml,
            browser,
        }
    })
}

impl FuzzTarget {
    /// Posts `xml` from the browser that started the login: the status, and the username
    /// of a login it made.
    fn post(&self, xml: &str) -> (u16, Option<String>) {
        self.runtime.block_on(async {
            let response = post_acs_from(&self.app, &self.browser, xml, None).await;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let user = body["user"]["username"].as_str().map(str::to_owned);
            (status, user)
        })
    }
}

/// Snippets an attacker splices into a response.
const SPLICES: &[&str] = &[
    "<!---->",
    "<!DOCTYPE r>",
    "<saml:Assertion xmlns:saml=\"urn:oasis:names:tc:SAML:2.0:assertion\" ID=\"evil\"/>",
    "<ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"/>",
    "&amp;",
    "]]>",
    "\u{0}",
    "evil.user@example.org",
];

/// A change to a genuine response.
#[derive(Clone, Debug)]
enum Mutation {
    /// One byte replaced by a printable one.
    Byte(usize, u8),
    /// A range removed.
    Delete(usize, usize),
    /// A range copied elsewhere (the shape of signature wrapping).
    Copy(usize, usize, usize),
    /// A snippet inserted.
    Splice(usize, usize),
    /// The identity replaced at its n-th occurrence.
    Identity(usize),
}

fn mutation() -> impl proptest::strategy::Strategy<Value = Mutation> {
    use proptest::prelude::*;
    prop_oneof![
        (any::<usize>(), 0x20u8..0x7f).prop_map(|(at, b)| Mutation::Byte(at, b)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (any::<usize>(), 1usize..2048, any::<usize>())
            .prop_map(|(from, n, to)| Mutation::Copy(from, n, to)),
        (any::<usize>(), 0..SPLICES.len()).prop_map(|(at, i)| Mutation::Splice(at, i)),
        (0usize..4).prop_map(Mutation::Identity),
    ]
}

/// `xml` changed by `mutation`, on character boundaries.
fn mutate(xml: &str, mutation: &Mutation) -> String {
    let at = |n: usize| {
        let mut i = n % xml.len();
        while !xml.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match *mutation {
        Mutation::Byte(n, byte) => {
            let i = at(n);
            let next = xml[i..].chars().next().map_or(0, char::len_utf8);
            format!("{}{}{}", &xml[..i], byte as char, &xml[i + next..])
        }
        Mutation::Delete(n, len) => {
            let (i, j) = (at(n), at(n.saturating_add(len)));
            let (i, j) = (i.min(j), i.max(j));
            format!("{}{}", &xml[..i], &xml[j..])
        }
        Mutation::Copy(from, len, to) => {
            let (i, j) = (at(from), at(from.saturating_add(len)));
            let (i, j) = (i.min(j), i.max(j));
            let k = at(to);
            format!("{}{}{}", &xml[..k], &xml[i..j], &xml[k..])
        }
        Mutation::Splice(n, which) => {
            let i = at(n);
            format!("{}{}{}", &xml[..i], SPLICES[which], &xml[i..])
        }
        Mutation::Identity(nth) => {
            let mut seen = 0;
            let mut out = String::new();
            let mut rest = xml;
            while let Some(pos) = rest.find("test.user") {
                out.push_str(&rest[..pos]);
                out.push_str(if seen == nth {
                    "evil.user"
                } else {
                    "test.user"
                });
                seen += 1;
                rest = &rest[pos + "test.user".len()..];
            }
            out.push_str(rest);
            out
        }
    }
}

#[test]
fn the_saml_corpus_is_refused_with_a_4xx() {
    let t = fuzz_target();
    let dir = format!("{}/fuzz/corpus/saml", env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let xml = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        let (status, user) = t.post(&xml);
        assert!((400..500).contains(&status), "{}: {status}", path.display());
        assert_eq!(user, None);
    }
}

proptest::proptest! {
    /// Whatever is done to a genuine signed response, the node answers 4xx, or logs in
    /// exactly the identity the IdP signed; never a 5xx, never another identity.
    #[test]
    fn fuzz_mutated_saml_responses(change in mutation()) {
        let t = fuzz_target();
        let mutated = mutate(&t.xml, &change);
        proptest::prop_assume!(mutated != t.xml);
        let (status, user) = t.post(&mutated);
        proptest::prop_assert!(status < 500, "{:?}: {}", change, status);
        if status == 200 {
            proptest::prop_assert_eq!(user.as_deref(), Some("saml:test.user"), "{:?}", change);
        }
    }
}
