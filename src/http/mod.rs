//! The hyper service: turns one parsed request into an exchange, hands it to
//! the Python thread and builds the response from what the app sends.
//!
//! Nothing here runs Python. Requests the server can answer alone (framing
//! errors) never reach the app.

pub mod access;
pub mod body;
pub mod defaults;
pub mod header_order;
pub mod limits;
pub mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, TRANSFER_ENCODING, UPGRADE, USER_AGENT,
};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;

use crate::bridge::exchange::{HeadOutcome, ResponseHead};
use crate::bridge::{Bridge, Event, Exchange, RequestHead};
use crate::config::Config;
use crate::health::{self, Health};
use crate::proxy::{ProxyConfig, Resolved};
use crate::server::heads::{ConnHeads, HeadNotes};
use access::{AccessRecord, X_REQUEST_ID};
use body::{pump_request_body, ResponseBody};
use defaults::ResponseDefaults;
use header_order::{append_headers, NameOrder, SentHeaders};
use limits::{BodyBudget, Guarded, InFlight, Limits, Permit};

/// Request bodies up to this size, with a known length and no
/// `Expect: 100-continue`, are read whole before the app starts, so its
/// first `receive()` finishes at once. Larger ones stream on demand.
const PREFETCH_LIMIT: u64 = 64 * 1024;

/// State shared by every request handler.
#[derive(Debug)]
pub struct Shared {
    pub bridge: Arc<Bridge>,
    pub access_log: bool,
    pub health: Arc<Health>,
    /// The built-in endpoint's path; `None` hands every path to the app.
    pub health_path: Option<String>,
    pub log_health_checks: bool,
    /// Requests after which the worker requests its replacement.
    pub max_requests: Option<u64>,
    /// Requests handed to the app so far.
    pub served: AtomicU64,
    /// Notified once when `served` reaches `max_requests`.
    pub recycle: Notify,
    /// Access lines are JSON, with a request id.
    pub access_json: bool,
    /// Paths left out of the access log.
    pub access_exclude: Vec<String>,
    pub proxy: ProxyConfig,
    pub limits: Limits,
    pub in_flight: Arc<InFlight>,
    pub response_defaults: ResponseDefaults,
    /// `None` with `--ws none`: upgrade requests reach the app as plain HTTP.
    pub websocket: Option<websocket::Endpoint>,
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
            access_json: config.access_log_format == crate::cli::LogFormat::Json,
            access_exclude: config.access_log_exclude.clone(),
            proxy: config.proxy.clone(),
            limits: config.limits.clone(),
            in_flight: Arc::default(),
            response_defaults: config.response_defaults.clone(),
            websocket: config.websocket.clone().map(websocket::Endpoint::new),
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
    /// Starts the access record for a request, or returns `None` when the
    /// request is not logged.
    fn access_record(
        &self,
        parts: &Parts,
        resolved: &Resolved,
        started: Instant,
    ) -> Option<AccessRecord> {
        if !self.access_log || self.access_exclude.iter().any(|p| p == parts.uri.path()) {
            return None;
        }
        Some(AccessRecord {
            client: resolved.client,
            client_name: resolved
                .overrides
                .as_ref()
                .and_then(|o| o.client_name.clone()),
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            status: StatusCode::OK,
            bytes: 0,
            started,
            user_agent: self
                .access_json
                .then(|| parts.headers.get(USER_AGENT).cloned())
                .flatten(),
            request_id: self.access_json.then(|| access::request_id(&parts.headers)),
        })
    }
}

/// Addresses of one connection; `None` on a Unix socket.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
}

/// Serves one request and keeps `guard` alive until its response body is
/// dropped, which is when hyper has written it or the connection ended.
///
/// `heads` and `notes` come from the connection's socket: what the request
/// head showed before hyper parsed it, and where to ask for the response
/// head to be written with the app's header order and case.
pub async fn serve<G: Unpin + Send + 'static>(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: ConnInfo,
    guard: G,
    (heads, notes): (Arc<ConnHeads>, HeadNotes),
) -> Result<Response<Guarded<Option<G>>>, Infallible> {
    // RFC 9112 §6.3: both framings may be a request smuggling attempt.
    // hyper dropped Content-Length already; the socket scanner saw both.
    if notes.framing_conflict {
        let text = "Bad Request: both Content-Length and Transfer-Encoding";
        let mut response = plain_response(StatusCode::BAD_REQUEST, text, true);
        shared.response_defaults.apply(response.headers_mut());
        return Ok(response.map(|body| Guarded::new(body, None, Some(guard))));
    }

    if let Some(order) = notes.order {
        req.extensions_mut().insert(order);
    }
    // The scanner pauses after such a request, since it may switch protocols.
    let asks_upgrade = req.headers().contains_key(UPGRADE) || req.method() == Method::CONNECT;
    let http1 = req.version() < Version::HTTP_2;

    if let Some(endpoint) = &shared.websocket {
        if websocket::is_upgrade(&req) {
            let resolved = shared.proxy.resolve(conn.client, req.headers_mut());
            let peer = websocket::Peer {
                client: resolved.client,
                server: conn.server,
                scheme: resolved.websocket_scheme(),
            };
            // The guard counts the connection as busy, so the idle timeout
            // does not apply while the WebSocket session lasts.
            let mut response =
                websocket::handle(req, &shared, endpoint, peer, Box::new(guard)).await;
            shared.response_defaults.apply(response.headers_mut());
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                heads.stop_scanning();
            } else {
                heads.resume_scanning();
            }
            return Ok(response.map(|body| Guarded::new(body, None, None)));
        }
    }

    let (mut response, permit, request_id) = handle(req, &shared, conn).await;
    let headers = response.headers_mut();
    shared.response_defaults.apply(headers);
    if let Some(id) = request_id {
        if !headers.contains_key(X_REQUEST_ID) {
            headers.insert(X_REQUEST_ID, id);
        }
    }
    if asks_upgrade {
        heads.resume_scanning();
    }
    if let Some(sent) = response.extensions_mut().remove::<SentHeaders>() {
        // HTTP/2 names are lower case by definition; order follows hyper.
        if http1 {
            mark_for_restore(response.headers_mut(), &heads, sent);
        }
    }
    Ok(response.map(|body| Guarded::new(body, permit, Some(guard))))
}

/// Puts the marker header first, so the socket wrapper can write this head
/// again with the app's headers as sent.
fn mark_for_restore(headers: &mut http::HeaderMap, heads: &ConnHeads, sent: SentHeaders) {
    let number = heads.restore(sent);
    let grouped = std::mem::take(headers);
    headers.reserve(grouped.len() + 1);
    headers.insert(header_order::marker_name().clone(), number);
    headers.extend(grouped);
}

/// Serves one request: the response, the concurrency permit it holds, and
/// the request id for the `x-request-id` header.
async fn handle(
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    conn: ConnInfo,
) -> (Response<ResponseBody>, Option<Permit>, Option<HeaderValue>) {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let resolved = shared.proxy.resolve(conn.client, &mut parts.headers);
    let access = shared.access_record(&parts, &resolved, started);
    let request_id = access.as_ref().and_then(|a| a.request_id.clone());
    let early = |status, text, close, access| {
        let response = server_response(status, text, close, access);
        (response, None, request_id.clone())
    };

    // The health endpoint reads atomics only: no Python, no permit.
    if shared.health_path.as_deref() == Some(parts.uri.path()) {
        let response = health::respond(&shared.health, &parts.method);
        if shared.log_health_checks {
            if let Some(record) = access {
                AccessRecord {
                    status: response.status(),
                    ..record
                }
                .log(true);
            }
        }
        return (response, None, request_id);
    }
    shared.count_request();

    // Over the limit, the 503 is sent from here, without running Python.
    let permit = match shared.limits.concurrency {
        None => None,
        Some(limit) => match shared.in_flight.try_acquire(limit) {
            Some(permit) => Some(permit),
            None => {
                let status = StatusCode::SERVICE_UNAVAILABLE;
                return early(status, "Service Unavailable", false, access);
            }
        },
    };
    if let Some((status, text)) = limits::check_head(&shared.limits, &parts) {
        return early(status, text, true, access);
    }

    let is_head = parts.method == http::Method::HEAD;
    let budget = shared.limits.request_body.map(BodyBudget::new);
    let (budget, body_over_limit) = match budget {
        Some((budget, flag)) => (Some(budget), Some(flag)),
        None => (None, None),
    };
    let exchange = match start_body(&shared.bridge, &parts.headers, body, budget).await {
        Some(exchange) => exchange,
        None => {
            let status = StatusCode::BAD_REQUEST;
            return early(status, "Bad Request: incomplete body", true, access);
        }
    };

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
        client: resolved.client,
        server: conn.server,
        scheme: resolved.http_scheme(),
        header_order: parts.extensions.remove::<NameOrder>(),
        overrides: resolved.overrides,
    };
    shared
        .bridge
        .submit_deferred(Event::Request(Box::new(head)));

    // If hyper drops this future (the client left), the guard notifies the app.
    let guard = DisconnectGuard(Some(Arc::clone(&exchange)));
    let outcome = std::future::poll_fn(|cx| exchange.poll_head(cx)).await;
    guard.disarm();

    let response = match outcome {
        HeadOutcome::Started { head, body_len } => {
            let access = access.map(|record| AccessRecord {
                status: head.status,
                ..record
            });
            app_response(head, body_len, exchange, is_head, access)
        }
        // Acquire pairs with the Release store in `BodyBudget::charge`.
        HeadOutcome::Failed if body_over_limit.is_some_and(|flag| flag.load(Ordering::Acquire)) => {
            let status = StatusCode::PAYLOAD_TOO_LARGE;
            server_response(status, "Content Too Large", true, access)
        }
        HeadOutcome::Failed => {
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            server_response(status, "Internal Server Error", false, access)
        }
    };
    (response, permit, request_id)
}

/// Builds the response from the app's `http.response.start` and the body
/// that follows it; `body_len` is the body's length when it came whole.
fn app_response(
    head: ResponseHead,
    body_len: Option<u64>,
    exchange: Arc<Exchange>,
    is_head: bool,
    access: Option<AccessRecord>,
) -> Response<ResponseBody> {
    let status = head.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut headers = head.headers;
    // RFC 9110 §8.6: no Content-Length in 1xx and 204 responses, whatever
    // the app set.
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        headers = without_framing(headers);
    }

    // The app's Content-Length was checked to be a number when it sent it.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok());
    let body = if bodiless {
        ResponseBody::bodiless(exchange, access)
    } else {
        // hyper trusts an exact body size over a Content-Length header, so a
        // whole body of another length goes out with the header's framing.
        let body_len = match (body_len, declared) {
            (Some(len), Some(declared)) if len != declared && !is_head => {
                tracing::error!(
                    content_length = declared,
                    body_len = len,
                    "ASGI app sent a body whose length differs from its content-length"
                );
                None
            }
            (len, _) => len,
        };
        let write_limit = if is_head { Some(0) } else { declared };
        ResponseBody::stream(exchange, body_len, write_limit, access)
    };

    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    if let Some(sent) = head.sent {
        response.extensions_mut().insert(sent);
    }
    response
}

/// Drops `content-length` and `transfer-encoding` and keeps the order of
/// the rest, which `HeaderMap::remove` does not (it moves the last header
/// into the gap).
fn without_framing(headers: http::HeaderMap) -> http::HeaderMap {
    if !headers.contains_key(CONTENT_LENGTH) && !headers.contains_key(TRANSFER_ENCODING) {
        return headers;
    }
    let mut kept = http::HeaderMap::with_capacity(headers.len());
    append_headers(&mut kept, headers, |name| {
        name != CONTENT_LENGTH && name != TRANSFER_ENCODING
    });
    kept
}

/// Builds a response made by the server itself and logs it in the access log.
fn server_response(
    status: StatusCode,
    text: &'static str,
    close: bool,
    access: Option<AccessRecord>,
) -> Response<ResponseBody> {
    if let Some(record) = access {
        AccessRecord {
            status,
            bytes: text.len() as u64,
            ..record
        }
        .log(true);
    }
    plain_response(status, text, close)
}

/// Creates the exchange for a request, reading a small body up front.
/// Returns `None` if the client broke off while sending that body.
async fn start_body(
    bridge: &Arc<Bridge>,
    headers: &http::HeaderMap,
    body: Incoming,
    budget: Option<BodyBudget>,
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
    // A body of known length was checked against the limit already, and
    // hyper stops at its length; only a chunked body needs the budget.
    let budget = budget.filter(|_| body.size_hint().exact().is_none());
    tokio::spawn(pump_request_body(body, Arc::clone(&exchange), budget));
    Some(exchange)
}

/// Puts the HTTP/2 `:authority` first as `host`, replacing any `host`
/// header, as the ASGI HTTP spec requires for pseudo-headers.
fn with_host_first(headers: http::HeaderMap, uri: &http::Uri) -> http::HeaderMap {
    let Some(authority) = uri.authority() else {
        return headers;
    };
    let Ok(host) = HeaderValue::from_str(authority.as_str()) else {
        return headers;
    };
    let mut ordered = http::HeaderMap::with_capacity(headers.len() + 1);
    ordered.insert(http::header::HOST, host);
    append_headers(&mut ordered, headers, |name| name != http::header::HOST);
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
