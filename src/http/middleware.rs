//! Middleware of the front door: request context (id, access log, metrics, security
//! headers, error shape), rate limits, timeouts and the client address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Extensions, HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use tracing::{error, info, warn};

use super::AppState;
use super::errors::{ApiError, InternalDetail, REQUEST_ID};
use crate::config::ClientIpHeader;
use crate::store::ApiRequestRow;
use sark_actors::limiter::RateDecision;
use sark_actors::policy::CompiledBundle;

/// The client's address, after trusted-proxy resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Who made a request (a username), on its response, for the request log.
#[derive(Clone, Debug)]
pub struct RequestPrincipal(pub String);

/// Headers on every response, the router's and the connection layer's.
pub(crate) const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    (
        "permissions-policy",
        "accelerometer=(), camera=(), geolocation=(), microphone=(), payment=(), usb=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
];

/// The longest request target (path and query) the API reads.
pub const MAX_URI: usize = 8 * 1024;

/// The largest header section (names, values and their separators) the API reads.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// A refusal for a request target or header section over the API's limits.
fn oversized_head(req: &Request) -> Option<ApiError> {
    let uri = req
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if uri > MAX_URI {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {uri} bytes; at most {MAX_URI}"),
        ));
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (headers > MAX_HEADER_BYTES).then(|| {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the header section is {headers} bytes; at most {MAX_HEADER_BYTES}"),
        )
    })
}

/// The method as a metric label and log field: any other token (hyper accepts arbitrary
/// methods) is `OTHER`, so a client cannot create unbounded series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// An incoming `X-Request-Id` is kept when it is short and plain; otherwise a new one is made.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// Outermost middleware: gives the request an id, resolves the client address, shapes
/// every error as an API error, adds the security headers, counts the request by route
/// template, and writes one JSON access-log line.
pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id(req.headers());
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or(UNMATCHED, MatchedPath::as_str);
    let method = method_label(req.method());
    let uri = req.uri().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = peer.map(|peer| {
        let http = &state.node.config.http;
        client_ip(
            peer,
            req.headers(),
            &http.trusted_proxies,
            http.client_ip_header,
        )
    });
    if let Some(client) = client {
        req.extensions_mut().insert(ClientIp(client));
    }

    let mut response = REQUEST_ID
        .scope(id.clone(), async move {
            match oversized_head(&req) {
                Some(refusal) => refusal.into_response(),
                None => shape_error(next.run(req).await),
            }
        })
        .await;

    let headers = response.headers_mut();
    headers.reserve(SECURITY_HEADERS.len() + 3);
    for (name, value) in SECURITY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(HeaderName::from_static("x-request-id"), value);
    }
    // A draining node closes each connection after its answer, so a load balancer or a
    // client does not keep a pooled connection to a port about to close.
    if state.node.draining() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }

    let status = response.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .requests
        .with_label_values(&[method, route, status.as_str()])
        .inc();
    state
        .metrics
        .duration
        .with_label_values(&[method, route])
        .observe(elapsed.as_secs_f64());
    if !UNLIMITED_ROUTES.contains(&route) {
        state.node.request_log.record(ApiRequestRow {
            timestamp: state.node.clock.now(),
            method: method.to_owned(),
            route: route.to_owned(),
            status: status.as_u16(),
            duration_us: i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX),
            principal: response
                .extensions()
                .get::<RequestPrincipal>()
                .map(|p| p.0.clone()),
            node_id: state.node.node_id.clone(),
        });
    }
    let client = client.map(|c| c.to_string()).unwrap_or_default();
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let path = uri.path();
    if let Some(InternalDetail(detail)) = response.extensions().get::<InternalDetail>() {
        error!(target: "sark::access", request_id = id, method, route, path, status = status.as_u16(), duration_ms, client, detail, "request failed");
    } else {
        info!(target: "sark::access", request_id = id, method, route, path, status = status.as_u16(), duration_ms, client, "request");
    }
    response
}

/// Gives error responses made outside our handlers (axum's 405, a layer's 413, …) the API
/// error shape, keeping their headers.
fn shape_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, _) = response.into_parts();
    let mut shaped = ApiError::from_status(status).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

/// The client address: the peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address of the one configured header, read right to left through the trusted
/// hops. A header with an item that does not parse is ignored whole (the peer is the
/// client then): nothing falls back to a header the client controls.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: ClientIpHeader,
) -> IpAddr {
    // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain = match header {
        ClientIpHeader::XForwardedFor => forwarded_for(headers, "x-forwarded-for", parse_xff_item),
        ClientIpHeader::Forwarded => forwarded_for(headers, "forwarded", parse_forwarded_item),
    };
    let Some(chain) = chain else {
        return peer;
    };
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// Every address of header `name` (all its lines, in order); `None` when an item does
/// not parse, or when there are more than [`MAX_FORWARDED_HOPS`].
fn forwarded_for(
    headers: &HeaderMap,
    name: &str,
    parse: fn(&str) -> Option<IpAddr>,
) -> Option<Vec<IpAddr>> {
    let mut chain = Vec::new();
    for value in headers.get_all(name) {
        for item in value.to_str().ok()?.split(',') {
            if chain.len() == MAX_FORWARDED_HOPS {
                return None;
            }
            chain.push(parse(item.trim())?);
        }
    }
    Some(chain)
}

/// Hops a forwarded header may list; past that it is ignored.
const MAX_FORWARDED_HOPS: usize = 32;

fn parse_xff_item(item: &str) -> Option<IpAddr> {
    item.parse::<IpAddr>()
        .ok()
        .or_else(|| item.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// Routes that are never rate limited (nor authenticated): probes and scrapes must work
/// under any load.
pub const UNLIMITED_ROUTES: &[&str] = &["/health", "/health/ready", "/health/detailed", "/metrics"];

/// Routes that take a credential: always counted per client address, so attaching some
/// valid credential cannot move password guessing into a larger per-principal bucket.
const CREDENTIAL_ROUTES: &[&str] = &[
    "/api/v1/auth/login",
    "/api/v1/auth/login/ldap",
    "/api/v1/auth/mfa/verify",
    "/api/v1/auth/refresh",
    "/api/v1/auth/exchange",
    "/api/v1/auth/oidc/callback",
    "/api/v1/auth/saml/acs",
];

fn parse_forwarded_item(item: &str) -> Option<IpAddr> {
    item.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        if !key.eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim_matches('"');
        let value = value
            .strip_prefix('[')
            .map_or(value, |v| v.split(']').next().unwrap_or(v));
        parse_xff_item(value)
    })
}

/// The route template a request matched (`/api/v1/servers/{name}`), or `unmatched`.
fn route_of(extensions: &Extensions) -> &str {
    extensions
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
}

/// The route label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

/// Admission, inside the request context: resolves the caller, refuses requests over the
/// rate limit with 429 and `Retry-After` (reporting the bucket in `RateLimit-*` headers),
/// and answers 503 `request_timeout` when the handler takes longer than the configured
/// deadline. Health and metrics are neither authenticated nor limited. One layer, so that
/// a request pays for one middleware hop, not three.
pub async fn admit(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if UNLIMITED_ROUTES.contains(&route_of(req.extensions())) {
        return within_deadline(&state, next.run(req)).await;
    }
    let client = req.extensions().get::<ClientIp>().map(|c| c.0);
    let who = match super::authenticate::authenticate(&state, &mut req, client).await {
        Ok(who) => who.map(RequestPrincipal),
        Err(refusal) => return refusal,
    };
    let method = method_label(req.method());
    let mut response = match rate_limit(&state, req.extensions(), method).await {
        Quota::Unmetered => within_deadline(&state, next.run(req)).await,
        Quota::Metered(decision) => {
            let mut response = if decision.allowed {
                within_deadline(&state, next.run(req)).await
            } else {
                over_limit(&decision)
            };
            report_quota(&decision, &mut response);
            response
        }
    };
    if let Some(who) = who {
        response.extensions_mut().insert(who);
    }
    response
}

/// What the rate limiter said of a request.
enum Quota {
    /// Not counted: no principal and no client address to count by.
    Unmetered,
    /// Counted in a bucket.
    Metered(RateDecision),
}

/// The 429 for a request over its limit.
fn over_limit(decision: &RateDecision) -> Response {
    let limit = decision.limit;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("more than {limit} requests per minute; retry later"),
    )
    .with_header(
        header::RETRY_AFTER,
        HeaderValue::from(decision.retry_after_secs),
    )
    .into_response()
}

/// Reports the bucket in `RateLimit-*` headers.
fn report_quota(decision: &RateDecision, response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("ratelimit-limit"),
        HeaderValue::from(decision.limit),
    );
    headers.insert(
        HeaderName::from_static("ratelimit-remaining"),
        HeaderValue::from(decision.remaining),
    );
    headers.insert(
        HeaderName::from_static("ratelimit-reset"),
        HeaderValue::from(decision.reset_secs),
    );
}

/// Counts a request (its extensions and method) in its bucket: authenticated callers per
/// user (all their keys and sessions together), everyone else, and every credential route,
/// per client address.
async fn rate_limit(state: &AppState, extensions: &Extensions, method: &'static str) -> Quota {
    let route = route_of(extensions);
    let credential_route = CREDENTIAL_ROUTES.contains(&route);
    let principal = extensions
        .get::<crate::auth::principal::Principal>()
        .filter(|_| !credential_route);
    let defaults = &state.node.config.rate_limit;
    let (key, default, scope) = match principal {
        Some(p) => (
            format!("user:{}", p.user_id),
            defaults.authenticated_per_minute,
            "principal",
        ),
        None => {
            let Some(ClientIp(ip)) = extensions.get::<ClientIp>().copied() else {
                return Quota::Unmetered;
            };
            (
                crate::limits::client_key(ip),
                defaults.unauthenticated_per_minute,
                "ip",
            )
        }
    };
    let limit = state
        .limits
        .limit(&state.node, principal, route, method)
        .unwrap_or(default);
    // Each distinct limit is its own bucket, so a tight limit on some routes does not eat
    // the allowance of the others.
    let key = format!("{key}|{limit}");
    let decision = state.node.rate_limiter.check(&key, limit).await;
    if !decision.allowed {
        state
            .node
            .actor_metrics
            .rate_limited
            .with_label_values(&[scope])
            .inc();
        warn!(key, limit, "rate limit exceeded");
    }
    Quota::Metered(decision)
}

/// The `rate_limiting` bundle's answers, remembered per request shape. Its input is the
/// principal type, role, route, method and the configured defaults, so one answer holds for
/// every request of a shape until another bundle version is published: the memo belongs
/// to one compiled version and is emptied when the active one changes.
#[derive(Default)]
pub struct LimitMemo {
    memo: std::sync::RwLock<Limits>,
}

#[derive(Default)]
struct Limits {
    bundle: Option<Arc<CompiledBundle>>,
    by_shape: HashMap<LimitShape, Option<u32>>,
}

/// What the `rate_limiting` input is made of, apart from the configured defaults.
#[derive(Clone, PartialEq, Eq, Hash)]
struct LimitShape {
    principal_type: &'static str,
    role: Option<crate::store::Role>,
    route: Box<str>,
    method: &'static str,
}

/// Request shapes remembered at most; past it the memo starts over (routes, methods and
/// roles are few, so this only bounds what a bug could make of them).
const LIMIT_SHAPES: usize = 1024;

impl LimitMemo {
    /// The `rate_limiting` bundle's `limit` for this request, when it defines a usable one.
    fn limit(
        &self,
        node: &crate::core::Core,
        principal: Option<&crate::auth::principal::Principal>,
        route: &str,
        method: &'static str,
    ) -> Option<u32> {
        let bundle = node.policies.get(crate::policies::RATE_LIMITING_BUNDLE)?;
        let shape = LimitShape {
            principal_type: principal.map_or("anonymous", |p| p.principal_type()),
            role: principal.map(|p| p.role),
            route: route.into(),
            method,
        };
        {
            let memo = self.memo.read().unwrap_or_else(PoisonError::into_inner);
            if memo
                .bundle
                .as_ref()
                .is_some_and(|b| Arc::ptr_eq(b, &bundle))
                && let Some(limit) = memo.by_shape.get(&shape)
            {
                return *limit;
            }
        }
        // A failed evaluation counts by the default for this request only, and is not
        // remembered: the next request asks again.
        let limit = evaluate_limit(node, &bundle, &shape).ok()?;
        let mut memo = self.memo.write().unwrap_or_else(PoisonError::into_inner);
        if !memo
            .bundle
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, &bundle))
        {
            *memo = Limits {
                bundle: Some(bundle),
                by_shape: HashMap::new(),
            };
        }
        if memo.by_shape.len() >= LIMIT_SHAPES {
            memo.by_shape.clear();
        }
        memo.by_shape.insert(shape, limit);
        limit
    }
}

/// Asks `bundle` for the limit of requests of `shape`: `None` when it defines no usable
/// one, an error when it could not be evaluated.
fn evaluate_limit(
    node: &crate::core::Core,
    bundle: &CompiledBundle,
    shape: &LimitShape,
) -> Result<Option<u32>, sark_actors::policy::PolicyError> {
    let defaults = &node.config.rate_limit;
    let input = serde_json::json!({
        "principal_type": shape.principal_type,
        "role": shape.role,
        "route": &*shape.route,
        "method": shape.method,
        "defaults": {
            "unauthenticated_per_minute": defaults.unauthenticated_per_minute,
            "authenticated_per_minute": defaults.authenticated_per_minute,
        },
    });
    let Some(value) = bundle.eval("limit", &input, &node.actor_metrics)?.value else {
        return Ok(None);
    };
    let limit = value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as u64)
    });
    match limit.map(u32::try_from) {
        None => Ok(None),
        Some(Ok(limit)) if limit > 0 => Ok(Some(limit)),
        Some(_) => {
            warn!(%value, "the rate_limiting policy decided an unusable limit; using the default");
            Ok(None)
        }
    }
}

/// `handler`'s response, or 503 `request_timeout` past the configured deadline.
async fn within_deadline(
    state: &AppState,
    handler: impl std::future::Future<Output = Response>,
) -> Response {
    let limit = state.node.config.request_timeout();
    match tokio::time::timeout(limit, handler).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!("the request did not complete within {} s", limit.as_secs()),
        )
        .into_response(),
    }
}

/// A panic in a handler becomes a 500 in the API shape; the panic message is logged only.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned());
    ApiError::internal(format!("handler panicked: {detail}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const XFF: ClientIpHeader = ClientIpHeader::XForwardedFor;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.7, 10.2.2.2")]);
        assert_eq!(
            client_ip(peer, &h, &trusted, XFF),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(outsider, &h, &trusted, XFF), outsider);
        assert_eq!(client_ip(peer, &h, &[], XFF), peer);
    }

    #[test]
    fn a_spoofed_leftmost_address_is_ignored() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7")]);
        assert_eq!(
            client_ip(peer, &h, &trusted, XFF),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_forwarded_header_is_understood() {
        let trusted: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let h = headers(&[(
            "forwarded",
            r#"for="[2001:db8::1]:4711";proto=https, for=127.0.0.5"#,
        )]);
        assert_eq!(
            client_ip(peer, &h, &trusted, ClientIpHeader::Forwarded),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn only_the_configured_header_is_read_and_a_malformed_one_is_ignored() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let real: IpAddr = "198.51.100.7".parse().unwrap();
        // The proxy writes Forwarded; the client added an X-Forwarded-For of its choosing.
        let h = headers(&[
            ("forwarded", "for=198.51.100.7"),
            ("x-forwarded-for", "203.0.113.66"),
        ]);
        assert_eq!(
            client_ip(peer, &h, &trusted, ClientIpHeader::Forwarded),
            real
        );
        // Configured for X-Forwarded-For, a proxy that appends to it gives the real one.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.66, 198.51.100.7"),
            ("forwarded", "for=192.0.2.99"),
        ]);
        assert_eq!(client_ip(peer, &h, &trusted, XFF), real);
        for malformed in [
            "198.51.100.7, not-an-address",
            "unknown",
            ", ,",
            &"10.0.0.1,".repeat(40),
        ] {
            let h = headers(&[("x-forwarded-for", malformed)]);
            assert_eq!(client_ip(peer, &h, &trusted, XFF), peer, "{malformed}");
        }
        let h = headers(&[("forwarded", "proto=https")]);
        assert_eq!(
            client_ip(peer, &h, &trusted, ClientIpHeader::Forwarded),
            peer
        );
        let missing = HeaderMap::new();
        assert_eq!(
            client_ip(peer, &missing, &trusted, ClientIpHeader::Forwarded),
            peer
        );
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_proxies_and_ipv6_clients_share_a_64() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mapped: IpAddr = "::ffff:10.1.1.1".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "198.51.100.7")]);
        assert_eq!(
            client_ip(mapped, &h, &trusted, XFF),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let a = crate::limits::client_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = crate::limits::client_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(
            a,
            crate::limits::client_key("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            crate::limits::client_key("192.0.2.1".parse().unwrap()),
            "ip:192.0.2.1"
        );
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&axum::http::Method::GET), "GET");
        let weird = axum::http::Method::from_bytes(b"FOO0001").unwrap();
        assert_eq!(method_label(&weird), "OTHER");
    }

    #[test]
    fn request_ids_are_kept_only_when_plain() {
        assert_eq!(
            request_id(&headers(&[("x-request-id", "abc-123")])),
            "abc-123"
        );
        assert_ne!(
            request_id(&headers(&[("x-request-id", "bad id!")])),
            "bad id!"
        );
        assert_eq!(
            request_id(&headers(&[("x-request-id", &"a".repeat(129))])).len(),
            32
        );
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }

    /// Headers from a corpus file: `name: value` lines.
    fn corpus_headers(text: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in text.lines() {
            if let Some((name, value)) = line.split_once(": ")
                && let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_bytes(value.as_bytes()),
                )
            {
                map.append(name, value);
            }
        }
        map
    }

    #[test]
    fn the_fuzz_corpus_of_forwarded_headers_never_panics() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/forwarded");
        for entry in std::fs::read_dir(dir).unwrap() {
            let h = corpus_headers(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
            for header in [XFF, ClientIpHeader::Forwarded] {
                let _ = client_ip(peer, &h, &trusted, header);
            }
        }
    }

    proptest::proptest! {
        // Whatever a client sends, an untrusted peer is the client, and a trusted one
        // yields the peer or an address the header names.
        #[test]
        fn fuzz_forwarded_headers(
            value in r#"[0-9a-fA-F:.,; "=\[\]forFOR_-]{0,300}"#,
            trusted_peer in proptest::bool::ANY,
        ) {
            let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
            let peer: IpAddr = if trusted_peer { "10.1.1.1" } else { "203.0.113.9" }.parse().unwrap();
            for (name, header) in [("x-forwarded-for", XFF), ("forwarded", ClientIpHeader::Forwarded)] {
                let mut h = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&value) {
                    h.insert(name, v);
                }
                let client = client_ip(peer, &h, &trusted, header);
                if !trusted_peer {
                    proptest::prop_assert_eq!(client, peer);
                }
            }
        }
    }
}
