//! The accept loop: HTTP/1.1 connections served by hyper with a header-read deadline (which
//! also closes idle keep-alive connections), a cap on open connections, and a graceful
//! drain on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use tracing::{debug, warn};

use super::early_errors::EarlyErrors;
use super::tls::TlsListener;

/// The largest request line and header section hyper reads; the middleware's own limits
/// (`MAX_URI` and `MAX_HEADER_BYTES`) are below it, so most refusals are shaped there.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// Limits of the connection layer.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// A client must send a request's headers within this time, and an idle keep-alive
    /// connection is closed after it.
    pub header_read_timeout: Duration,
    /// Connections open at once at most; further ones are closed on accept.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits
/// for open connections to finish their current request (bounded by `grace`).
pub async fn serve(
    listener: Listener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(true);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut listener = listener;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!(max = limits.max_connections, "connection limit reached; closing a new connection");
                    continue;
                };
                match accepted {
                    Accepted::Plain(stream, peer) => {
                        let _ = stream.set_nodelay(true);
                        spawn_connection(stream, peer, &app, &http, &graceful, permit);
                    }
                    Accepted::Tls(stream, peer) => spawn_connection(*stream, peer, &app, &http, &graceful, permit),
                }
            }
        }
    }
    // Dropping the listener closes the port before the drain starts.
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace_s = grace.as_secs(),
            "in-flight requests did not finish within the grace period"
        );
    }
}

fn spawn_connection<I>(
    io: I,
    peer: SocketAddr,
    app: &Router,
    http: &Arc<hyper::server::conn::http1::Builder>,
    graceful: &GracefulShutdown,
    permit: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = app
        .clone()
        .map_request(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.map(axum::body::Body::new)
        });
    let connection = http.serve_connection(
        TokioIo::new(EarlyErrors::new(io)),
        TowerToHyperService::new(service),
    );
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(peer = %peer, error = %err, "connection ended with an error");
        }
        drop(permit);
    });
}

/// A bound listener, plain or TLS.
pub enum Listener {
    /// Plain HTTP.
    Plain(TcpListener),
    /// HTTPS.
    Tls(TlsListener),
}

enum Accepted {
    Plain(tokio::net::TcpStream, SocketAddr),
    Tls(
        Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        SocketAddr,
    ),
}

impl Listener {
    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listener::Plain(l) => l.local_addr(),
            Listener::Tls(l) => Ok(l.local_addr()),
        }
    }

    async fn accept(&mut self) -> Accepted {
        match self {
            Listener::Plain(l) => loop {
                match l.accept().await {
                    Ok((stream, peer)) => return Accepted::Plain(stream, peer),
                    Err(err) => {
                        // Typically EMFILE: back off instead of spinning.
                        warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
            Listener::Tls(l) => {
                let (stream, peer) = l.accept().await;
                Accepted::Tls(Box::new(stream), peer)
            }
        }
    }
}
