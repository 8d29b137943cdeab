//! Request limits enforced in Rust before the app runs: requests in flight
//! (`--limit-concurrency`), the request target length (414) and the body
//! size (413). The head size limit (431) is hyper's, set in the server.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};

use super::body::ResponseBody;
use crate::bridge::exchange::AppFailed;

/// The configured limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Requests served at once; `None` for no limit.
    pub concurrency: Option<usize>,
    /// Largest request body in bytes; `None` for no limit.
    pub request_body: Option<u64>,
    /// Maximum request target length in bytes.
    pub request_line: usize,
    /// Largest request head in bytes.
    pub header_size: usize,
}

impl Limits {
    /// Smallest head size limit: hyper's read buffer cannot be smaller.
    pub const MIN_HEADER_SIZE: usize = 8192;
}

/// Requests in flight across all connections.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
}

impl InFlight {
    /// Counts a new request, or returns `None` when `limit` requests are
    /// already in flight. The permit uncounts it when dropped.
    pub fn try_acquire(self: &Arc<Self>, limit: usize) -> Option<Permit> {
        // Relaxed is enough: the counter guards no other memory, and a
        // request racing another one for the last slot may lose either way.
        let previous = self.count.fetch_add(1, Ordering::Relaxed);
        if previous >= limit {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Permit(Arc::clone(self)))
    }
}

/// One request counted in [`InFlight`] until the response is done.
#[derive(Debug)]
pub struct Permit(Arc<InFlight>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The status for a request head over a limit, before any body is read.
pub fn check_head(limits: &Limits, parts: &Parts) -> Option<(StatusCode, &'static str)> {
    // Origin-form targets are the path and query; absolute-form adds the
    // scheme and authority, which hyper keeps in the URI too.
    let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len())
        + parts.uri.scheme_str().map_or(0, |s| s.len() + 3);
    if target_len > limits.request_line {
        return Some((StatusCode::URI_TOO_LONG, "URI Too Long"));
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    match (limits.request_body, declared) {
        (Some(limit), Some(len)) if len > limit => {
            Some((StatusCode::PAYLOAD_TOO_LARGE, "Content Too Large"))
        }
        _ => None,
    }
}

/// Tracks the bytes of a streamed request body against `--limit-request-body`.
#[derive(Debug)]
pub struct BodyBudget {
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl BodyBudget {
    /// A budget of `limit` bytes and the flag it raises when exceeded.
    pub fn new(limit: u64) -> (Self, Arc<AtomicBool>) {
        let exceeded = Arc::new(AtomicBool::new(false));
        let budget = Self {
            remaining: limit,
            exceeded: Arc::clone(&exceeded),
        };
        (budget, exceeded)
    }

    /// Charges `len` bytes; returns false, and raises the flag, once the
    /// body is over the limit.
    pub fn charge(&mut self, len: usize) -> bool {
        match self.remaining.checked_sub(len as u64) {
            Some(left) => {
                self.remaining = left;
                true
            }
            None => {
                // Release pairs with the Acquire load in the service future,
                // which reads the flag after the exchange reports the end.
                self.exceeded.store(true, Ordering::Release);
                false
            }
        }
    }
}

/// A response body that holds per-request guards until hyper drops it,
/// which happens once the body is written or the connection ends.
#[derive(Debug)]
pub struct Guarded<G> {
    body: ResponseBody,
    _permit: Option<Permit>,
    _guard: G,
}

impl<G> Guarded<G> {
    pub fn new(body: ResponseBody, permit: Option<Permit>, guard: G) -> Self {
        Self {
            body,
            _permit: permit,
            _guard: guard,
        }
    }
}

impl<G: Unpin> Body for Guarded<G> {
    type Data = Bytes;
    type Error = AppFailed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AppFailed>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            concurrency: None,
            request_body: Some(10),
            request_line: 20,
            header_size: 8192,
        }
    }

    fn parts(target: &str, content_length: Option<&str>) -> Parts {
        let mut builder = http::Request::builder().uri(target);
        if let Some(len) = content_length {
            builder = builder.header("content-length", len);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn permits_stop_at_limit_and_return_on_drop() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.try_acquire(2).unwrap();
        let _second = in_flight.try_acquire(2).unwrap();
        assert!(in_flight.try_acquire(2).is_none());
        drop(first);
        assert!(in_flight.try_acquire(2).is_some());
    }

    #[test]
    fn long_target_gets_414() {
        assert_eq!(check_head(&limits(), &parts("/short", None)), None);
        let long = format!("/{}", "a".repeat(20));
        let status = check_head(&limits(), &parts(&long, None)).unwrap().0;
        assert_eq!(status, StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn declared_body_over_limit_gets_413() {
        assert_eq!(check_head(&limits(), &parts("/", Some("10"))), None);
        let status = check_head(&limits(), &parts("/", Some("11"))).unwrap().0;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn budget_flags_overflow() {
        let (mut budget, exceeded) = BodyBudget::new(5);
        assert!(budget.charge(3));
        assert!(budget.charge(2));
        assert!(!exceeded.load(Ordering::Acquire));
        assert!(!budget.charge(1));
        assert!(exceeded.load(Ordering::Acquire));
    }
}
