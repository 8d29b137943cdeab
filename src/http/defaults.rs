//! Headers the server adds to responses: `server: fastserve` and the
//! `--header NAME:VALUE` options. Each is added only when the response does
//! not already carry a header of that name. uvicorn 0.55 differs here: it
//! sends its default headers in front of the app's, so a name set by both
//! appears twice.

use http::header::{HeaderName, HeaderValue, SERVER};
use http::HeaderMap;

/// Value of the `server` header added when the app sets none.
const SERVER_VALUE: HeaderValue = HeaderValue::from_static("fastserve");

/// A `--header` option that is not `NAME:VALUE` with a valid name and value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid --header {option:?}: expected NAME:VALUE with a valid header name and value, for example \"x-frame-options: DENY\"")]
pub struct InvalidHeaderOption {
    pub option: String,
}

/// Headers added to every response the app does not set them in.
#[derive(Debug, Clone, Default)]
pub struct ResponseDefaults {
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ResponseDefaults {
    /// Builds the list from `--header` options; `server` adds
    /// `server: fastserve` unless a `--header server:...` replaces it.
    pub fn from_options(options: &[String], server: bool) -> Result<Self, InvalidHeaderOption> {
        let mut headers = Vec::with_capacity(options.len() + 1);
        for option in options.iter().filter(|o| !o.trim().is_empty()) {
            headers.push(parse_header_option(option)?);
        }
        if server && !headers.iter().any(|(name, _)| name == SERVER) {
            headers.push((SERVER, SERVER_VALUE));
        }
        Ok(Self { headers })
    }

    /// Adds each default header that `headers` lacks.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers {
            if !headers.contains_key(name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
}

/// Splits `NAME:VALUE` at the first colon; spaces around the value are dropped.
fn parse_header_option(option: &str) -> Result<(HeaderName, HeaderValue), InvalidHeaderOption> {
    let invalid = || InvalidHeaderOption {
        option: option.to_owned(),
    };
    let (name, value) = option.split_once(':').ok_or_else(invalid)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| invalid())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| invalid())?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(options: &[&str], server: bool) -> ResponseDefaults {
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        ResponseDefaults::from_options(&options, server).unwrap()
    }

    #[test]
    fn adds_missing_headers_only() {
        let defaults = defaults(&["X-Frame-Options: DENY", "x-team:core"], true);
        let mut headers = HeaderMap::new();
        headers.insert("x-team", HeaderValue::from_static("app"));
        defaults.apply(&mut headers);
        assert_eq!(headers.get("x-frame-options").unwrap(), "DENY");
        assert_eq!(headers.get_all("x-team").iter().count(), 1);
        assert_eq!(headers.get("x-team").unwrap(), "app");
        assert_eq!(headers.get(SERVER).unwrap(), "fastserve");
    }

    #[test]
    fn server_header_can_be_replaced_or_dropped() {
        let mut headers = HeaderMap::new();
        defaults(&["server: edge"], true).apply(&mut headers);
        assert_eq!(headers.get(SERVER).unwrap(), "edge");
        let mut headers = HeaderMap::new();
        defaults(&[], false).apply(&mut headers);
        assert!(headers.get(SERVER).is_none());
    }

    #[test]
    fn value_may_contain_colons() {
        let mut headers = HeaderMap::new();
        defaults(&["link: <https://a.example/x>; rel=preload"], false).apply(&mut headers);
        assert_eq!(
            headers.get("link").unwrap(),
            "<https://a.example/x>; rel=preload"
        );
    }

    #[test]
    fn malformed_options_are_rejected() {
        for option in ["no-colon", ": value", "bad name: x", "x: a\u{7f}b"] {
            let err = ResponseDefaults::from_options(&[option.to_owned()], true).unwrap_err();
            assert_eq!(err.option, option);
        }
    }
}
