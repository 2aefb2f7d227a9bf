//! `Group` against a real `redis-server` started by the test: across
//! processes (this test binary run again as a child), a leader killed
//! mid-flight, Redis stopped and restarted mid-flight, results published
//! before a waiter reads, stale results, hostile keys, oversize values.
//! Every wait is bounded; no assertion is about time.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use singleflight_redis::testing::{self, RedisServer};
use singleflight_redis::{Error, Group, OnRedisError, Source};

const PREFIX: &str = "sftest";

fn group(server: &RedisServer) -> Group<String> {
    Group::builder(server.url())
        .prefix(PREFIX)
        .lease(Duration::from_millis(600))
        .redis_timeout(Duration::from_millis(500))
        .build()
        .expect("a group")
}

async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("done within 30 s")
}

/// Run as a child process (`SF_REDIS_CHILD` set): one caller of its own
/// group. It waits for the parent's go, calls, and prints its value.
#[tokio::test]
async fn child_caller() {
    let Ok(url) = std::env::var("SF_REDIS_CHILD") else {
        return; // Not a child: nothing to do.
    };
    let key = std::env::var("SF_REDIS_KEY").expect("a key");
    let work_ms: u64 = std::env::var("SF_REDIS_WORK_MS")
        .expect("a work time")
        .parse()
        .expect("a number");
    let group: Group<String> = Group::builder(url.clone())
        .prefix(PREFIX)
        .lease(Duration::from_millis(600))
        .build()
        .expect("a group");
    let client = redis::Client::open(url).expect("a client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connected");
    let _: i64 = redis::cmd("INCR")
        .arg("ready")
        .query_async(&mut conn)
        .await
        .expect("INCR");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let go: Option<String> = redis::cmd("GET")
            .arg("go")
            .query_async(&mut conn)
            .await
            .expect("GET");
        if go.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no go from the parent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = std::process::id();
    let outcome = group
        .call(key, move || async move {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connected");
            let _: i64 = redis::cmd("INCR")
                .arg("executions")
                .query_async(&mut conn)
                .await
                .expect("INCR");
            tokio::time::sleep(Duration::from_millis(work_ms)).await;
            format!("value-of-{pid}")
        })
        .await
        .expect("a value");
    println!("VALUE={} SOURCE={:?}", outcome.value, outcome.source);
}

/// Starts this test binary as a child running `child_caller`.
fn spawn_child(server: &RedisServer, key: &str, work_ms: u64) -> std::process::Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "child_caller",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SF_REDIS_CHILD", server.url())
        .env("SF_REDIS_KEY", key)
        .env("SF_REDIS_WORK_MS", work_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("a child process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_on_one_key_run_the_work_once() {
    let server = RedisServer::start();
    let children: Vec<_> = (0..3)
        .map(|_| spawn_child(&server, "report", 1000))
        .collect();
    server.wait_for(&["GET", "ready"], |n| n == "3");
    assert_eq!(server.command(&["SET", "go", "1"]).as_deref(), Some("+OK"));
    let mut values = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("the child ends");
        assert!(output.status.success(), "a child failed");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        // The harness may print the test's name on the same line.
        let at = stdout
            .find("VALUE=")
            .unwrap_or_else(|| panic!("no value in {stdout}"));
        let line = stdout[at..].lines().next().unwrap_or("").to_owned();
        values.push(line);
    }
    assert_eq!(server.command(&["GET", "executions"]).as_deref(), Some("1"));
    let value = |line: &str| line.split(' ').next().unwrap_or("").to_owned();
    assert!(
        values.iter().all(|line| value(line) == value(&values[0])),
        "{values:?}"
    );
    let ran = values
        .iter()
        .filter(|line| line.ends_with("SOURCE=Ran"))
        .count();
    let remote = values
        .iter()
        .filter(|line| line.ends_with("SOURCE=Remote"))
        .count();
    assert_eq!((ran, remote), (1, 2), "{values:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_flight_is_taken_over() {
    let server = RedisServer::start();
    let mut leader = spawn_child(&server, "slow", 60_000);
    assert_eq!(server.command(&["SET", "go", "1"]).as_deref(), Some("+OK"));
    let (lease, _, _) = RedisServer::keys_of(PREFIX, b"slow");
    server.wait_for(&["EXISTS", &lease], |n| n == ":1");
    leader.kill().expect("killed");
    let _ = leader.wait();
    let group = group(&server);
    let outcome = bounded(group.call("slow", || async { "taken over".to_owned() }))
        .await
        .expect("a value");
    assert_eq!(outcome.value, "taken over");
    assert_eq!(outcome.source, Source::Ran);
    assert_eq!(group.stats().takeovers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_flight_falls_back_then_coordination_resumes() {
    let mut server = RedisServer::start();
    let group = group(&server);
    // Another process holds the lease: this call waits on Redis.
    let (lease, _, _) = RedisServer::keys_of(PREFIX, b"k");
    server.command(&["SET", &lease, "1:elsewhere", "PX", "60000"]);
    let waiting = tokio::spawn({
        let group = group.clone();
        async move { group.call("k", || async { "ran here".to_owned() }).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.blocked_clients() == 0 {
        assert!(Instant::now() < deadline, "the call never waited on Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop();
    let outcome = bounded(waiting).await.expect("no panic").expect("a value");
    assert_eq!(
        (outcome.value.as_str(), outcome.source),
        ("ran here", Source::Fallback)
    );
    assert!(group.stats().fallbacks >= 1);
    // Back up (empty: it kept nothing): the next call leads through Redis.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = bounded(group.call("k2", || async { "led".to_owned() }))
            .await
            .expect("a value");
        if outcome.source == Source::Ran {
            break;
        }
        assert!(Instant::now() < deadline, "coordination never resumed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_published_before_the_waiter_reads_is_not_missed() {
    let server = RedisServer::start();
    let group = group(&server);
    // The leader of generation 7 has published and is about to release:
    // the waiter sees the lease, then reads a stream that already has it.
    let (lease, _, results) = RedisServer::keys_of(PREFIX, b"race");
    server.command(&["SET", &lease, "7:elsewhere", "PX", "60000"]);
    server.command(&["XADD", &results, "*", "g", "7", "v", "\"published\""]);
    let ran = Arc::new(AtomicUsize::new(0));
    let outcome = bounded(group.call("race", {
        let ran = Arc::clone(&ran);
        move || async move {
            ran.fetch_add(1, Ordering::SeqCst);
            "ran".to_owned()
        }
    }))
    .await
    .expect("a value");
    assert_eq!(
        (outcome.value.as_str(), outcome.source),
        ("published", Source::Remote)
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leaders_late_result_is_dropped() {
    let server = RedisServer::start();
    let group = group(&server);
    let (lease, _, results) = RedisServer::keys_of(PREFIX, b"fenced");
    server.command(&["SET", &lease, "6:new-leader", "PX", "60000"]);
    let waiting = tokio::spawn({
        let group = group.clone();
        async move { group.call("fenced", || async { "ran".to_owned() }).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.blocked_clients() == 0 {
        assert!(Instant::now() < deadline, "the call never waited on Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The leader of generation 5 lost its lease and publishes late.
    server.command(&["XADD", &results, "*", "g", "5", "v", "\"stale\""]);
    server.command(&["XADD", &results, "*", "g", "6", "v", "\"fresh\""]);
    let outcome = bounded(waiting).await.expect("no panic").expect("a value");
    assert_eq!(
        (outcome.value.as_str(), outcome.source),
        ("fresh", Source::Remote)
    );
    assert_eq!(group.stats().stale_results, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_stay_inside_the_prefix_and_apart() {
    let server = RedisServer::start();
    let group = group(&server);
    let keys: [&[u8]; 7] = [
        b"a b",
        b"line\nbreak",
        b"{brace}",
        b"colon:key",
        b"\0nul",
        "crab \u{1f980}".as_bytes(),
        b"",
    ];
    for (i, key) in keys.iter().enumerate() {
        let outcome = bounded(group.call(key, move || async move { format!("value {i}") }))
            .await
            .expect("a value");
        assert_eq!(outcome.value, format!("value {i}"));
        assert_eq!(outcome.source, Source::Ran);
    }
    // Only namespaced keys were written (the streams and the generations).
    let total: usize = server
        .command(&["DBSIZE"])
        .and_then(|n| n.trim_start_matches(':').parse().ok())
        .expect("a size");
    assert!(total > 0);
    let inside = server
        .command(&["EVAL", "return #redis.call('KEYS', 'sftest:{*')", "0"])
        .and_then(|n| n.trim_start_matches(':').parse::<usize>().ok())
        .expect("a count");
    assert_eq!(inside, total, "every key is inside the prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_value_is_refused_and_the_waiters_run_the_work() {
    let server = RedisServer::start();
    let leader: Group<String> = Group::builder(server.url())
        .prefix(PREFIX)
        .max_value_bytes(8)
        .build()
        .expect("a group");
    let waiter = group(&server);
    let leading = tokio::spawn({
        let leader = leader.clone();
        async move {
            leader
                .call("big", || async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    "x".repeat(100)
                })
                .await
        }
    });
    let (lease, _, _) = RedisServer::keys_of(PREFIX, b"big");
    server.wait_for(&["EXISTS", &lease], |n| n == ":1");
    let outcome = bounded(waiter.call("big", || async { "its own".to_owned() }))
        .await
        .expect("a value");
    assert_eq!(
        (outcome.value.as_str(), outcome.source),
        ("its own", Source::Ran)
    );
    let led = bounded(leading).await.expect("no panic").expect("a value");
    assert_eq!(led.value.len(), 100, "the leader keeps its value");
    assert_eq!(leader.stats().oversize, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_calls_run_locally_or_fail_as_set() {
    let url = format!("redis://127.0.0.1:{}", testing::free_port());
    let local: Group<String> = Group::builder(url.clone())
        .redis_timeout(Duration::from_millis(300))
        .build()
        .expect("a group: Redis is reached on the first call");
    let outcome = bounded(local.call("k", || async { "local".to_owned() }))
        .await
        .expect("a value");
    assert_eq!(
        (outcome.value.as_str(), outcome.source),
        ("local", Source::Fallback)
    );
    let failing: Group<String> = Group::builder(url)
        .redis_timeout(Duration::from_millis(300))
        .on_redis_error(OnRedisError::Fail)
        .build()
        .expect("a group");
    let error = bounded(failing.call("k", || async { "never".to_owned() }))
        .await
        .expect_err("an error");
    assert!(matches!(error, Error::Redis(_)), "{error}");
    assert!(error.to_string().contains("reachable"), "{error}");
}

#[test]
fn a_url_that_is_not_redis_is_refused() {
    let error = Group::<String>::builder("http://127.0.0.1:6379")
        .build()
        .expect_err("not a Redis URL");
    assert!(matches!(error, Error::Redis(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_says_so_and_never_takes_it_back() {
    let server = RedisServer::start();
    let group: Group<String> = Group::builder(server.url())
        .prefix(PREFIX)
        .lease(Duration::from_millis(300))
        .build()
        .expect("a group");
    let (lease, _, _) = RedisServer::keys_of(PREFIX, b"lost");
    let leading = tokio::spawn({
        let group = group.clone();
        async move {
            group
                .call("lost", || async {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    "late".to_owned()
                })
                .await
        }
    });
    server.wait_for(&["EXISTS", &lease], |n| n == ":1");
    // Another process took over (as after an expiry): the lease is not ours.
    server.command(&["SET", &lease, "99:another", "PX", "60000"]);
    let outcome = bounded(leading).await.expect("no panic").expect("a value");
    assert_eq!(
        (outcome.value.as_str(), outcome.source),
        ("late", Source::Ran)
    );
    assert_eq!(group.stats().lost_leases, 1, "the loss is counted");
    assert_eq!(
        server.command(&["GET", &lease]).as_deref(),
        Some("99:another"),
        "the other's lease is neither renewed away nor released"
    );
}

/// A CA and a certificate it signed for 127.0.0.1, as PEM files in `dir`;
/// returns the CA's PEM and the certificate's and key's paths.
fn tls_files(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("a key")).expect("a CA");
    let key = KeyPair::generate().expect("a key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("a certificate");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("written");
    std::fs::write(&key_path, key.serialize_pem()).expect("written");
    (ca.as_ref().pem(), cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_coordinates_over_tls_and_refuses_a_server_it_does_not_trust() {
    let dir = tempfile::tempdir().expect("a directory");
    let (ca, cert, key) = tls_files(dir.path());
    let server = RedisServer::start_tls(&cert, &key);
    let url = server.tls_url().expect("a TLS port");
    let trusted: Group<String> = Group::builder(url.clone())
        .prefix(PREFIX)
        .root_certificate(ca)
        .build()
        .expect("a group");
    let outcome = bounded(trusted.call("over-tls", || async { "value".to_owned() }))
        .await
        .expect("a value");
    assert_eq!(outcome.source, Source::Ran, "led through Redis, over TLS");
    let (lease, generation, _) = RedisServer::keys_of(PREFIX, b"over-tls");
    assert_eq!(server.command(&["GET", &generation]).as_deref(), Some("1"));
    assert_eq!(server.command(&["EXISTS", &lease]).as_deref(), Some(":0"));
    // The platform's roots do not know the test's CA: no Redis for this one.
    let untrusting: Group<String> = Group::builder(url)
        .prefix(PREFIX)
        .on_redis_error(OnRedisError::Fail)
        .build()
        .expect("a group");
    let error = bounded(untrusting.call("over-tls", || async { "never".to_owned() }))
        .await
        .expect_err("an untrusted certificate");
    assert!(matches!(error, Error::Redis(_)), "{error}");
}
