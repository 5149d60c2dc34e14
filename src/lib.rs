//! SARK: authentication, authorization, sessions and server inventory, as one binary that
//! runs as a node of an actor cluster.
//!
//! # Layout
//!
//! - [`config`]: layered configuration, validated into [`config::Config`].
//! - [`node`]: a running node: store, keys, bootstrap and the NodeSupervisor.
//! - [`http`]: the front door (router, middleware, listeners, handlers in `http::routes`).
//! - [`store`]: the storage ports' SQLite and PostgreSQL implementations, and Redis.
//! - [`idp`]: identity protocols (passwords, and later LDAP, OIDC, SAML, TOTP, JWT).
//! - [`secrets`]: the secrets key and private files.
//! - [`policy`]: the built-in Rego bundles.
//! - [`telemetry`]: JSON logs.
//!
//! Actors live in `sark-actors`, membership in `sark-cluster`; nothing depends on this crate.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub mod cli;
pub mod config;
pub mod http;
pub mod idp;
pub mod node;
pub mod policy;
pub mod secrets;
pub mod store;
pub mod telemetry;

use config::Config;
use http::{AppState, HttpMetrics, Listener};
use node::{Node, NodeControl, NodeError};

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
    node: Arc<Node>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Server {
    /// Starts a node and its HTTP listener.
    pub async fn start(config: Config) -> Result<Self, RunError> {
        let config = Arc::new(config);
        let (node, control) = Node::start(config.clone()).await?;
        let listener = match Listener::bind(&config.http).await {
            Ok(listener) => listener,
            Err(err) => {
                control.shutdown().await;
                return Err(RunError::Listen(err));
            }
        };
        let addr = listener
            .local_addr()
            .map_err(|e| RunError::Listen(e.to_string()))?;
        let metrics = HttpMetrics::register(&node.registry)
            .map_err(|e| RunError::Listen(format!("metrics registration failed: {e}")))?;
        let app = http::router(AppState {
            node: node.clone(),
            metrics,
        });
        let (stop, stop_rx) = watch::channel(false);
        let grace = Duration::from_secs(config.http.shutdown_grace_seconds);
        let task = tokio::spawn(serve(listener, app, control, stop_rx, grace));
        info!(%addr, tls = config.http.tls_cert_file.is_some(), "listening");
        Ok(Self {
            addr,
            node,
            stop,
            task,
        })
    }

    /// The bound HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
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

async fn serve(
    listener: Listener,
    app: axum::Router,
    mut control: NodeControl,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> Result<(), RunError> {
    let (drain, mut drain_rx) = watch::channel(false);
    let serving = listener.serve(
        app,
        async move { node::wait_until_true(&mut drain_rx).await },
    );
    tokio::pin!(serving);
    let failure = tokio::select! {
        result = &mut serving => {
            control.shutdown().await;
            return result.map_err(|e| RunError::Failed(format!("HTTP server stopped: {e}")));
        }
        () = node::wait_until_true(&mut stop) => None,
        reason = control.failed() => Some(reason),
    };
    let _ = drain.send(true);
    match tokio::time::timeout(grace, &mut serving).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(error = %err, "HTTP server error while draining"),
        Err(_) => warn!(
            grace_s = grace.as_secs(),
            "in-flight requests did not finish within the grace period"
        ),
    }
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
