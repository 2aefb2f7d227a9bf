//! The proxy's admin endpoints end to end through loopback sockets:
//! `/metrics` (every series from one snapshot), `POST /purge`, `/flights`
//! during a herd, and `--on-max-wait bypass`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use singleflight_cli::{proxy, read_metric, upstream};

async fn start(upstream: &upstream::Running, extra: &[&str]) -> (proxy::Running, String) {
    let mut args = vec!["--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let proxy = proxy_in_front_of(&upstream.url(), &args).await;
    let admin = proxy.admin_url().expect("an admin address");
    (proxy, admin)
}

/// POSTs `body` to `url`; the status and the answer's text.
async fn post(url: &str, body: &'static str) -> (u16, String) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = http::Request::post(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a request");
    let response = client.request(request).await.expect("an answer");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("a body");
    (
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    )
}

/// The sum of a histogram's counts over its `source` labels.
fn counted(metrics: &str, sources: &[&str]) -> f64 {
    sources
        .iter()
        .map(|source| {
            let label = format!("source=\"{source}\"");
            read_metric(
                metrics,
                "singleflight_request_duration_seconds_count",
                Some(&label),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_in_metrics_matches_the_layers_snapshot() {
    // A long upstream delay gives the whole burst time to join the flight.
    let up = upstream_after("1s").await;
    let (proxy, admin) = start(&up, &["--memo-ttl", "60s"]).await;
    let client = client();
    let url = format!("{}/report?id=1", proxy.url());
    shared_burst(&client, &url, 8).await;
    for _ in 0..3 {
        let (status, headers, _) = get(&client, &url).await;
        assert_eq!(status, 200);
        assert_eq!(
            headers.get("age").map(|age| age.to_str().unwrap()),
            Some("0")
        );
    }
    let (status, _) = post(&url, "a write").await;
    assert_eq!(status, 200);
    // A GET with a cookie is its sender's own: straight through.
    let with_cookie = http::Request::get(&url)
        .header("cookie", "session=1")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("a request");
    let response = client.request(with_cookie).await.expect("an answer");
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.expect("a body");

    // A response is timed when its body is done, which the server sees
    // just after the client: scrape until all 13 are in, boundedly.
    let mut metrics = String::new();
    let sources = ["leader", "follower", "memo", "stale", "bypass"];
    for _ in 0..100 {
        metrics = get(&client, &format!("{admin}/metrics")).await.2;
        if counted(&metrics, &sources) >= 13.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = proxy.stats();
    let group = proxy.group_stats().expect("the proxy's group counts");
    let metric = |name: &str| read_metric(&metrics, name, Some("group=\"proxy\""));
    let pairs = [
        ("singleflight_calls_total", group.calls),
        ("singleflight_executions_total", group.executions),
        ("singleflight_shared_total", group.shared),
        ("singleflight_memo_hits_total", stats.memo_hits),
        (
            "singleflight_stale_hits_total",
            stats.stale_hits + stats.stale_if_error,
        ),
        (
            "singleflight_timeouts_total",
            group.timeouts + stats.max_wait_timeouts,
        ),
        ("singleflight_cancellations_total", group.cancellations),
        ("singleflight_panics_total", group.panics),
        ("singleflight_flights", group.flights),
        ("singleflight_waiters", group.waiters),
        ("singleflight_bypassed_total", stats.bypassed),
        ("singleflight_refetched_total", stats.refetched),
        ("singleflight_joined_total", stats.joined),
        ("singleflight_upstream_errors_total", stats.upstream_errors),
        ("singleflight_stale_if_error_total", stats.stale_if_error),
        (
            "singleflight_max_wait_bypasses_total",
            stats.max_wait_bypasses,
        ),
        ("singleflight_memo_entries", stats.memo_entries),
        ("singleflight_memo_bytes", stats.memo_bytes),
    ];
    for (name, value) in pairs {
        assert_eq!(metric(name), Some(value as f64), "{name}\n{metrics}");
    }
    // What moved: one flight shared by the burst, three memo hits, one kept
    // response; and the histograms add up to the requests.
    assert_eq!((group.executions, group.shared), (1, 8));
    assert_eq!((stats.memo_hits, stats.memo_entries), (3, 1));
    assert_eq!(stats.bypassed, 1, "the GET with a cookie");
    assert!(stats.memo_bytes > 0);
    assert_eq!(counted(&metrics, &["memo"]), 3.0);
    assert_eq!(counted(&metrics, &["leader"]), 1.0);
    assert_eq!(counted(&metrics, &["follower"]), 7.0);
    assert_eq!(
        counted(&metrics, &["bypass"]),
        2.0,
        "the POST and the cookie"
    );
    assert_eq!(
        read_metric(&metrics, "singleflight_requests_total", None),
        Some(13.0)
    );
    assert_eq!(
        read_metric(
            &metrics,
            "singleflight_upstream_duration_seconds_count",
            None
        ),
        Some(3.0),
        "the flight, the POST and the cookie"
    );
    assert_eq!(
        read_metric(&metrics, "singleflight_build_info", None),
        Some(1.0)
    );
    assert!(
        metrics.lines().all(|line| line.starts_with('#')
            || line.is_empty()
            || line.starts_with("singleflight_")),
        "one namespace:\n{metrics}"
    );
    assert!(proxy.shutdown().await);
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_drops_kept_responses_and_a_bad_purge_says_what_to_send() {
    let up = upstream_after("0").await;
    let (proxy, admin) = start(&up, &["--memo-ttl", "60s"]).await;
    let client = client();
    for path in ["/a", "/b/1", "/b/2"] {
        assert_eq!(get(&client, &format!("{}{path}", proxy.url())).await.0, 200);
    }
    assert_eq!(upstream_requests(&client, &up.url()).await, 3);
    let purge = format!("{admin}/purge");
    assert_eq!(
        post(&purge, r#"{"prefix": "/b/"}"#).await,
        (200, "{\"purged\":2}\n".to_string())
    );
    for path in ["/a", "/b/1"] {
        get(&client, &format!("{}{path}", proxy.url())).await;
    }
    assert_eq!(
        upstream_requests(&client, &up.url()).await,
        4,
        "/a from the memo, /b/1 upstream"
    );
    assert_eq!(
        post(&purge, r#"{"path": "/a"}"#).await,
        (200, "{\"purged\":1}\n".to_string())
    );
    assert_eq!(
        post(&purge, r#"{"all": true}"#).await,
        (200, "{\"purged\":1}\n".to_string())
    );
    for bad in [
        "",
        r#"{"path": "a"}"#,
        r#"{"path": "/a", "all": true}"#,
        r#"{"url": "/a"}"#,
    ] {
        let (status, answer) = post(&purge, bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(answer.starts_with("bad purge: "), "{answer}");
        assert!(answer.contains(r#"{"prefix": "/some/"}"#), "{answer}");
        assert_eq!(answer.lines().count(), 1, "{answer}");
    }
    assert!(proxy.shutdown().await);
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_shows_a_herd_while_it_waits() {
    // Long enough for the whole herd to be seen waiting.
    let up = upstream_after("3s").await;
    let (proxy, admin) = start(&up, &[]).await;
    let client = client();
    let url = format!("{}/hot", proxy.url());
    let herd = tokio::spawn({
        let client = client.clone();
        async move { shared_burst(&client, &url, 6).await }
    });
    let mut flights = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, _, text) = get(&client, &format!("{admin}/flights")).await;
        flights = serde_json::from_str(&text).expect("JSON");
        if flights[0]["waiters"] == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list = flights.as_array().expect("an array");
    assert_eq!(list.len(), 1, "{flights}");
    assert_eq!(list[0]["waiters"], 6, "{flights}");
    assert!(
        list[0]["key"]
            .as_str()
            .expect("a key")
            .starts_with("GET http://127.0.0.1:"),
        "{flights}"
    );
    assert!(list[0]["key"].as_str().expect("a key").contains("/hot"));
    assert!(list[0]["age_ms"].is_u64(), "{flights}");
    herd.await.expect("the herd");
    assert_eq!(get(&client, &format!("{admin}/flights")).await.2, "[]\n");
    assert!(proxy.shutdown().await);
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_wait_a_follower_goes_upstream_on_its_own_with_bypass() {
    let up = upstream_after("1s").await;
    let (proxy, admin) = start(&up, &["--max-wait", "100ms", "--on-max-wait", "bypass"]).await;
    let client = client();
    let url = format!("{}/slow", proxy.url());
    let leader = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { get(&client, &url).await }
    });
    up.arrivals()
        .wait_for(|arrived| *arrived >= 1)
        .await
        .expect("the upstream runs");
    let (status, headers, _) = get(&client, &url).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-singleflight-shared"], "false");
    assert_eq!(leader.await.expect("the leader").0, 200);
    assert_eq!(upstream_requests(&client, &up.url()).await, 2);
    let metrics = get(&client, &format!("{admin}/metrics")).await.2;
    assert_eq!(
        read_metric(&metrics, "singleflight_max_wait_bypasses_total", None),
        Some(1.0)
    );
    assert!(proxy.shutdown().await);
    up.shutdown(Duration::from_secs(2)).await;
}
