//! Bad input: one line naming the thing and the fix, exit code 2, nothing half-started.

use std::process::{Command, Output};

fn singleflight(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_singleflight"))
        .args(args)
        .output()
        .expect("run the binary")
}

fn assert_bad_input(args: &[&str], names: &[&str]) {
    let out = singleflight(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: one line, got {stderr}"
    );
    for name in names {
        assert!(
            stderr.contains(name),
            "{args:?}: {stderr:?} should name {name:?}"
        );
    }
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
}

#[test]
fn unparsable_duration() {
    assert_bad_input(
        &["upstream", "--delay", "soon"],
        &["--delay", "soon", "250ms"],
    );
    assert_bad_input(&["demo", "--spread", "1x"], &["--spread", "1x"]);
}

#[test]
fn unparsable_url() {
    assert_bad_input(
        &["serve", "--upstream", "localhost:8081"],
        &["--upstream", "localhost:8081", "http://"],
    );
    assert_bad_input(&["load", "ftp://x", "-n", "1"], &["ftp://x", "http://"]);
}

#[test]
fn unparsable_listen_address() {
    assert_bad_input(
        &["serve", "--listen", "localhost"],
        &["--listen", "IP:PORT"],
    );
}

#[test]
fn address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_bad_input(
        &["upstream", "--listen", &addr],
        &["--listen", &addr, "in use", "another port"],
    );
    // serve starts its embedded upstream first; it must not be left running.
    assert_bad_input(&["serve", "--listen", &addr], &["--listen", &addr]);
}

#[test]
fn unreachable_upstream_at_start() {
    // Bind then drop to find a loopback port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/status");
    assert_bad_input(
        &["serve", "--listen", "127.0.0.1:0", "--upstream", &url],
        &["--upstream", &url, "start it first"],
    );
}

#[test]
fn missing_budget_for_load() {
    let out = singleflight(&["load", "http://127.0.0.1:1/"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_is_success() {
    let out = singleflight(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for sub in ["upstream", "serve", "demo", "load"] {
        assert!(help.contains(sub), "{help}");
    }
}

fn config_file(name: &str, text: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn config_with_an_unknown_key() {
    let path = config_file(
        "unknown-key.toml",
        "upstream = \"http://127.0.0.1:9\"\nlisten_addr = \"127.0.0.1:0\"\n",
    );
    assert_bad_input(
        &["proxy", "--config", &path],
        &[&path, "line 2", "listen_addr"],
    );
}

#[test]
fn config_with_a_wrong_type() {
    let path = config_file(
        "wrong-type.toml",
        "upstream = \"http://127.0.0.1:9\"\nmax_connections = \"many\"\n",
    );
    assert_bad_input(&["proxy", "--config", &path], &[&path, "line 2"]);
    let path = config_file(
        "bad-duration.toml",
        "upstream = \"http://127.0.0.1:9\"\nmax_wait = \"later\"\n",
    );
    assert_bad_input(&["proxy", "--config", &path], &[&path, "max_wait", "later"]);
}

#[test]
fn proxy_without_upstream() {
    assert_bad_input(&["proxy", "--listen", "127.0.0.1:0"], &["--upstream"]);
}

#[test]
fn a_log_filter_that_does_not_parse() {
    assert_bad_input(
        &["upstream", "--log-level", "info,x=loud"],
        &["--log-level", "info,x=loud", "trace"],
    );
}

#[test]
fn a_bad_value_in_the_environment_names_the_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_singleflight"))
        .args(["proxy", "--upstream", "http://127.0.0.1:9"])
        .env("SINGLEFLIGHT_MEMO_TTL", "soon")
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    for name in ["SINGLEFLIGHT_MEMO_TTL", "soon", "250ms"] {
        assert!(stderr.contains(name), "{stderr:?} should name {name:?}");
    }
}

#[test]
fn stale_without_a_memo_ttl() {
    assert_bad_input(
        &["proxy", "--upstream", "http://127.0.0.1:9", "--stale", "5s"],
        &["--stale", "--memo-ttl"],
    );
}

#[test]
fn memo_settings_that_cannot_work() {
    assert_bad_input(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--stale-if-error",
            "5m",
        ],
        &["--stale-if-error", "--memo-ttl"],
    );
    assert_bad_input(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--memo-ttl",
            "1s",
            "--memo-max-bytes",
            "0",
        ],
        &["--memo-max-bytes", "64MiB"],
    );
    assert_bad_input(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--on-max-wait",
            "wait",
        ],
        &["--on-max-wait", "wait", "504", "bypass"],
    );
    assert_bad_input(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--admin",
            "localhost",
        ],
        &["--admin", "IP:PORT"],
    );
}

#[test]
fn unparsable_sizes() {
    assert_bad_input(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--body-window",
            "lots",
        ],
        &["--body-window", "lots", "4MiB"],
    );
    assert_bad_input(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--spill-max",
            "1TB",
        ],
        &["--spill-max", "1TB", "1GiB"],
    );
}

#[test]
fn a_spill_directory_that_cannot_hold_a_file() {
    let dir = tempfile::tempdir().expect("a directory");
    let missing = dir.path().join("missing");
    let missing = missing.to_str().expect("a UTF-8 path");
    assert_bad_input(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:9",
            "--spill-dir",
            missing,
        ],
        &["--spill-dir", missing, "create the directory"],
    );
}
