//! The built binary on SIGTERM: stops accepting, finishes the request in
//! flight, exits 0.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn listening_url(line: &str) -> Option<String> {
    let start = line.find("listening on http://")? + "listening on ".len();
    let rest = &line[start..];
    Some(rest[..rest.find(' ').unwrap_or(rest.len())].to_string())
}

async fn sigterm_finishes_the_request_in_flight(subcommand: &str, path: &str) {
    let up = upstream_after("300ms").await;
    let mut arrivals = up.arrivals();
    let upstream_url = format!("{}/status", up.url());
    let mut child = Command::new(env!("CARGO_BIN_EXE_singleflight"))
        .args([
            subcommand,
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream_url,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first log line says where it listens.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let base = listening_url(&line).unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep draining the log so the child never blocks on a full pipe.
    let drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });

    let url = format!("{base}{path}");
    let in_flight = tokio::spawn(async move { get(&client(), &url).await });
    arrivals.wait_for(|n| *n >= 1).await.unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, 200, "the request in flight was answered");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let log = drain.join().unwrap();
    assert!(log.contains("shutting down"), "{log}");
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
