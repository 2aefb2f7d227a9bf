//! What the layer coalesces, under which key, and who gets which response:
//! driven with `tower_test::mock` (and axum's `oneshot`), no sockets.
//!
//! Every test starts its requests by polling each response future once, in
//! order: the first one sends its request to the mock (it leads), the others
//! join its flight. Only then does the test answer the mock, so whether two
//! requests were merged never depends on scheduling.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_LANGUAGE, AUTHORIZATION, CACHE_CONTROL, COOKIE, SET_COOKIE, VARY,
};
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use singleflight_tower::{Coalesce, CoalesceLayer, CoalescedBody};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock::{self, Handle, Mock};

type Upstream = Mock<Request<Full<Bytes>>, Response<Full<Bytes>>>;
type Upstreams = Handle<Request<Full<Bytes>>, Response<Full<Bytes>>>;
type Pending = Pin<
    Box<
        dyn Future<
                Output = Result<
                    Response<CoalescedBody<Full<Bytes>>>,
                    Box<dyn std::error::Error + Send + Sync>,
                >,
            > + Send,
    >,
>;

fn layered(layer: CoalesceLayer) -> (Coalesce<Upstream>, Upstreams) {
    let (upstream, handle) = mock::pair();
    (layer.layer(upstream), handle)
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri)
        .body(Full::default())
        .expect("a valid request")
}

fn request(method: Method, uri: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::default())
        .expect("a valid request")
}

fn text(body: &'static str) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(body.as_bytes())))
}

/// Calls the service and polls the response future once, so that it leads
/// or joins a flight (or sends its request) before the test goes on; then
/// drives it to the end (its whole body) on a task of its own.
async fn start(service: &mut Coalesce<Upstream>, request: Request<Full<Bytes>>) -> Started {
    let service = service.ready().await.expect("the mock is ready");
    let mut pending: Pending = Box::pin(service.call(request));
    let first = std::future::poll_fn(|cx| Poll::Ready(pending.as_mut().poll(cx).is_pending()));
    assert!(first.await, "the response must wait for the upstream");
    tokio::spawn(async move {
        let response = pending.await.expect("a response");
        let (head, body) = response.into_parts();
        let body = body.collect().await.expect("a whole body").to_bytes();
        (Response::from_parts(head, ()), body)
    })
}

type Started = tokio::task::JoinHandle<(Response<()>, Bytes)>;

async fn finish(started: Started) -> (Response<()>, Bytes) {
    started.await.expect("no panic")
}

fn shared_header(response: &Response<()>) -> Option<&str> {
    response
        .headers()
        .get("x-singleflight-shared")
        .and_then(|value| value.to_str().ok())
}

/// Answers the next upstream request with `response`, returning the request.
async fn answer(
    upstreams: &mut Upstreams,
    response: Response<Full<Bytes>>,
) -> Request<Full<Bytes>> {
    let (request, reply) = upstreams.next_request().await.expect("an upstream request");
    reply.send_response(response);
    request
}

fn no_more_requests(upstreams: &mut Upstreams) {
    assert!(
        upstreams.next_request().now_or_never().is_none(),
        "no further upstream request"
    );
}

#[tokio::test]
async fn identical_gets_share_one_upstream_request() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let mut pending = Vec::new();
    for _ in 0..5 {
        pending.push(start(&mut service, get("http://example.test/a?x=1")).await);
    }
    answer(&mut upstreams, text("hello")).await;
    for pending in pending {
        let (response, body) = finish(pending).await;
        assert_eq!(body, "hello");
        assert_eq!(shared_header(&response), Some("true"));
    }
    no_more_requests(&mut upstreams);
    let stats = service.stats();
    assert_eq!((stats.coalesced, stats.flights, stats.shared), (5, 1, 5));
    assert_eq!(service.flights(), 0);
}

#[tokio::test]
async fn a_lone_request_is_marked_not_shared() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let pending = start(&mut service, get("/alone")).await;
    answer(&mut upstreams, text("solo")).await;
    let (response, body) = finish(pending).await;
    assert_eq!(body, "solo");
    assert_eq!(shared_header(&response), Some("false"));
}

#[tokio::test]
async fn different_paths_queries_and_encodings_are_not_merged() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let gzip = Request::get("/a")
        .header(ACCEPT_ENCODING, "gzip")
        .body(Full::default())
        .expect("a valid request");
    let pending = vec![
        start(&mut service, get("/a")).await,
        start(&mut service, get("/b")).await,
        start(&mut service, get("/a?page=2")).await,
        start(&mut service, gzip).await,
    ];
    for _ in 0..4 {
        answer(&mut upstreams, text("x")).await;
    }
    for pending in pending {
        let (response, _) = finish(pending).await;
        assert_eq!(shared_header(&response), Some("false"));
    }
    no_more_requests(&mut upstreams);
}

#[tokio::test]
async fn writes_are_never_merged() {
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let (mut service, mut upstreams) = layered(CoalesceLayer::new());
        let first = start(&mut service, request(method.clone(), "/w")).await;
        let second = start(&mut service, request(method.clone(), "/w")).await;
        let a = answer(&mut upstreams, text("one")).await;
        let b = answer(&mut upstreams, text("two")).await;
        assert_eq!((a.method(), b.method()), (&method, &method));
        let (first, first_body) = finish(first).await;
        let (second, second_body) = finish(second).await;
        assert_eq!((first_body, second_body), ("one".into(), "two".into()));
        // Not candidates at all: no header, nothing counted.
        assert_eq!(shared_header(&first), None);
        assert_eq!(shared_header(&second), None);
        assert_eq!(service.stats().coalesced, 0);
    }
}

#[tokio::test]
async fn requests_with_a_body_are_never_merged() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let with_body = || {
        Request::get("/search")
            .body(Full::new(Bytes::from_static(b"q=1")))
            .expect("a valid request")
    };
    let first = start(&mut service, with_body()).await;
    let second = start(&mut service, with_body()).await;
    answer(&mut upstreams, text("one")).await;
    answer(&mut upstreams, text("two")).await;
    assert_eq!(finish(first).await.1, "one");
    assert_eq!(finish(second).await.1, "two");
    assert_eq!(service.stats().bypassed, 2);
}

#[tokio::test]
async fn credentials_pass_straight_through() {
    for header in [AUTHORIZATION, COOKIE] {
        let (mut service, mut upstreams) = layered(CoalesceLayer::new());
        let credentialed = || {
            Request::get("/me")
                .header(header.clone(), "secret")
                .body(Full::default())
                .expect("a valid request")
        };
        let first = start(&mut service, credentialed()).await;
        let second = start(&mut service, credentialed()).await;
        answer(&mut upstreams, text("one")).await;
        answer(&mut upstreams, text("two")).await;
        assert_eq!(finish(first).await.1, "one");
        assert_eq!(finish(second).await.1, "two");
        assert_eq!(service.stats().bypassed, 2);
    }
}

#[tokio::test]
async fn credentials_in_the_key_coalesce_per_credential() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new().key_header(AUTHORIZATION));
    let as_user = |token: &str| {
        Request::get("/me")
            .header(AUTHORIZATION, token)
            .body(Full::default())
            .expect("a valid request")
    };
    let alice = start(&mut service, as_user("alice")).await;
    let alice_again = start(&mut service, as_user("alice")).await;
    let bob = start(&mut service, as_user("bob")).await;
    let first = answer(&mut upstreams, text("for alice")).await;
    assert_eq!(first.headers()[AUTHORIZATION], "alice");
    let second = answer(&mut upstreams, text("for bob")).await;
    assert_eq!(second.headers()[AUTHORIZATION], "bob");
    assert_eq!(finish(alice).await.1, "for alice");
    assert_eq!(finish(alice_again).await.1, "for alice");
    assert_eq!(finish(bob).await.1, "for bob");
    no_more_requests(&mut upstreams);
}

#[tokio::test]
async fn requests_opt_out_by_header_or_predicate() {
    let layer = CoalesceLayer::new().bypass_if(|head| head.uri.path() == "/live");
    let (mut service, mut upstreams) = layered(layer);
    let opted_out = || {
        Request::get("/a")
            .header("x-singleflight-bypass", "1")
            .body(Full::default())
            .expect("a valid request")
    };
    let pending = vec![
        start(&mut service, opted_out()).await,
        start(&mut service, opted_out()).await,
        start(&mut service, get("/live")).await,
        start(&mut service, get("/live")).await,
    ];
    for _ in 0..4 {
        answer(&mut upstreams, text("own")).await;
    }
    for pending in pending {
        let (response, body) = finish(pending).await;
        assert_eq!(body, "own");
        assert_eq!(shared_header(&response), None);
    }
    assert_eq!(service.stats().bypassed, 4);
}

#[tokio::test]
async fn the_bypass_header_is_not_sent_upstream() {
    let bypass = HeaderName::from_static("x-no-coalesce");
    let layer = CoalesceLayer::new().bypass_header(Some(bypass.clone()));
    let (mut service, mut upstreams) = layered(layer);
    let opted_out = |method: Method, credential: bool| {
        let mut request = Request::builder()
            .method(method)
            .uri("/a")
            .header(&bypass, "1")
            .header(&bypass, "2")
            .header(ACCEPT_LANGUAGE, "en");
        if credential {
            request = request.header(AUTHORIZATION, "secret");
        }
        request.body(Full::default()).expect("a valid request")
    };
    // Opted out by the header alone, and by a credential as well: either way
    // the header is the layer's, and stops here (every value of it).
    for request in [
        opted_out(Method::GET, false),
        opted_out(Method::HEAD, false),
        opted_out(Method::GET, true),
    ] {
        let pending = start(&mut service, request).await;
        let sent = answer(&mut upstreams, text("own")).await;
        assert!(!sent.headers().contains_key(&bypass), "{sent:?}");
        assert_eq!(sent.headers()[ACCEPT_LANGUAGE], "en");
        finish(pending).await;
    }
    // Other methods are passed on untouched, without a look at their headers.
    let pending = start(&mut service, opted_out(Method::POST, false)).await;
    let sent = answer(&mut upstreams, text("created")).await;
    assert_eq!(sent.headers().get_all(&bypass).iter().count(), 2);
    finish(pending).await;
    assert_eq!(service.stats().bypassed, 3);
}

#[tokio::test]
async fn head_requests_are_coalesced_apart_from_gets() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let head_a = start(&mut service, request(Method::HEAD, "/h")).await;
    let head_b = start(&mut service, request(Method::HEAD, "/h")).await;
    let get_c = start(&mut service, get("/h")).await;
    let first = answer(&mut upstreams, Response::new(Full::default())).await;
    assert_eq!(first.method(), Method::HEAD);
    let second = answer(&mut upstreams, text("body")).await;
    assert_eq!(second.method(), Method::GET);
    for head in [head_a, head_b] {
        let (response, body) = finish(head).await;
        assert!(body.is_empty());
        assert_eq!(shared_header(&response), Some("true"));
    }
    let (response, body) = finish(get_c).await;
    assert_eq!(body, "body");
    assert_eq!(shared_header(&response), Some("false"));
    no_more_requests(&mut upstreams);
}

#[tokio::test]
async fn private_responses_reach_only_their_requester() {
    let privates: [(HeaderName, &str); 3] = [
        (SET_COOKIE, "session=leader"),
        (CACHE_CONTROL, "max-age=60, private"),
        (CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in privates {
        let (mut service, mut upstreams) = layered(CoalesceLayer::new());
        let leader = start(&mut service, get("/profile")).await;
        let followers = vec![
            start(&mut service, get("/profile")).await,
            start(&mut service, get("/profile")).await,
        ];
        let private = |body: &'static str| {
            let mut response = text(body);
            let value = value.replace("leader", body);
            response
                .headers_mut()
                .insert(name.clone(), value.parse().expect("a header value"));
            response
        };
        answer(&mut upstreams, private("leader")).await;
        let (response, body) = finish(leader).await;
        assert_eq!(body, "leader");
        assert_eq!(shared_header(&response), Some("false"));
        // The followers send their own requests, both at once: answer them
        // only after both have arrived.
        let (first, reply_first) = upstreams.next_request().await.expect("a refetch");
        let (second, reply_second) = upstreams.next_request().await.expect("a refetch");
        assert_eq!(
            (first.uri().path(), second.uri().path()),
            ("/profile", "/profile")
        );
        reply_first.send_response(private("first"));
        reply_second.send_response(private("second"));
        let mut seen = Vec::new();
        for follower in followers {
            let (response, body) = finish(follower).await;
            assert_eq!(shared_header(&response), Some("false"));
            if name == SET_COOKIE {
                // Each client sees its own cookie, and its own body.
                let cookie = response.headers()[SET_COOKIE].to_str().expect("ascii");
                assert_eq!(
                    cookie,
                    format!("session={}", String::from_utf8_lossy(&body))
                );
            }
            seen.push(body);
        }
        seen.sort();
        assert_eq!(seen, ["first", "second"]);
        assert_eq!(service.stats().refetched, 2);
        no_more_requests(&mut upstreams);
    }
}

#[tokio::test(start_paused = true)]
async fn a_private_resource_passes_through_for_a_while() {
    let layer = CoalesceLayer::new().private_bypass(Duration::from_secs(10));
    let (mut service, mut upstreams) = layered(layer);
    let pending = start(&mut service, get("/me")).await;
    let mut private = text("mine");
    private
        .headers_mut()
        .insert(SET_COOKIE, "a=1".parse().expect("a header value"));
    answer(&mut upstreams, private).await;
    finish(pending).await;

    // Within the while: straight through, even when concurrent.
    tokio::time::advance(Duration::from_secs(9)).await;
    let a = start(&mut service, get("/me")).await;
    let b = start(&mut service, get("/me")).await;
    answer(&mut upstreams, text("a")).await;
    answer(&mut upstreams, text("b")).await;
    assert_eq!(shared_header(&finish(a).await.0), None);
    assert_eq!(shared_header(&finish(b).await.0), None);
    assert_eq!(service.stats().bypassed, 2);

    // After it: coalesced again.
    tokio::time::advance(Duration::from_secs(2)).await;
    let a = start(&mut service, get("/me")).await;
    let b = start(&mut service, get("/me")).await;
    answer(&mut upstreams, text("shared")).await;
    assert_eq!(finish(a).await.1, "shared");
    assert_eq!(finish(b).await.1, "shared");
    no_more_requests(&mut upstreams);
}

fn in_language(language: &str) -> Request<Full<Bytes>> {
    Request::get("/greeting")
        .header(ACCEPT_LANGUAGE, language)
        .body(Full::default())
        .expect("a valid request")
}

fn varying(body: &'static str) -> Response<Full<Bytes>> {
    let mut response = text(body);
    response
        .headers_mut()
        .insert(VARY, "Accept-Language".parse().expect("a header value"));
    response
}

#[tokio::test]
async fn vary_keeps_waiters_that_differ_apart() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    // Before the resource's Vary is known, `fr` joins `en`'s flight; once
    // the response says it varies on the language, `fr` fetches its own.
    let en = start(&mut service, in_language("en")).await;
    let en_too = start(&mut service, in_language("en")).await;
    let fr = start(&mut service, in_language("fr")).await;
    answer(&mut upstreams, varying("hello")).await;
    let refetch = answer(&mut upstreams, varying("bonjour")).await;
    assert_eq!(refetch.headers()[ACCEPT_LANGUAGE], "fr");
    assert_eq!(finish(en).await.1, "hello");
    assert_eq!(finish(en_too).await.1, "hello");
    let (response, body) = finish(fr).await;
    assert_eq!(body, "bonjour");
    assert_eq!(shared_header(&response), Some("false"));
    no_more_requests(&mut upstreams);

    // Now the language is part of the key: separate flights from the start.
    let en = start(&mut service, in_language("en")).await;
    let fr = start(&mut service, in_language("fr")).await;
    let fr_too = start(&mut service, in_language("fr")).await;
    let first = answer(&mut upstreams, varying("hello")).await;
    let second = answer(&mut upstreams, varying("bonjour")).await;
    assert_eq!(first.headers()[ACCEPT_LANGUAGE], "en");
    assert_eq!(second.headers()[ACCEPT_LANGUAGE], "fr");
    assert_eq!(finish(en).await.1, "hello");
    assert_eq!(finish(fr).await.1, "bonjour");
    assert_eq!(finish(fr_too).await.1, "bonjour");
    no_more_requests(&mut upstreams);
}

#[tokio::test]
async fn vary_star_is_private() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let leader = start(&mut service, get("/any")).await;
    let follower = start(&mut service, get("/any")).await;
    let mut response = text("leader's");
    response
        .headers_mut()
        .insert(VARY, "*".parse().expect("a header value"));
    answer(&mut upstreams, response).await;
    answer(&mut upstreams, text("follower's")).await;
    assert_eq!(finish(leader).await.1, "leader's");
    assert_eq!(finish(follower).await.1, "follower's");
}

#[tokio::test]
async fn server_errors_are_shared() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let a = start(&mut service, get("/flaky")).await;
    let b = start(&mut service, get("/flaky")).await;
    let mut unavailable = text("try later");
    *unavailable.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    answer(&mut upstreams, unavailable).await;
    for pending in [a, b] {
        let (response, body) = finish(pending).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "try later");
        assert_eq!(shared_header(&response), Some("true"));
    }
    no_more_requests(&mut upstreams);
}

#[tokio::test]
async fn upstream_errors_become_502_and_timeouts_504_for_every_waiter() {
    let timeout = || -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(tower::timeout::error::Elapsed::new())
    };
    let io_timeout = || -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))
    };
    let refused = || -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connect",
        ))
    };
    let cases = [
        (timeout(), StatusCode::GATEWAY_TIMEOUT),
        (io_timeout(), StatusCode::GATEWAY_TIMEOUT),
        (refused(), StatusCode::BAD_GATEWAY),
    ];
    for (error, status) in cases {
        let (mut service, mut upstreams) = layered(CoalesceLayer::new());
        let a = start(&mut service, get("/down")).await;
        let b = start(&mut service, get("/down")).await;
        let (_, reply) = upstreams.next_request().await.expect("a request");
        reply.send_error(error);
        for pending in [a, b] {
            let (response, body) = finish(pending).await;
            assert_eq!(response.status(), status);
            assert_eq!(
                response.headers()["content-type"],
                "text/plain; charset=utf-8"
            );
            assert!(
                !body.is_empty() && body.len() < 100,
                "a short reason: {body:?}"
            );
        }
        assert_eq!(service.stats().upstream_errors, 1);
        no_more_requests(&mut upstreams);
    }
}

#[tokio::test]
async fn the_shared_header_can_be_renamed_or_turned_off() {
    let renamed = CoalesceLayer::new().shared_header(Some(HeaderName::from_static("x-merged")));
    let (mut service, mut upstreams) = layered(renamed);
    let pending = start(&mut service, get("/")).await;
    answer(&mut upstreams, text("x")).await;
    let (response, _) = finish(pending).await;
    assert_eq!(response.headers()["x-merged"], "false");
    assert_eq!(shared_header(&response), None);

    let (mut service, mut upstreams) = layered(CoalesceLayer::new().shared_header(None));
    let a = start(&mut service, get("/")).await;
    let b = start(&mut service, get("/")).await;
    answer(&mut upstreams, text("x")).await;
    for pending in [a, b] {
        let (response, body) = finish(pending).await;
        assert_eq!(body, "x");
        assert_eq!(shared_header(&response), None);
    }
}

#[tokio::test]
async fn a_key_function_replaces_the_key() {
    let layer = CoalesceLayer::new().key_fn(|head| {
        // Ignore the query; never coalesce /private.
        (head.uri.path() != "/private").then(|| head.uri.path().to_owned())
    });
    let (mut service, mut upstreams) = layered(layer);
    let a = start(&mut service, get("/list?utm=1")).await;
    let b = start(&mut service, get("/list?utm=2")).await;
    let c = start(&mut service, get("/private")).await;
    let d = start(&mut service, get("/private")).await;
    for _ in 0..3 {
        answer(&mut upstreams, text("x")).await;
    }
    assert_eq!(shared_header(&finish(a).await.0), Some("true"));
    assert_eq!(shared_header(&finish(b).await.0), Some("true"));
    assert_eq!(shared_header(&finish(c).await.0), None);
    assert_eq!(shared_header(&finish(d).await.0), None);
    no_more_requests(&mut upstreams);
}

#[tokio::test]
async fn axum_router_coalesces_concurrent_gets_and_never_posts() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get as route_get;

    let runs = Arc::new(AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let handler = {
        let runs = Arc::clone(&runs);
        move || {
            let (runs, mut gate) = (Arc::clone(&runs), gate.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                "report"
            }
        }
    };
    let app = Router::new()
        .route("/report", route_get(handler.clone()).post(handler))
        .layer(CoalesceLayer::new())
        // What `axum::serve` does: turn the handlers into services once.
        // Without it, a router called directly as a service converts a
        // handler (and applies its layers) per request.
        .with_state(());

    let call = |method: Method| {
        let request = Request::builder()
            .method(method)
            .uri("/report")
            .body(Body::empty())
            .expect("a valid request");
        Box::pin(app.clone().oneshot(request))
    };
    let mut gets = vec![call(Method::GET), call(Method::GET), call(Method::GET)];
    let mut posts = vec![call(Method::POST), call(Method::POST)];
    for pending in gets.iter_mut().chain(posts.iter_mut()) {
        let first = std::future::poll_fn(|cx| Poll::Ready(pending.as_mut().poll(cx).is_pending()));
        assert!(first.await);
    }
    open.send_replace(true);
    for pending in gets {
        let response = pending.await.expect("infallible");
        assert_eq!(response.headers()["x-singleflight-shared"], "true");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        assert_eq!(body, "report");
    }
    for pending in posts {
        let response = pending.await.expect("infallible");
        assert!(response.headers().get("x-singleflight-shared").is_none());
    }
    // One run for the three GETs, one per POST.
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_core_group_counts_the_flights_when_metrics_are_on() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new().metrics("tower-test"));
    let pending = vec![
        start(&mut service, get("/counted")).await,
        start(&mut service, get("/counted")).await,
        start(&mut service, get("/counted")).await,
    ];
    answer(&mut upstreams, text("x")).await;
    for pending in pending {
        finish(pending).await;
    }
    let stats = service.group_stats().expect("metrics are on");
    assert_eq!((stats.calls, stats.executions), (3, 1));
    assert!(
        stats.shared >= 2,
        "the followers got a shared value: {stats:?}"
    );
    assert_eq!((stats.flights, stats.waiters), (0, 0));
}

#[tokio::test]
async fn ranges_and_conditions_are_part_of_the_key() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let with = |name: HeaderName, value: &str| {
        Request::get("/video")
            .header(name, value)
            .body(Full::default())
            .expect("a valid request")
    };
    let whole = start(&mut service, get("/video")).await;
    let head_part = start(&mut service, with(http::header::RANGE, "bytes=0-99")).await;
    let head_part_too = start(&mut service, with(http::header::RANGE, "bytes=0-99")).await;
    let tail_part = start(&mut service, with(http::header::RANGE, "bytes=100-")).await;
    let revalidation = start(&mut service, with(http::header::IF_NONE_MATCH, "\"v1\"")).await;
    answer(&mut upstreams, text("whole")).await;
    answer(&mut upstreams, text("head part")).await;
    answer(&mut upstreams, text("tail part")).await;
    let mut not_modified = text("");
    *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
    answer(&mut upstreams, not_modified).await;
    assert_eq!(finish(whole).await.1, "whole");
    assert_eq!(finish(head_part).await.1, "head part");
    assert_eq!(finish(head_part_too).await.1, "head part");
    assert_eq!(finish(tail_part).await.1, "tail part");
    assert_eq!(
        finish(revalidation).await.0.status(),
        StatusCode::NOT_MODIFIED
    );
    no_more_requests(&mut upstreams);
}

#[tokio::test]
async fn waiters_hold_no_capacity_of_the_inner_service() {
    // Two permits: the flight for /a holds one; its three waiters must not
    // hold the other, or /b could not be sent until /a is answered.
    let (upstream, mut upstreams) = mock::pair::<Request<Full<Bytes>>, Response<Full<Bytes>>>();
    let limited = tower::limit::ConcurrencyLimitLayer::new(2).layer(upstream);
    let mut service = CoalesceLayer::new().layer(limited);
    let mut pending = Vec::new();
    for uri in ["/a", "/a", "/a", "/a", "/b"] {
        let ready = service.ready().await.expect("ready");
        let mut response = Box::pin(ready.call(get(uri)));
        let first = std::future::poll_fn(|cx| Poll::Ready(response.as_mut().poll(cx).is_pending()));
        assert!(first.await);
        pending.push(tokio::spawn(async move {
            let response = response.await.expect("a response");
            response
                .into_body()
                .collect()
                .await
                .expect("a body")
                .to_bytes()
        }));
    }
    let (a, reply_a) = upstreams.next_request().await.expect("a request");
    let (b, reply_b) = upstreams
        .next_request()
        .await
        .expect("b request, while a waits");
    assert_eq!((a.uri().path(), b.uri().path()), ("/a", "/b"));
    reply_b.send_response(text("b"));
    reply_a.send_response(text("a"));
    let bodies: Vec<Bytes> = futures::future::try_join_all(pending)
        .await
        .expect("no panic");
    assert_eq!(bodies, ["a", "a", "a", "a", "b"]);
    no_more_requests(&mut upstreams);
}

#[tokio::test]
async fn the_inner_service_sees_the_flight_key_only_on_a_flights_request() {
    let (mut service, mut upstreams) = layered(CoalesceLayer::new());
    let started = start(&mut service, get("http://example.com/a?b")).await;
    let sent = answer(&mut upstreams, text("a")).await;
    let key = sent
        .extensions()
        .get::<singleflight_tower::FlightKey>()
        .expect("the flight's key");
    assert!(
        key.as_str().starts_with("GET http://example.com/a?b"),
        "{key:?}"
    );
    finish(started).await;
    let started = start(&mut service, request(Method::POST, "http://example.com/a")).await;
    let sent = answer(&mut upstreams, text("posted")).await;
    assert!(
        sent.extensions()
            .get::<singleflight_tower::FlightKey>()
            .is_none(),
        "a request that is not coalesced carries no key"
    );
    finish(started).await;
}
