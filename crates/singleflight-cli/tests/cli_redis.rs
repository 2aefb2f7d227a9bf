//! `serve --redis`: two instances in front of one upstream share one
//! upstream call through a real `redis-server` started by the test.

mod common;

use std::time::Duration;

use common::*;
use singleflight_cli::serve;
use singleflight_redis::testing::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_instances_share_one_upstream_call_through_redis() {
    let redis = RedisServer::start();
    let up = upstream_after("700ms").await;
    let upstream = format!("{}/status", up.url());
    let start = |_| {
        let opts = serve_opts(&[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--redis",
            &redis.url(),
            "--quiet",
        ]);
        async move { serve::start(&opts).await.unwrap() }
    };
    let first = start(0).await;
    let second = start(1).await;
    let client = client();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10 {
        let instance = if i % 2 == 0 { &first } else { &second };
        let url = format!("{}/singleflight", instance.server.url());
        let client = client.clone();
        calls.spawn(async move { get(&client, &url).await });
    }
    while let Some(done) = calls.join_next().await {
        let (status, headers, body) = done.unwrap();
        assert_eq!((status, body.as_str()), (200, "Status: 200\n"));
        assert_eq!(headers["x-singleflight-shared"], "true");
    }
    assert_eq!(
        upstream_requests(&client, &up.url()).await,
        1,
        "one upstream call for both instances"
    );
    first.shutdown(Duration::from_secs(2)).await;
    second.shutdown(Duration::from_secs(2)).await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn serve_refuses_a_redis_url_that_is_not_one() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_singleflight"))
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", "http://x"])
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--redis") && stderr.contains("redis://"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxy_instances_make_one_upstream_request_through_redis() {
    let redis = RedisServer::start();
    let up = upstream_after("700ms").await;
    let upstream = up.url();
    let url = redis.url();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(proxy_in_front_of(&upstream, &["--redis", &url]).await);
    }
    let client = client();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..30 {
        let url = format!("{}/report?day=1", proxies[i % 3].url());
        let client = client.clone();
        calls.spawn(async move { get(&client, &url).await });
    }
    while let Some(done) = calls.join_next().await {
        let (status, _, body) = done.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    assert_eq!(
        upstream_requests(&client, &up.url()).await,
        1,
        "one upstream request for three instances"
    );
    // Without --redis, each instance makes its own.
    let mut alone = Vec::new();
    for _ in 0..3 {
        alone.push(proxy_in_front_of(&upstream, &[]).await);
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..30 {
        let url = format!("{}/report?day=2", alone[i % 3].url());
        let client = client.clone();
        calls.spawn(async move { get(&client, &url).await });
    }
    while let Some(done) = calls.join_next().await {
        assert_eq!(done.unwrap().0, 200);
    }
    assert_eq!(upstream_requests(&client, &up.url()).await, 1 + 3);
    for proxy in proxies.into_iter().chain(alone) {
        proxy.shutdown().await;
    }
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_response_never_travels_between_instances() {
    let redis = RedisServer::start();
    // An upstream whose answers set a cookie, after a delay.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().fallback({
        let hits = std::sync::Arc::clone(&hits);
        move || {
            let n = hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                ([("set-cookie", format!("session={n}"))], "yours\n")
            }
        }
    });
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let url = redis.url();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(proxy_in_front_of(&upstream, &["--redis", &url]).await);
    }
    let client = client();
    let mut calls = tokio::task::JoinSet::new();
    for proxy in &proxies {
        let url = format!("{}/me", proxy.url());
        let client = client.clone();
        calls.spawn(async move { get(&client, &url).await });
    }
    let mut cookies = Vec::new();
    while let Some(done) = calls.join_next().await {
        let (status, headers, body) = done.unwrap();
        assert_eq!((status, body.as_str()), (200, "yours\n"));
        cookies.push(headers["set-cookie"].to_str().unwrap().to_owned());
    }
    cookies.sort();
    cookies.dedup();
    assert_eq!(
        cookies.len(),
        3,
        "each instance's client got a response of its own"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    for proxy in proxies {
        proxy.shutdown().await;
    }
    server.abort();
}
