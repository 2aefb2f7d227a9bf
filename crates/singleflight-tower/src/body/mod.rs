// The body of a coalesced response: the inner service's own, a private
// response's, a short one the layer writes, or a reader of the body a
// flight shares (`shared`), whose older bytes may sit in a spill file
// (`spill`).

mod shared;
mod spill;

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use pin_project_lite::pin_project;

pub(crate) use shared::{Keep, Reader, Settle, SharedBody};

use crate::error::{BoxError, Error};

/// An upstream body with its data turned into `Bytes` and its error boxed.
pub(crate) type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes an upstream body.
pub(crate) fn box_body<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pin_project! {
    /// The response body of [`Coalesce`](crate::Coalesce).
    ///
    /// For a request that was not coalesced it is the inner service's body,
    /// unchanged but for its error becoming an [`Error`]. For a coalesced
    /// one it reads the body the flight shares, from the first byte, as
    /// fast as this waiter's client takes it (from memory, or from the
    /// flight's spill file when it is behind): it yields exactly the
    /// upstream's bytes, or fails with an [`Error`] (the upstream failed,
    /// or the bytes it needed were not kept), never a short clean end.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Empty, Full};
    /// use singleflight_tower::{Coalesce, CoalescedBody};
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), singleflight_tower::Error> {
    /// let service = Coalesce::new(tower::service_fn(|_req: http::Request<Empty<Bytes>>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("hi"))))
    /// }));
    /// let response = service.oneshot(http::Request::new(Empty::new())).await.unwrap();
    /// let body: CoalescedBody<Full<Bytes>> = response.into_body();
    /// assert_eq!(body.collect().await?.to_bytes(), "hi");
    /// # Ok(())
    /// # }
    /// ```
    pub struct CoalescedBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        // The error conversion is a function chosen where `B::Error:
        // Into<BoxError>` is known, so that the `Body` impl needs no such
        // bound: with `B::Error = BoxError` that bound trips rustc's check
        // of `Send` for async blocks holding the body ("implementation of
        // `From` is not general enough").
        Inner { #[pin] body: B, map_err: fn(B::Error) -> Error },
        Boxed { body: BoxBody },
        Shared { reader: Reader },
        Full { data: Option<Bytes> },
    }
}

impl<B: Body> CoalescedBody<B> {
    pub(crate) fn inner(body: B) -> Self
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Inner {
                body,
                map_err: Error::upstream::<B::Error>,
            },
        }
    }

    pub(crate) fn boxed(body: BoxBody) -> Self {
        Self {
            kind: Kind::Boxed { body },
        }
    }

    pub(crate) fn shared(reader: Reader) -> Self {
        Self {
            kind: Kind::Shared { reader },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full { data: Some(data) },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for CoalescedBody<B> {
    type Data = Bytes;
    type Error = Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body, map_err } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(map_err(error)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            other => poll_coalesced(other, cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Boxed { body } => body.is_end_stream(),
            Kind::Shared { reader } => reader.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Boxed { body } => body.size_hint(),
            Kind::Shared { reader } => reader.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}

/// Polls the bodies the layer makes (the inner service's own is polled in
/// line, in `poll_frame`); out of line, so that what is inlined where bodies
/// are read stays small.
#[inline(never)]
fn poll_coalesced<B: Body<Data = Bytes>>(
    kind: KindProj<'_, B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    match kind {
        KindProj::Inner { .. } => unreachable!("the inner body is polled in line"),
        KindProj::Boxed { body } => Pin::new(body)
            .poll_frame(cx)
            .map(|frame| frame.map(|frame| frame.map_err(Error::upstream))),
        KindProj::Shared { reader } => reader.poll_frame(cx),
        KindProj::Full { data } => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
    }
}

impl<B: Body> fmt::Debug for CoalescedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Boxed { .. } => "Private",
            Kind::Shared { .. } => "Shared",
            Kind::Full { .. } => "Full",
        };
        f.debug_tuple("CoalescedBody").field(&kind).finish()
    }
}
