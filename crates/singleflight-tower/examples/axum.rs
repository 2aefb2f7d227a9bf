//! An axum server with a slow handler behind [`CoalesceLayer`]: concurrent
//! requests for `/report` share one run of the handler.
//!
//! ```text
//! cargo run -p oneflight-tower --example axum
//! ```
//!
//! It starts a server on 127.0.0.1 (an ephemeral port), sends it 50
//! concurrent requests, prints how many times the handler ran and what the
//! `x-singleflight-shared` headers said, and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::{Router, extract::State, routing::get};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use singleflight_tower::CoalesceLayer;

/// How many times the slow handler ran.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

/// A slow upstream: a report that takes 300 ms to compute.
async fn report(State(runs): State<Runs>) -> String {
    let run = runs.0.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    format!("report #{run}\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let runs = Runs::default();
    let app = Router::new()
        .route("/report", get(report))
        .with_state(runs.clone())
        // One line: identical concurrent GETs now share one handler run.
        .layer(CoalesceLayer::new());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("listening on http://{addr}");

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{addr}/report").parse()?;
    let requests = (0..50).map(|_| {
        let (client, uri) = (client.clone(), uri.clone());
        tokio::spawn(async move {
            let response = client.get(uri).await?;
            let shared = response.headers().get("x-singleflight-shared").cloned();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((shared, body))
        })
    });
    let mut shared = 0;
    let mut bodies = std::collections::BTreeSet::new();
    for request in requests.collect::<Vec<_>>() {
        let (header, body) = request.await??;
        shared += usize::from(header.is_some_and(|value| value == "true"));
        bodies.insert(body);
    }
    println!(
        "50 requests, {} handler run(s), {shared} shared responses, distinct bodies: {bodies:?}",
        runs.0.load(Ordering::SeqCst),
    );
    server.abort();
    Ok(())
}
