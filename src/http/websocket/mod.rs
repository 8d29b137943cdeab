//! WebSocket upgrades over HTTP/1.1 (RFC 6455), served to the app as the
//! ASGI `websocket` scope.
//!
//! The handler hands the handshake to the app first and waits for its
//! response: `websocket.accept` switches protocols (hyper's upgrade, then yawc
//! for framing and permessage-deflate), `websocket.close` gives 403, and a
//! `websocket.http.response` denial is sent as an ordinary response.
//! yawc was chosen because, unlike tungstenite and fastwebsockets, it
//! negotiates permessage-deflate (RFC 7692), including the no-context-
//! takeover and window-size parameters, on top of hyper's upgrade.

mod assemble;
mod connection;
mod registry;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, SERVER, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use yawc::{DeflateOptions, Options, WebSocket};

use super::body::ResponseBody;
use super::header_order::{append_headers, NameOrder};
use super::{access, Shared};
use crate::bridge::session::{Handshake, Session, WebSocketHead, CLOSE_ABNORMAL};
use crate::bridge::Event;
use crate::config::WebSocketConfig;
pub use registry::Registry;

/// Close code sent to open WebSockets when the server shuts down
/// ("going away", RFC 6455 §7.4.1). A restart would send 1012 instead.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Idle permessage-deflate states kept for reuse.
const DEFLATE_POOL_SIZE: usize = 64;

/// The WebSocket version this server speaks (RFC 6455 §4.1).
const WEBSOCKET_VERSION: &str = "13";

/// WebSocket settings and the open sessions.
#[derive(Debug)]
pub struct Endpoint {
    pub config: WebSocketConfig,
    pub registry: Arc<Registry>,
    options: Options,
}

impl Endpoint {
    pub fn new(config: WebSocketConfig) -> Self {
        let options = options(&config);
        Self {
            config,
            registry: Registry::new(),
            options,
        }
    }
}

/// Returns whether `req` requests a WebSocket upgrade: an HTTP/1.1 GET with
/// `Upgrade: websocket` and `Connection: upgrade`.
// NOTE: WebSockets over HTTP/2 (RFC 8441 extended CONNECT) are not served,
// because the HTTP/2 builder does not enable the extended CONNECT protocol.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && has_token(req.headers(), UPGRADE, "websocket")
        && has_token(req.headers(), CONNECTION, "upgrade")
}

/// Serves a WebSocket handshake: starts the app and responds to the client
/// as the app decides.
/// Addresses and scheme of a WebSocket client, after proxy headers.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub client: Option<std::net::SocketAddr>,
    pub server: Option<std::net::SocketAddr>,
    /// `ws`, or `wss` behind a trusted TLS-terminating proxy.
    pub scheme: &'static str,
}

/// Serves a WebSocket upgrade request. `keep` is held until the session
/// ends (or until this returns, when the handshake is refused).
pub async fn handle(
    mut req: Request<Incoming>,
    shared: &Shared,
    endpoint: &Endpoint,
    peer: Peer,
    keep: Box<dyn Send>,
) -> Response<ResponseBody> {
    if let Some(response) = check_handshake(req.headers()) {
        return response;
    }
    if endpoint.registry.is_draining() {
        return text_response(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
    }

    let session = Session::new(Arc::clone(&shared.bridge), endpoint.config.max_queue);
    let head = WebSocketHead {
        session: Arc::clone(&session),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
        header_order: req.extensions_mut().remove::<NameOrder>(),
        client: peer.client,
        server: peer.server,
        scheme: peer.scheme,
    };
    shared.bridge.submit(Event::WebSocket(Box::new(head)));

    // If hyper drops this future (the client left), the app learns of it.
    let guard = DropGuard(Some(Arc::clone(&session)));
    let answer = std::future::poll_fn(|cx| session.poll_handshake(cx)).await;
    guard.disarm();

    let path = req.uri().path().to_owned();
    let response = match answer {
        Handshake::Accept {
            subprotocol,
            headers,
        } => accept(&mut req, endpoint, session, subprotocol, headers, keep),
        Handshake::Reject => text_response(StatusCode::FORBIDDEN, ""),
        Handshake::Deny {
            status,
            headers,
            body,
        } => {
            let mut response = Response::new(ResponseBody::fixed(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Handshake::Failed => {
            text_response(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    };
    if shared.access_log {
        log_handshake(peer.client, &path, response.status());
    }
    response
}

/// Switches protocols and starts the connection task.
fn accept(
    req: &mut Request<Incoming>,
    endpoint: &Endpoint,
    session: Arc<Session>,
    subprotocol: Option<String>,
    extra_headers: HeaderMap,
    keep: Box<dyn Send>,
) -> Response<ResponseBody> {
    let (response, upgrade) =
        match WebSocket::upgrade_with_options(&mut *req, endpoint.options.clone()) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(error = %err, "websocket upgrade failed");
                session.disconnected(CLOSE_ABNORMAL, "");
                return text_response(
                    StatusCode::BAD_REQUEST,
                    "Bad Request: invalid WebSocket handshake",
                );
            }
        };
    let (mut parts, _) = response.into_parts();
    if let Some(value) = subprotocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        parts.headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
    }
    append_headers(&mut parts.headers, extra_headers, |_| true);
    if !parts.headers.contains_key(SERVER) {
        parts
            .headers
            .insert(SERVER, HeaderValue::from_static("fastserve"));
    }

    let (ticket, drain) = endpoint.registry.track();
    let config = endpoint.config.clone();
    tokio::spawn(async move {
        let _keep = keep;
        match upgrade.await {
            Ok(ws) => {
                connection::run(ws.into_streaming(), session, config, drain, ticket).await;
            }
            Err(err) => {
                tracing::debug!(error = %err, "websocket upgrade did not complete");
                session.disconnected(CLOSE_ABNORMAL, "");
            }
        }
    });
    Response::from_parts(parts, ResponseBody::fixed(Bytes::new()))
}

fn options(config: &WebSocketConfig) -> Options {
    // yawc's per-frame limit is exclusive; the message limit in `Assembler`
    // is inclusive, so a frame of exactly `max_size` bytes must pass here.
    let options = Options::default().with_max_payload_read(config.max_size.saturating_add(1));
    if config.per_message_deflate {
        // NOTE: yawc 0.5 answers an offer of `client_max_window_bits` without
        // a value with `client_max_window_bits=9`, so clients compress with a
        // 512-byte window. Valid under RFC 7692, but it costs ratio upstream.
        // Level 1: most of the gain on chatty JSON for a fraction of the CPU.
        // The pool reuses compressor states (about 300 KiB a connection) of
        // closed sessions instead of freeing and allocating them again.
        options
            .with_compression_level(yawc::CompressionLevel::fast())
            .with_deflate_pool(yawc::DeflatePool::new(DEFLATE_POOL_SIZE))
    } else {
        Options {
            compression: None::<DeflateOptions>,
            ..options
        }
    }
}

/// Rejects a handshake that cannot succeed before the app receives it.
fn check_handshake(headers: &HeaderMap) -> Option<Response<ResponseBody>> {
    let version_ok = headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == WEBSOCKET_VERSION.as_bytes());
    if !version_ok {
        // RFC 6455 §4.4: 426 with the versions the server supports.
        let mut response = text_response(
            StatusCode::UPGRADE_REQUIRED,
            "Upgrade Required: unsupported Sec-WebSocket-Version, expected 13",
        );
        response.headers_mut().insert(
            SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static(WEBSOCKET_VERSION),
        );
        return Some(response);
    }
    if !headers.contains_key(SEC_WEBSOCKET_KEY) {
        return Some(text_response(
            StatusCode::BAD_REQUEST,
            "Bad Request: missing Sec-WebSocket-Key",
        ));
    }
    None
}

fn text_response(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::fixed(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(SERVER, HeaderValue::from_static("fastserve"));
    if text.is_empty() {
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    } else {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// Returns whether the comma-separated header `name` contains `token`,
/// ignoring case.
fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .unwrap_or("")
            .split(',')
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    })
}

fn log_handshake(client: Option<std::net::SocketAddr>, path: &str, status: StatusCode) {
    let client = match client {
        Some(addr) => format!("{}:{}", addr.ip().to_canonical(), addr.port()),
        None => "-".to_owned(),
    };
    let outcome = if status == StatusCode::SWITCHING_PROTOCOLS {
        "[accepted]".to_owned()
    } else {
        status.as_u16().to_string()
    };
    tracing::info!(target: access::TARGET, "{client} - \"WebSocket {path}\" {outcome}");
}

/// Reports a client that left during the handshake, if dropped while armed.
struct DropGuard(Option<Arc<Session>>);

impl DropGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            session.disconnected(CLOSE_ABNORMAL, "");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/ws");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn upgrade_needs_both_tokens() {
        let req = request(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ]);
        assert!(is_upgrade(&req));
        assert!(!is_upgrade(&request(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&request(&[("connection", "upgrade")])));
        let h2c = request(&[("upgrade", "h2c"), ("connection", "upgrade")]);
        assert!(!is_upgrade(&h2c));
    }

    #[test]
    fn wrong_version_gets_426() {
        let mut headers = HeaderMap::new();
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        headers.insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("x"));
        let response = check_handshake(&headers).unwrap();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        assert!(check_handshake(&headers).is_none());
    }
}
