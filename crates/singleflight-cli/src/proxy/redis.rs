//! `proxy --redis`: a flight's upstream request coalesced across proxy
//! instances through Redis (`singleflight-redis`), after the layer has
//! coalesced it within this instance.
//!
//! Only what the layer would share travels: the head and the whole body of
//! a response that is not private, does not vary on more than
//! `Accept-Encoding` (already part of the key), and fits the cap. Anything
//! else is marked "fetch your own" in Redis: the instance that fetched it
//! streams it to its own clients as usual, and the others send their own
//! request. Redis away: each instance coalesces on its own.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue, VARY};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use singleflight_redis::{Codec, Group};
use singleflight_tower::{BoxError, FlightKey};

use super::forward::{Forward, ProxyBody, plain};

/// A response as it travels through Redis.
#[derive(Clone, Debug)]
pub(super) enum Stored {
    /// The whole response, for every instance.
    Shared {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Bytes,
    },
    /// Not for sharing: each instance fetches its own.
    Own,
}

/// The instances' shared flights, and the largest body they share.
pub(super) struct RedisShare {
    pub(super) group: Group<Stored, Binary>,
    pub(super) max_body: usize,
}

impl RedisShare {
    /// A group on the Redis at `url`, sharing bodies up to `max_body` bytes.
    pub(super) fn new(url: &str, max_body: usize) -> Result<Self, singleflight_redis::Error> {
        let group = Group::builder(url)
            .prefix("singleflight-proxy")
            .codec(Binary)
            // Room for the head next to the largest body.
            .max_value_bytes(max_body.saturating_add(64 << 10))
            .build()?;
        Ok(Self { group, max_body })
    }
}

impl Forward {
    /// Sends a flight's request through Redis: this instance fetches it, or
    /// gets another instance's response, or fetches its own when that one
    /// was not for sharing.
    pub(super) async fn send_across(
        self: std::sync::Arc<Self>,
        key: FlightKey,
        request: Request<Limited<Incoming>>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let Some(share) = &self.redis else {
            return self.send(request).await;
        };
        let (parts, body) = request.into_parts();
        let key = self.shared_key(&key, &parts);
        // A flight's request is a GET or HEAD without a body: its head is
        // all it takes to send it again.
        let again = {
            let mut head = Request::new(());
            *head.method_mut() = parts.method.clone();
            *head.uri_mut() = parts.uri.clone();
            *head.version_mut() = parts.version;
            *head.headers_mut() = parts.headers.clone();
            *head.extensions_mut() = parts.extensions.clone();
            head
        };
        let (own_tx, own_rx) = tokio::sync::oneshot::channel();
        let this = std::sync::Arc::clone(&self);
        let max_body = share.max_body;
        let called = share
            .group
            .call(key, move || async move {
                let Ok(response) = this.send(Request::from_parts(parts, body)).await;
                match store(response, max_body).await {
                    Ok(stored) => stored,
                    Err(live) => {
                        // Ours to stream; the others fetch their own.
                        let _ = own_tx.send(live);
                        Stored::Own
                    }
                }
            })
            .await;
        let stored = match called {
            Ok(outcome) => outcome.value,
            Err(error) => {
                return Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    format!("bad gateway: {error}\n"),
                ));
            }
        };
        match stored {
            Stored::Shared {
                status,
                headers,
                body,
            } => Ok(rebuild(status, &headers, body)),
            Stored::Own => match own_rx.await {
                Ok(live) => Ok(live),
                // Another instance's response, not for sharing.
                Err(_) => {
                    let (head, ()) = again.into_parts();
                    let empty = http_body_util::Empty::<Bytes>::new()
                        .map_err(|never| match never {})
                        .boxed();
                    let request = Request::from_parts(head, empty);
                    self.send_boxed(request).await
                }
            },
        }
    }
}

impl Forward {
    /// The key under which instances share a flight: what the upstream is
    /// asked (its URL, the method, path and query, and the `Host` it gets
    /// with `--preserve-host`) and the key headers' values from the
    /// layer's key. Not the instance's own address, which its clients name.
    fn shared_key(&self, key: &FlightKey, parts: &http::request::Parts) -> String {
        let headers = key.as_str().split_once('\n').map_or("", |(_, rest)| rest);
        let host = match self.preserve_host {
            true => parts
                .headers
                .get(http::header::HOST)
                .and_then(|host| host.to_str().ok())
                .unwrap_or(""),
            false => "",
        };
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        let upstream = self.upstream.uri().to_string();
        format!(
            "{} {}{path}\nhost:{host}\n{headers}",
            parts.method,
            upstream.trim_end_matches('/')
        )
    }
}

/// The response as `Stored::Shared` when it may travel and its body fits
/// `max_body` (read whole), or the response itself, whole, to stream.
async fn store(
    response: Response<ProxyBody>,
    max_body: usize,
) -> Result<Stored, Response<ProxyBody>> {
    let travels = singleflight_tower::is_shareable(response.headers())
        && varies_on_encoding_at_most(response.headers());
    let too_long = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|len| len.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len > max_body as u64);
    if !travels || too_long {
        return Err(response);
    }
    let (head, mut body) = response.into_parts();
    let mut read = BytesMut::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    read.extend_from_slice(&data);
                    if read.len() > max_body {
                        let rest = Prefixed::new(read.freeze(), body);
                        return Err(Response::from_parts(head, rest.boxed()));
                    }
                }
                // Trailers do not travel: stream it as it is.
                Err(frame) => {
                    let rest = Prefixed::new(read.freeze(), body).with_frame(frame);
                    return Err(Response::from_parts(head, rest.boxed()));
                }
            },
            Some(Err(error)) => {
                let rest = Prefixed::new(read.freeze(), body).with_error(error);
                return Err(Response::from_parts(head, rest.boxed()));
            }
        }
    }
    let headers = head
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    Ok(Stored::Shared {
        status: head.status.as_u16(),
        headers,
        body: read.freeze(),
    })
}

/// Whether a response varies on nothing but `Accept-Encoding`, which the
/// layer keys on: any other header a remote request may differ in.
fn varies_on_encoding_at_most(headers: &HeaderMap) -> bool {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .all(|name| name.eq_ignore_ascii_case("accept-encoding"))
}

fn rebuild(status: u16, headers: &[(String, Vec<u8>)], body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A body read in part: what was read, then the rest (or what stopped it).
struct Prefixed {
    prefix: Option<Bytes>,
    frame: Option<Frame<Bytes>>,
    error: Option<BoxError>,
    rest: Option<ProxyBody>,
}

impl Prefixed {
    fn new(prefix: Bytes, rest: ProxyBody) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            frame: None,
            error: None,
            rest: Some(rest),
        }
    }

    fn with_frame(mut self, frame: Frame<Bytes>) -> Self {
        self.frame = Some(frame);
        self
    }

    fn with_error(mut self, error: BoxError) -> Self {
        self.error = Some(error);
        self.rest = None;
        self
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(frame) = self.frame.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = self.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A length-prefixed binary form of [`Stored`]: a body travels as its
/// bytes, not as a JSON array of numbers.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Binary;

impl Codec<Stored> for Binary {
    fn encode(&self, stored: &Stored) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        match stored {
            Stored::Own => out.push(0),
            Stored::Shared {
                status,
                headers,
                body,
            } => {
                out.push(1);
                out.extend_from_slice(&status.to_be_bytes());
                out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
                for (name, value) in headers {
                    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    out.extend_from_slice(value);
                }
                out.extend_from_slice(&(body.len() as u64).to_be_bytes());
                out.extend_from_slice(body);
            }
        }
        Ok(out)
    }

    fn decode(&self, mut bytes: &[u8]) -> Result<Stored, String> {
        let short = || "a stored response ends early".to_owned();
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            (bytes.len() >= n).then(|| {
                let (head, rest) = bytes.split_at(n);
                *bytes = rest;
                head
            })
        }
        match take(&mut bytes, 1).ok_or_else(short)?[0] {
            0 => Ok(Stored::Own),
            1 => {
                let read_u32 = |bytes: &mut &[u8]| -> Result<usize, String> {
                    take(bytes, 4)
                        .map(|mut b| b.get_u32() as usize)
                        .ok_or_else(short)
                };
                let status = take(&mut bytes, 2)
                    .map(|mut b| b.get_u16())
                    .ok_or_else(short)?;
                let count = read_u32(&mut bytes)?;
                let mut headers = Vec::with_capacity(count.min(256));
                for _ in 0..count {
                    let len = read_u32(&mut bytes)?;
                    let name = take(&mut bytes, len).ok_or_else(short)?;
                    let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
                    let len = read_u32(&mut bytes)?;
                    let value = take(&mut bytes, len).ok_or_else(short)?.to_vec();
                    headers.push((name, value));
                }
                let len = take(&mut bytes, 8)
                    .map(|mut b| b.get_u64())
                    .ok_or_else(short)?;
                let len = usize::try_from(len).map_err(|e| e.to_string())?;
                let body = Bytes::copy_from_slice(take(&mut bytes, len).ok_or_else(short)?);
                Ok(Stored::Shared {
                    status,
                    headers,
                    body,
                })
            }
            other => Err(format!("a stored response of unknown kind {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_response_survives_its_binary_form() {
        let stored = Stored::Shared {
            status: 203,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: Bytes::from_static(b"\x00binary\nbody"),
        };
        let bytes = Binary.encode(&stored).expect("encoded");
        match Binary.decode(&bytes).expect("decoded") {
            Stored::Shared {
                status,
                headers,
                body,
            } => {
                assert_eq!(status, 203);
                assert_eq!(
                    headers,
                    [("content-type".to_owned(), b"text/plain".to_vec())]
                );
                assert_eq!(body, "\x00binary\nbody");
            }
            Stored::Own => panic!("decoded as Own"),
        }
        assert!(matches!(
            Binary.decode(&Binary.encode(&Stored::Own).unwrap()),
            Ok(Stored::Own)
        ));
        assert!(
            Binary.decode(&bytes[..bytes.len() - 1]).is_err(),
            "a cut value is refused"
        );
    }

    #[test]
    fn only_accept_encoding_may_be_varied_on() {
        let mut headers = HeaderMap::new();
        assert!(varies_on_encoding_at_most(&headers));
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        assert!(varies_on_encoding_at_most(&headers));
        headers.append(VARY, HeaderValue::from_static("accept-language"));
        assert!(!varies_on_encoding_at_most(&headers));
    }
}
