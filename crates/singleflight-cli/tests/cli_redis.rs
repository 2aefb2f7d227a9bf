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
