//! The memo as an HTTP cache: each response's own freshness (RFC 9111),
//! `Age`, the stale windows (RFC 5861) from the settings and from the
//! response, the byte budget, purges, the wait limit, where each response
//! came from, and the flights in progress. Time is tokio's paused clock:
//! nothing waits for real.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use singleflight_tower::{
    Coalesce, CoalesceLayer, DEFAULT_SHARED_HEADER, DEFAULT_STALE_HEADER, OnMaxWait, Purge, Served,
};
use tokio::sync::{Notify, oneshot};
use tokio::time::advance;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

// The error is an `io::Error`, not a `BoxError`: a future generic over
// `E: Into<BoxError>` with `E = BoxError` trips a compiler limitation when
// checked for `Send` in `tokio::spawn`.
type Upstream = BoxCloneSyncService<Request<Empty<Bytes>>, Response<Full<Bytes>>, io::Error>;

/// What the upstream answers to its n-th request (from 0): a status, its
/// `Cache-Control` (if any), the body; or an error.
type Answer = Arc<dyn Fn(usize) -> Result<Response<Full<Bytes>>, io::Error> + Send + Sync>;

/// An upstream that counts its requests and answers each with `answer`.
struct Counted {
    calls: Arc<Mutex<usize>>,
    service: Upstream,
}

fn upstream(answer: Answer) -> Counted {
    let calls = Arc::new(Mutex::new(0));
    let service = tower::service_fn({
        let calls = Arc::clone(&calls);
        move |_: Request<Empty<Bytes>>| {
            let n = {
                let mut calls = calls.lock().expect("the count");
                *calls += 1;
                *calls - 1
            };
            let answer = Arc::clone(&answer);
            async move { answer(n) }
        }
    });
    Counted {
        calls,
        service: BoxCloneSyncService::new(service),
    }
}

impl Counted {
    fn calls(&self) -> usize {
        *self.calls.lock().expect("the count")
    }
}

fn response(cache_control: Option<&str>, body: String) -> Response<Full<Bytes>> {
    let mut builder = Response::builder();
    if let Some(value) = cache_control {
        builder = builder.header("cache-control", value);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .expect("a response")
}

/// Answers `n` with body `n`, marked with `cache_control`.
fn numbered(cache_control: Option<&'static str>) -> Answer {
    Arc::new(move |n| Ok(response(cache_control, n.to_string())))
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://example.test{path}"))
        .body(Empty::new())
        .expect("a request")
}

/// What a test looks at in a response.
#[derive(Debug)]
struct Seen {
    status: StatusCode,
    age: Option<String>,
    stale: Option<String>,
    shared: Option<String>,
    served: Option<Served>,
    body: String,
}

fn send(
    service: &Coalesce<Upstream>,
    request: Request<Empty<Bytes>>,
) -> impl Future<Output = Seen> + Send + 'static {
    let call = service.clone().oneshot(request);
    async move { seen(call.await.expect("the layer answers")).await }
}

async fn seen(response: Response<singleflight_tower::CoalescedBody<Full<Bytes>>>) -> Seen {
    let (age, stale, shared) = {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().expect("text").to_owned())
        };
        (
            header("age"),
            header(DEFAULT_STALE_HEADER),
            header(DEFAULT_SHARED_HEADER),
        )
    };
    let served = response.extensions().get::<Served>().copied();
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a whole body")
        .to_bytes();
    Seen {
        status,
        age,
        stale,
        shared,
        served,
        body: String::from_utf8(body.to_vec()).expect("text"),
    }
}

fn memo(ceiling: u64) -> CoalesceLayer {
    CoalesceLayer::new().memo(Duration::from_secs(ceiling))
}

#[tokio::test(start_paused = true)]
async fn a_responses_max_age_limits_the_ceiling() {
    let up = upstream(numbered(Some("max-age=1")));
    let service = memo(10).layer(up.service.clone());
    let first = send(&service, get("/a")).await;
    assert_eq!(
        (first.body.as_str(), first.served),
        ("0", Some(Served::Leader))
    );
    advance(Duration::from_millis(900)).await;
    let hit = send(&service, get("/a")).await;
    assert_eq!((hit.body.as_str(), hit.served), ("0", Some(Served::Memo)));
    advance(Duration::from_millis(200)).await;
    let after = send(&service, get("/a")).await;
    assert_eq!(
        (after.body.as_str(), after.served),
        ("1", Some(Served::Leader))
    );
    assert_eq!(up.calls(), 2);
    assert_eq!(service.stats().memo_hits, 1);
}

#[tokio::test(start_paused = true)]
async fn the_ceiling_limits_a_longer_max_age() {
    let up = upstream(numbered(Some("max-age=3600")));
    let service = memo(2).layer(up.service.clone());
    send(&service, get("/a")).await;
    advance(Duration::from_secs(1)).await;
    assert_eq!(send(&service, get("/a")).await.body, "0");
    advance(Duration::from_secs(1)).await;
    assert_eq!(send(&service, get("/a")).await.body, "1");
}

#[tokio::test(start_paused = true)]
async fn zero_lifetimes_no_cache_no_store_and_private_are_never_kept() {
    for directive in ["max-age=0", "s-maxage=0", "no-cache", "no-store", "private"] {
        let up = upstream(numbered(Some(directive)));
        let service = memo(10).layer(up.service.clone());
        for _ in 0..3 {
            send(&service, get("/a")).await;
        }
        assert_eq!(up.calls(), 3, "{directive}: every request went upstream");
        assert_eq!(service.stats().memo_entries, 0, "{directive}");
    }
}

#[tokio::test(start_paused = true)]
async fn expires_minus_date_is_the_lifetime() {
    let up = upstream(Arc::new(|n| {
        Ok(Response::builder()
            .header("date", "Tue, 01 Dec 2026 12:00:00 GMT")
            .header("expires", "Tue, 01 Dec 2026 12:00:02 GMT")
            .body(Full::new(Bytes::from(n.to_string())))
            .expect("a response"))
    }));
    let service = memo(60).layer(up.service.clone());
    send(&service, get("/a")).await;
    advance(Duration::from_millis(1500)).await;
    assert_eq!(send(&service, get("/a")).await.body, "0");
    advance(Duration::from_millis(600)).await;
    assert_eq!(send(&service, get("/a")).await.body, "1");
}

#[tokio::test(start_paused = true)]
async fn memo_hits_carry_their_age_counting_the_age_they_came_with() {
    let up = upstream(Arc::new(|n| {
        let mut response = response(Some("max-age=60"), n.to_string());
        response
            .headers_mut()
            .insert("age", http::HeaderValue::from_static("5"));
        Ok(response)
    }));
    let service = memo(60).layer(up.service.clone());
    let first = send(&service, get("/a")).await;
    assert_eq!(first.age.as_deref(), Some("5"), "the upstream's own");
    advance(Duration::from_secs(3)).await;
    let hit = send(&service, get("/a")).await;
    assert_eq!(hit.age.as_deref(), Some("8"));
    assert_eq!(hit.shared.as_deref(), Some("true"));
    // Kept for what was left of its 60 s: 55 s.
    advance(Duration::from_secs(52)).await;
    assert_eq!(send(&service, get("/a")).await.served, Some(Served::Leader));
}

#[tokio::test(start_paused = true)]
async fn a_requests_no_cache_goes_upstream_unless_turned_off() {
    let no_cache = || {
        Request::get("http://example.test/a")
            .header("cache-control", "no-cache")
            .body(Empty::new())
            .expect("a request")
    };
    let up = upstream(numbered(None));
    let service = memo(60).layer(up.service.clone());
    send(&service, get("/a")).await;
    let fresh = send(&service, no_cache()).await;
    assert_eq!(
        (fresh.body.as_str(), fresh.served),
        ("1", Some(Served::Leader))
    );
    // What it brought back is kept.
    assert_eq!(send(&service, get("/a")).await.body, "1");

    let up = upstream(numbered(None));
    let service = memo(60).request_no_cache(false).layer(up.service.clone());
    send(&service, get("/a")).await;
    assert_eq!(send(&service, no_cache()).await.served, Some(Served::Memo));
    assert_eq!(up.calls(), 1);
}

/// Answers its first request with `first`, the others with a failure:
/// an error, or a 503.
fn fails_after(first: Option<&'static str>, error: bool) -> Answer {
    Arc::new(move |n| {
        if n == 0 {
            Ok(response(first, "good".into()))
        } else if error {
            Err(io::Error::other("connection refused"))
        } else {
            Ok(Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Full::new(Bytes::from("down")))
                .expect("a response"))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_last_good_response_within_the_flag() {
    for error in [true, false] {
        let up = upstream(fails_after(None, error));
        let service = memo(1)
            .stale_if_error(Duration::from_secs(60))
            .layer(up.service.clone());
        send(&service, get("/a")).await;
        advance(Duration::from_secs(30)).await;
        let stale = send(&service, get("/a")).await;
        assert_eq!(stale.status, StatusCode::OK);
        assert_eq!(stale.body, "good");
        assert_eq!(stale.stale.as_deref(), Some("if-error"));
        assert_eq!(stale.age.as_deref(), Some("30"));
        assert_eq!(stale.served, Some(Served::Stale));
        assert_eq!(service.stats().stale_if_error, 1);
        // Past the window: the failure itself.
        advance(Duration::from_secs(31)).await;
        let failed = send(&service, get("/a")).await;
        let expected = if error {
            StatusCode::BAD_GATEWAY
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        assert_eq!(failed.status, expected);
        assert_eq!(failed.stale, None);
    }
}

#[tokio::test(start_paused = true)]
async fn a_responses_stale_if_error_shortens_the_flag_and_must_revalidate_forbids_it() {
    let up = upstream(fails_after(Some("max-age=1, stale-if-error=5"), true));
    let service = memo(60)
        .stale_if_error(Duration::from_secs(60))
        .layer(up.service.clone());
    send(&service, get("/a")).await;
    advance(Duration::from_secs(4)).await;
    assert_eq!(send(&service, get("/a")).await.body, "good");
    advance(Duration::from_secs(3)).await;
    assert_eq!(
        send(&service, get("/a")).await.status,
        StatusCode::BAD_GATEWAY
    );

    for directive in [
        "max-age=1, must-revalidate",
        "max-age=1, proxy-revalidate",
        "s-maxage=1",
    ] {
        let up = upstream(fails_after(Some(directive), true));
        let service = memo(60)
            .stale_if_error(Duration::from_secs(60))
            .layer(up.service.clone());
        send(&service, get("/a")).await;
        advance(Duration::from_secs(2)).await;
        let failed = send(&service, get("/a")).await;
        assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{directive}");
    }
}

/// Waits until the upstream has had `calls` requests; the refresh runs on
/// a task of its own.
async fn until_calls(up: &Counted, calls: usize) {
    while up.calls() < calls {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let up = upstream(numbered(None));
    let service = memo(1)
        .stale_while_revalidate(Duration::from_secs(10))
        .layer(up.service.clone());
    send(&service, get("/a")).await;
    advance(Duration::from_secs(2)).await;
    let stale = send(&service, get("/a")).await;
    assert_eq!(
        (stale.body.as_str(), stale.served),
        ("0", Some(Served::Stale))
    );
    assert_eq!(stale.stale.as_deref(), Some("while-revalidate"));
    until_calls(&up, 2).await;
    let refreshed = send(&service, get("/a")).await;
    assert_eq!(
        (refreshed.body.as_str(), refreshed.served),
        ("1", Some(Served::Memo))
    );
    assert_eq!(up.calls(), 2);
    assert_eq!(service.stats().stale_hits, 1);
}

#[tokio::test(start_paused = true)]
async fn a_responses_stale_while_revalidate_is_bounded_by_the_flag() {
    // The directive is shorter than the flag: past it, the request waits
    // for the upstream.
    let up = upstream(numbered(Some("max-age=1, stale-while-revalidate=2")));
    let service = memo(60)
        .stale_while_revalidate(Duration::from_secs(60))
        .layer(up.service.clone());
    send(&service, get("/a")).await;
    advance(Duration::from_secs(4)).await;
    let late = send(&service, get("/a")).await;
    assert_eq!(
        (late.body.as_str(), late.served),
        ("1", Some(Served::Leader))
    );

    // The directive is longer than the flag: the flag wins.
    let up = upstream(numbered(Some("max-age=1, stale-while-revalidate=600")));
    let service = memo(60)
        .stale_while_revalidate(Duration::from_secs(2))
        .layer(up.service.clone());
    send(&service, get("/a")).await;
    advance(Duration::from_millis(2500)).await;
    assert_eq!(send(&service, get("/a")).await.served, Some(Served::Stale));
    advance(Duration::from_secs(2)).await;
    until_calls(&up, 2).await;
    let answered = send(&service, get("/a")).await;
    assert_ne!(answered.served, Some(Served::Stale));
}

#[tokio::test(start_paused = true)]
async fn the_byte_budget_evicts_and_large_bodies_are_not_kept() {
    let up = upstream(Arc::new(|_| Ok(response(None, "x".repeat(500)))));
    let budget = 4_000;
    let service = memo(60).memo_max_bytes(budget).layer(up.service.clone());
    for i in 0..20 {
        send(&service, get(&format!("/{i}"))).await;
    }
    let stats = service.stats();
    assert!(stats.memo_bytes <= budget, "{stats:?}");
    assert!(
        (1..20).contains(&stats.memo_entries),
        "some kept, some evicted: {stats:?}"
    );
    for i in 0..20 {
        send(&service, get(&format!("/{i}"))).await;
    }
    let kept = usize::try_from(stats.memo_entries).expect("a count");
    assert!(up.calls() >= 40 - kept, "evicted ones went upstream again");

    let up = upstream(Arc::new(|_| Ok(response(None, "x".repeat(100)))));
    let service = memo(60).memo_max_entry(99).layer(up.service.clone());
    send(&service, get("/a")).await;
    send(&service, get("/a")).await;
    assert_eq!(up.calls(), 2);
    assert_eq!(service.stats().memo_entries, 0);
}

#[tokio::test(start_paused = true)]
async fn purges_drop_one_path_a_prefix_or_everything() {
    let up = upstream(numbered(None));
    let service = memo(60).layer(up.service.clone());
    let paths = ["/a/1", "/a/2?x=1", "/b"];
    for path in paths {
        send(&service, get(path)).await;
    }
    assert_eq!(service.purge(&Purge::Prefix("/a/".into())), 2);
    assert_eq!(send(&service, get("/b")).await.served, Some(Served::Memo));
    assert_eq!(
        send(&service, get("/a/1")).await.served,
        Some(Served::Leader)
    );
    assert_eq!(
        service.purge(&Purge::Path("/a/2".into())),
        0,
        "the query counts"
    );
    assert_eq!(service.purge(&Purge::Path("/b".into())), 1);
    assert_eq!(send(&service, get("/b")).await.served, Some(Served::Leader));
    assert_eq!(service.purge(&Purge::All), 2);
    assert_eq!(service.stats().memo_entries, 0);
}

/// An upstream whose first request waits for `release`; the others answer
/// at once. `started` is told when the first arrives.
fn held(started: Arc<Notify>, release: oneshot::Receiver<()>) -> Counted {
    let release = Arc::new(Mutex::new(Some(release)));
    let calls = Arc::new(Mutex::new(0));
    let service = tower::service_fn({
        let calls = Arc::clone(&calls);
        move |_: Request<Empty<Bytes>>| {
            let n = {
                let mut calls = calls.lock().expect("the count");
                *calls += 1;
                *calls - 1
            };
            let wait = if n == 0 {
                release.lock().expect("the gate").take()
            } else {
                None
            };
            let started = Arc::clone(&started);
            async move {
                if let Some(wait) = wait {
                    started.notify_one();
                    let _ = wait.await;
                }
                Ok::<_, io::Error>(response(None, n.to_string()))
            }
        }
    });
    Counted {
        calls,
        service: BoxCloneSyncService::new(service),
    }
}

#[tokio::test(start_paused = true)]
async fn past_max_wait_a_follower_gets_504_or_goes_upstream_on_its_own() {
    for on in [OnMaxWait::GatewayTimeout, OnMaxWait::Bypass] {
        let started = Arc::new(Notify::new());
        let (release, gate) = oneshot::channel();
        let up = held(Arc::clone(&started), gate);
        let service = CoalesceLayer::new()
            .max_wait(Duration::from_secs(1), on)
            .layer(up.service.clone());
        let leader = tokio::spawn({
            let service = service.clone();
            async move { send(&service, get("/slow")).await }
        });
        started.notified().await;
        // The paused clock runs forward to the follower's limit.
        let follower = send(&service, get("/slow")).await;
        let stats = service.stats();
        match on {
            OnMaxWait::GatewayTimeout => {
                assert_eq!(follower.status, StatusCode::GATEWAY_TIMEOUT);
                assert_eq!(follower.served, Some(Served::Follower));
                assert_eq!((stats.max_wait_timeouts, stats.max_wait_bypasses), (1, 0));
                assert_eq!(up.calls(), 1);
            }
            _ => {
                assert_eq!(
                    (follower.status, follower.body.as_str()),
                    (StatusCode::OK, "1")
                );
                assert_eq!(follower.served, Some(Served::Bypass));
                assert_eq!((stats.max_wait_timeouts, stats.max_wait_bypasses), (0, 1));
                assert_eq!(up.calls(), 2);
            }
        }
        if on == OnMaxWait::GatewayTimeout {
            // The leader waited as long: its limit passed too, and, the last
            // waiter gone, the flight was dropped.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let leader = leader.await.expect("the leader's task");
            assert_eq!(leader.status, StatusCode::GATEWAY_TIMEOUT);
            assert_eq!(leader.served, Some(Served::Leader));
            assert!(
                release.send(()).is_err(),
                "the upstream request was dropped"
            );
        } else {
            // Its request is the flight's: it waits for it.
            release.send(()).expect("the leader waits");
            let leader = leader.await.expect("the leader's task");
            assert_eq!(
                (leader.body.as_str(), leader.served),
                ("0", Some(Served::Leader))
            );
        }
    }
}

#[tokio::test]
async fn every_response_says_where_it_came_from() {
    let started = Arc::new(Notify::new());
    let (release, gate) = oneshot::channel();
    let up = held(Arc::clone(&started), gate);
    let service = memo(60).layer(up.service.clone());
    let leader = tokio::spawn({
        let service = service.clone();
        async move { send(&service, get("/a")).await }
    });
    started.notified().await;
    let follower = tokio::spawn({
        let service = service.clone();
        async move { send(&service, get("/a")).await }
    });
    // Let the follower join before the answer.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    release.send(()).expect("the leader waits");
    let (leader, follower) = (
        leader.await.expect("a task"),
        follower.await.expect("a task"),
    );
    let mut roles = [leader.served, follower.served];
    roles.sort_by_key(|served| served.map(Served::as_str));
    assert_eq!(roles, [Some(Served::Follower), Some(Served::Leader)]);
    assert_eq!(send(&service, get("/a")).await.served, Some(Served::Memo));
    let post = Request::post("http://example.test/a")
        .body(Empty::new())
        .expect("a request");
    assert_eq!(send(&service, post).await.served, Some(Served::Bypass));
}

#[tokio::test]
async fn the_flights_in_progress_show_each_hot_key_and_its_waiters() {
    let started = Arc::new(Notify::new());
    let (release, gate) = oneshot::channel();
    let up = held(Arc::clone(&started), gate);
    let service = CoalesceLayer::new().layer(up.service.clone());
    let mut herd = Vec::new();
    herd.push(tokio::spawn(send(&service, get("/hot"))));
    started.notified().await;
    for _ in 0..4 {
        herd.push(tokio::spawn(send(&service, get("/hot"))));
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let flights = service.in_progress();
    assert_eq!(flights.len(), 1, "{flights:?}");
    assert!(
        flights[0].key.starts_with("GET http://example.test/hot"),
        "{flights:?}"
    );
    assert_eq!(flights[0].waiters, 5);
    release.send(()).expect("the leader waits");
    for request in herd {
        assert_eq!(request.await.expect("a task").body, "0");
    }
    assert!(service.in_progress().is_empty());
}
