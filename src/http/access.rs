//! The access log: one line per request, on its own tracing target so it can
//! be switched off or routed apart from the server's own lines.

use std::net::SocketAddr;
use std::time::Instant;

use http::{Method, StatusCode, Uri, Version};

/// Tracing target of access log lines.
pub const TARGET: &str = "fastserve::access";

/// What the access line reports about one request, filled in as it goes.
#[derive(Debug)]
pub struct AccessRecord {
    pub client: Option<SocketAddr>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub status: StatusCode,
    pub bytes: u64,
    pub started: Instant,
}

impl AccessRecord {
    /// Writes the line; `complete` is false when the response was cut short.
    pub fn log(self, complete: bool) {
        let client = match self.client {
            Some(addr) => format!("{}:{}", addr.ip().to_canonical(), addr.port()),
            None => "-".to_owned(),
        };
        let target = self
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let version = match self.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        };
        let millis = self.started.elapsed().as_secs_f64() * 1000.0;
        let status = self.status.as_u16();
        let reason = self.status.canonical_reason().unwrap_or("");
        let cut = if complete { "" } else { " (incomplete)" };
        tracing::info!(
            target: TARGET,
            "{client} - \"{} {target} {version}\" {status} {reason}{cut} {} bytes {millis:.1} ms",
            self.method,
            self.bytes,
        );
    }
}
