//! `load`: request budgets, status counts and the JSON report.

mod common;

use std::process::Command;
use std::time::Duration;

use clap::Parser;
use common::*;
use singleflight_cli::{Cli, load, upstream};

fn load_opts(args: &[&str]) -> load::LoadOpts {
    let argv = ["singleflight", "load"].iter().chain(args);
    match Cli::parse_from(argv).command {
        singleflight_cli::Command::Load(opts) => opts,
        other => panic!("parsed {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_the_budget_is_sent_and_counted_by_status() {
    let ok = upstream_after("0").await;
    let failing = upstream::start(&upstream_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--delay",
        "0",
        "--status",
        "503",
    ]))
    .await
    .unwrap();
    let (ok_url, failing_url) = (format!("{}/a", ok.url()), format!("{}/b", failing.url()));
    let reports = load::run(&load_opts(&[
        &ok_url,
        &failing_url,
        "--requests",
        "30",
        "--concurrency",
        "7",
        "--json",
    ]))
    .await
    .unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].summary.requests, 30);
    assert_eq!(reports[0].summary.statuses.get(&200), Some(&30));
    assert_eq!(reports[1].summary.ok, 0);
    assert_eq!(reports[1].summary.statuses.get(&503), Some(&30));
    let client = client();
    assert_eq!(
        upstream_requests(&client, &ok.url()).await,
        30,
        "exactly the budget reached the upstream"
    );
    assert_eq!(upstream_requests(&client, &failing.url()).await, 30);
    ok.shutdown(Duration::from_secs(2)).await;
    failing.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_gone_counts_as_errors_not_a_crash() {
    let gone = upstream_after("0").await;
    let url = format!("{}/x", gone.url());
    gone.shutdown(Duration::from_secs(2)).await;
    let reports = load::run(&load_opts(&[&url, "-n", "5", "-c", "2", "--json"]))
        .await
        .unwrap();
    assert_eq!(reports[0].summary.errors, 5);
}

#[test]
fn json_output_is_one_document_on_stdout() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let up = runtime
        .block_on(upstream::start(&upstream_opts(&[
            "--listen",
            "127.0.0.1:0",
            "--delay",
            "0",
        ])))
        .unwrap();
    let url = format!("{}/x", up.url());
    let out = Command::new(env!("CARGO_BIN_EXE_singleflight"))
        .args([
            "load",
            &url,
            "--requests",
            "12",
            "--concurrency",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["url"], url.as_str());
    assert_eq!(report[0]["summary"]["requests"], 12);
    assert_eq!(report[0]["summary"]["statuses"]["200"], 12);
    runtime.block_on(up.shutdown(Duration::from_secs(2)));
}
