//! Conversion between ASGI `websocket.*` message dicts and the session's
//! Rust types, with errors that name the message and the invalid key.

use http::{HeaderMap, StatusCode};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::headers::convert_headers;
use crate::bridge::session::{Handshake, Message, Outgoing, Received, CLOSE_NORMAL};

/// Parses `websocket.accept` into the handshake response.
pub fn parse_accept(message: &Bound<'_, PyDict>) -> PyResult<Handshake> {
    let py = message.py();
    let subprotocol = match message.get_item(intern!(py, "subprotocol"))? {
        Some(value) if !value.is_none() => Some(value.extract::<String>().map_err(|_| {
            PyTypeError::new_err("invalid websocket.accept: 'subprotocol' must be a str")
        })?),
        _ => None,
    };
    // NOTE: the handshake and denial heads go out in hyper's grouped order
    // and lower case; only `http.response.start` heads are restored.
    let headers = match message.get_item(intern!(py, "headers"))? {
        Some(headers) => convert_headers(&headers, "websocket.accept")?.0,
        None => HeaderMap::new(),
    };
    Ok(Handshake::Accept {
        subprotocol,
        headers,
    })
}

/// Parses `websocket.http.response.start` into its status and headers.
pub fn parse_denial_start(message: &Bound<'_, PyDict>) -> PyResult<(StatusCode, HeaderMap)> {
    let py = message.py();
    let kind = "websocket.http.response.start";
    let status = message
        .get_item(intern!(py, "status"))?
        .ok_or_else(|| PyRuntimeError::new_err(format!("invalid {kind}: 'status' is missing")))?;
    let status = status
        .extract::<u16>()
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| {
            PyTypeError::new_err(format!(
                "invalid {kind}: 'status' must be an int from 100 to 999"
            ))
        })?;
    let headers = match message.get_item(intern!(py, "headers"))? {
        Some(headers) => convert_headers(&headers, kind)?.0,
        None => HeaderMap::new(),
    };
    Ok((status, headers))
}

/// Parses `websocket.http.response.body` into its body and `more_body`.
pub fn parse_denial_body(message: &Bound<'_, PyDict>) -> PyResult<(Vec<u8>, bool)> {
    let py = message.py();
    let body = optional_bytes(message, "body")?.unwrap_or_default();
    let more_body = match message.get_item(intern!(py, "more_body"))? {
        Some(more) => more.is_truthy()?,
        None => false,
    };
    Ok((body, more_body))
}

/// Parses `websocket.send`: `text` when it is set, else `bytes`.
pub fn parse_send(message: &Bound<'_, PyDict>) -> PyResult<Message> {
    let py = message.py();
    let text = message
        .get_item(intern!(py, "text"))?
        .filter(|value| !value.is_none());
    if let Some(text) = text {
        let text = text
            .extract::<String>()
            .map_err(|_| PyTypeError::new_err("invalid websocket.send: 'text' must be a str"))?;
        return Ok(Message::Text(text));
    }
    match optional_bytes(message, "bytes")? {
        Some(data) => Ok(Message::Binary(data.into())),
        None => Err(PyRuntimeError::new_err(
            "invalid websocket.send: expected 'text' or 'bytes'",
        )),
    }
}

/// Parses `websocket.close` after accept; the code defaults to 1000.
pub fn parse_close(message: &Bound<'_, PyDict>) -> PyResult<Outgoing> {
    let py = message.py();
    let code = match message.get_item(intern!(py, "code"))? {
        Some(code) if !code.is_none() => code
            .extract::<u16>()
            .map_err(|_| PyTypeError::new_err("invalid websocket.close: 'code' must be an int"))?,
        _ => CLOSE_NORMAL,
    };
    let reason = match message.get_item(intern!(py, "reason"))? {
        Some(reason) if !reason.is_none() => reason
            .extract::<String>()
            .map_err(|_| PyTypeError::new_err("invalid websocket.close: 'reason' must be a str"))?,
        _ => String::new(),
    };
    Ok(Outgoing::Close { code, reason })
}

/// Builds the `websocket.*` message dict for `received`.
pub fn received_message(py: Python<'_>, received: Received) -> PyResult<Bound<'_, PyDict>> {
    let message = PyDict::new(py);
    match received {
        Received::Connect => {
            message.set_item(intern!(py, "type"), intern!(py, "websocket.connect"))?;
        }
        Received::Message(Message::Text(text)) => {
            message.set_item(intern!(py, "type"), intern!(py, "websocket.receive"))?;
            message.set_item(intern!(py, "text"), text)?;
        }
        Received::Message(Message::Binary(data)) => {
            message.set_item(intern!(py, "type"), intern!(py, "websocket.receive"))?;
            message.set_item(intern!(py, "bytes"), PyBytes::new(py, &data))?;
        }
        Received::Disconnect { code, reason } => {
            message.set_item(intern!(py, "type"), intern!(py, "websocket.disconnect"))?;
            message.set_item(intern!(py, "code"), code)?;
            message.set_item(intern!(py, "reason"), reason)?;
        }
    }
    Ok(message)
}

fn optional_bytes(message: &Bound<'_, PyDict>, key: &str) -> PyResult<Option<Vec<u8>>> {
    match message.get_item(key)? {
        Some(value) if !value.is_none() => match value.cast::<PyBytes>() {
            Ok(bytes) => Ok(Some(bytes.as_bytes().to_vec())),
            Err(_) => value.extract::<Vec<u8>>().map(Some).map_err(|_| {
                PyTypeError::new_err(format!("invalid ASGI message: {key:?} must be bytes"))
            }),
        },
        _ => Ok(None),
    }
}
