//! Proxy headers: the client address, scheme, host and path prefix that a
//! trusted reverse proxy reports, applied to a request before its scope is
//! built.
//!
//! By default only `X-Forwarded-For` and `X-Forwarded-Proto` are read, as
//! uvicorn does. `--forwarded-headers` adds `X-Forwarded-Host`,
//! `X-Forwarded-Port`, `X-Forwarded-Prefix` and the RFC 7239 `Forwarded`
//! header. Headers from a peer outside `--forwarded-allow-ips` change
//! nothing, and a value that cannot be read is ignored.

pub mod forwarded;
pub mod trust;

use std::net::SocketAddr;

use http::header::{HeaderName, HOST};
use http::{HeaderMap, HeaderValue};

use forwarded::{HostPort, Node};
pub use trust::{InvalidTrustEntry, TrustedNetworks};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Default of `--forwarded-allow-ips`, as in uvicorn 0.55: the loopback
/// addresses, where a sidecar or local proxy connects from.
pub const DEFAULT_ALLOW_IPS: &str = "127.0.0.1,::1";

/// Default of `--forwarded-headers`: the two headers uvicorn reads.
pub const DEFAULT_HEADERS: &str = "x-forwarded-for,x-forwarded-proto";

/// A name in `--forwarded-headers` that is not a supported header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid --forwarded-headers entry {name:?}: expected forwarded, x-forwarded-for, \
     x-forwarded-proto, x-forwarded-host, x-forwarded-port, x-forwarded-prefix or all"
)]
pub struct InvalidHeaderName {
    pub name: String,
}

/// The set of forwarded headers read from trusted peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSet(u8);

impl HeaderSet {
    pub const X_FORWARDED_FOR: Self = Self(1);
    pub const X_FORWARDED_PROTO: Self = Self(1 << 1);
    pub const X_FORWARDED_HOST: Self = Self(1 << 2);
    pub const X_FORWARDED_PORT: Self = Self(1 << 3);
    pub const X_FORWARDED_PREFIX: Self = Self(1 << 4);
    pub const FORWARDED: Self = Self(1 << 5);
    pub const ALL: Self = Self((1 << 6) - 1);

    /// Parses a comma-separated list of header names (any case), or `all`.
    pub fn parse(list: &str) -> Result<Self, InvalidHeaderName> {
        let mut set = Self(0);
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let flag = match name.to_ascii_lowercase().as_str() {
                "x-forwarded-for" => Self::X_FORWARDED_FOR,
                "x-forwarded-proto" => Self::X_FORWARDED_PROTO,
                "x-forwarded-host" => Self::X_FORWARDED_HOST,
                "x-forwarded-port" => Self::X_FORWARDED_PORT,
                "x-forwarded-prefix" => Self::X_FORWARDED_PREFIX,
                "forwarded" => Self::FORWARDED,
                "all" => Self::ALL,
                _ => {
                    return Err(InvalidHeaderName {
                        name: name.to_owned(),
                    })
                }
            };
            set.0 |= flag.0;
        }
        Ok(set)
    }

    /// Checks whether every header in `other` is in this set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Proxy header settings, part of the validated configuration.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `--proxy-headers` (the default) or `--no-proxy-headers`.
    pub enabled: bool,
    pub trusted: TrustedNetworks,
    pub headers: HeaderSet,
}

/// Scope values that proxy headers set and that the connection alone
/// cannot carry. Boxed into the request head only when present.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overrides {
    /// An obfuscated or `unknown` client from `Forwarded: for=`; the scope's
    /// `client` becomes `[name, 0]`.
    pub client_name: Option<String>,
    /// The `server` the client addressed, from a forwarded host or port.
    pub server: Option<(String, u16)>,
    /// The `root_path` from `X-Forwarded-Prefix`, replacing `--root-path`.
    pub root_path: Option<String>,
}

/// The client, scheme and scope overrides that one request's proxy headers give.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The client address; the peer's own unless a trusted proxy named another.
    pub client: Option<SocketAddr>,
    /// Whether the client used TLS (`https`, `wss`).
    pub secure: bool,
    pub overrides: Option<Box<Overrides>>,
}

impl Resolved {
    /// Returns the `scheme` of an HTTP scope.
    pub fn http_scheme(&self) -> &'static str {
        if self.secure {
            "https"
        } else {
            "http"
        }
    }

    /// Returns the `scheme` of a WebSocket scope.
    // NOTE: unused until the WebSocket handshake builds its scope here.
    #[allow(dead_code)]
    pub fn websocket_scheme(&self) -> &'static str {
        if self.secure {
            "wss"
        } else {
            "ws"
        }
    }
}

impl ProxyConfig {
    /// Resolves the proxy headers of one request from `peer`. Rewrites the
    /// `host` header when a forwarded host or port is accepted, so the app
    /// builds URLs with the name the client used.
    pub fn resolve(&self, peer: Option<SocketAddr>, headers: &mut HeaderMap) -> Resolved {
        let mut resolved = Resolved {
            client: peer,
            secure: false,
            overrides: None,
        };
        if !self.enabled || !self.trusted.trusts_peer(peer) {
            return resolved;
        }

        let mut overrides = Overrides::default();
        let mut host = None;
        let used_forwarded = self.headers.contains(HeaderSet::FORWARDED)
            && self.apply_forwarded(headers, &mut resolved, &mut overrides, &mut host);
        if !used_forwarded {
            self.apply_x_forwarded(headers, &mut resolved, &mut host);
        }

        let port = if !used_forwarded && self.headers.contains(HeaderSet::X_FORWARDED_PORT) {
            forwarded::rightmost(values(headers, &X_FORWARDED_PORT)).and_then(forwarded::parse_port)
        } else {
            None
        };
        if host.is_some() || port.is_some() {
            overrides.server = rewrite_host(headers, host, port, resolved.secure);
        }

        if self.headers.contains(HeaderSet::X_FORWARDED_PREFIX) {
            overrides.root_path = forwarded::rightmost(values(headers, &X_FORWARDED_PREFIX))
                .and_then(forwarded::parse_prefix);
        }

        if overrides != Overrides::default() {
            resolved.overrides = Some(Box::new(overrides));
        }
        resolved
    }

    /// Applies the RFC 7239 `Forwarded` header; returns whether it was
    /// present and readable, in which case it takes precedence over the
    /// `X-Forwarded-*` headers.
    fn apply_forwarded(
        &self,
        headers: &HeaderMap,
        resolved: &mut Resolved,
        overrides: &mut Overrides,
        host: &mut Option<HostPort>,
    ) -> bool {
        if !headers.contains_key(FORWARDED) {
            return false;
        }
        let Some(elements) = forwarded::parse_forwarded(values(headers, &FORWARDED)) else {
            return false;
        };
        let Some(index) = forwarded::client_element(&elements, &self.trusted) else {
            return false;
        };
        let element = &elements[index];
        match &element.for_node {
            Some(Node::Addr(addr)) => resolved.client = Some(*addr),
            Some(Node::Name(name)) => {
                resolved.client = None;
                overrides.client_name = Some(name.clone());
            }
            None => {}
        }
        if let Some(secure) = element.secure {
            resolved.secure = secure;
        }
        host.clone_from(&element.host);
        true
    }

    fn apply_x_forwarded(
        &self,
        headers: &HeaderMap,
        resolved: &mut Resolved,
        host: &mut Option<HostPort>,
    ) {
        if self.headers.contains(HeaderSet::X_FORWARDED_FOR) {
            let client =
                forwarded::client_from_xff(values(headers, &X_FORWARDED_FOR), &self.trusted);
            if client.is_some() {
                resolved.client = client;
            }
        }
        if self.headers.contains(HeaderSet::X_FORWARDED_PROTO) {
            let proto = forwarded::rightmost(values(headers, &X_FORWARDED_PROTO));
            if let Some(secure) = proto.and_then(forwarded::parse_proto) {
                resolved.secure = secure;
            }
        }
        if self.headers.contains(HeaderSet::X_FORWARDED_HOST) {
            *host = forwarded::rightmost(values(headers, &X_FORWARDED_HOST))
                .and_then(forwarded::parse_host);
        }
    }
}

/// Returns the raw bytes of every value of `name`, in order.
fn values<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl DoubleEndedIterator<Item = &'a [u8]> {
    headers.get_all(name).into_iter().map(HeaderValue::as_bytes)
}

/// Sets `host` to the forwarded host and port, and returns the scope's
/// `server` for them. Without a forwarded host the request's own `Host`
/// name is kept and only the port changes. The port is left out of `host`
/// when it is the scheme's default.
fn rewrite_host(
    headers: &mut HeaderMap,
    host: Option<HostPort>,
    port: Option<u16>,
    secure: bool,
) -> Option<(String, u16)> {
    let mut host = match host {
        Some(host) => host,
        None => {
            let own = headers.get(HOST)?.to_str().ok()?;
            forwarded::parse_host(own)?
        }
    };
    if port.is_some() {
        host.port = port;
    }
    let default_port = if secure { 443 } else { 80 };
    let port = host.port.unwrap_or(default_port);
    let text = if port == default_port {
        host.host.clone()
    } else {
        format!("{}:{port}", host.host)
    };
    // parse_host admits only characters that are valid in a header value.
    let value = HeaderValue::from_str(&text).ok()?;
    headers.insert(HOST, value);
    let name = host.host.trim_start_matches('[').trim_end_matches(']');
    Some((name.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(headers: &str, trusted: &str) -> ProxyConfig {
        ProxyConfig {
            enabled: true,
            trusted: TrustedNetworks::parse(trusted).unwrap(),
            headers: HeaderSet::parse(headers).unwrap(),
        }
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn peer(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn header_set_names() {
        let set = HeaderSet::parse("X-Forwarded-For, forwarded").unwrap();
        assert!(set.contains(HeaderSet::X_FORWARDED_FOR));
        assert!(set.contains(HeaderSet::FORWARDED));
        assert!(!set.contains(HeaderSet::X_FORWARDED_PROTO));
        assert!(HeaderSet::parse("all")
            .unwrap()
            .contains(HeaderSet::X_FORWARDED_PREFIX));
        let err = HeaderSet::parse("x-real-ip").unwrap_err();
        assert_eq!(err.name, "x-real-ip");
    }

    #[test]
    fn untrusted_peer_changes_nothing() {
        let cfg = config("all", "127.0.0.1");
        let mut headers = request(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-prefix", "/evil"),
            ("host", "app.local"),
        ]);
        let resolved = cfg.resolve(peer("10.9.9.9:5000"), &mut headers);
        assert_eq!(resolved.client, peer("10.9.9.9:5000"));
        assert!(!resolved.secure);
        assert_eq!(resolved.overrides, None);
        assert_eq!(headers.get(HOST).unwrap(), "app.local");
    }

    #[test]
    fn disabled_changes_nothing() {
        let mut cfg = config("all", "*");
        cfg.enabled = false;
        let mut headers = request(&[("x-forwarded-for", "1.2.3.4")]);
        let resolved = cfg.resolve(peer("127.0.0.1:1"), &mut headers);
        assert_eq!(resolved.client, peer("127.0.0.1:1"));
    }

    #[test]
    fn default_set_reads_for_and_proto_only() {
        let cfg = config(DEFAULT_HEADERS, "127.0.0.1");
        let mut headers = request(&[
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
            ("forwarded", "for=198.51.100.1"),
            ("host", "app.local"),
        ]);
        let resolved = cfg.resolve(peer("127.0.0.1:40000"), &mut headers);
        assert_eq!(resolved.client, peer("203.0.113.5:0"));
        assert_eq!(resolved.http_scheme(), "https");
        assert_eq!(resolved.websocket_scheme(), "wss");
        assert_eq!(resolved.overrides, None);
        assert_eq!(headers.get(HOST).unwrap(), "app.local");
    }

    #[test]
    fn forwarded_takes_precedence_when_enabled() {
        let cfg = config("all", "127.0.0.1");
        let mut headers = request(&[
            ("x-forwarded-for", "203.0.113.5"),
            (
                "forwarded",
                "for=\"[2001:db8::1]:4711\";proto=https;host=shop.example",
            ),
            ("host", "app.local"),
        ]);
        let resolved = cfg.resolve(peer("127.0.0.1:40000"), &mut headers);
        assert_eq!(resolved.client, peer("[2001:db8::1]:4711"));
        assert!(resolved.secure);
        let overrides = resolved.overrides.unwrap();
        assert_eq!(overrides.server, Some(("shop.example".into(), 443)));
        assert_eq!(headers.get(HOST).unwrap(), "shop.example");
    }

    #[test]
    fn obfuscated_forwarded_client_becomes_a_name() {
        let cfg = config("forwarded", "127.0.0.1");
        let mut headers = request(&[("forwarded", "for=_hidden")]);
        let resolved = cfg.resolve(peer("127.0.0.1:1"), &mut headers);
        assert_eq!(resolved.client, None);
        let overrides = resolved.overrides.unwrap();
        assert_eq!(overrides.client_name.as_deref(), Some("_hidden"));
    }

    #[test]
    fn malformed_forwarded_falls_back_to_x_forwarded() {
        let cfg = config("all", "127.0.0.1");
        let mut headers = request(&[
            ("forwarded", "for=\"unterminated"),
            ("x-forwarded-for", "203.0.113.5"),
        ]);
        let resolved = cfg.resolve(peer("127.0.0.1:1"), &mut headers);
        assert_eq!(resolved.client, peer("203.0.113.5:0"));
    }

    #[test]
    fn forwarded_host_and_port_set_host_and_server() {
        let cfg = config("all", "127.0.0.1");
        let mut headers = request(&[
            ("x-forwarded-host", "public.example"),
            ("x-forwarded-port", "8443"),
            ("x-forwarded-proto", "https"),
            ("host", "app.local:8080"),
        ]);
        let resolved = cfg.resolve(peer("127.0.0.1:1"), &mut headers);
        assert_eq!(headers.get(HOST).unwrap(), "public.example:8443");
        let overrides = resolved.overrides.unwrap();
        assert_eq!(overrides.server, Some(("public.example".into(), 8443)));
    }

    #[test]
    fn forwarded_port_alone_keeps_host_name() {
        let cfg = config("x-forwarded-port", "127.0.0.1");
        let mut headers = request(&[("x-forwarded-port", "80"), ("host", "app.local:8080")]);
        let resolved = cfg.resolve(peer("127.0.0.1:1"), &mut headers);
        assert_eq!(headers.get(HOST).unwrap(), "app.local");
        assert_eq!(
            resolved.overrides.unwrap().server,
            Some(("app.local".into(), 80))
        );
    }

    #[test]
    fn invalid_forwarded_host_is_ignored() {
        let cfg = config("all", "127.0.0.1");
        let mut headers = request(&[("x-forwarded-host", "a b"), ("host", "app.local")]);
        let resolved = cfg.resolve(peer("127.0.0.1:1"), &mut headers);
        assert_eq!(resolved.overrides, None);
        assert_eq!(headers.get(HOST).unwrap(), "app.local");
    }

    #[test]
    fn prefix_sets_root_path() {
        let cfg = config("x-forwarded-prefix", "127.0.0.1");
        let mut headers = request(&[("x-forwarded-prefix", "/svc/")]);
        let resolved = cfg.resolve(peer("127.0.0.1:1"), &mut headers);
        assert_eq!(
            resolved.overrides.unwrap().root_path.as_deref(),
            Some("/svc")
        );
    }

    #[test]
    fn unix_socket_peer_is_trusted() {
        let cfg = config(DEFAULT_HEADERS, "127.0.0.1");
        let mut headers = request(&[("x-forwarded-for", "203.0.113.5")]);
        let resolved = cfg.resolve(None, &mut headers);
        assert_eq!(resolved.client, peer("203.0.113.5:0"));
    }
}
