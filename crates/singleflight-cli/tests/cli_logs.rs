//! The built binary's log and configuration as a deployment sees them:
//! JSON lines, the access log's fields, the log level, settings from the
//! environment over the config file, and the one warning for an upstream
//! that is not up yet.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_log_line_parses_and_the_access_log_has_its_fields() {
    let up = upstream_after("0").await;
    let spawned = spawn_proxy(
        &up.url(),
        &["--memo-ttl", "60s", "--log-format", "json"],
        &[],
    );
    let client = client();
    let url = format!("{}/report?id=3", spawned.base);
    for _ in 0..2 {
        let (status, _, body) = get(&client, &url).await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    let log = spawned.stop().await;
    let lines: Vec<serde_json::Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "singleflight::access")
        .collect();
    assert_eq!(access.len(), 2, "{log:#?}");
    for (line, source) in access.iter().zip(["leader", "memo"]) {
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/report?id=3");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 3);
        assert_eq!(line["source"], source, "{line}");
        assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(line["duration_ms"].is_number());
    }
    assert_eq!(access[0]["shared"], "false");
    assert_eq!(access[1]["shared"], "true");
    assert_eq!(*up.arrivals().borrow(), 1);
    up.shutdown(Duration::from_secs(2)).await;
}

/// A proxy with the log filter given by `flags` and `envs` answers one
/// request; whether its log has the access line.
async fn access_line_logged(flags: &[&str], envs: &[(&str, &str)]) -> bool {
    let up = upstream_after("0").await;
    let spawned = spawn_proxy(&up.url(), flags, envs);
    let (status, _, _) = get(&client(), &format!("{}/x", spawned.base)).await;
    assert_eq!(status, 200);
    let log = spawned.stop().await;
    assert!(
        log.iter().any(|l| l.contains("shutting down")),
        "the binary's own info lines stay: {log:#?}"
    );
    assert_eq!(*up.arrivals().borrow(), 1);
    up.shutdown(Duration::from_secs(2)).await;
    log.iter().any(|l| l.contains("path=/x"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_filter_comes_from_log_level_over_rust_log() {
    let access_off = "info,singleflight::access=warn";
    assert!(access_line_logged(&[], &[]).await, "info by default");
    assert!(!access_line_logged(&["--log-level", access_off], &[]).await);
    assert!(!access_line_logged(&[], &[("RUST_LOG", access_off)]).await);
    assert!(
        access_line_logged(&["--log-level", "info"], &[("RUST_LOG", access_off)]).await,
        "--log-level wins over RUST_LOG"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_win_over_the_environment_and_the_environment_over_the_file() {
    let up = upstream_after("100ms").await;
    let config = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("env-over-file.toml");
    // The file names an upstream where nothing listens, and a wait limit
    // every request would exceed.
    std::fs::write(
        &config,
        "upstream = \"http://127.0.0.1:9\"\nmax_wait = \"1ms\"\n",
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let spawned = spawn_listening(
        &["proxy", "--config", &config, "--max-wait", "30s"],
        &[
            ("SINGLEFLIGHT_LISTEN", "127.0.0.1:0"),
            ("SINGLEFLIGHT_UPSTREAM", &up.url()),
            ("SINGLEFLIGHT_MEMO_TTL", "60s"),
            ("SINGLEFLIGHT_MAX_WAIT", "2ms"),
            ("SINGLEFLIGHT_QUIET", "1"),
        ],
    );
    let client = client();
    for _ in 0..2 {
        let (status, _, body) = get(&client, &format!("{}/r", spawned.base)).await;
        assert_eq!(
            (status, body.as_str()),
            (200, "ok\n"),
            "the flag's --max-wait, the environment's upstream"
        );
    }
    assert_eq!(
        *up.arrivals().borrow(),
        1,
        "the environment's memo TTL answered the second"
    );
    let log = spawned.stop().await;
    assert!(
        !log.iter().any(|l| l.contains("path=/r")),
        "SINGLEFLIGHT_QUIET: {log:#?}"
    );
    up.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_not_up_yet_is_one_warning_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let upstream = format!("http://127.0.0.1:{port}");
    let spawned = spawn_proxy(&upstream, &[], &[]);
    let (status, _, _) = get(&client(), &format!("{}/x", spawned.base)).await;
    assert_eq!(status, 502);
    let log = spawned.stop().await;
    let warnings: Vec<&String> = log.iter().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{log:#?}");
    assert!(warnings[0].contains(&upstream), "{log:#?}");
    assert!(warnings[0].contains("502"), "{log:#?}");
}
