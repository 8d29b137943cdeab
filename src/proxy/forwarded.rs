//! Parsing of forwarded header values: `X-Forwarded-For` lists, the RFC 7239
//! `Forwarded` header, and the host, port and prefix a proxy reports.
//!
//! Every parser returns `None` for a value it cannot read completely, and
//! the caller then ignores the header: a malformed value never changes the
//! scope and never fails the request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::trust::TrustedNetworks;

/// A node named in `for=` of a `Forwarded` element (RFC 7239 §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// An IP address, with port 0 when none or an obfuscated port was given.
    Addr(SocketAddr),
    /// `unknown` or an obfuscated identifier such as `_hidden`.
    Name(String),
}

/// One element of a `Forwarded` header: what one proxy saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Element {
    pub for_node: Option<Node>,
    /// `proto=https` (true) or `proto=http` (false); other values are ignored.
    pub secure: Option<bool>,
    /// `host=`, already checked by [`parse_host`].
    pub host: Option<HostPort>,
}

/// A host name or address with an optional port, as sent in `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The name or address; IPv6 addresses keep their brackets.
    pub host: String,
    pub port: Option<u16>,
}

/// Parses one `X-Forwarded-For` entry: an IPv4 or IPv6 address, optionally
/// with a port (`1.2.3.4:80`, `[2001:db8::1]:80`). Port 0 means no port.
pub fn parse_xff_entry(entry: &str) -> Option<SocketAddr> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = addr.parse().ok()?;
        let port = match after {
            "" => 0,
            _ => after.strip_prefix(':')?.parse().ok()?,
        };
        return Some(SocketAddr::new(IpAddr::V6(ip), port));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    // IPv4 with a port; bare IPv6 was handled above, so one colon is a port.
    entry.parse::<SocketAddr>().ok().filter(SocketAddr::is_ipv4)
}

/// Walks `X-Forwarded-For` values from the right and returns the client:
/// the first hop that is not trusted, or the leftmost when every hop is.
/// Several header lines count as one list in their order. Returns `None`
/// when the list is empty or the client entry is not an address.
pub fn client_from_xff<'a, I>(values: I, trusted: &TrustedNetworks) -> Option<SocketAddr>
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    let mut leftmost = None;
    for value in values.rev() {
        // Non-ASCII bytes make the list unreadable as a whole.
        let text = std::str::from_utf8(value).ok().filter(|t| t.is_ascii())?;
        for entry in text.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
            let addr = parse_xff_entry(entry)?;
            if !trusted.contains(addr.ip()) {
                return Some(addr);
            }
            leftmost = Some(addr);
        }
    }
    leftmost
}

/// Returns the last comma-separated item of the last value, trimmed. The
/// nearest proxy set it, so a client-supplied value to its left never wins.
pub fn rightmost<'a, I>(mut values: I) -> Option<&'a str>
where
    I: DoubleEndedIterator<Item = &'a [u8]>,
{
    let value = values.next_back()?;
    let text = std::str::from_utf8(value).ok().filter(|t| t.is_ascii())?;
    let item = text.rsplit(',').next()?.trim();
    (!item.is_empty()).then_some(item)
}

/// Reads a protocol name: `https`/`wss` are secure, `http`/`ws` are not.
pub fn parse_proto(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "https" | "wss" => Some(true),
        "http" | "ws" => Some(false),
        _ => None,
    }
}

/// Checks a host as sent in `Host` or `X-Forwarded-Host`: a DNS name or IPv4
/// address (letters, digits, `.`, `-`, `_`) or a bracketed IPv6 address,
/// with an optional port.
pub fn parse_host(value: &str) -> Option<HostPort> {
    let (host, port) = if value.starts_with('[') {
        let end = value.find(']')?;
        value[1..end].parse::<Ipv6Addr>().ok()?;
        let (host, rest) = value.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        }
    };
    let name_ok = host.starts_with('[')
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'));
    if !name_ok {
        return None;
    }
    let port = match port {
        None => None,
        Some(port) => Some(parse_port(port)?),
    };
    Some(HostPort {
        host: host.to_ascii_lowercase(),
        port,
    })
}

/// Reads a port number from 1 to 65535.
pub fn parse_port(value: &str) -> Option<u16> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|port| *port != 0)
}

/// Checks a path prefix from `X-Forwarded-Prefix` and returns it without a
/// trailing slash (`/` becomes empty). It must start with one `/` (a leading
/// `//` would read as another host in a relative redirect) and contain only
/// characters allowed in a URL path.
pub fn parse_prefix(value: &str) -> Option<String> {
    if !value.starts_with('/') || value.starts_with("//") {
        return None;
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@%".contains(&b);
    if !value.bytes().all(allowed) {
        return None;
    }
    Some(value.trim_end_matches('/').to_owned())
}

/// Parses `Forwarded` header values (RFC 7239 §4) into their elements, left
/// to right. Several header lines count as one list. Returns `None` if any
/// part is malformed, so a half-read header never takes effect.
pub fn parse_forwarded<'a, I>(values: I) -> Option<Vec<Element>>
where
    I: Iterator<Item = &'a [u8]>,
{
    let mut elements = Vec::new();
    for value in values {
        let text = std::str::from_utf8(value).ok().filter(|t| t.is_ascii())?;
        let mut parser = Parser { rest: text };
        loop {
            parser.skip_spaces();
            if parser.rest.is_empty() {
                break;
            }
            elements.push(parser.element()?);
            parser.skip_spaces();
            match parser.rest.as_bytes().first() {
                None => break,
                Some(b',') => parser.rest = &parser.rest[1..],
                Some(_) => return None,
            }
        }
    }
    Some(elements)
}

/// A cursor over one `Forwarded` header value.
struct Parser<'a> {
    rest: &'a str,
}

impl Parser<'_> {
    fn skip_spaces(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    /// Parses one element: `pair *( ";" pair )`, where a pair is `token=value`.
    fn element(&mut self) -> Option<Element> {
        let mut element = Element::default();
        loop {
            self.skip_spaces();
            let name = self.token()?.to_ascii_lowercase();
            self.rest = self.rest.strip_prefix('=')?;
            let value = match self.rest.strip_prefix('"') {
                Some(rest) => {
                    self.rest = rest;
                    self.quoted()?
                }
                None => self.token()?.to_owned(),
            };
            match name.as_str() {
                "for" => element.for_node = Some(parse_node(&value)?),
                "proto" => element.secure = parse_proto(&value),
                "host" => element.host = Some(parse_host(&value)?),
                // `by` and extensions carry nothing the scope uses.
                _ => {}
            }
            self.skip_spaces();
            match self.rest.strip_prefix(';') {
                Some(rest) => self.rest = rest,
                None => return Some(element),
            }
        }
    }

    /// Reads an RFC 9110 token of at least one character.
    fn token(&mut self) -> Option<&str> {
        let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:[]".contains(c);
        let end = self.rest.find(|c| !is_tchar(c)).unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (token, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(token)
    }

    /// Reads the rest of a quoted string after its opening quote, unescaped.
    fn quoted(&mut self) -> Option<String> {
        let mut text = String::new();
        let mut chars = self.rest.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &self.rest[index + 1..];
                    return Some(text);
                }
                '\\' => text.push(chars.next()?.1),
                c if c.is_ascii_control() && c != '\t' => return None,
                c => text.push(c),
            }
        }
        None
    }
}

/// Parses a `for=` node: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`,
/// `unknown` or an obfuscated `_name`, with an optional obfuscated `:_port`.
fn parse_node(value: &str) -> Option<Node> {
    let obfuscated = |text: &str| {
        text.len() > 1
            && text.starts_with('_')
            && text[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    };

    // The node name, and the port text when there is one.
    let (name, port) = if let Some(rest) = value.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = addr.parse().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (Err(ip), port)
    } else if let Ok(ip) = value.parse::<Ipv6Addr>() {
        // Unbracketed IPv6 breaks RFC 7239 but is unambiguous without a port.
        (Err(ip), None)
    } else {
        match value.split_once(':') {
            Some((name, port)) => (Ok(name), Some(port)),
            None => (Ok(value), None),
        }
    };

    let port = match port {
        None => 0,
        Some(port) if obfuscated(port) => 0,
        Some(port) => parse_port(port)?,
    };
    match name {
        Err(ip) => Some(Node::Addr(SocketAddr::new(IpAddr::V6(ip), port))),
        Ok(name) => {
            if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
                return Some(Node::Addr(SocketAddr::new(IpAddr::V4(ip), port)));
            }
            if name.eq_ignore_ascii_case("unknown") || obfuscated(name) {
                return Some(Node::Name(name.to_owned()));
            }
            None
        }
    }
}

/// Walks `Forwarded` elements from the right like [`client_from_xff`] and
/// returns the index of the element that names the client: the first whose
/// `for` is not a trusted address, or the leftmost when all are. That
/// element was written by a trusted proxy, so its `proto` and `host` hold.
pub fn client_element(elements: &[Element], trusted: &TrustedNetworks) -> Option<usize> {
    for (index, element) in elements.iter().enumerate().rev() {
        match &element.for_node {
            Some(Node::Addr(addr)) if trusted.contains(addr.ip()) => continue,
            _ => return Some(index),
        }
    }
    (!elements.is_empty()).then_some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &str) -> TrustedNetworks {
        TrustedNetworks::parse(list).unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn xff(values: &[&str], list: &str) -> Option<SocketAddr> {
        let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        client_from_xff(values.into_iter(), &trusted(list))
    }

    #[test]
    fn xff_entries_with_and_without_ports() {
        assert_eq!(parse_xff_entry("1.2.3.4"), Some(addr("1.2.3.4:0")));
        assert_eq!(parse_xff_entry("1.2.3.4:5678"), Some(addr("1.2.3.4:5678")));
        assert_eq!(
            parse_xff_entry("2001:db8::1"),
            Some(addr("[2001:db8::1]:0"))
        );
        assert_eq!(
            parse_xff_entry("[2001:db8::1]"),
            Some(addr("[2001:db8::1]:0"))
        );
        assert_eq!(
            parse_xff_entry("[2001:db8::1]:443"),
            Some(addr("[2001:db8::1]:443"))
        );
        for bad in [
            "unknown",
            "1.2.3.4:x",
            "[::1",
            "[::1]x",
            "1.2.3.4:99999",
            "",
        ] {
            assert_eq!(parse_xff_entry(bad), None, "{bad}");
        }
    }

    #[test]
    fn xff_first_untrusted_from_right_is_client() {
        let got = xff(&["203.0.113.7, 10.0.0.5, 10.0.0.6"], "10.0.0.0/8");
        assert_eq!(got, Some(addr("203.0.113.7:0")));
        let got = xff(&["198.51.100.1, 203.0.113.7, 10.0.0.5"], "10.0.0.0/8");
        assert_eq!(got, Some(addr("203.0.113.7:0")), "spoofed left entry won");
    }

    #[test]
    fn xff_all_trusted_gives_leftmost() {
        let got = xff(&["10.0.0.1, 10.0.0.2"], "10.0.0.0/8");
        assert_eq!(got, Some(addr("10.0.0.1:0")));
        assert_eq!(xff(&["1.1.1.1, 2.2.2.2"], "*"), Some(addr("1.1.1.1:0")));
    }

    #[test]
    fn xff_repeated_lines_join_in_order() {
        let got = xff(&["198.51.100.1", "203.0.113.7, 10.0.0.5"], "10.0.0.0/8");
        assert_eq!(got, Some(addr("203.0.113.7:0")));
        let got = xff(&["10.0.0.9", "10.0.0.5"], "10.0.0.0/8");
        assert_eq!(got, Some(addr("10.0.0.9:0")));
    }

    #[test]
    fn xff_malformed_or_empty_is_ignored() {
        assert_eq!(xff(&[""], "127.0.0.1"), None);
        assert_eq!(xff(&[" , "], "127.0.0.1"), None);
        assert_eq!(xff(&["garbage"], "127.0.0.1"), None);
        assert_eq!(xff(&["1.2.3.4, garbage"], "127.0.0.1"), None);
        assert_eq!(xff(&["caf\u{e9}"], "127.0.0.1"), None);
        let latin1: &[u8] = b"1.2.3.4\xff";
        let got = client_from_xff([latin1].into_iter(), &trusted("127.0.0.1"));
        assert_eq!(got, None);
    }

    #[test]
    fn xff_ipv6_client() {
        let got = xff(&["2001:db8::7, ::1"], "::1");
        assert_eq!(got, Some(addr("[2001:db8::7]:0")));
    }

    #[test]
    fn rightmost_value_wins() {
        let values: [&[u8]; 2] = [b"https", b"http, https"];
        assert_eq!(rightmost(values.into_iter()), Some("https"));
        let values: [&[u8]; 1] = [b"https, http"];
        assert_eq!(rightmost(values.into_iter()), Some("http"));
        let values: [&[u8]; 1] = [b"  "];
        assert_eq!(rightmost(values.into_iter()), None);
    }

    #[test]
    fn proto_names() {
        assert_eq!(parse_proto("HTTPS"), Some(true));
        assert_eq!(parse_proto("wss"), Some(true));
        assert_eq!(parse_proto("http"), Some(false));
        assert_eq!(parse_proto("ftp"), None);
    }

    #[test]
    fn hosts_and_ports() {
        let host = parse_host("Example.com:8443").unwrap();
        assert_eq!(host.host, "example.com");
        assert_eq!(host.port, Some(8443));
        let host = parse_host("[2001:db8::1]:80").unwrap();
        assert_eq!(host.host, "[2001:db8::1]");
        assert_eq!(host.port, Some(80));
        assert_eq!(parse_host("[2001:db8::1]").unwrap().port, None);
        for bad in [
            "",
            "a b",
            "evil.com/x",
            "h:0",
            "h:x",
            "[::1",
            "[zz]",
            "a@b",
            "h:1:2",
        ] {
            assert_eq!(parse_host(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        assert_eq!(parse_prefix("/api/").as_deref(), Some("/api"));
        assert_eq!(parse_prefix("/").as_deref(), Some(""));
        assert_eq!(parse_prefix("/a/b-c_d").as_deref(), Some("/a/b-c_d"));
        for bad in ["api", "//evil.com", "/a b", "/a\"", "/é"] {
            assert_eq!(parse_prefix(bad), None, "{bad}");
        }
    }

    fn forwarded(values: &[&str]) -> Option<Vec<Element>> {
        parse_forwarded(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn forwarded_rfc_examples() {
        let elements = forwarded(&["for=\"_gazonk\""]).unwrap();
        assert_eq!(elements[0].for_node, Some(Node::Name("_gazonk".into())));

        let elements = forwarded(&["For=\"[2001:db8:cafe::17]:4711\""]).unwrap();
        assert_eq!(
            elements[0].for_node,
            Some(Node::Addr(addr("[2001:db8:cafe::17]:4711")))
        );

        let elements = forwarded(&["for=192.0.2.60;proto=http;by=203.0.113.43"]).unwrap();
        assert_eq!(elements[0].for_node, Some(Node::Addr(addr("192.0.2.60:0"))));
        assert_eq!(elements[0].secure, Some(false));

        let elements = forwarded(&["for=192.0.2.43, for=198.51.100.17"]).unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(
            elements[1].for_node,
            Some(Node::Addr(addr("198.51.100.17:0")))
        );
    }

    #[test]
    fn forwarded_host_proto_and_obfuscated_port() {
        let elements = forwarded(&["for=\"192.0.2.1:_p1\";host=\"a.example:8443\";proto=https"]);
        let element = &elements.unwrap()[0];
        assert_eq!(element.for_node, Some(Node::Addr(addr("192.0.2.1:0"))));
        assert_eq!(element.secure, Some(true));
        let host = element.host.as_ref().unwrap();
        assert_eq!((host.host.as_str(), host.port), ("a.example", Some(8443)));
        let elements = forwarded(&["for=unknown"]).unwrap();
        assert_eq!(elements[0].for_node, Some(Node::Name("unknown".into())));
    }

    #[test]
    fn forwarded_repeated_lines_are_one_list() {
        let elements = forwarded(&["for=1.1.1.1", "for=2.2.2.2;proto=https"]).unwrap();
        assert_eq!(elements.len(), 2);
        assert_eq!(elements[1].secure, Some(true));
    }

    #[test]
    fn forwarded_malformed_is_rejected() {
        for bad in [
            "for",
            "for=",
            "for=\"1.2.3.4",
            "for=1.2.3.4 junk",
            "for=bogus",
            "for=\"[::1\"",
            "host=\"a b\"",
            "for=1.2.3.4;;",
            "for=caf\u{e9}",
        ] {
            assert_eq!(forwarded(&[bad]), None, "{bad}");
        }
    }

    #[test]
    fn forwarded_walk_stops_at_first_untrusted() {
        let elements =
            forwarded(&["for=198.51.100.1;proto=http, for=203.0.113.7;proto=https, for=10.0.0.2"])
                .unwrap();
        assert_eq!(client_element(&elements, &trusted("10.0.0.0/8")), Some(1));
        let elements = forwarded(&["for=10.0.0.1, for=10.0.0.2"]).unwrap();
        assert_eq!(client_element(&elements, &trusted("10.0.0.0/8")), Some(0));
        let elements = forwarded(&["for=_hidden, for=10.0.0.2"]).unwrap();
        assert_eq!(client_element(&elements, &trusted("10.0.0.0/8")), Some(0));
        assert_eq!(client_element(&[], &trusted("*")), None);
    }
}
