//! The built-in health endpoint and the state behind it.
//!
//! `/health` is answered on the tokio side from a few atomics, without
//! running Python: ready once lifespan startup finished, draining once a
//! shutdown began, and blocked when the Python event loop has not run its
//! heartbeat callback for longer than `--health-loop-timeout`.

pub mod probe;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, SERVER};
use http::{HeaderValue, Method, Response, StatusCode};

use crate::http::body::ResponseBody;

/// How often the event loop records a heartbeat. Short enough that a loop
/// blocked for `--health-loop-timeout` (seconds) is distinguished from a busy one.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);

/// The state the endpoint reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Starting,
    Draining,
    /// The event loop has not run for longer than the timeout.
    Blocked,
}

impl Status {
    fn code(self) -> StatusCode {
        match self {
            Self::Ok => StatusCode::OK,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Self::Ok => r#"{"status":"ok"}"#,
            Self::Starting => r#"{"status":"starting"}"#,
            Self::Draining => r#"{"status":"draining"}"#,
            Self::Blocked => {
                r#"{"status":"blocked","detail":"the Python event loop is not running"}"#
            }
        }
    }
}

/// Readiness of one worker, shared by the tokio side and the Python thread.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    loop_timeout: Duration,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Milliseconds since `epoch` at the last heartbeat of the event loop.
    last_beat_ms: AtomicU64,
}

impl Health {
    pub fn new(loop_timeout: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            loop_timeout,
            ready: false.into(),
            draining: false.into(),
            last_beat_ms: 0.into(),
        }
    }

    /// Records that the event loop ran; called on the Python thread.
    pub fn beat(&self) {
        // Relaxed: the value is a timestamp read on its own; nothing else is
        // published with it.
        self.last_beat_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// Marks lifespan startup as finished.
    pub fn set_ready(&self) {
        self.beat();
        self.ready.store(true, Ordering::Release);
    }

    /// Marks the worker as draining: /health returns 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn status(&self) -> Status {
        if self.draining.load(Ordering::Acquire) {
            return Status::Draining;
        }
        if !self.ready.load(Ordering::Acquire) {
            return Status::Starting;
        }
        let since_beat = self
            .elapsed_ms()
            .saturating_sub(self.last_beat_ms.load(Ordering::Relaxed));
        if Duration::from_millis(since_beat) > self.loop_timeout {
            return Status::Blocked;
        }
        Status::Ok
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The health endpoint's response for `method`: GET and HEAD are answered,
/// other methods get 405.
pub fn respond(health: &Health, method: &Method) -> Response<ResponseBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = Response::new(ResponseBody::fixed(Bytes::from_static(b"")));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
            .headers_mut()
            .insert(SERVER, HeaderValue::from_static("fastserve"));
        return response;
    }
    let status = health.status();
    let mut response = Response::new(ResponseBody::fixed(Bytes::from_static(
        status.body().as_bytes(),
    )));
    *response.status_mut() = status.code();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(SERVER, HeaderValue::from_static("fastserve"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starting_until_ready() {
        let health = Health::new(Duration::from_secs(5));
        assert_eq!(health.status(), Status::Starting);
        health.set_ready();
        assert_eq!(health.status(), Status::Ok);
    }

    #[test]
    fn draining_wins_over_ready() {
        let health = Health::new(Duration::from_secs(5));
        health.set_ready();
        health.set_draining();
        assert_eq!(health.status(), Status::Draining);
    }

    #[test]
    fn stale_heartbeat_reports_blocked() {
        let health = Health::new(Duration::from_millis(20));
        health.set_ready();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(health.status(), Status::Blocked);
        health.beat();
        assert_eq!(health.status(), Status::Ok);
    }

    #[test]
    fn post_gets_405() {
        let health = Health::new(Duration::from_secs(5));
        let response = respond(&health, &Method::POST);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
