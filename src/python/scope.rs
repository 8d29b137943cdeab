//! Building the ASGI `http` and `websocket` scopes from a parsed request.
//!
//! Types follow the ASGI HTTP spec 2.5 exactly: `http_version` is "1.0",
//! "1.1" or "2"; `client` and `server` are `(str, int)`; `path` is the
//! percent-decoded path with `root_path` in front, as uvicorn sends it;
//! `raw_path` and `query_string` are the bytes the client sent.

use std::net::SocketAddr;

use http::{Method, Version};
use percent_encoding::percent_decode;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

use http::header::SEC_WEBSOCKET_PROTOCOL;

use crate::bridge::session::WebSocketHead;
use crate::bridge::RequestHead;
use crate::http::header_order::NameOrder;

/// ASGI version and HTTP spec version announced in every scope. 2.5 is the
/// version whose rules (`send()` raising `OSError` after a disconnect,
/// `root_path` inside `path`) this server follows.
const SPEC_VERSION: &str = "2.5";

/// Per-process values every scope needs.
#[derive(Debug)]
pub struct ScopeDefaults {
    pub root_path: Py<PyString>,
    /// The lifespan state, copied shallowly into each scope; `None` when the
    /// app runs without lifespan.
    pub state: Option<Py<PyDict>>,
}

/// Builds the scope dict for `head`.
pub fn build_http_scope<'py>(
    py: Python<'py>,
    defaults: &ScopeDefaults,
    head: &RequestHead,
) -> PyResult<Bound<'py, PyDict>> {
    let scope = PyDict::new(py);
    scope.set_item(intern!(py, "type"), intern!(py, "http"))?;
    scope.set_item(intern!(py, "asgi"), asgi_versions(py)?)?;
    scope.set_item(intern!(py, "http_version"), http_version(py, head.version))?;
    scope.set_item(intern!(py, "method"), method(py, &head.method))?;
    scope.set_item(intern!(py, "scheme"), head.scheme)?;

    let overrides = head.overrides.as_deref();
    let raw_path = head.uri.path().as_bytes();
    let forwarded_root = overrides.and_then(|o| o.root_path.as_deref());
    let root_path = match forwarded_root {
        Some(prefix) => PyString::new(py, prefix),
        None => defaults.root_path.bind(py).clone(),
    };
    let root_path = &root_path;
    scope.set_item(intern!(py, "path"), full_path(py, root_path, raw_path)?)?;
    scope.set_item(intern!(py, "raw_path"), PyBytes::new(py, raw_path))?;
    let query = head.uri.query().unwrap_or("").as_bytes();
    scope.set_item(intern!(py, "query_string"), PyBytes::new(py, query))?;
    scope.set_item(intern!(py, "root_path"), root_path)?;

    let headers = header_list(py, &head.headers, head.header_order.as_ref())?;
    scope.set_item(intern!(py, "headers"), headers)?;
    match overrides.and_then(|o| o.client_name.as_deref()) {
        Some(name) => scope.set_item(intern!(py, "client"), (name, 0u16))?,
        None => scope.set_item(intern!(py, "client"), address(py, head.client)?)?,
    }
    match overrides.and_then(|o| o.server.as_ref()) {
        Some((host, port)) => scope.set_item(intern!(py, "server"), (host.as_str(), *port))?,
        None => scope.set_item(intern!(py, "server"), address(py, head.server)?)?,
    }
    if let Some(state) = &defaults.state {
        scope.set_item(intern!(py, "state"), state.bind(py).copy()?)?;
    }
    Ok(scope)
}

/// Builds the `websocket` scope dict for `head`. The keys common with HTTP
/// follow the same rules; `subprotocols` come from `Sec-WebSocket-Protocol`.
pub fn build_websocket_scope<'py>(
    py: Python<'py>,
    defaults: &ScopeDefaults,
    head: &WebSocketHead,
) -> PyResult<Bound<'py, PyDict>> {
    let scope = PyDict::new(py);
    scope.set_item(intern!(py, "type"), intern!(py, "websocket"))?;
    scope.set_item(intern!(py, "asgi"), asgi_versions(py)?)?;
    scope.set_item(intern!(py, "http_version"), intern!(py, "1.1"))?;
    scope.set_item(intern!(py, "scheme"), head.scheme)?;

    let raw_path = head.uri.path().as_bytes();
    let root_path = defaults.root_path.bind(py);
    scope.set_item(intern!(py, "path"), full_path(py, root_path, raw_path)?)?;
    scope.set_item(intern!(py, "raw_path"), PyBytes::new(py, raw_path))?;
    let query = head.uri.query().unwrap_or("").as_bytes();
    scope.set_item(intern!(py, "query_string"), PyBytes::new(py, query))?;
    scope.set_item(intern!(py, "root_path"), root_path)?;

    let headers = header_list(py, &head.headers, head.header_order.as_ref())?;
    scope.set_item(intern!(py, "headers"), headers)?;
    scope.set_item(intern!(py, "client"), address(py, head.client)?)?;
    scope.set_item(intern!(py, "server"), address(py, head.server)?)?;
    scope.set_item(
        intern!(py, "subprotocols"),
        subprotocols(py, &head.headers)?,
    )?;
    if let Some(state) = &defaults.state {
        scope.set_item(intern!(py, "state"), state.bind(py).copy()?)?;
    }
    let extensions = PyDict::new(py);
    extensions.set_item(intern!(py, "websocket.http.response"), PyDict::new(py))?;
    scope.set_item(intern!(py, "extensions"), extensions)?;
    Ok(scope)
}

/// Lists the subprotocols the client offered, in order, from every
/// `Sec-WebSocket-Protocol` header.
fn subprotocols<'py>(py: Python<'py>, headers: &http::HeaderMap) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            list.append(token)?;
        }
    }
    Ok(list)
}

fn asgi_versions(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    // A fresh dict per scope: an app that changes it affects only itself.
    let asgi = PyDict::new(py);
    asgi.set_item(intern!(py, "version"), intern!(py, "3.0"))?;
    asgi.set_item(intern!(py, "spec_version"), intern!(py, SPEC_VERSION))?;
    Ok(asgi)
}

fn http_version(py: Python<'_>, version: Version) -> &Bound<'_, PyString> {
    match version {
        Version::HTTP_10 => intern!(py, "1.0"),
        Version::HTTP_2 => intern!(py, "2"),
        _ => intern!(py, "1.1"),
    }
}

fn method<'py>(py: Python<'py>, method: &Method) -> Bound<'py, PyString> {
    let interned = match *method {
        Method::GET => intern!(py, "GET"),
        Method::POST => intern!(py, "POST"),
        Method::PUT => intern!(py, "PUT"),
        Method::DELETE => intern!(py, "DELETE"),
        Method::HEAD => intern!(py, "HEAD"),
        Method::PATCH => intern!(py, "PATCH"),
        Method::OPTIONS => intern!(py, "OPTIONS"),
        _ => return PyString::new(py, method.as_str()),
    };
    interned.clone()
}

/// `root_path` followed by the percent-decoded path. Bytes that do not decode
/// as UTF-8 become U+FFFD, as `urllib.parse.unquote` does in uvicorn.
fn full_path<'py>(
    py: Python<'py>,
    root_path: &Bound<'py, PyString>,
    raw_path: &[u8],
) -> PyResult<Bound<'py, PyString>> {
    let decoded = percent_decode(raw_path).decode_utf8_lossy();
    let root = root_path.to_str()?;
    if root.is_empty() {
        return Ok(PyString::new(py, &decoded));
    }
    Ok(PyString::new(py, &format!("{root}{decoded}")))
}

/// Builds the scope's `headers`, in the order sent when `order` is given.
/// That order differs from the map's only for a name repeated with another
/// name in between.
pub fn header_list<'py>(
    py: Python<'py>,
    headers: &http::HeaderMap,
    order: Option<&NameOrder>,
) -> PyResult<Bound<'py, PyList>> {
    let pair = |(name, value): (&http::HeaderName, &http::HeaderValue)| {
        PyTuple::new(
            py,
            [
                PyBytes::new(py, name.as_str().as_bytes()),
                PyBytes::new(py, value.as_bytes()),
            ],
        )
    };
    let items: PyResult<Vec<_>> = match order {
        None => headers.iter().map(pair).collect(),
        Some(order) => order.arrange(headers).into_iter().map(pair).collect(),
    };
    PyList::new(py, items?)
}

fn address(py: Python<'_>, addr: Option<SocketAddr>) -> PyResult<Py<PyAny>> {
    match addr {
        None => Ok(py.None()),
        Some(addr) => {
            // Show IPv4 peers of a dual-stack socket as plain IPv4.
            let ip = addr.ip().to_canonical().to_string();
            (ip, addr.port()).into_py_any(py)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_decoded_and_prefixed() {
        Python::initialize();
        Python::attach(|py| {
            let root = PyString::new(py, "/api");
            let path = full_path(py, &root, b"/caf%C3%A9/a%20b").unwrap();
            assert_eq!(path.to_str().unwrap(), "/api/café/a b");
            let empty = PyString::new(py, "");
            let path = full_path(py, &empty, b"/bad%FF").unwrap();
            assert_eq!(path.to_str().unwrap(), "/bad\u{fffd}");
        });
    }
}
