//! Large and slow bodies over real sockets: a hyper upstream on 127.0.0.1,
//! the layer in front of a hyper client to it behind a hyper server, and
//! hyper clients, each on its own connection.
//!
//! The test drives the upstream's body chunk by chunk, so what is asserted
//! never depends on timing: how many upstream requests were made, which
//! bytes each client received, and how each body ended. Every test is
//! bounded by a timeout, so a hang fails instead of stalling the suite.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use singleflight_tower::{Coalesce, CoalesceLayer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tower::Layer;

const MIB: usize = 1 << 20;
const SLICE: usize = 64 << 10;

/// Fails the test instead of letting it hang.
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(240), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in 240 s"))
}

/// `len` bytes of a pattern in which every MiB carries its own index, so a
/// chunk delivered twice, late or out of order does not compare equal.
fn pattern(len: usize) -> Bytes {
    let block: Vec<u8> = (0..MIB as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut bytes = Vec::with_capacity(len);
    let mut index = 0u64;
    while bytes.len() < len {
        let start = bytes.len();
        let take = block.len().min(len - start);
        bytes.extend_from_slice(&block[..take]);
        let mark = index.to_le_bytes();
        let marked = mark.len().min(take);
        bytes[start..start + marked].copy_from_slice(&mark[..marked]);
        index += 1;
    }
    Bytes::from(bytes)
}

/// Sends `body[range]` in slices of 64 KiB.
async fn send(sender: &mut Sender<Bytes, io::Error>, body: &Bytes, from: usize, to: usize) {
    let mut at = from;
    while at < to {
        let end = (at + SLICE).min(to);
        sender
            .send_data(body.slice(at..end))
            .await
            .expect("the proxy reads the upstream body");
        at = end;
    }
}

/// A loopback upstream whose every response body the test writes.
struct Upstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    /// One body sender per request, in order.
    bodies: mpsc::UnboundedReceiver<Sender<Bytes, io::Error>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an upstream; its responses announce `content_length`, or are
/// chunked when it is `None`.
async fn upstream(content_length: Option<usize>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    let requests = Arc::new(AtomicUsize::new(0));
    let (bodies_tx, bodies) = mpsc::unbounded_channel();
    let task = tokio::spawn({
        let requests = Arc::clone(&requests);
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (requests, bodies_tx) = (Arc::clone(&requests), bodies_tx.clone());
                let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let (sender, body) = Channel::<Bytes, io::Error>::new(16);
                    let _ = bodies_tx.send(sender);
                    let mut response = Response::new(body);
                    if let Some(len) = content_length {
                        response
                            .headers_mut()
                            .insert(CONTENT_LENGTH, len.to_string().parse().expect("a length"));
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    Upstream {
        addr,
        requests,
        bodies,
        task,
    }
}

impl Upstream {
    async fn next_body(&mut self) -> Sender<Bytes, io::Error> {
        bounded("an upstream request", self.bodies.recv())
            .await
            .expect("the upstream is up")
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

type Forward = tower::util::BoxCloneSyncService<
    Request<Incoming>,
    Response<Incoming>,
    hyper_util::client::legacy::Error,
>;

/// The layer between a hyper server on loopback and a hyper client to the
/// upstream.
struct Proxy {
    addr: SocketAddr,
    service: Coalesce<Forward>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy(layer: CoalesceLayer, upstream: SocketAddr) -> Proxy {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let forward = Forward::new(tower::service_fn(move |mut request: Request<Incoming>| {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        *request.uri_mut() = format!("http://{upstream}{path}")
            .parse::<Uri>()
            .expect("an upstream URI");
        client.request(request)
    }));
    let service: Coalesce<Forward> = layer.layer(forward);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = listener.local_addr().expect("an address");
    let task = tokio::spawn({
        let service = service.clone();
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper_util::service::TowerToHyperService::new(service.clone());
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    Proxy {
        addr,
        service,
        task,
    }
}

/// A client's connection; dropping it closes the connection.
struct Connection(JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a GET for `/file` on a new connection and returns its response.
async fn get(proxy: SocketAddr) -> (Connection, Response<Incoming>) {
    let stream = TcpStream::connect(proxy).await.expect("connected");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("a handshake");
    let connection = Connection(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let request = Request::get(format!("http://{proxy}/file"))
        .body(Empty::<Bytes>::new())
        .expect("a request");
    let response = sender.send_request(request).await.expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    (connection, response)
}

/// Reads a body to its end, comparing every byte with `expected`; returns
/// how many bytes came, or why the body failed or differed.
async fn read_all(mut body: Incoming, expected: &[u8]) -> Result<usize, String> {
    let mut at = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| format!("the body failed after {at} bytes: {error}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let end = at + data.len();
        if end > expected.len() || expected[at..end] != data[..] {
            return Err(format!("bytes {at}..{end} differ from the upstream's"));
        }
        at = end;
    }
    Ok(at)
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("listed").next().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_on_a_fifty_megabyte_body_each_get_every_byte_from_one_request() {
    const CLIENTS: usize = 50;
    let body = pattern(50 * MIB);
    let spill = tempfile::tempdir().expect("a directory");
    let mut upstream = upstream(Some(body.len())).await;
    let proxy = proxy(CoalesceLayer::new().spill_dir(spill.path()), upstream.addr).await;
    let (heads_tx, mut heads) = watch::channel(0usize);
    let heads_tx = Arc::new(heads_tx);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, body, heads_tx) = (proxy.addr, body.clone(), Arc::clone(&heads_tx));
            tokio::spawn(async move {
                let (connection, response) = get(addr).await;
                heads_tx.send_modify(|heads| *heads += 1);
                let read = read_all(response.into_body(), &body).await;
                drop(connection);
                read
            })
        })
        .collect();
    let mut sender = upstream.next_body().await;
    // All but the last slice, while the clients arrive: the later ones
    // join a body that is already streaming.
    let last = body.len() - SLICE;
    send(&mut sender, &body, 0, last).await;
    bounded(
        "every client's head",
        heads.wait_for(|heads| *heads == CLIENTS),
    )
    .await
    .expect("the clients are running");
    send(&mut sender, &body, last, body.len()).await;
    drop(sender);
    for client in clients {
        let read = bounded("a client", client).await.expect("no panic");
        assert_eq!(read, Ok(body.len()));
    }
    assert_eq!(upstream.requests(), 1, "one upstream request for everyone");
    let stats = proxy.service.stats();
    assert_eq!(stats.flights, 1);
    assert_eq!(stats.coalesced, CLIENTS as u64);
    assert!(
        is_empty(spill.path()),
        "nothing is left in the spill directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_every_byte_while_the_others_finish() {
    const FAST: usize = 4;
    let body = pattern(50 * MIB);
    let spill = tempfile::tempdir().expect("a directory");
    let mut upstream = upstream(None).await;
    let proxy = proxy(CoalesceLayer::new().spill_dir(spill.path()), upstream.addr).await;
    let (slow_connection, slow) = get(proxy.addr).await;
    let fast: Vec<_> = (0..FAST)
        .map(|_| {
            let (addr, body) = (proxy.addr, body.clone());
            tokio::spawn(async move {
                let (connection, response) = get(addr).await;
                let read = read_all(response.into_body(), &body).await;
                drop(connection);
                read
            })
        })
        .collect();
    let mut sender = upstream.next_body().await;
    let feed = tokio::spawn({
        let body = body.clone();
        async move {
            send(&mut sender, &body, 0, body.len()).await;
        }
    });
    // The fast clients finish while the slow one reads nothing: nobody
    // waits for it, neither they nor the upstream.
    for client in fast {
        let read = bounded("a fast client", client).await.expect("no panic");
        assert_eq!(read, Ok(body.len()));
    }
    bounded("the upstream body", feed).await.expect("no panic");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Then it reads: what it fell behind by comes from the spill file.
    let read = bounded("the slow client", read_all(slow.into_body(), &body)).await;
    assert_eq!(read, Ok(body.len()));
    drop(slow_connection);
    assert_eq!(upstream.requests(), 1);
    assert!(
        is_empty(spill.path()),
        "nothing is left in the spill directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_arriving_mid_body_joins_and_gets_every_chunk() {
    let chunks: Vec<Bytes> = (0..10)
        .map(|i| Bytes::from(format!("chunk {i} of a slow body\n")))
        .collect();
    let mut upstream = upstream(None).await;
    let proxy = proxy(CoalesceLayer::new(), upstream.addr).await;
    let (first_connection, first) = get(proxy.addr).await;
    let mut first = first.into_body();
    let mut sender = upstream.next_body().await;
    for chunk in &chunks[..3] {
        sender.send_data(chunk.clone()).await.expect("sent");
        let frame = bounded("a chunk", first.frame()).await;
        let data = frame.expect("a frame").expect("no error").into_data();
        assert_eq!(data.expect("data"), chunk);
    }
    // Three chunks in: a second client asks, and gets them at once.
    let (late_connection, late) = get(proxy.addr).await;
    assert_eq!(late.headers()["x-singleflight-shared"], "true");
    let late = tokio::spawn(async move {
        let body = late.into_body().collect().await.map(|body| body.to_bytes());
        drop(late_connection);
        body
    });
    for chunk in &chunks[3..] {
        sender.send_data(chunk.clone()).await.expect("sent");
    }
    drop(sender);
    let expected: Vec<u8> = chunks.concat();
    let rest = bounded("the first client", first.collect()).await;
    let mut whole = chunks[..3].concat();
    whole.extend_from_slice(&rest.expect("a whole body").to_bytes());
    assert_eq!(whole, expected);
    drop(first_connection);
    let late = bounded("the late client", late).await.expect("no panic");
    assert_eq!(late.expect("a whole body"), expected);
    assert_eq!(upstream.requests(), 1, "the late client joined the flight");
    assert_eq!(proxy.service.stats().joined, 1);
}

/// Two clients, the second joining after the first chunk, and an upstream
/// that fails after the second: both bodies must fail, never end short.
async fn a_reset_mid_body_fails_every_client(content_length: Option<usize>) {
    let mut upstream = upstream(content_length).await;
    let proxy = proxy(CoalesceLayer::new(), upstream.addr).await;
    let (first_connection, first) = get(proxy.addr).await;
    let mut first = first.into_body();
    let mut sender = upstream.next_body().await;
    sender
        .send_data(Bytes::from_static(b"first chunk\n"))
        .await
        .expect("sent");
    let frame = bounded("a chunk", first.frame()).await;
    assert!(frame.expect("a frame").is_ok());
    let (joiner_connection, joiner) = get(proxy.addr).await;
    sender
        .send_data(Bytes::from_static(b"second chunk\n"))
        .await
        .expect("sent");
    sender.abort(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
    let rest = bounded("the first client", first.collect()).await;
    assert!(rest.is_err(), "the first client's body must fail");
    let joined = bounded("the joiner", joiner.into_body().collect()).await;
    assert!(joined.is_err(), "the joiner's body must fail");
    drop((first_connection, joiner_connection));
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_body_fails_every_client_of_a_chunked_body() {
    a_reset_mid_body_fails_every_client(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_body_fails_every_client_of_a_sized_body() {
    a_reset_mid_body_fails_every_client(Some(1 << 20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_disk_cap_a_stopped_client_fails_and_new_clients_go_upstream() {
    // 1 MiB in memory, at most 4 MiB on disk, a 48 MiB body: the client
    // that stops reading ends up more than 5 MiB (and its sockets' buffers)
    // behind.
    const WINDOW: usize = MIB;
    const SPILL_MAX: u64 = 4 * MIB as u64;
    let body = pattern(48 * MIB);
    let spill = tempfile::tempdir().expect("a directory");
    let layer = CoalesceLayer::new()
        .body_window(WINDOW)
        .spill_dir(spill.path())
        .spill_max(SPILL_MAX);
    let mut upstream = upstream(Some(body.len())).await;
    let proxy = proxy(layer, upstream.addr).await;
    let (stopped_connection, stopped) = get(proxy.addr).await;
    let (reader_connection, reader) = get(proxy.addr).await;
    let mut reader = reader.into_body();
    let mut sender = upstream.next_body().await;
    // Past the cap: the reader has had more than window + cap bytes.
    let past = WINDOW + SPILL_MAX as usize + SLICE;
    let mut read = 0;
    let mut at = 0;
    while read < past {
        let end = (at + SLICE).min(body.len());
        sender.send_data(body.slice(at..end)).await.expect("sent");
        at = end;
        while read < at {
            let frame = bounded("a chunk", reader.frame()).await;
            let data = frame.expect("a frame").expect("no error").into_data();
            let data = data.expect("data");
            assert_eq!(data[..], body[read..read + data.len()]);
            read += data.len();
        }
    }
    assert_eq!(proxy.service.flights(), 0, "no longer joinable");
    // A new client now gets an upstream request of its own.
    let newcomer = tokio::spawn(get(proxy.addr));
    let mut own = upstream.next_body().await;
    let own_feed = tokio::spawn({
        let body = body.clone();
        async move {
            send(&mut own, &body, 0, body.len()).await;
        }
    });
    let (newcomer_connection, newcomer) =
        bounded("the newcomer", newcomer).await.expect("no panic");
    assert_eq!(newcomer.headers()["x-singleflight-shared"], "false");
    let copy = bounded("the newcomer's body", read_all(newcomer.into_body(), &body)).await;
    assert_eq!(copy, Ok(body.len()));
    bounded("its upstream body", own_feed)
        .await
        .expect("no panic");
    assert_eq!(upstream.requests(), 2);
    drop(newcomer_connection);
    // The reader that kept up is unaffected to the end.
    let feed = tokio::spawn({
        let body = body.clone();
        async move {
            send(&mut sender, &body, at, body.len()).await;
        }
    });
    let rest = bounded("the reader", read_all(reader, &body[read..])).await;
    assert_eq!(rest, Ok(body.len() - read));
    bounded("the upstream body", feed).await.expect("no panic");
    drop(reader_connection);
    // The stopped client gets what it had, then an error: never a clean end.
    let stopped = bounded("the stopped client", read_all(stopped.into_body(), &body)).await;
    let error = stopped.expect_err("the stopped client's body must fail");
    assert!(error.contains("the body failed"), "{error}");
    drop(stopped_connection);
    assert!(is_empty(spill.path()));
}
