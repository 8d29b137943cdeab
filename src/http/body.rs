//! Request and response bodies on the tokio side of an exchange.
//!
//! The request body is read by a pump task only as fast as the app requests
//! it, so an upload is never held in memory whole and `100 Continue` goes out
//! only when the app first reads. The response body streams what the app
//! queued in the [`Exchange`], and reports a client that went away.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::access::AccessRecord;
use super::limits::BodyBudget;
use crate::bridge::exchange::AppFailed;
use crate::bridge::Exchange;

/// Reads `body` into `exchange` while the app wants more, then stops. With
/// a `budget`, a body that grows past it ends the exchange as if the client
/// had left: the app receives `http.disconnect` and the client gets 413.
pub async fn pump_request_body(
    mut body: Incoming,
    exchange: Arc<Exchange>,
    mut budget: Option<BodyBudget>,
) {
    loop {
        let wanted = std::future::poll_fn(|cx| exchange.poll_read_demand(cx)).await;
        if !wanted {
            // Dropping the body makes hyper drain or close the connection.
            return;
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                // Trailers are not passed to the app; ASGI has no message for them.
                if let Ok(data) = frame.into_data() {
                    if budget.as_mut().is_some_and(|b| !b.charge(data.len())) {
                        tracing::debug!("request body over --limit-request-body");
                        exchange.client_gone();
                        return;
                    }
                    exchange.push_request_data(data);
                }
            }
            Some(Err(err)) => {
                tracing::debug!(error = %err, "reading the request body failed");
                exchange.client_gone();
                return;
            }
            None => {
                exchange.finish_request_body();
                return;
            }
        }
    }
}

/// A response body: fixed bytes made by the server itself, or the stream of
/// an app's response.
#[derive(Debug)]
pub enum ResponseBody {
    Fixed(Option<Bytes>),
    Stream(StreamBody),
}

/// The body of an app's response, taken from its exchange.
#[derive(Debug)]
pub struct StreamBody {
    exchange: Arc<Exchange>,
    /// Exact length when the app sent the whole body before the head left.
    len: Option<u64>,
    /// Length hyper writes at most: the app's Content-Length, or 0 for
    /// responses that have no body (HEAD, 204, 304).
    write_limit: Option<u64>,
    /// The status allows no body (1xx, 204, 304): none is written, and
    /// nothing announces one.
    bodiless: bool,
    written: u64,
    done: bool,
    /// Boxed to keep the body small; hyper moves it around while writing.
    access: Option<Box<AccessRecord>>,
}

impl ResponseBody {
    pub fn fixed(bytes: impl Into<Bytes>) -> Self {
        Self::Fixed(Some(bytes.into()))
    }

    pub fn stream(
        exchange: Arc<Exchange>,
        len: Option<u64>,
        write_limit: Option<u64>,
        access: Option<AccessRecord>,
    ) -> Self {
        Self::Stream(StreamBody {
            exchange,
            len,
            write_limit,
            bodiless: false,
            written: 0,
            done: false,
            access: access.map(Box::new),
        })
    }

    /// Creates the body of an app's response whose status allows none, so
    /// whatever the app sends is dropped. hyper leaves the body out of such HTTP/1.1
    /// responses itself, but over HTTP/2 it would send it.
    pub fn bodiless(exchange: Arc<Exchange>, access: Option<AccessRecord>) -> Self {
        Self::Stream(StreamBody {
            exchange,
            len: None,
            write_limit: Some(0),
            bodiless: true,
            written: 0,
            done: false,
            access: access.map(Box::new),
        })
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = AppFailed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AppFailed>>> {
        match self.get_mut() {
            Self::Fixed(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            // Dropping the body reports to the exchange that the response is written.
            Self::Stream(stream) if stream.bodiless => Poll::Ready(None),
            Self::Stream(stream) => stream.poll_chunk(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Fixed(bytes) => bytes.is_none(),
            Self::Stream(stream) => stream.done || stream.bodiless || stream.len == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Fixed(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Fixed(None) => SizeHint::with_exact(0),
            Self::Stream(StreamBody { len: Some(len), .. }) => SizeHint::with_exact(*len),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

impl StreamBody {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AppFailed>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.exchange.poll_chunk(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let before = self.written;
                self.written += chunk.len() as u64;
                if let Some(limit) = self.write_limit {
                    if before <= limit && self.written > limit {
                        // hyper writes only up to the Content-Length.
                        tracing::error!(
                            content_length = limit,
                            "ASGI app sent more body than its content-length; the rest is dropped"
                        );
                    }
                }
                if let Some(access) = &mut self.access {
                    access.bytes += chunk.len() as u64;
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(None) => {
                self.done = true;
                if let Some(limit) = self.write_limit.filter(|&limit| self.written < limit) {
                    // hyper closes the connection after a body that ends short.
                    tracing::error!(
                        content_length = limit,
                        sent = self.written,
                        "ASGI app ended the response before its content-length; closing the connection"
                    );
                }
                if let Some(access) = self.access.take() {
                    (*access).log(true);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(err))) => {
                self.done = true;
                if let Some(access) = self.access.take() {
                    (*access).log(false);
                }
                Poll::Ready(Some(Err(err)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        // hyper stops polling once it has written a body of known length,
        // and drops an unfinished body when the client leaves mid-response:
        // only the second case is a disconnect the app must learn of.
        if self.done {
            return;
        }
        let complete = self.exchange.response_drained();
        let limit_reached = self.write_limit.is_some_and(|limit| self.written >= limit);
        if limit_reached {
            self.exchange.response_written();
        } else if !complete {
            self.exchange.client_gone();
        }
        let complete = complete || limit_reached;
        if let Some(access) = self.access.take() {
            (*access).log(complete);
        }
    }
}
