//! SARK: authentication, authorization, sessions and server inventory, as one binary that
//! runs as a node of an actor cluster.
//!
//! # Layout
//!
//! From the top down; a module names only modules below it (checked by `layering`'s tests,
//! docs/ARCHITECTURE.md "Layers"):
//!
//! - `main`, [`cli`]: the binary and its command line; [`Server`] runs a node behind its
//!   front door.
//! - [`node`]: the assembly of a node (start-up, background jobs, bootstrap, leaving the
//!   cluster); [`http`]: the front door, the only module that knows HTTP (router,
//!   middleware, listeners, handlers in `http::routes`, the mapping of domain errors);
//!   [`admin`]: the break-glass commands.
//! - Services: [`auth`] (principals, logins, tokens, MFA, sessions, authorization),
//!   [`federation`] (LDAP, OpenID Connect and SAML logins), [`users`] (accounts) and
//!   [`policies`] (policy versions and tests).
//! - [`core`]: the handles every service shares ([`core::Core`]), lockout and revocations,
//!   and the fenced-write sequence ([`core::fenced`]).
//! - Base: [`error`](mod@error) (the domain error), [`store`], [`idp`] (passwords, TOTP, JWT),
//!   [`policy`] (built-in Rego bundles), [`secrets`], [`hashing_keys`], [`config`], [`siem`] (sinks and
//!   exports), [`limits`], [`tls`], [`telemetry`], [`request_log`].
//!
//! Actors live in `sark-actors`, membership in `sark-cluster`; `sark-bench` and
//! `sark-chaos` (tests and benchmarks) depend on this crate.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod core;
pub mod error;
pub mod federation;
pub mod hashing_keys;
pub mod http;
pub mod idp;
#[cfg(test)]
mod layering;
pub mod limits;
pub mod node;
pub mod policies;
pub mod policy;
pub mod request_log;
pub mod secrets;
pub mod servers;
pub mod siem;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod users;

use config::Config;
use core::Core;
use http::serve::{ConnectionLimits, Listener};
use http::{AppState, HttpMetrics};
use node::{NodeControl, NodeError};

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Start-up failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The HTTP listener could not be set up.
    #[error("{0}")]
    Listen(String),
    /// The node failed while running.
    #[error("node failed: {0}")]
    Failed(String),
}

/// A node serving HTTP.
pub struct Server {
    addr: SocketAddr,
    management_addr: Option<SocketAddr>,
    node: Arc<Core>,
    providers: Arc<federation::Providers>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Server {
    /// Starts a node and its HTTP listener.
    pub async fn start(config: Config) -> Result<Self, RunError> {
        let config = Arc::new(config);
        // Bound first: a taken port stops start-up before anything else has started.
        let listener = http::bind(&config.http).await.map_err(RunError::Listen)?;
        let management = http::bind_management(&config.http)
            .await
            .map_err(RunError::Listen)?;
        let providers = Arc::new(federation::Providers::new(&config).map_err(NodeError::from)?);
        let (node, control) = node::start(config.clone(), http::forward::handler).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| RunError::Listen(e.to_string()))?;
        let management_addr = management
            .as_ref()
            .map(Listener::local_addr)
            .transpose()
            .map_err(|e| RunError::Listen(e.to_string()))?;
        let metrics = HttpMetrics::register(&node.registry)
            .map_err(|e| RunError::Listen(format!("metrics registration failed: {e}")))?;
        let routers = http::routers(AppState::new(node.clone(), providers.clone(), metrics));
        let listeners = Listeners {
            public: (listener, routers.public),
            management: management.zip(routers.management),
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listeners, node.clone(), control, stop_rx));
        info!(%addr, management = ?management_addr, tls = config.http.tls_cert_file.is_some(), "listening");
        Ok(Self {
            addr,
            management_addr,
            node,
            providers,
            stop,
            task,
        })
    }

    /// The bound HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound management address, if `http.management_bind` is set.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_addr
    }

    /// The node.
    pub fn node(&self) -> &Arc<Core> {
        &self.node
    }

    /// The configured external identity providers.
    pub fn providers(&self) -> &Arc<federation::Providers> {
        &self.providers
    }

    /// Serves until `shutdown` resolves (or the node fails), then stops gracefully.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        tokio::select! {
            () = shutdown => {
                info!("shutdown requested");
                self.stop().await
            }
            result = &mut self.task => result.map_err(|e| RunError::Failed(e.to_string()))?,
        }
    }

    /// Stops accepting, lets in-flight requests finish, stops the actors and closes the store.
    pub async fn stop(self) -> Result<(), RunError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| RunError::Failed(e.to_string()))?
    }
}

/// The bound listeners with the routers they serve.
struct Listeners {
    public: (Listener, http::Router),
    management: Option<(Listener, http::Router)>,
}

async fn serve(
    listeners: Listeners,
    node: Arc<Core>,
    mut control: NodeControl,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let http = &node.config.http;
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(http.header_read_timeout_seconds),
        max_connections: http.max_connections,
    };
    let grace = Duration::from_secs(http.shutdown_grace_seconds);
    let delay = Duration::from_secs(http.shutdown_delay_seconds);
    let (drain, drain_rx) = watch::channel(false);
    let serve_one = |(listener, app): (Listener, http::Router)| {
        let mut drain_rx = drain_rx.clone();
        http::serve::serve(
            listener,
            app,
            limits,
            async move { node::wait_until_true(&mut drain_rx).await },
            grace,
        )
    };
    let management = listeners.management.map(serve_one);
    let public = serve_one(listeners.public);
    // Both listeners drain together; the management one closes with the public one.
    let serving = async move {
        match management {
            Some(management) => {
                tokio::join!(public, management);
            }
            None => public.await,
        }
    };
    tokio::pin!(serving);
    let failure = tokio::select! {
        () = &mut serving => {
            control.shutdown().await;
            return Err(RunError::Failed("the HTTP server stopped".into()));
        }
        () = node::wait_until_true(&mut stop) => None,
        reason = control.failed() => Some(reason),
    };
    // Readiness fails first, so load balancers stop sending before the port closes; until
    // then the node serves as a full member. Its sessions and its leave go out only then,
    // just before the port closes and the requests in flight finish.
    node.start_draining();
    if !delay.is_zero() {
        info!(
            delay_s = delay.as_secs(),
            "draining: readiness fails, still serving"
        );
        tokio::select! {
            () = &mut serving => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
    node::leave_cluster(&node).await;
    let _ = drain.send(true);
    serving.await;
    control.shutdown().await;
    match failure {
        None => Ok(()),
        Some(reason) => {
            error!(reason, "node stopped because it failed");
            Err(RunError::Failed(reason))
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            error!(error = %err, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Installs the process-wide rustls crypto provider (two are compiled in, so none is
/// chosen automatically).
pub fn install_crypto_provider() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}
