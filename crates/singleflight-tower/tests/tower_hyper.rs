//! The layer behind a real hyper server on 127.0.0.1 (port 0), with real
//! clients: one upstream request for many concurrent GETs, bodies streamed
//! to every client, the leader's client going away, an upstream reset.
//!
//! Nothing waits on a timer. The upstream hands the test a channel for each
//! request's body and waits for the test's signal before answering; the
//! server counts the requests that have joined a flight (their response
//! future returned `Pending` once), so the test answers only when every
//! client has joined.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use singleflight_tower::{Coalesce, CoalesceLayer};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tower::{Layer, ServiceExt};

/// One upstream request, as the test sees it.
struct Exchange {
    /// Answers the request (sends its head); the body follows on `body`.
    answer: oneshot::Sender<()>,
    body: Sender<Bytes, std::io::Error>,
}

type Upstream = tower::util::BoxCloneSyncService<
    Request<Incoming>,
    Response<Channel<Bytes, std::io::Error>>,
    Infallible,
>;

struct Server {
    addr: SocketAddr,
    exchanges: mpsc::UnboundedReceiver<Exchange>,
    upstream_requests: Arc<AtomicUsize>,
    joined: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(layer: CoalesceLayer) -> Server {
    let (exchange_tx, exchanges) = mpsc::unbounded_channel();
    let upstream_requests = Arc::new(AtomicUsize::new(0));
    let upstream: Upstream = tower::util::BoxCloneSyncService::new(tower::service_fn({
        let count = Arc::clone(&upstream_requests);
        move |_request: Request<Incoming>| {
            count.fetch_add(1, Ordering::SeqCst);
            let (body_tx, body) = Channel::new(8);
            let (answer, answered) = oneshot::channel();
            let sent = exchange_tx.send(Exchange {
                answer,
                body: body_tx,
            });
            async move {
                if sent.is_ok() {
                    let _ = answered.await;
                }
                Ok::<_, Infallible>(Response::new(body))
            }
        }
    }));
    let coalesce: Coalesce<Upstream> = layer.layer(upstream);
    let (joined_tx, joined) = watch::channel(0);
    let joined_tx = Arc::new(joined_tx);
    // A backlog above the 200 clients that connect at once (the standard
    // library's 128 would make some of them retry their SYN a second later).
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("a port");
    let listener = socket.listen(1024).expect("listening");
    let addr = listener.local_addr().expect("an address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (coalesce, joined_tx) = (coalesce.clone(), Arc::clone(&joined_tx));
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (coalesce, joined_tx) = (coalesce.clone(), Arc::clone(&joined_tx));
                async move {
                    let mut response = pin!(coalesce.oneshot(request));
                    let mut counted = false;
                    std::future::poll_fn(|cx| {
                        let poll = response.as_mut().poll(cx);
                        if poll.is_pending() && !counted {
                            counted = true;
                            joined_tx.send_modify(|joined| *joined += 1);
                        }
                        poll
                    })
                    .await
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server {
        addr,
        exchanges,
        upstream_requests,
        joined,
        task,
    }
}

/// A client on its own connection; dropping it closes the connection.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

async fn client(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).await.expect("connected");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("a handshake");
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    Client { sender, connection }
}

fn get(addr: SocketAddr) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}/resource"))
        .body(Empty::new())
        .expect("a valid request")
}

/// Sends a GET on a new connection; resolves to the response once it comes.
async fn fetch(addr: SocketAddr) -> (Client, Response<Incoming>) {
    let mut client = client(addr).await;
    let response = client
        .sender
        .send_request(get(addr))
        .await
        .expect("a response");
    (client, response)
}

async fn wait_joined(server: &mut Server, count: usize) {
    server
        .joined
        .wait_for(|joined| *joined >= count)
        .await
        .expect("the server is up");
}

fn chunk(i: usize) -> Bytes {
    Bytes::from(format!("chunk {i:04} {}\n", "x".repeat(i % 97)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_gets_make_one_upstream_request() {
    const CLIENTS: usize = 200;
    const CHUNKS: usize = 64;
    let mut server = server(CoalesceLayer::new()).await;
    let addr = server.addr;
    let responses: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let (client, response) = fetch(addr).await;
                let shared = response.headers()["x-singleflight-shared"].clone();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|body| body.to_bytes());
                drop(client);
                (shared, body)
            })
        })
        .collect();
    wait_joined(&mut server, CLIENTS).await;
    let Exchange { answer, mut body } = server.exchanges.recv().await.expect("a request");
    let _ = answer.send(());
    let mut expected = Vec::new();
    for i in 0..CHUNKS {
        body.send_data(chunk(i)).await.expect("a reader");
        expected.extend_from_slice(&chunk(i));
    }
    drop(body);
    for response in responses {
        let (shared, body) = response.await.expect("no panic");
        assert_eq!(shared, "true");
        assert_eq!(body.expect("a whole body"), expected);
    }
    assert_eq!(server.upstream_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_stream_and_outlive_a_leader_that_disconnects_mid_body() {
    const FOLLOWERS: usize = 8;
    let mut server = server(CoalesceLayer::new()).await;
    let addr = server.addr;
    // The leader first: its request reaches the upstream, which holds it.
    let leader = tokio::spawn(fetch(addr));
    wait_joined(&mut server, 1).await;
    let followers: Vec<_> = (0..FOLLOWERS).map(|_| tokio::spawn(fetch(addr))).collect();
    wait_joined(&mut server, 1 + FOLLOWERS).await;
    let Exchange { answer, mut body } = server.exchanges.recv().await.expect("a request");
    let _ = answer.send(());

    // Every client gets the first chunk while the upstream is still open.
    body.send_data(chunk(0)).await.expect("a reader");
    let (leader_client, leader_response) = leader.await.expect("no panic");
    let mut leader_body = leader_response.into_body();
    let first = leader_body
        .frame()
        .await
        .expect("a frame")
        .expect("no error");
    assert_eq!(first.into_data().expect("data"), chunk(0));
    let mut open = Vec::new();
    for follower in followers {
        let (client, response) = follower.await.expect("no panic");
        let mut response_body = response.into_body();
        let first = response_body
            .frame()
            .await
            .expect("a frame")
            .expect("no error");
        assert_eq!(first.into_data().expect("data"), chunk(0));
        open.push((client, response_body));
    }

    // The leader's client disconnects; the upstream goes on for the others.
    drop(leader_body);
    drop(leader_client);
    let readers: Vec<_> = open
        .into_iter()
        .map(|(client, body)| {
            tokio::spawn(async move {
                let rest = body.collect().await.map(|body| body.to_bytes());
                drop(client);
                rest
            })
        })
        .collect();
    let mut expected = Vec::new();
    for i in 1..32 {
        body.send_data(chunk(i)).await.expect("a reader");
        expected.extend_from_slice(&chunk(i));
    }
    drop(body);
    for reader in readers {
        assert_eq!(
            reader.await.expect("no panic").expect("a whole body"),
            expected
        );
    }
    assert_eq!(server.upstream_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_body_fails_every_client() {
    const CLIENTS: usize = 5;
    let mut server = server(CoalesceLayer::new()).await;
    let addr = server.addr;
    // Each client reads the head and the first chunk, then hands its body
    // back to the test.
    let started: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let (client, response) = fetch(addr).await;
                assert_eq!(response.status(), StatusCode::OK);
                let mut body = response.into_body();
                let first = body.frame().await.expect("a frame").expect("no error");
                assert_eq!(first.into_data().expect("data"), chunk(0));
                (client, body)
            })
        })
        .collect();
    wait_joined(&mut server, CLIENTS).await;
    let Exchange { answer, mut body } = server.exchanges.recv().await.expect("a request");
    let _ = answer.send(());
    body.send_data(chunk(0)).await.expect("a reader");
    let mut open = Vec::new();
    for started in started {
        open.push(started.await.expect("no panic"));
    }
    body.send_data(chunk(1)).await.expect("a reader");
    body.abort(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    ));
    for (client, body) in open {
        // The status already said 200: the body must fail, not end short.
        let rest = body.collect().await;
        assert!(rest.is_err(), "a truncated body must be an error");
        drop(client);
    }
    assert_eq!(server.upstream_requests.load(Ordering::SeqCst), 1);
}
