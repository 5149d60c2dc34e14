//! The HTTP front door: the router, its middleware stack and the listeners.

use std::sync::Arc;

pub use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use crate::core::Core;

mod authenticate;
mod early_errors;
pub mod errors;
pub mod extract;
pub mod forward;
pub mod login;
pub mod middleware;
pub mod routes;
pub mod serve;
pub mod tls;
pub mod validate;

use errors::ApiError;

/// HTTP request metrics, labelled by route template (never by raw path).
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    /// `http_requests_total{method,route,status}`.
    pub requests: IntCounterVec,
    /// `http_request_duration_seconds{method,route}`.
    pub duration: HistogramVec,
}

impl HttpMetrics {
    /// Creates the series and registers them.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests handled, by route template and status",
            ),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to handle an HTTP request, by route template",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }
}

/// What every handler gets: one shared allocation, so each layer and handler that takes
/// it pays one reference count rather than a clone per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
pub struct Shared {
    /// The node.
    pub node: Arc<Core>,
    /// The external identity providers.
    pub providers: Arc<crate::federation::Providers>,
    /// Request metrics.
    pub metrics: HttpMetrics,
    /// The last `/health/detailed` answer; refreshed by one request at a time.
    pub detailed: tokio::sync::Mutex<Option<(tokio::time::Instant, serde_json::Value)>>,
    /// The rate limits the `rate_limiting` policy decided, per request shape.
    pub limits: middleware::LimitMemo,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// State for `node`'s handlers.
    pub fn new(
        node: Arc<Core>,
        providers: Arc<crate::federation::Providers>,
        metrics: HttpMetrics,
    ) -> Self {
        Self(Arc::new(Shared {
            node,
            providers,
            metrics,
            detailed: tokio::sync::Mutex::default(),
            limits: middleware::LimitMemo::default(),
        }))
    }
}

/// The routers of a node, each with the middleware stack.
pub struct Routers {
    /// The public port: the whole API, and the node details unless a management listener
    /// serves them.
    pub public: Router,
    /// The management listener (`http.management_bind`): health and the node details.
    pub management: Option<Router>,
}

/// The routers for `state`'s configuration: with `http.management_bind` set, `/metrics`
/// and `/health/detailed` move to the management router; `/health` and `/health/ready`
/// stay on both.
pub fn routers(state: AppState) -> Routers {
    let separate = state.node.config.http.management_bind.is_some();
    let probes = Router::new()
        .route("/health", get(routes::health::get_health))
        .route("/health/ready", get(routes::health::get_ready));
    let details = Router::new()
        .route("/health/detailed", get(routes::health::get_detailed))
        .route("/metrics", get(routes::health::get_metrics));
    let api = api_routes().merge(probes.clone());
    if separate {
        Routers {
            public: with_middleware(api, state.clone()),
            management: Some(with_middleware(probes.merge(details), state)),
        }
    } else {
        Routers {
            public: with_middleware(api.merge(details), state),
            management: None,
        }
    }
}

/// Every route of the API proper: everything but health and metrics.
fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/.well-known/jwks.json", get(routes::auth::get_jwks))
        .route("/api/v1/auth/login", post(routes::auth::post_login))
        .route(
            "/api/v1/auth/login/ldap",
            post(routes::federation::post_login_ldap),
        )
        .route(
            "/api/v1/auth/providers",
            get(routes::federation::get_providers),
        )
        .route(
            "/api/v1/auth/oidc/login",
            get(routes::federation::get_oidc_login),
        )
        .route(
            "/api/v1/auth/oidc/callback",
            get(routes::federation::get_oidc_callback),
        )
        .route(
            "/api/v1/auth/exchange",
            post(routes::federation::post_exchange),
        )
        .route(
            "/api/v1/auth/saml/metadata",
            get(routes::federation::get_saml_metadata),
        )
        .route(
            "/api/v1/auth/saml/login",
            get(routes::federation::get_saml_login),
        )
        .route(
            "/api/v1/auth/saml/acs",
            post(routes::federation::post_saml_acs),
        )
        .route(
            "/api/v1/auth/mfa/verify",
            post(routes::auth::post_mfa_verify),
        )
        .route("/api/v1/auth/refresh", post(routes::auth::post_refresh))
        .route("/api/v1/auth/logout", post(routes::auth::post_logout))
        .route("/api/v1/auth/me", get(routes::auth::get_me))
        .route("/api/v1/auth/password", post(routes::auth::post_password))
        .route(
            "/api/v1/auth/mfa/totp/enroll",
            post(routes::auth::post_totp_enroll),
        )
        .route(
            "/api/v1/auth/mfa/totp/confirm",
            post(routes::auth::post_totp_confirm),
        )
        .route(
            "/api/v1/sessions",
            get(routes::sessions::get_sessions).delete(routes::sessions::delete_sessions),
        )
        .route(
            "/api/v1/sessions/{id}",
            delete(routes::sessions::delete_session),
        )
        .route(
            "/api/v1/users",
            get(routes::users::get_users).post(routes::users::post_user),
        )
        .route(
            "/api/v1/users/{username}",
            get(routes::users::get_user)
                .patch(routes::users::patch_user)
                .delete(routes::users::delete_user),
        )
        .route(
            "/api/v1/users/{username}/mfa",
            delete(routes::users::delete_user_mfa),
        )
        .route(
            "/api/v1/users/{username}/unlock",
            post(routes::users::post_unlock),
        )
        .route(
            "/api/v1/api-keys",
            get(routes::api_keys::get_api_keys).post(routes::api_keys::post_api_key),
        )
        .route(
            "/api/v1/api-keys/{id}",
            delete(routes::api_keys::delete_api_key),
        )
        .route(
            "/api/v1/policies",
            get(routes::policies::get_policies).post(routes::policies::post_policy),
        )
        .route(
            "/api/v1/policies/test",
            post(routes::policies::post_policy_test),
        )
        .route("/api/v1/policies/{name}", get(routes::policies::get_policy))
        .route(
            "/api/v1/policies/{name}/versions",
            get(routes::policies::get_policy_versions),
        )
        .route(
            "/api/v1/policies/{name}/rollback",
            post(routes::policies::post_rollback),
        )
        .route("/api/v1/authz/evaluate", post(routes::authz::post_evaluate))
        .route("/api/v1/audit", get(routes::audit::get_audit))
        .route("/api/v1/audit/verify", get(routes::audit::get_audit_verify))
        .route("/api/v1/siem/status", get(routes::audit::get_siem_status))
        .route("/api/v1/cluster", get(routes::cluster::get_cluster))
        .route("/api/v1/cluster/actors", get(routes::cluster::get_actors))
        .route(
            "/api/v1/servers",
            get(routes::servers::get_servers).post(routes::servers::post_server),
        )
        .route(
            "/api/v1/servers/{name}",
            get(routes::servers::get_server)
                .patch(routes::servers::patch_server)
                .delete(routes::servers::delete_server),
        )
}

/// Wraps routes in the front door's middleware stack; tests use it for routes of their own.
pub fn with_middleware(routes: Router<AppState>, state: AppState) -> Router {
    let config = &state.node.config.http;
    let cors = (!config.cors_allowed_origins.is_empty()).then(|| {
        let origins: Vec<HeaderValue> = config
            .cors_allowed_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                HeaderName::from_static("authorization"),
                HeaderName::from_static("content-type"),
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
                HeaderName::from_static("retry-after"),
            ])
            .max_age(std::time::Duration::from_secs(600))
    });
    let layers = ServiceBuilder::new()
        .layer(from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .option_layer(cors)
        .layer(from_fn_with_state(state.clone(), middleware::admit))
        .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
        .layer(DefaultBodyLimit::disable());
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(layers)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// Binds the management listener, plain HTTP, if `http.management_bind` is set.
pub async fn bind_management(
    config: &crate::config::HttpConfig,
) -> Result<Option<serve::Listener>, String> {
    let Some(addr) = config.management_bind else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(|tcp| Some(serve::Listener::Plain(tcp)))
        .map_err(|e| format!("`http.management_bind`: cannot listen on {addr}: {e}"))
}

/// Binds the configured address, with TLS when certificate and key are configured.
pub async fn bind(config: &crate::config::HttpConfig) -> Result<serve::Listener, String> {
    let tcp = TcpListener::bind(config.bind)
        .await
        .map_err(|e| format!("`http.bind`: cannot listen on {}: {e}", config.bind))?;
    match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => {
            let tls = crate::tls::server_config(cert, key)?;
            tls::TlsListener::new(tcp, tls)
                .map(serve::Listener::Tls)
                .map_err(|e| e.to_string())
        }
        _ => Ok(serve::Listener::Plain(tcp)),
    }
}
