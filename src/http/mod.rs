//! The hyper service: turns one parsed request into an exchange, hands it to
//! the Python thread and builds the response from what the app sends.
//!
//! Nothing here runs Python. Requests the server can answer alone (framing
//! errors) never reach the app.

pub mod access;
pub mod body;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, SERVER, TRANSFER_ENCODING};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;

use crate::bridge::exchange::HeadOutcome;
use crate::bridge::{Bridge, Event, Exchange, RequestHead};
use crate::config::Config;
use crate::health::{self, Health};
use access::AccessRecord;
use body::{pump_request_body, ResponseBody};

/// Request bodies up to this size, with a known length and no
/// `Expect: 100-continue`, are read whole before the app starts, so its
/// first `receive()` finishes at once. Larger ones stream on demand.
const PREFETCH_LIMIT: u64 = 64 * 1024;

/// What every request handler shares.
#[derive(Debug)]
pub struct Shared {
    pub bridge: Arc<Bridge>,
    pub access_log: bool,
    pub health: Arc<Health>,
    /// The built-in endpoint's path; `None` hands every path to the app.
    pub health_path: Option<String>,
    pub log_health_checks: bool,
    /// Requests after which the worker asks to be replaced.
    pub max_requests: Option<u64>,
    /// Requests handed to the app so far.
    pub served: AtomicU64,
    /// Notified once when `served` reaches `max_requests`.
    pub recycle: Notify,
}

impl Shared {
    pub fn new(
        bridge: Arc<Bridge>,
        config: &Config,
        health: Arc<Health>,
        max_requests: Option<u64>,
    ) -> Self {
        Self {
            bridge,
            access_log: config.access_log,
            health,
            health_path: config.health.as_ref().map(|h| h.path.clone()),
            log_health_checks: config.health.as_ref().is_some_and(|h| h.log_requests),
            max_requests,
            served: AtomicU64::new(0),
            recycle: Notify::new(),
        }
    }

    /// Counts a request for the app and notifies once the limit is reached.
    fn count_request(&self) {
        // Relaxed: a plain counter; the Notify carries the hand-off.
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_requests == Some(served) {
            self.recycle.notify_one();
        }
    }
}

/// Addresses of one connection; `None` on a Unix socket.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
}

/// Serves one request.
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: ConnInfo,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();

    if shared.health_path.as_deref() == Some(req.uri().path()) {
        let response = health::respond(&shared.health, req.method());
        if shared.access_log && shared.log_health_checks {
            let record = AccessRecord {
                client: conn.client,
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                status: response.status(),
                bytes: 0,
                started,
            };
            record.log(true);
        }
        return Ok(response);
    }
    shared.count_request();

    // NOTE: a request with both Content-Length and Transfer-Encoding never
    // reaches this point with both: hyper's parser drops Content-Length,
    // reads the chunked body and closes the connection after the response
    // (RFC 9112 §6.3 allows this or a 400). A 400 needs hyper to expose it.
    let (parts, body) = req.into_parts();
    let is_head = parts.method == http::Method::HEAD;
    let exchange = match start_body(&shared.bridge, &parts.headers, body).await {
        Some(exchange) => exchange,
        None => {
            return Ok(plain_response(
                StatusCode::BAD_REQUEST,
                "Bad Request: incomplete body",
                true,
            ))
        }
    };

    let access = shared.access_log.then(|| AccessRecord {
        client: conn.client,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        status: StatusCode::OK,
        bytes: 0,
        started,
    });

    let headers = if parts.version == http::Version::HTTP_2 {
        with_host_first(parts.headers, &parts.uri)
    } else {
        parts.headers
    };
    let head = RequestHead {
        exchange: Arc::clone(&exchange),
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers,
        client: conn.client,
        server: conn.server,
        scheme: "http",
    };
    shared
        .bridge
        .submit_deferred(Event::Request(Box::new(head)));

    // If hyper drops this future (the client left), the guard tells the app.
    let guard = DisconnectGuard(Some(Arc::clone(&exchange)));
    let outcome = std::future::poll_fn(|cx| exchange.poll_head(cx)).await;
    guard.disarm();

    let response = match outcome {
        HeadOutcome::Started { head, body_len } => {
            let access = access.map(|record| AccessRecord {
                status: head.status,
                ..record
            });
            let mut headers = head.headers;
            let no_body = is_head
                || head.status.is_informational()
                || head.status == StatusCode::NO_CONTENT
                || head.status == StatusCode::NOT_MODIFIED;
            // RFC 9110 §8.6: no Content-Length in 1xx and 204 responses,
            // whatever the app set; hyper sends these without a body.
            if head.status.is_informational() || head.status == StatusCode::NO_CONTENT {
                headers.remove(CONTENT_LENGTH);
                headers.remove(TRANSFER_ENCODING);
            }
            let write_limit = if no_body {
                Some(0)
            } else {
                headers
                    .get(CONTENT_LENGTH)
                    .and_then(|value| value.to_str().ok()?.trim().parse().ok())
            };
            let body = ResponseBody::stream(exchange, body_len, write_limit, access);
            let mut response = Response::new(body);
            *response.status_mut() = head.status;
            *response.headers_mut() = headers;
            response
        }
        HeadOutcome::Failed => {
            let response = plain_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                false,
            );
            if let Some(record) = access {
                AccessRecord {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    ..record
                }
                .log(true);
            }
            response
        }
    };
    Ok(response)
}

/// Creates the exchange for a request, reading a small body up front.
/// Returns `None` if the client broke off while sending that body.
async fn start_body(
    bridge: &Arc<Bridge>,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Option<Arc<Exchange>> {
    if body.is_end_stream() {
        return Some(Exchange::with_body(Arc::clone(bridge), Bytes::new()));
    }

    let expects_continue = headers
        .get(EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|len| len <= PREFETCH_LIMIT);
    if small && !expects_continue {
        let collected = body.collect().await.ok()?;
        return Some(Exchange::with_body(
            Arc::clone(bridge),
            collected.to_bytes(),
        ));
    }

    let exchange = Exchange::new(Arc::clone(bridge));
    tokio::spawn(pump_request_body(body, Arc::clone(&exchange)));
    Some(exchange)
}

/// Puts the HTTP/2 `:authority` first as `host`, replacing any `host`
/// header, as the ASGI HTTP spec asks for pseudo-headers.
fn with_host_first(headers: http::HeaderMap, uri: &http::Uri) -> http::HeaderMap {
    let Some(authority) = uri.authority() else {
        return headers;
    };
    let Ok(host) = HeaderValue::from_str(authority.as_str()) else {
        return headers;
    };
    let mut ordered = http::HeaderMap::with_capacity(headers.len() + 1);
    ordered.insert(http::header::HOST, host);
    let mut last_name = None;
    for (name, value) in headers {
        if let Some(name) = name {
            last_name = Some(name);
        }
        match &last_name {
            Some(name) if name != http::header::HOST => {
                ordered.append(name.clone(), value);
            }
            _ => {}
        }
    }
    ordered
}

/// A response made by the server itself.
pub fn plain_response(
    status: StatusCode,
    text: &'static str,
    close: bool,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::fixed(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(SERVER, HeaderValue::from_static("fastserve"));
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reports a disconnect to the exchange if dropped while armed.
struct DisconnectGuard(Option<Arc<Exchange>>);

impl DisconnectGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if let Some(exchange) = self.0.take() {
            exchange.client_gone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_authority_becomes_first_host_header() {
        let mut headers = http::HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("host", HeaderValue::from_static("stale"));
        let uri: http::Uri = "http://example.test:8080/path".parse().unwrap();
        let ordered = with_host_first(headers, &uri);
        let names: Vec<_> = ordered.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["host", "accept"]);
        assert_eq!(ordered["host"], "example.test:8080");
    }
}
