//! An upstream body that fails when the upstream sends nothing for too long
//! while a reader waits for it: a body that stalls mid-way ends every
//! reader's response with an error (an aborted response), as a reset does,
//! instead of holding them all forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use singleflight_tower::BoxError;
use tokio::time::{Instant, Sleep};

pin_project! {
    /// `inner`, failing with a `TimedOut` error when a frame is awaited for
    /// longer than `limit`.
    pub(super) struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        limit: Duration,
        // The timer runs only while a frame is awaited.
        armed: bool,
    }
}

impl<B> IdleTimeout<B> {
    pub(super) fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(limit),
            limit,
            armed: false,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.armed = false;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                if !*this.armed {
                    *this.armed = true;
                    let deadline = Instant::now() + *this.limit;
                    this.sleep.as_mut().reset(deadline);
                }
                match this.sleep.poll(cx) {
                    Poll::Ready(()) => {
                        let limit = crate::args::fmt_duration(*this.limit);
                        let error = io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the upstream sent nothing of the body for {limit}"),
                        );
                        Poll::Ready(Some(Err(error.into())))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
