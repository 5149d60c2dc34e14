//! The baseline of `sark-bench`: an axum hello-world with nothing in front of it, on the
//! same machine and in the same run, so SARK's figures read as fractions of what axum
//! itself serves.
//!
//!   bare-axum ADDR      (prints `listening <addr>` once bound; stops on stdin's end)

use axum::Router;
use axum::routing::get;
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening {}", listener.local_addr()?);
    let app = Router::new().route("/", get(|| async { "Hello, World!" }));
    // The benchmark holds stdin open while it needs the server.
    let stdin_closed = async {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stdin_closed)
        .await?;
    Ok(())
}
