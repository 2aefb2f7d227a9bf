//! The built binary on SIGTERM: stops accepting, finishes the request in
//! flight, exits 0; a second signal during the drain exits at once.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;

async fn sigterm_finishes_the_request_in_flight(subcommand: &str, path: &str) {
    let up = upstream_after("300ms").await;
    let mut arrivals = up.arrivals();
    let upstream_url = format!("{}/status", up.url());
    let spawned = spawn_listening(
        &[
            subcommand,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream_url,
        ],
        &[],
    );
    let url = format!("{}{path}", spawned.base);
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    arrivals.wait_for(|n| *n >= 1).await.unwrap();
    spawned.signal("TERM");

    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight was answered");
    let (code, log) = tokio::task::spawn_blocking(move || spawned.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("shutting down")), "{log:#?}");
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_finishes_its_request_in_flight_on_sigterm() {
    sigterm_finishes_the_request_in_flight("serve", "/normal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_finishes_its_request_in_flight_on_sigterm() {
    sigterm_finishes_the_request_in_flight("proxy", "/status").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_exits_at_once() {
    // The request in flight would hold the drain for a minute.
    let up = upstream_after("60s").await;
    let mut arrivals = up.arrivals();
    let mut spawned = spawn_proxy(&up.url(), &["--shutdown-timeout", "2m"], &[]);
    let url = format!("{}/slow", spawned.base);
    let in_flight = tokio::spawn(async move {
        client()
            .get(url.parse().unwrap())
            .await
            .map(|r| r.status().as_u16())
    });
    arrivals.wait_for(|n| *n >= 1).await.unwrap();
    spawned.signal("TERM");
    let spawned = tokio::task::spawn_blocking(move || {
        spawned.wait_for_line("shutting down");
        spawned
    })
    .await
    .unwrap();
    spawned.signal("INT");
    let (code, log) = tokio::task::spawn_blocking(move || spawned.finish())
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{log:#?}");
    let last = log.last().expect("a log");
    assert!(last.contains("second signal"), "{log:#?}");
    assert!(
        in_flight.await.unwrap().is_err(),
        "the request in flight was dropped, not answered"
    );
    up.shutdown(Duration::from_millis(100)).await;
}
