//! The hyper service: turns one parsed request into an exchange, hands it to
//! the Python thread and builds the response from what the app sends.
//!
//! Nothing here runs Python. Requests the server can answer alone (framing
//! errors) never reach the app.

pub mod access;
pub mod body;
pub mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, SERVER, TRANSFER_ENCODING};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::bridge::exchange::HeadOutcome;
use crate::bridge::{Bridge, Event, Exchange, RequestHead};
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
    /// `None` with `--ws none`: upgrade requests reach the app as plain HTTP.
    pub websocket: Option<websocket::Endpoint>,
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
    if let Some(endpoint) = &shared.websocket {
        if websocket::is_upgrade(&req) {
            return Ok(websocket::handle(req, &shared, endpoint, conn).await);
        }
    }

    // NOTE: a request with both Content-Length and Transfer-Encoding never
    // reaches this point with both: hyper's parser drops Content-Length,
    // reads the chunked body and closes the connection after the response
    // (RFC 9112 §6.3 allows this or a 400). A 400 needs hyper to expose it.
    let (parts, body) = req.into_parts();
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

    let head = RequestHead {
        exchange: Arc::clone(&exchange),
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        client: conn.client,
        server: conn.server,
        scheme: "http",
    };
    shared.bridge.submit(Event::Request(Box::new(head)));

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
            // RFC 9110 §8.6: no Content-Length in 1xx and 204 responses,
            // whatever the app set; hyper sends these without a body.
            if head.status.is_informational() || head.status == StatusCode::NO_CONTENT {
                headers.remove(CONTENT_LENGTH);
                headers.remove(TRANSFER_ENCODING);
            }
            let mut response = Response::new(ResponseBody::stream(exchange, body_len, access));
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
