//! Realistic inputs shared by the benchmarks: a browser's request headers
//! and the response headers a FastAPI app sends.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri, Version};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use fastserve::bridge::{Exchange, RequestHead};

/// The headers Chrome 124 sends for a page load, minus cookies, in the
/// order it sends them.
pub const BROWSER_HEADERS: [(&str, &str); 12] = [
    ("host", "localhost:8080"),
    ("connection", "keep-alive"),
    (
        "sec-ch-ua",
        "\"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"",
    ),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("upgrade-insecure-requests", "1"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
         Chrome/124.0.0.0 Safari/537.36",
    ),
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,\
         image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    ),
    ("sec-fetch-site", "none"),
    ("sec-fetch-mode", "navigate"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("accept-language", "en-US,en;q=0.9"),
];

/// The one header wrk sends by default, as in the load comparison
/// (`benches/compare.py`).
pub const WRK_HEADERS: [(&str, &str); 1] = [("host", "127.0.0.1:8000")];

/// Headers that Starlette's `JSONResponse` (under FastAPI) sends for a small
/// object such as `{"message":"Hello World"}`.
pub const FASTAPI_JSON_HEADERS: [(&str, &str); 2] = [
    ("content-length", "25"),
    ("content-type", "application/json"),
];

/// The same response after typical middleware: CORS for a browser origin,
/// a timing header and a session cookie.
pub const FASTAPI_MIDDLEWARE_HEADERS: [(&str, &str); 7] = [
    ("content-length", "25"),
    ("content-type", "application/json"),
    ("access-control-allow-origin", "https://app.example.com"),
    ("access-control-allow-credentials", "true"),
    ("vary", "Origin"),
    ("x-process-time", "0.00042"),
    (
        "set-cookie",
        "session=6f1c2a9e; Path=/; HttpOnly; SameSite=Lax; Max-Age=1209600",
    ),
];

/// The body of the hello response, as `benches/apps/raw.py` sends it.
pub const HELLO_BODY: &[u8] = b"Hello, world!";

/// Builds a `HeaderMap` from `pairs`, as hyper would parse them.
pub fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

/// Builds ASGI response headers from `pairs`: a list of `(name, value)`
/// tuples of bytes, as Starlette builds them.
pub fn asgi_headers<'py>(py: Python<'py>, pairs: &[(&str, &str)]) -> Bound<'py, PyList> {
    let tuples = pairs.iter().map(|(name, value)| {
        PyTuple::new(
            py,
            [
                PyBytes::new(py, name.as_bytes()),
                PyBytes::new(py, value.as_bytes()),
            ],
        )
        .expect("a tuple of two bytes objects can be built")
    });
    PyList::new(py, tuples).expect("a list of tuples can be built")
}

/// A `GET` from a client on the local network to a server on port 8080,
/// with no request body. Each head made from it copies the headers, as
/// each request brings its own.
#[derive(Debug)]
pub struct RequestTemplate {
    uri: Uri,
    headers: HeaderMap,
}

impl RequestTemplate {
    /// Creates a template for requests to `path_and_query` with `headers`.
    pub fn new(path_and_query: &str, headers: &[(&'static str, &'static str)]) -> Self {
        Self {
            uri: Uri::try_from(path_and_query).expect("valid request target"),
            headers: header_map(headers),
        }
    }

    /// Builds the request head for one exchange.
    pub fn head(&self, exchange: Arc<Exchange>) -> RequestHead {
        RequestHead {
            exchange,
            method: Method::GET,
            uri: self.uri.clone(),
            version: Version::HTTP_11,
            headers: self.headers.clone(),
            client: Some(SocketAddr::from(([192, 168, 1, 23], 52814))),
            server: Some(SocketAddr::from(([192, 168, 1, 10], 8080))),
            scheme: "http",
            header_order: None,
            overrides: None,
        }
    }
}
