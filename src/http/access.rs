//! The access log: one line per request, on its own tracing target so it can
//! be switched off or routed apart from the server's own lines.
//!
//! The text line reads like uvicorn's, with the response size and duration
//! added. The JSON line is one object per request with the fields in
//! [`AccessRecord::json_line`], including a request id that the response
//! carries as `x-request-id`.

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// Tracing target of access log lines.
pub const TARGET: &str = "fastserve::access";

/// Request and response header carrying the request id.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest `X-Request-ID` taken from a request; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// What the access line reports about one request, filled in as it goes.
#[derive(Debug)]
pub struct AccessRecord {
    pub client: Option<SocketAddr>,
    /// A client known only by name (an obfuscated `Forwarded: for=`).
    pub client_name: Option<String>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub status: StatusCode,
    pub bytes: u64,
    pub started: Instant,
    pub user_agent: Option<HeaderValue>,
    /// Set for JSON lines only.
    pub request_id: Option<HeaderValue>,
}

impl AccessRecord {
    /// Writes the line; `complete` is false when the response was cut short.
    pub fn log(self, complete: bool) {
        let line = match &self.request_id {
            Some(_) => self.json_line(complete),
            None => self.text_line(complete),
        };
        tracing::info!(target: TARGET, "{line}");
    }

    fn client_text(&self) -> String {
        match (&self.client, &self.client_name) {
            (Some(addr), _) => format!("{}:{}", addr.ip().to_canonical(), addr.port()),
            (None, Some(name)) => format!("{name}:0"),
            (None, None) => "-".to_owned(),
        }
    }

    fn version_text(&self) -> &'static str {
        match self.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        }
    }

    fn text_line(&self, complete: bool) -> String {
        let target = self
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        let millis = self.started.elapsed().as_secs_f64() * 1000.0;
        let status = self.status.as_u16();
        let reason = self.status.canonical_reason().unwrap_or("");
        let cut = if complete { "" } else { " (incomplete)" };
        format!(
            "{} - \"{} {target} {}\" {status} {reason}{cut} {} bytes {millis:.1} ms",
            self.client_text(),
            self.method,
            self.version_text(),
            self.bytes,
        )
    }

    /// Formats one JSON object: `time` (RFC 3339, UTC), `client`, `method`, `path`,
    /// `query`, `http_version`, `status`, `bytes` (response body bytes
    /// sent), `duration_ms`, `user_agent` (null when absent), `request_id`
    /// and `complete`.
    fn json_line(&self, complete: bool) -> String {
        let millis = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut line = String::with_capacity(320);
        line.push_str("{\"time\":");
        push_json_str(&mut line, &rfc3339_now());
        line.push_str(",\"client\":");
        push_json_str(&mut line, &self.client_text());
        line.push_str(",\"method\":");
        push_json_str(&mut line, self.method.as_str());
        line.push_str(",\"path\":");
        push_json_str(&mut line, self.uri.path());
        line.push_str(",\"query\":");
        push_json_str(&mut line, self.uri.query().unwrap_or(""));
        line.push_str(",\"http_version\":");
        push_json_str(&mut line, &self.version_text()[5..]);
        let _ = write!(
            line,
            ",\"status\":{},\"bytes\":{},\"duration_ms\":{millis:.3},\"user_agent\":",
            self.status.as_u16(),
            self.bytes
        );
        match &self.user_agent {
            Some(agent) => push_json_str(&mut line, &String::from_utf8_lossy(agent.as_bytes())),
            None => line.push_str("null"),
        }
        line.push_str(",\"request_id\":");
        let id = self.request_id.as_ref().map(HeaderValue::as_bytes);
        push_json_str(&mut line, &String::from_utf8_lossy(id.unwrap_or_default()));
        let _ = write!(line, ",\"complete\":{complete}}}");
        line
    }
}

/// Returns the request id: the client's `X-Request-ID` when it is 1 to 128
/// characters of letters, digits and `-_.:+/=`, else a new random one.
pub fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(&b);
    if let Some(value) = headers.get(X_REQUEST_ID) {
        let bytes = value.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(|b| allowed(*b))
        {
            return value.clone();
        }
    }
    let text = format!("{:016x}", next_random());
    // Sixteen hex digits are always a valid header value.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0"))
}

thread_local! {
    /// wyrand state, seeded per thread from the OS-seeded hasher keys of
    /// `RandomState`, so ids differ across threads and processes.
    static RANDOM_STATE: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(std::process::id().into());
        hasher.finish()
    });
}

/// Returns the next value of wyrand: fast, not cryptographic. Request ids need to
/// be unique in practice, not unguessable.
fn next_random() -> u64 {
    RANDOM_STATE.with(|state| {
        let next = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(next);
        let product = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
        ((product >> 64) ^ product) as u64
    })
}

/// Appends `text` as a JSON string literal.
fn push_json_str(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Formats the current time as `2024-05-01T12:34:56.789Z`.
fn rfc3339_now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since_epoch.as_secs(), since_epoch.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let day_secs = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date, with
/// Howard Hinnant's `civil_from_days` algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord {
        AccessRecord {
            client: Some("203.0.113.9:4242".parse().unwrap()),
            client_name: None,
            method: Method::POST,
            uri: "/items/a%20b?x=1&y=%22".parse().unwrap(),
            version: Version::HTTP_11,
            status: StatusCode::CREATED,
            bytes: 13,
            started: Instant::now(),
            user_agent: Some(HeaderValue::from_static("curl/8.0 \"test\"")),
            request_id: Some(HeaderValue::from_static("abc-123")),
        }
    }

    #[test]
    fn text_line_is_uvicorn_like() {
        let line = record().text_line(true);
        assert!(
            line.starts_with(
                "203.0.113.9:4242 - \"POST /items/a%20b?x=1&y=%22 HTTP/1.1\" 201 Created 13 bytes "
            ),
            "{line}"
        );
        assert!(line.ends_with(" ms"), "{line}");
    }

    #[test]
    fn json_line_escapes_and_has_every_field() {
        let line = record().json_line(false);
        for field in [
            "\"client\":\"203.0.113.9:4242\"",
            "\"method\":\"POST\"",
            "\"path\":\"/items/a%20b\"",
            "\"query\":\"x=1&y=%22\"",
            "\"http_version\":\"1.1\"",
            "\"status\":201",
            "\"bytes\":13",
            "\"duration_ms\":",
            "\"user_agent\":\"curl/8.0 \\\"test\\\"\"",
            "\"request_id\":\"abc-123\"",
            "\"complete\":false",
        ] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
        assert!(
            line.starts_with("{\"time\":\"") && line.ends_with('}'),
            "{line}"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\u{1}b\n");
        assert_eq!(out, "\"a\\u0001b\\n\"");
    }

    #[test]
    fn dates_convert() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_714_566_896, 789), "2024-05-01T12:34:56.789Z");
    }

    #[test]
    fn sane_request_id_is_kept_and_others_replaced() {
        let mut headers = http::HeaderMap::new();
        headers.insert(X_REQUEST_ID, HeaderValue::from_static("req-42.a:b"));
        assert_eq!(request_id(&headers), "req-42.a:b");
        for bad in ["", "has space", "semi;colon"] {
            headers.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = request_id(&headers);
            assert_eq!(id.len(), 16, "{bad:?} was kept");
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        }
        headers.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"a".repeat(129)).unwrap(),
        );
        assert_eq!(request_id(&headers).len(), 16);
    }

    #[test]
    fn generated_ids_differ() {
        let headers = http::HeaderMap::new();
        assert_ne!(request_id(&headers), request_id(&headers));
    }
}
