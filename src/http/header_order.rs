//! Header order and name case where hyper's `HeaderMap` loses them.
//!
//! A `HeaderMap` keeps the values of one name together, in the order of the
//! name's first appearance, and stores names in lower case. That is the
//! order as sent unless a name repeats with another name in between. For
//! those heads, the request side records the names in order (as hashes, so
//! nothing of the head is copied) and [`NameOrder::arrange`] lists the map
//! in that order. The response side keeps the app's headers as sent and
//! [`restore`] puts them back into the head hyper wrote.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// FNV-1a offset basis and prime (64-bit).
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// Hashes a header name byte by byte, lower-casing as it goes.
#[derive(Debug, Clone, Copy)]
pub struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        Self(FNV_OFFSET)
    }
}

impl NameHasher {
    pub fn write(&mut self, byte: u8) {
        self.0 = (self.0 ^ u64::from(byte.to_ascii_lowercase())).wrapping_mul(FNV_PRIME);
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// Hashes a header name, whatever its case.
pub fn name_hash(name: &[u8]) -> u64 {
    let mut hasher = NameHasher::default();
    name.iter().for_each(|&byte| hasher.write(byte));
    hasher.finish()
}

/// The header names of a request head in the order they were sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameOrder(Box<[u64]>);

impl NameOrder {
    pub fn new(hashes: &[u64]) -> Self {
        Self(hashes.into())
    }

    /// Lists `map` in this order. Each name takes its values in the map's
    /// order; a value the order does not account for (a header set after
    /// parsing) comes last. If two names of the map share a hash, the map's
    /// own order is kept.
    pub fn arrange<'a>(&self, map: &'a HeaderMap) -> Vec<(&'a HeaderName, &'a HeaderValue)> {
        let mut names: Vec<_> = map
            .keys()
            .map(|name| {
                let values = map.get_all(name).iter();
                (name_hash(name.as_str().as_bytes()), name, values)
            })
            .collect();
        let collision = names
            .iter()
            .enumerate()
            .any(|(i, (hash, ..))| names[..i].iter().any(|(other, ..)| other == hash));
        if collision {
            return map.iter().collect();
        }

        let mut arranged = Vec::with_capacity(map.len());
        for hash in self.0.iter() {
            let found = names.iter_mut().find(|(other, ..)| other == hash);
            if let Some((_, name, values)) = found {
                if let Some(value) = values.next() {
                    arranged.push((&**name, value));
                }
            }
        }
        for (_, name, values) in names {
            arranged.extend(values.map(|value| (name, value)));
        }
        arranged
    }
}

/// Appends the headers of `from` whose name passes `keep` to `to`, in
/// order. Iterating a `HeaderMap` by value gives each name once, then
/// `None` for its further values, which this follows.
pub fn append_headers(to: &mut HeaderMap, from: HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
    let mut current = None;
    for (name, value) in from {
        if name.is_some() {
            current = name;
        }
        match &current {
            Some(name) if keep(name) => {
                to.append(name.clone(), value);
            }
            _ => {}
        }
    }
}

/// Response headers as the app sent them, kept when hyper would write them
/// otherwise: a name with upper-case letters, or a name repeated with
/// another name in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentHeaders(pub Vec<(Bytes, HeaderValue)>);

impl SentHeaders {
    /// Starts from the headers sent so far, which were in lower case with
    /// each name's values together, so `map` lists them in the order sent.
    pub fn from_grouped(map: &HeaderMap) -> Self {
        let headers = map.iter().map(|(name, value)| {
            (
                Bytes::copy_from_slice(name.as_str().as_bytes()),
                value.clone(),
            )
        });
        Self(headers.collect())
    }
}

/// Returns the name of the marker header. It is unique to this process, so
/// no body bytes written before a head can be mistaken for it.
pub fn marker_name() -> &'static HeaderName {
    static NAME: OnceLock<HeaderName> = OnceLock::new();
    NAME.get_or_init(|| {
        // RandomState is seeded from the operating system's random source.
        let token = RandomState::new().hash_one(std::process::id());
        let name = format!("x-fastserve-order-{token:016x}");
        HeaderName::from_bytes(name.as_bytes()).expect("hex digits make a valid header name")
    })
}

/// Writes the header lines hyper produced (`lines`, each `name: value\r\n`)
/// to `out` with the app's headers back in the order and case it sent them.
///
/// Lines the app did not send (framing, `date`, `server`) keep their place.
/// The app's headers fill the places hyper gave to app headers, in the app's
/// order. An app header hyper did not write (a `content-length` dropped from
/// a 204) stays out.
pub fn restore(lines: &[u8], sent: &SentHeaders, out: &mut Vec<u8>) {
    let lines: Vec<&[u8]> = lines
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .collect();
    let mut taken = vec![false; lines.len()];
    let mut kept = Vec::with_capacity(sent.0.len());
    for (name, value) in &sent.0 {
        let matches = |line: &&[u8]| {
            line.len() == name.len() + 2 + value.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && &line[name.len()..name.len() + 2] == b": "
                && &line[name.len() + 2..] == value.as_bytes()
        };
        let slot = (0..lines.len()).find(|&i| !taken[i] && matches(&lines[i]));
        if let Some(slot) = slot {
            taken[slot] = true;
            kept.push((name, value));
        }
    }

    let mut kept = kept.into_iter();
    for (line, taken) in lines.iter().zip(taken) {
        let app_header = if taken { kept.next() } else { None };
        match app_header {
            Some((name, value)) => {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
            }
            None => out.extend_from_slice(line),
        }
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn listed(pairs: Vec<(&HeaderName, &HeaderValue)>) -> Vec<(String, String)> {
        pairs
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    fn order(names: &[&str]) -> NameOrder {
        let hashes: Vec<u64> = names.iter().map(|n| name_hash(n.as_bytes())).collect();
        NameOrder::new(&hashes)
    }

    #[test]
    fn append_headers_keeps_repeated_values() {
        let from = map(&[("x-a", "1"), ("x-b", "2"), ("x-a", "3"), ("drop", "4")]);
        let mut to = HeaderMap::new();
        append_headers(&mut to, from, |name| name != "drop");
        let all: Vec<_> = to.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "3"]);
        assert_eq!(to.get("x-b").unwrap(), "2");
        assert!(!to.contains_key("drop"));
    }

    #[test]
    fn hash_ignores_case() {
        assert_eq!(name_hash(b"X-Repeated"), name_hash(b"x-repeated"));
        assert_ne!(name_hash(b"x-a"), name_hash(b"x-b"));
    }

    #[test]
    fn arrange_interleaves_repeated_names() {
        let headers = map(&[
            ("host", "h"),
            ("x-rep", "1"),
            ("x-rep", "3"),
            ("other", "2"),
        ]);
        let arranged = order(&["Host", "X-Rep", "Other", "x-rep"]).arrange(&headers);
        let expected = [
            ("host", "h"),
            ("x-rep", "1"),
            ("other", "2"),
            ("x-rep", "3"),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(listed(arranged), expected);
    }

    #[test]
    fn arrange_keeps_headers_changed_after_parsing() {
        // A proxy rewrite replaced `host` and added `x-added`; `gone` was removed.
        let headers = map(&[("host", "new"), ("a", "1"), ("a", "2"), ("x-added", "y")]);
        let arranged = order(&["a", "gone", "host", "a"]).arrange(&headers);
        let names: Vec<_> = listed(arranged).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "host", "a", "x-added"]);
    }

    #[test]
    fn restore_puts_app_headers_back_in_their_places() {
        let sent = SentHeaders(
            [
                ("X-First", "1"),
                ("set-cookie", "a=1"),
                ("Content-Length", "5"),
                ("set-cookie", "b=2"),
            ]
            .iter()
            .map(|(n, v)| {
                (
                    Bytes::from_static(n.as_bytes()),
                    HeaderValue::from_static(v),
                )
            })
            .collect(),
        );
        let lines = b"x-first: 1\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\
            content-length: 5\r\nserver: fastserve\r\ndate: now\r\n";
        let mut out = Vec::new();
        restore(lines, &sent, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-First: 1\r\nset-cookie: a=1\r\nContent-Length: 5\r\nset-cookie: b=2\r\n\
             server: fastserve\r\ndate: now\r\n"
        );
    }

    #[test]
    fn restore_keeps_hyper_lines_before_app_headers() {
        // hyper joined the app's `Connection: keep-alive` with the request's
        // close, so that app header matches no line and stays out.
        let sent = SentHeaders(vec![
            (
                Bytes::from_static(b"Content-Type"),
                HeaderValue::from_static("t"),
            ),
            (
                Bytes::from_static(b"Connection"),
                HeaderValue::from_static("keep-alive"),
            ),
            (
                Bytes::from_static(b"Set-Cookie"),
                HeaderValue::from_static("a=1"),
            ),
            (
                Bytes::from_static(b"X-Frame-Options"),
                HeaderValue::from_static("DENY"),
            ),
        ]);
        let lines = b"content-type: t\r\nconnection: keep-alive, close\r\n\
            set-cookie: a=1\r\nx-frame-options: DENY\r\n";
        let mut out = Vec::new();
        restore(lines, &sent, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Content-Type: t\r\nconnection: keep-alive, close\r\n\
             Set-Cookie: a=1\r\nX-Frame-Options: DENY\r\n"
        );
    }

    #[test]
    fn restore_leaves_out_what_hyper_dropped() {
        let sent = SentHeaders(vec![
            (
                Bytes::from_static(b"Content-Length"),
                HeaderValue::from_static("3"),
            ),
            (Bytes::from_static(b"X-A"), HeaderValue::from_static("1")),
        ]);
        let mut out = Vec::new();
        restore(b"x-a: 1\r\nserver: s\r\n", &sent, &mut out);
        assert_eq!(out, b"X-A: 1\r\nserver: s\r\n");
    }

    #[test]
    fn marker_is_stable_and_valid() {
        assert_eq!(marker_name(), marker_name());
        assert!(marker_name().as_str().starts_with("x-fastserve-order-"));
    }
}
