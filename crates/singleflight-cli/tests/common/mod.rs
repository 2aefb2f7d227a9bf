//! Helpers shared by the integration tests: options from argv, plain GETs.
#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use singleflight_cli::{Command, proxy, serve, upstream};

/// The tests' HTTP client.
pub type TestClient = Client<HttpConnector, Empty<Bytes>>;

/// A fresh pooled client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Status, headers and body of a GET.
pub async fn get(client: &TestClient, url: &str) -> (u16, http::HeaderMap, String) {
    let response = client
        .get(url.parse().expect("test URL"))
        .await
        .expect("GET");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// The command line of `singleflight SUBCOMMAND ARGS`, parsed as the binary does.
pub fn command(subcommand: &str, args: &[&str]) -> Command {
    let argv = ["singleflight", subcommand]
        .into_iter()
        .chain(args.iter().copied());
    singleflight_cli::parse_from(argv)
        .expect("test arguments")
        .command
}

/// `proxy` options from argv.
pub fn proxy_opts(args: &[&str]) -> proxy::ProxyOpts {
    match command("proxy", args) {
        Command::Proxy(opts) => opts,
        other => panic!("parsed {other:?}"),
    }
}

/// `upstream` options from argv.
pub fn upstream_opts(args: &[&str]) -> upstream::UpstreamOpts {
    match command("upstream", args) {
        Command::Upstream(opts) => opts,
        other => panic!("parsed {other:?}"),
    }
}

/// The embedded upstream on a free loopback port, answering after `delay`
/// (a duration as the command line takes it).
pub async fn upstream_after(delay: &str) -> upstream::Running {
    upstream::start(&upstream_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--delay",
        delay,
    ]))
    .await
    .unwrap()
}

/// `serve` on a free loopback port, in front of `upstream_url`, quiet.
pub async fn serve_in_front_of(upstream_url: &str) -> serve::Running {
    serve::start(&serve_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream_url,
        "--quiet",
    ]))
    .await
    .unwrap()
}

/// `serve` options from argv.
pub fn serve_opts(args: &[&str]) -> serve::ServeOpts {
    match command("serve", args) {
        Command::Serve(opts) => opts,
        other => panic!("parsed {other:?}"),
    }
}

/// The upstream's `upstream_requests_total`, read from its /metrics.
pub async fn upstream_requests(client: &TestClient, upstream_url: &str) -> u64 {
    let (_, _, text) = get(client, &format!("{upstream_url}/metrics")).await;
    singleflight_cli::read_metric(&text, "upstream_requests_total", None).unwrap_or(0.0) as u64
}
