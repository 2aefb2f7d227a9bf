//! `serve` against the embedded `upstream`, through real loopback sockets.

mod common;

use std::time::Duration;

use common::*;
use singleflight_cli::serve;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_calls_the_upstream_once_per_request() {
    let up = upstream_after("100ms").await;
    let upstream_url = format!("{}/status", up.url());
    let running = serve_in_front_of(&upstream_url).await;
    let client = client();
    let url = format!("{}/normal", running.server.url());
    let requests = 6;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..requests {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move { get(&client, &url).await });
    }
    while let Some(done) = tasks.join_next().await {
        let (status, headers, body) = done.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "Status: 200\n");
        assert!(
            headers.get(serve::SHARED_HEADER).is_none(),
            "/normal says nothing about sharing"
        );
    }
    assert_eq!(upstream_requests(&client, &up.url()).await, requests);
    running.shutdown(Duration::from_secs(2)).await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singleflight_calls_the_upstream_once_per_overlapping_burst() {
    // A long upstream delay gives every request of a burst time to arrive
    // while the first one's call is under way.
    let up = upstream_after("1s").await;
    let upstream_url = format!("{}/status", up.url());
    let running = serve_in_front_of(&upstream_url).await;
    let client = client();
    let url = format!("{}/singleflight", running.server.url());
    for burst in 1..=2u64 {
        let requests = 10;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..requests {
            let (client, url) = (client.clone(), url.clone());
            tasks.spawn(async move { get(&client, &url).await });
        }
        while let Some(done) = tasks.join_next().await {
            let (status, headers, body) = done.unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, "Status: 200\n");
            assert_eq!(
                headers.get(serve::SHARED_HEADER).unwrap(),
                "true",
                "every request of the burst shared"
            );
        }
        assert_eq!(
            upstream_requests(&client, &up.url()).await,
            burst,
            "one upstream call per burst"
        );
    }
    let (_, _, metrics) = get(&client, &format!("{}/metrics", running.server.url())).await;
    let calls =
        singleflight_cli::read_metric(&metrics, "serve_upstream_calls_total", Some("singleflight"));
    assert_eq!(calls, Some(2.0));
    assert_eq!(
        singleflight_cli::read_metric(&metrics, "singleflight_shared_total", None),
        Some(20.0)
    );
    running.shutdown(Duration::from_secs(2)).await;
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_upstream_starts_its_own() {
    let running = serve::start(&serve_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--delay",
        "10ms",
        "--quiet",
    ]))
    .await
    .unwrap();
    assert!(running.upstream.is_some());
    let client = client();
    let (status, _, body) = get(&client, &format!("{}/normal", running.server.url())).await;
    assert_eq!((status, body.as_str()), (200, "Status: 200\n"));
    let (status, _, body) = get(&client, &format!("{}/healthz", running.server.url())).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gone_at_run_time_is_a_502_per_request() {
    let up = upstream_after("0").await;
    let upstream_url = format!("{}/status", up.url());
    let running = serve_in_front_of(&upstream_url).await;
    up.shutdown(Duration::from_secs(2)).await;
    let client = client();
    for endpoint in ["/normal", "/singleflight", "/normal"] {
        let (status, _, body) = get(&client, &format!("{}{endpoint}", running.server.url())).await;
        assert_eq!(status, 502, "{endpoint}: {body}");
        assert!(body.starts_with("upstream unreachable"), "{body}");
    }
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_completes_a_request_in_flight() {
    let up = upstream_after("300ms").await;
    let mut arrivals = up.arrivals();
    let upstream_url = format!("{}/status", up.url());
    let running = serve_in_front_of(&upstream_url).await;
    let url = format!("{}/normal", running.server.url());
    let client = client();
    let in_flight = tokio::spawn(async move { get(&client, &url).await });
    // The request has reached the upstream, so it is in flight inside serve.
    arrivals.wait_for(|n| *n >= 1).await.unwrap();
    let finished_in_time = running.server.shutdown(Duration::from_secs(10)).await;
    let (status, _, body) = in_flight.await.unwrap();
    assert!(finished_in_time);
    assert_eq!((status, body.as_str()), (200, "Status: 200\n"));
    up.shutdown(Duration::from_secs(2)).await;
}
