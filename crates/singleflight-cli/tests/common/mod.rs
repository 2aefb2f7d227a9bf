//! Helpers shared by the integration tests: options from argv, plain GETs.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use singleflight_cli::{Command, proxy, serve, upstream};

/// The tests' HTTP client.
pub type TestClient = Client<HttpConnector, Empty<Bytes>>;

/// A fresh pooled client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Status, headers and body of a GET.
pub async fn get(client: &TestClient, url: &str) -> (u16, http::HeaderMap, String) {
    let (status, headers, body, _) = get_via(client, url).await;
    (status, headers, body)
}

/// Status, headers, body and HTTP version of a GET through any client.
pub async fn get_via<C>(
    client: &Client<C, Empty<Bytes>>,
    url: &str,
) -> (u16, http::HeaderMap, String, http::Version)
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let response = client
        .get(url.parse().expect("test URL"))
        .await
        .expect("GET");
    let status = response.status().as_u16();
    let version = response.version();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        headers,
        String::from_utf8_lossy(&body).into_owned(),
        version,
    )
}

/// `n` GETs of `url` at once; each must be the upstream's shared "ok".
pub async fn shared_burst(client: &TestClient, url: &str, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, url) = (client.clone(), url.to_string());
        tasks.spawn(async move { get(&client, &url).await });
    }
    while let Some(done) = tasks.join_next().await {
        let (status, headers, body) = done.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert_eq!(headers.get("x-singleflight-shared").unwrap(), "true");
    }
}

/// A client that speaks HTTP/2 with prior knowledge over cleartext (h2c).
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A client over TLS trusting only `ca`, offering HTTP/2 or HTTP/1.1 alone by ALPN.
pub fn tls_client(ca: &Path, http2: bool) -> Client<HttpsConnector<HttpConnector>, Empty<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if http2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    let mut client = Client::builder(TokioExecutor::new());
    client.http2_only(http2);
    client.build(connector)
}

/// A CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files.
pub struct TlsFiles {
    /// The CA's certificate: what `--upstream-ca` takes.
    pub ca: PathBuf,
    /// The server's certificate: what `--tls-cert` takes.
    pub cert: PathBuf,
    /// Its key: what `--tls-key` takes.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Fresh files under the target's temporary directory, named after `name`.
    pub fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{name}"));
        std::fs::create_dir_all(&dir).expect("TLS directory");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("singleflight test CA {name}"),
        );
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        let files = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.ca, ca.as_ref().pem()).expect("write CA");
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }

    /// A path as a command-line argument.
    pub fn arg(path: &Path) -> String {
        path.to_string_lossy().into_owned()
    }
}

/// The embedded upstream over TLS on a free loopback port, answering after `delay`.
pub async fn tls_upstream_after(delay: &str, files: &TlsFiles) -> upstream::Running {
    let (cert, key) = (TlsFiles::arg(&files.cert), TlsFiles::arg(&files.key));
    upstream::start(&upstream_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--delay",
        delay,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]))
    .await
    .unwrap()
}

/// How many requests have reached `up` so far.
pub fn arrivals(up: &upstream::Running) -> u64 {
    *up.arrivals().borrow()
}

/// The command line of `singleflight SUBCOMMAND ARGS`, parsed as the binary does.
pub fn command(subcommand: &str, args: &[&str]) -> Command {
    let argv = ["singleflight", subcommand]
        .into_iter()
        .chain(args.iter().copied());
    singleflight_cli::parse_from(argv)
        .expect("test arguments")
        .command
}

/// `proxy` options from argv.
pub fn proxy_opts(args: &[&str]) -> proxy::ProxyOpts {
    match command("proxy", args) {
        Command::Proxy(opts) => opts,
        other => panic!("parsed {other:?}"),
    }
}

/// `upstream` options from argv.
pub fn upstream_opts(args: &[&str]) -> upstream::UpstreamOpts {
    match command("upstream", args) {
        Command::Upstream(opts) => opts,
        other => panic!("parsed {other:?}"),
    }
}

/// The embedded upstream on a free loopback port, answering after `delay`
/// (a duration as the command line takes it).
pub async fn upstream_after(delay: &str) -> upstream::Running {
    upstream::start(&upstream_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--delay",
        delay,
    ]))
    .await
    .unwrap()
}

/// `serve` on a free loopback port, in front of `upstream_url`, quiet.
pub async fn serve_in_front_of(upstream_url: &str) -> serve::Running {
    serve::start(&serve_opts(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream_url,
        "--quiet",
    ]))
    .await
    .unwrap()
}

/// `proxy` on a free loopback port, in front of `upstream_url`, quiet, with `extra` flags.
pub async fn proxy_in_front_of(upstream_url: &str, extra: &[&str]) -> proxy::Running {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream_url,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    proxy::start(proxy_opts(&args)).await.unwrap()
}

/// The binary's `proxy` on a free loopback port in front of `upstream_url`,
/// with `extra` flags.
pub fn spawn_proxy(upstream_url: &str, extra: &[&str], envs: &[(&str, &str)]) -> Spawned {
    let mut args = vec![
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream_url,
    ];
    args.extend_from_slice(extra);
    spawn_listening(&args, envs)
}

/// `serve` options from argv.
pub fn serve_opts(args: &[&str]) -> serve::ServeOpts {
    match command("serve", args) {
        Command::Serve(opts) => opts,
        other => panic!("parsed {other:?}"),
    }
}

/// The upstream's `upstream_requests_total`, read from its /metrics.
pub async fn upstream_requests(client: &TestClient, upstream_url: &str) -> u64 {
    let (_, _, text) = get(client, &format!("{upstream_url}/metrics")).await;
    singleflight_cli::read_metric(&text, "upstream_requests_total", None).unwrap_or(0.0) as u64
}

/// The built binary, running, with its log read line by line.
pub struct Spawned {
    /// The process.
    pub child: std::process::Child,
    /// Where it listens, from its "listening on" log line.
    pub base: String,
    lines: std::sync::mpsc::Receiver<String>,
    /// The lines read so far.
    pub log: Vec<String>,
}

/// Starts `singleflight ARGS` with `envs` added to its environment, and
/// waits for the log line that says where it listens.
pub fn spawn_listening(args: &[&str], envs: &[(&str, &str)]) -> Spawned {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_singleflight"))
        .args(args)
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stderr = child.stderr.take().expect("stderr");
    let (send, lines) = std::sync::mpsc::channel();
    // Drains the log so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let mut spawned = Spawned {
        child,
        base: String::new(),
        lines,
        log: Vec::new(),
    };
    let line = spawned.wait_for_line("listening on ");
    let start = line.find("listening on ").expect("checked") + "listening on ".len();
    let rest = &line[start..];
    spawned.base = rest[..rest.find([' ', '"']).unwrap_or(rest.len())].to_string();
    spawned
}

impl Spawned {
    /// Reads the log until a line contains `text`, for at most 30 s.
    pub fn wait_for_line(&mut self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no log line with {text:?} in {:#?}", self.log));
            self.log.push(line.clone());
            if line.contains(text) {
                return line;
            }
        }
    }

    /// Sends the process a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let sent = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
    }

    /// Sends SIGTERM and waits for a clean exit (code 0); the whole log.
    pub async fn stop(self) -> Vec<String> {
        self.signal("TERM");
        let (code, log) = tokio::task::spawn_blocking(move || self.finish())
            .await
            .expect("wait for the binary");
        assert_eq!(code, Some(0), "{log:#?}");
        log
    }

    /// Waits for the process to exit; its exit code and its whole log.
    pub fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let status = self.child.wait().expect("wait for the binary");
        // The reader ends at the pipe's end, after the process exits.
        while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_secs(10)) {
            self.log.push(line);
        }
        (status.code(), self.log)
    }
}
