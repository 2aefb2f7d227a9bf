//! HTTPS upstreams, and HTTP/2 and TLS on the proxy's listener, with
//! certificates made in-process: no network, no OpenSSL.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::process::Command as Process;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;
use singleflight_cli::serve;

type Got = (u16, http::HeaderMap, String, http::Version);

/// A GET of `url` through `client`, to run at once with others.
fn get_task<C>(
    client: &Client<C, Empty<Bytes>>,
    url: &str,
) -> Pin<Box<dyn Future<Output = Got> + Send>>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let (client, url) = (client.clone(), url.to_string());
    Box::pin(async move { get_via(&client, &url).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_serve_reach_an_https_upstream_signed_by_the_upstream_ca() {
    let files = TlsFiles::new("trusted");
    let ca = TlsFiles::arg(&files.ca);
    let up = tls_upstream_after("500ms", &files).await;
    assert!(up.url().starts_with("https://127.0.0.1:"), "{}", up.url());
    let proxy = proxy_in_front_of(&up.url(), &["--upstream-ca", &ca]).await;
    let client = client();
    let url = format!("{}/report", proxy.url());
    shared_burst(&client, &url, 8).await;
    assert_eq!(
        arrivals(&up),
        1,
        "one upstream request over TLS for the burst"
    );

    let running = serve::start(&serve_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &format!("{}/status", up.url()),
        "--upstream-ca",
        &ca,
        "--quiet",
    ]))
    .await
    .unwrap();
    let (status, _, body) = get(&client, &format!("{}/normal", running.server.url())).await;
    assert_eq!((status, body.as_str()), (200, "Status: 200\n"));
    assert_eq!(arrivals(&up), 2);
    running.shutdown(Duration::from_secs(2)).await;
    proxy.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_certificate_is_refused_naming_the_host_and_the_fix() {
    let files = TlsFiles::new("untrusted");
    let up = tls_upstream_after("0", &files).await;
    let host = up.url().trim_start_matches("https://").to_string();

    // The proxy starts, and answers 502 saying why.
    let proxy = proxy_in_front_of(&up.url(), &[]).await;
    let (status, _, body) = get(&client(), &format!("{}/x", proxy.url())).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains(&host), "{body}");
    assert!(body.contains("not trusted"), "{body}");
    assert!(body.contains("--upstream-ca"), "{body}");
    assert_eq!(body.trim_end().lines().count(), 1, "{body}");
    proxy.shutdown().await;

    // serve checks at start: one line, exit code 2.
    let upstream = format!("{}/status", up.url());
    let out = tokio::task::spawn_blocking(move || {
        Process::new(env!("CARGO_BIN_EXE_singleflight"))
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &upstream])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&host), "{stderr}");
    assert!(stderr.contains("--upstream-ca"), "{stderr}");
    assert_eq!(arrivals(&up), 0, "no request got through");
    up.shutdown(Duration::from_secs(2)).await;
}

/// `clients` GETs of one URL at once, one per client; the versions the
/// responses came in, after checking each was a shared 200.
async fn burst_through<F>(clients: Vec<F>) -> Vec<http::Version>
where
    F: std::future::Future<Output = (u16, http::HeaderMap, String, http::Version)> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        tasks.spawn(client);
    }
    let mut versions = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (status, headers, body, version) = done.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert_eq!(headers.get("x-singleflight-shared").unwrap(), "true");
        versions.push(version);
    }
    versions.sort_by_key(|v| format!("{v:?}"));
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_http1_requests_for_one_key_share_a_flight() {
    let up = upstream_after("1s").await;
    let proxy = proxy_in_front_of(&up.url(), &[]).await;
    let url = format!("{}/shared?k=1", proxy.url());
    let (h1, h2) = (client(), h2c_client());
    let versions = burst_through(vec![
        get_task(&h1, &url),
        get_task(&h2, &url),
        get_task(&h2, &url),
    ])
    .await;
    assert_eq!(
        versions,
        [
            http::Version::HTTP_11,
            http::Version::HTTP_2,
            http::Version::HTTP_2
        ]
    );
    assert_eq!(arrivals(&up), 1, "one flight for both protocols");
    proxy.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_h2_and_tls_http1_requests_for_one_key_share_a_flight() {
    let files = TlsFiles::new("listener");
    let (cert, key) = (TlsFiles::arg(&files.cert), TlsFiles::arg(&files.key));
    let up = upstream_after("1s").await;
    let proxy = proxy_in_front_of(&up.url(), &["--tls-cert", &cert, "--tls-key", &key]).await;
    assert!(proxy.url().starts_with("https://"), "{}", proxy.url());
    let url = format!("{}/shared?k=2", proxy.url());
    let (h1, h2) = (tls_client(&files.ca, false), tls_client(&files.ca, true));
    let versions = burst_through(vec![get_task(&h1, &url), get_task(&h2, &url)]).await;
    assert_eq!(versions, [http::Version::HTTP_11, http::Version::HTTP_2]);
    assert_eq!(arrivals(&up), 1, "one flight for both protocols");
    proxy.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_sends_its_budget_to_an_https_url_signed_by_the_upstream_ca() {
    let files = TlsFiles::new("load");
    let up = tls_upstream_after("0", &files).await;
    let url = format!("{}/x", up.url());
    let ca = TlsFiles::arg(&files.ca);
    let singleflight_cli::Command::Load(opts) = command(
        "load",
        &[
            &url,
            "--requests",
            "12",
            "--concurrency",
            "3",
            "--upstream-ca",
            &ca,
        ],
    ) else {
        panic!("not load");
    };
    let reports = singleflight_cli::load::run(&opts).await.unwrap();
    assert_eq!(reports[0].summary.ok, 12);
    assert_eq!(arrivals(&up), 12);
    up.shutdown(Duration::from_secs(2)).await;
}
