//! ASGI response headers, an iterable of `[name, value]` byte pairs, in
//! the form hyper writes, plus the headers as sent when that form would
//! change their order or the case of a name.

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::HeaderMap;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::http::header_order::SentHeaders;

/// Converts the `headers` of the ASGI message `kind`. The second value is
/// `Some` when a name has upper-case letters or repeats with another name
/// in between, which the `HeaderMap` cannot show.
pub fn convert_headers(
    headers: &Bound<'_, PyAny>,
    kind: &str,
) -> PyResult<(HeaderMap, Option<SentHeaders>)> {
    let mut map = HeaderMap::new();
    let mut sent: Option<SentHeaders> = None;
    let mut previous: Option<Bound<'_, PyBytes>> = None;
    for pair in headers.try_iter()? {
        let pair = pair?;
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "invalid header in {kind}: expected a [name, value] pair"
            ))
        })?;
        let (Ok(name), Ok(value)) = (name.cast_into::<PyBytes>(), value.cast::<PyBytes>()) else {
            return Err(PyTypeError::new_err(format!(
                "invalid header in {kind}: name and value must be bytes"
            )));
        };
        let raw_name = name.as_bytes();
        let header_name = HeaderName::from_bytes(raw_name).map_err(|_| {
            PyRuntimeError::new_err(format!(
                "invalid header name {:?} in {kind}",
                String::from_utf8_lossy(raw_name)
            ))
        })?;
        let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
            PyRuntimeError::new_err(format!(
                "invalid value for header {header_name:?} in {kind}: control characters are not allowed"
            ))
        })?;
        // The response is framed by it, so a value hyper cannot use is an
        // error of the app, not a header to pass on.
        if header_name == CONTENT_LENGTH && !is_length(value.as_bytes()) {
            return Err(PyRuntimeError::new_err(format!(
                "invalid content-length {:?} in {kind}: expected a number of bytes",
                String::from_utf8_lossy(value.as_bytes())
            )));
        }

        if let Some(sent) = &mut sent {
            sent.0
                .push((bytes::Bytes::copy_from_slice(raw_name), value.clone()));
            map.append(header_name, value);
        } else {
            let follows_itself = previous
                .as_ref()
                .is_some_and(|previous| previous.as_bytes().eq_ignore_ascii_case(raw_name));
            // The headers so far are in lower case and grouped, so the map
            // lists them as sent. From here on they are kept as sent too.
            let repeats_earlier = !follows_itself && map.contains_key(&header_name);
            if repeats_earlier || raw_name.iter().any(u8::is_ascii_uppercase) {
                let mut kept = SentHeaders::from_grouped(&map);
                kept.0
                    .push((bytes::Bytes::copy_from_slice(raw_name), value.clone()));
                sent = Some(kept);
            }
            map.append(header_name, value);
        }
        previous = Some(name);
    }
    Ok((map, sent))
}

/// Digits of the longest length accepted; every 19-digit number fits a u64.
const MAX_LENGTH_DIGITS: usize = 19;

/// Checks that `value` is a decimal length, optionally with spaces around.
fn is_length(value: &[u8]) -> bool {
    let digits = value.trim_ascii();
    !digits.is_empty() && digits.len() <= MAX_LENGTH_DIGITS && digits.iter().all(u8::is_ascii_digit)
}
