//! `proxy` end to end through real loopback sockets, and its config file.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use singleflight_cli::{proxy, upstream};

async fn start(upstream: &upstream::Running, extra: &[&str]) -> proxy::Running {
    let mut args = vec!["--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    proxy_in_front_of(&upstream.url(), &args).await
}

async fn post(url: &str, body: &'static [u8]) -> u16 {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = http::Request::post(url)
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_gets_makes_one_upstream_request_and_posts_are_never_coalesced() {
    // A long upstream delay gives the whole burst time to join the first request's flight.
    let up = upstream_after("1s").await;
    let proxy = start(&up, &[]).await;
    let client = client();
    let url = format!("{}/report?id=7", proxy.url());
    shared_burst(&client, &url, 10).await;
    assert_eq!(upstream_requests(&client, &up.url()).await, 1);

    let posts: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            async move { post(&url, b"write").await }
        })
        .collect();
    for status in futures_join(posts).await {
        assert_eq!(status, 200);
    }
    assert_eq!(
        upstream_requests(&client, &up.url()).await,
        4,
        "every POST reaches the upstream"
    );

    let admin = proxy.admin_url().unwrap();
    let (_, _, metrics) = get(&client, &format!("{admin}/metrics")).await;
    let metric =
        |name: &str, label: Option<&str>| singleflight_cli::read_metric(&metrics, name, label);
    assert_eq!(
        metric("singleflight_executions_total", Some("proxy")),
        Some(1.0),
        "the core group's view"
    );
    assert_eq!(
        metric("singleflight_shared_total", Some("proxy")),
        Some(10.0)
    );
    assert_eq!(
        singleflight_cli::read_metric(&metrics, "singleflight_upstream_requests_total", None),
        Some(4.0)
    );
    assert_eq!(
        singleflight_cli::read_metric(&metrics, "singleflight_requests_total", None),
        Some(13.0)
    );
    let (status, _, _) = get(&client, &format!("{admin}/healthz")).await;
    assert_eq!(status, 200);
    assert!(proxy.shutdown().await);
    up.shutdown(Duration::from_secs(2)).await;
}

async fn futures_join<F: std::future::Future<Output = u16> + Send + 'static>(
    futures: Vec<F>,
) -> Vec<u16> {
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        out.push(done.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memo_ttl_answers_later_requests_from_the_kept_response() {
    let up = upstream_after("10ms").await;
    let proxy = start(&up, &["--memo-ttl", "60s", "--stale", "10s"]).await;
    let client = client();
    let url = format!("{}/report?id=9", proxy.url());
    for i in 0..3 {
        let (status, headers, body) = get(&client, &url).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        let shared = if i == 0 { "false" } else { "true" };
        assert_eq!(headers.get("x-singleflight-shared").unwrap(), shared);
    }
    assert_eq!(
        upstream_requests(&client, &up.url()).await,
        1,
        "one request upstream, two answered from the memo"
    );
    // Another path is another key.
    let (status, _, _) = get(&client, &format!("{}/report?id=10", proxy.url())).await;
    assert_eq!(status, 200);
    assert_eq!(upstream_requests(&client, &up.url()).await, 2);
    assert!(proxy.shutdown().await);
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_and_not_sent() {
    let up = upstream_after("0").await;
    let proxy = start(&up, &["--max-body-bytes", "4"]).await;
    assert_eq!(post(&format!("{}/x", proxy.url()), b"too long").await, 413);
    assert_eq!(post(&format!("{}/x", proxy.url()), b"ok").await, 200);
    assert_eq!(upstream_requests(&client(), &up.url()).await, 1);
    proxy.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_gone_at_run_time_is_a_502() {
    let up = upstream_after("0").await;
    let proxy = start(&up, &[]).await;
    up.shutdown(Duration::from_secs(2)).await;
    let (status, _, body) = get(&client(), &format!("{}/x", proxy.url())).await;
    assert_eq!(status, 502, "{body}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_completes_a_request_in_flight() {
    let up = upstream_after("300ms").await;
    let mut arrivals = up.arrivals();
    let proxy = start(&up, &[]).await;
    let url = format!("{}/slow", proxy.url());
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    arrivals.wait_for(|n| *n >= 1).await.unwrap();
    assert!(
        proxy.shutdown().await,
        "finished within the shutdown timeout"
    );
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    up.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn flags_override_the_config_file() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("proxy-override.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:7001\"\nupstream = \"http://127.0.0.1:7002\"\nupstream_timeout = \"3s\"\nmax_connections = 5\n",
    )
    .unwrap();
    let path = path.to_string_lossy().into_owned();
    let config = proxy_opts(&["--config", &path, "--listen", "127.0.0.1:7003"]);
    config.check().unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:7003", "the flag wins");
    assert_eq!(
        config.upstream().unwrap().host_port(),
        "127.0.0.1:7002",
        "the file fills the rest"
    );
    assert_eq!(config.upstream_timeout, Duration::from_secs(3));
    assert_eq!(config.max_connections, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_answers_504_to_a_request_that_waited_too_long() {
    let up = upstream_after("500ms").await;
    let mut arrivals = up.arrivals();
    let patient = start(&up, &[]).await;
    let hasty = start(&up, &["--max-wait", "50ms"]).await;
    let (status, _, body) = get(&client(), &format!("{}/slow", hasty.url())).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("gave up waiting"), "{body}");
    // Without --max-wait the same upstream answers in full.
    let (status, _, body) = get(&client(), &format!("{}/slow", patient.url())).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    arrivals.wait_for(|n| *n >= 2).await.unwrap();
    hasty.shutdown().await;
    patient.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_limit_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = upstream_after("0").await;
    let proxy = start(&up, &["--max-header-bytes", "8192"]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .unwrap();
    let big = "x".repeat(20_000);
    let request = format!("GET /x HTTP/1.1\r\nhost: test\r\nx-big: {big}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(
        upstream_requests(&client(), &up.url()).await,
        0,
        "nothing reached the upstream"
    );
    proxy.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.example.toml");
    let config = proxy_opts(&["--config", path]);
    config.check().unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8082");
    assert_eq!(
        config.admin.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9090")
    );
    assert_eq!(config.max_wait, Some(Duration::from_secs(5)));
    assert_eq!(config.max_body_bytes, 8 << 20);
    assert_eq!((config.body_window, config.spill_max), (4 << 20, 1 << 30));
}

/// An upstream that answers every request with the request's headers, one
/// `name: value` line each.
async fn echo_headers() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(|headers: http::HeaderMap| async move {
        let mut text = String::new();
        for (name, value) in &headers {
            text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
        }
        text
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

async fn headers_seen_upstream(extra: &[&str]) -> (String, String, String) {
    let (upstream, task) = echo_headers().await;
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &upstream,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let proxy = proxy::start(proxy_opts(&args)).await.unwrap();
    let request = http::Request::get(format!("{}/who", proxy.url()))
        .header("x-forwarded-for", "203.0.113.9")
        .header("via", "1.1 edge")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let proxy_host = proxy.local_addr().to_string();
    proxy.shutdown().await;
    task.abort();
    let upstream_host = upstream.trim_start_matches("http://").to_string();
    (
        String::from_utf8_lossy(&body).into_owned(),
        proxy_host,
        upstream_host,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_the_forwarding_headers_and_its_own_host() {
    let (seen, proxy_host, upstream_host) = headers_seen_upstream(&[]).await;
    let lines: Vec<&str> = seen.lines().collect();
    for expected in [
        "x-forwarded-for: 203.0.113.9, 127.0.0.1".to_string(),
        "x-forwarded-proto: http".to_string(),
        format!("x-forwarded-host: {proxy_host}"),
        "via: 1.1 edge, 1.1 singleflight".to_string(),
        format!("host: {upstream_host}"),
    ] {
        assert!(lines.contains(&expected.as_str()), "{expected:?} in {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_host_sends_the_clients_host() {
    let (seen, proxy_host, _) = headers_seen_upstream(&["--preserve-host"]).await;
    let host = format!("host: {proxy_host}");
    assert!(seen.lines().any(|l| l == host), "{host:?} in {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_with_its_upstream_down_it_answers_502_then_200_once_up() {
    // Bind then drop to find a loopback port with nothing listening.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let proxy = proxy_in_front_of(&format!("http://{addr}"), &[]).await;
    let url = format!("{}/later", proxy.url());
    let (status, _, body) = get(&client(), &url).await;
    assert_eq!(status, 502, "{body}");
    let up = upstream::start(&upstream_opts(&["--listen", &addr, "--delay", "0"]))
        .await
        .unwrap();
    let (status, _, body) = get(&client(), &url).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    proxy.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_once_the_drain_starts_while_healthz_stays_ok() {
    let up = upstream_after("0").await;
    let proxy = start(&up, &[]).await;
    let admin = proxy.admin_url().unwrap();
    let client = client();
    let (status, _, body) = get(&client, &format!("{admin}/readyz")).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    proxy.stop_ready();
    let (status, _, body) = get(&client, &format!("{admin}/readyz")).await;
    assert_eq!((status, body.as_str()), (503, "draining\n"));
    let (status, _, _) = get(&client, &format!("{admin}/healthz")).await;
    assert_eq!(status, 200, "the process is alive");
    proxy.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
}

/// A GET on a connection of its own: the response's head, and its body to
/// read when the caller likes (the connection lives as long as the body).
async fn get_on_own_connection(url: &str) -> http::Response<hyper::body::Incoming> {
    let uri: http::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().as_str().to_owned();
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(uri)
        .header(http::header::HOST, authority)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(request).await.unwrap()
}

/// Two clients of one 64 MiB response through `proxy`, both asking before
/// the upstream answers (one flight): one reads it all at once, the other
/// only once the first is done. The window (16 MiB) is larger than what the
/// sockets of the client that does not read can absorb (a few MiB), so the
/// reading client always stays within it, and the other falls behind it. Returns what the second read (its length,
/// or the error its body ended with) and the upstream requests made.
async fn a_reader_left_behind(extra: &[&str]) -> (Result<usize, String>, u64) {
    let up = upstream::start(&upstream_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--delay",
        "300ms",
        "--body-bytes",
        "67108864",
    ]))
    .await
    .unwrap();
    let proxy = start(&up, extra).await;
    let url = format!("{}/large", proxy.url());
    let (behind, first) = tokio::join!(get_on_own_connection(&url), get_on_own_connection(&url));
    let first = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(first.len(), 64 << 20);
    let second = match behind.into_body().collect().await {
        Ok(body) => Ok(body.to_bytes().len()),
        Err(error) => Err(error.to_string()),
    };
    let requests = upstream_requests(&client(), &up.url()).await;
    proxy.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
    (second, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_behind_the_body_window_reads_from_the_spill_dir() {
    let dir = tempfile::tempdir().unwrap();
    let spill_dir = dir.path().to_str().unwrap();
    let (read, requests) =
        a_reader_left_behind(&["--body-window", "16MiB", "--spill-dir", spill_dir]).await;
    assert_eq!(read, Ok(64 << 20), "every byte, from the spill file");
    assert_eq!(requests, 1);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_spill_max_zero_a_reader_behind_the_window_is_cut_off_not_cut_short() {
    let outcome = a_reader_left_behind(&["--body-window", "16MiB", "--spill-max", "0"]).await;
    // Cut off mid-body; or, had it come for its head only after the first
    // byte was dropped, a whole body of its own. Never a short clean one.
    match outcome {
        (Err(_), 1) => {}
        (Ok(len), 2) => assert_eq!(len, 64 << 20),
        other => panic!("a short body or a lost request: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_past_the_upstream_timeout_fails_every_reader() {
    // The first half of the body at once, the second 10 s later: past the
    // proxy's 300 ms, so every reader's body fails instead of waiting.
    let up = upstream::start(&upstream_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--delay",
        "100ms",
        "--body-bytes",
        "1000",
        "--chunks",
        "2",
        "--chunk-interval",
        "10s",
    ]))
    .await
    .unwrap();
    let proxy = start(&up, &["--upstream-timeout", "300ms"]).await;
    let url = format!("{}/stalls", proxy.url());
    let (first, second) = tokio::join!(get_on_own_connection(&url), get_on_own_connection(&url));
    for response in [first, second] {
        assert_eq!(response.status(), 200, "the head came in time");
        let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
            .await
            .expect("the body ends well before the upstream's second half");
        assert!(body.is_err(), "a stalled body fails, never ends short");
    }
    assert_eq!(upstream_requests(&client(), &up.url()).await, 1);
    proxy.shutdown().await;
    up.shutdown(Duration::from_secs(2)).await;
}
