//! The ASGI `websocket` scope and its `receive` and `send`, as the ASGI
//! HTTP & WebSocket spec 2.5 defines them.
//!
//! `receive()` returns an already-complete awaitable when a message is
//! queued and parks an asyncio future on the [`Session`] otherwise. `send()`
//! queues frames for the tokio task and makes the app wait only when too
//! many bytes are queued for a client that does not read.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, StatusCode};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use super::awaitable::Ready;
use super::dispatch::{context, describe, Context};
use super::scope::{address, asgi_versions, full_path, header_list};
use crate::bridge::exchange::WaitKind;
use crate::bridge::session::{
    Handshake, Message, Outgoing, ParkedSession, Received, SendOutcome, Session, WebSocketHead,
    CLOSE_NORMAL,
};

/// The ASGI side of one WebSocket session. Its `receive` and `send` methods
/// are what the app gets; calling the object is the task's done callback.
#[pyclass(module = "fastserve")]
#[derive(Debug)]
pub struct WebSocketCycle {
    session: Arc<Session>,
    /// The app responded to the handshake (accept, close or a denial start).
    answered: bool,
    accepted: bool,
}

/// Builds the scope, calls the app and starts its task.
pub fn start_session(py: Python<'_>, ctx: &Context, head: WebSocketHead) -> PyResult<()> {
    let session = Arc::clone(&head.session);
    let cycle = Bound::new(
        py,
        WebSocketCycle {
            session: Arc::clone(&session),
            answered: false,
            accepted: false,
        },
    )?;

    let started = (|| {
        let scope = build_scope(py, ctx, &head)?;
        let receive = cycle.getattr(intern!(py, "receive"))?;
        let send = cycle.getattr(intern!(py, "send"))?;
        let coro = ctx.app.bind(py).call1((scope, receive, send))?;
        ctx.start_task(py, coro)
    })();
    let task = match started {
        Ok(task) => task,
        Err(err) => {
            tracing::error!("exception in ASGI application\n{}", describe(py, ctx, &err));
            session.app_finished();
            return Ok(());
        }
    };

    if task.call_method0(intern!(py, "done"))?.is_truthy()? {
        cycle.borrow().finish(py, &task)?;
    } else {
        ctx.inflight.bind(py).add(&task)?;
        task.call_method1(intern!(py, "add_done_callback"), (cycle,))?;
    }
    Ok(())
}

/// Resolves a future parked on a session.
pub fn wake(py: Python<'_>, ctx: &Context, parked: ParkedSession) -> PyResult<()> {
    let ParkedSession {
        session,
        kind,
        future,
    } = parked;
    let bound = future.bind(py);
    // A task cancelled while it waited has cancelled the future too.
    if bound.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(());
    }
    match kind {
        WaitKind::Send if session.is_disconnected() => {
            let err = ctx.client_disconnected(py);
            bound.call_method1(intern!(py, "set_exception"), (err.value(py),))?;
        }
        WaitKind::Send => {
            bound.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        WaitKind::Receive => match session.try_receive() {
            Some(received) => {
                let message = received_message(py, received)?;
                bound.call_method1(intern!(py, "set_result"), (message,))?;
            }
            None => {
                if let Err(future) = session.park(WaitKind::Receive, future.clone_ref(py)) {
                    let parked = ParkedSession {
                        session,
                        kind,
                        future,
                    };
                    return wake(py, ctx, parked);
                }
            }
        },
    }
    Ok(())
}

fn build_scope<'py>(
    py: Python<'py>,
    ctx: &Context,
    head: &WebSocketHead,
) -> PyResult<Bound<'py, PyDict>> {
    let defaults = &ctx.scope_defaults;
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

    scope.set_item(intern!(py, "headers"), header_list(py, &head.headers)?)?;
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
fn subprotocols<'py>(py: Python<'py>, headers: &HeaderMap) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            list.append(token)?;
        }
    }
    Ok(list)
}

impl WebSocketCycle {
    fn finish(&self, py: Python<'_>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let ctx = context(py);
        let mut failed = task.call_method0(intern!(py, "cancelled"))?.is_truthy()?;
        if !failed {
            let exception = task.call_method0(intern!(py, "exception"))?;
            if !exception.is_none() {
                failed = true;
                let text = ctx.format_exception.bind(py).call1((&exception,))?;
                let disconnected = exception.is_instance(ctx.client_disconnected.bind(py))?;
                if disconnected && self.session.is_disconnected() {
                    tracing::debug!(traceback = %text, "ASGI application raised after the client left");
                } else {
                    tracing::error!("exception in ASGI application\n{text}");
                }
            }
        }
        if !self.answered && !failed {
            tracing::error!(
                "ASGI callable returned without sending websocket.accept or websocket.close"
            );
        }
        if self.session.denial_started() {
            tracing::error!("ASGI callable returned without completing the denial response");
        }
        // Without a response the handshake gets 500; after one this is a no-op.
        let _ = self.session.answer(Handshake::Failed);
        self.session.app_finished();
        Ok(())
    }

    /// Handles one `send()` message; returns how it was queued.
    fn dispatch(&mut self, kind: &str, message: &Bound<'_, PyDict>) -> PyResult<SendOutcome> {
        let py = message.py();
        match kind {
            "websocket.accept" if !self.answered => {
                let subprotocol = match message.get_item(intern!(py, "subprotocol"))? {
                    Some(value) if !value.is_none() => {
                        Some(value.extract::<String>().map_err(|_| {
                            PyTypeError::new_err(
                                "invalid websocket.accept: 'subprotocol' must be a str",
                            )
                        })?)
                    }
                    _ => None,
                };
                let headers = match message.get_item(intern!(py, "headers"))? {
                    Some(headers) => convert_headers(&headers, "websocket.accept")?,
                    None => HeaderMap::new(),
                };
                self.answered = true;
                self.accepted = true;
                answer(
                    &self.session,
                    Handshake::Accept {
                        subprotocol,
                        headers,
                    },
                )?;
                Ok(SendOutcome::Accepted)
            }
            "websocket.close" if !self.answered => {
                self.answered = true;
                answer(&self.session, Handshake::Reject)?;
                Ok(SendOutcome::Accepted)
            }
            "websocket.http.response.start" if !self.answered => {
                let status = message
                    .get_item(intern!(py, "status"))?
                    .ok_or_else(|| {
                        PyRuntimeError::new_err("invalid websocket.http.response.start: 'status' is missing")
                    })?
                    .extract::<u16>()
                    .ok()
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .ok_or_else(|| {
                        PyTypeError::new_err(
                            "invalid websocket.http.response.start: 'status' must be an int from 100 to 999",
                        )
                    })?;
                let headers = match message.get_item(intern!(py, "headers"))? {
                    Some(headers) => convert_headers(&headers, "websocket.http.response.start")?,
                    None => HeaderMap::new(),
                };
                self.answered = true;
                self.session
                    .start_denial(status, headers)
                    .map_err(|_| already_answered("websocket.http.response.start"))?;
                Ok(SendOutcome::Accepted)
            }
            "websocket.http.response.body" if self.session.denial_started() => {
                let body = optional_bytes(message, "body")?.unwrap_or_default();
                let more_body = match message.get_item(intern!(py, "more_body"))? {
                    Some(more) => more.is_truthy()?,
                    None => false,
                };
                self.session.denial_body(&body, more_body);
                Ok(SendOutcome::Accepted)
            }
            "websocket.send" if self.accepted => {
                let text = message
                    .get_item(intern!(py, "text"))?
                    .filter(|v| !v.is_none());
                let data = match text {
                    Some(text) => Message::Text(text.extract::<String>().map_err(|_| {
                        PyTypeError::new_err("invalid websocket.send: 'text' must be a str")
                    })?),
                    None => match optional_bytes(message, "bytes")? {
                        Some(data) => Message::Binary(data.into()),
                        None => {
                            return Err(PyRuntimeError::new_err(
                                "invalid websocket.send: expected 'text' or 'bytes'",
                            ))
                        }
                    },
                };
                Ok(self.session.send(Outgoing::Message(data)))
            }
            "websocket.close" if self.accepted => {
                let code = match message.get_item(intern!(py, "code"))? {
                    Some(code) if !code.is_none() => code.extract::<u16>().map_err(|_| {
                        PyTypeError::new_err("invalid websocket.close: 'code' must be an int")
                    })?,
                    _ => CLOSE_NORMAL,
                };
                let reason = match message.get_item(intern!(py, "reason"))? {
                    Some(reason) if !reason.is_none() => reason.extract::<String>()?,
                    _ => String::new(),
                };
                Ok(self.session.send(Outgoing::Close { code, reason }))
            }
            other => Err(PyRuntimeError::new_err(format!(
                "unexpected ASGI message type {other:?} in a WebSocket session: expected {}",
                self.expected()
            ))),
        }
    }

    fn expected(&self) -> &'static str {
        if !self.answered {
            "'websocket.accept', 'websocket.close' or 'websocket.http.response.start'"
        } else if self.accepted {
            "'websocket.send' or 'websocket.close'"
        } else if self.session.denial_started() {
            "'websocket.http.response.body'"
        } else {
            "nothing, because the app already responded to the handshake"
        }
    }
}

#[pymethods]
impl WebSocketCycle {
    /// ASGI `receive()`: `websocket.connect`, `websocket.receive` or
    /// `websocket.disconnect`.
    fn receive(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let ctx = context(py);
        loop {
            if let Some(received) = self.session.try_receive() {
                let message = received_message(py, received)?;
                return Ok(Py::new(py, Ready::with_value(message.into_any().unbind()))?.into_any());
            }
            let future = ctx.create_future.bind(py).call0()?.unbind();
            // On `Err` a message arrived between the check and the park: retry.
            if self
                .session
                .park(WaitKind::Receive, future.clone_ref(py))
                .is_ok()
            {
                return Ok(future);
            }
        }
    }

    /// ASGI `send(message)`.
    fn send(&mut self, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = message.py();
        let ctx = context(py);
        let message = message
            .cast::<PyDict>()
            .map_err(|_| PyTypeError::new_err("invalid ASGI message: expected a dict"))?;
        let kind = message
            .get_item(intern!(py, "type"))?
            .ok_or_else(|| PyRuntimeError::new_err("invalid ASGI message: 'type' is missing"))?;
        let kind = kind.cast::<PyString>()?.to_str()?.to_owned();

        match self.dispatch(&kind, message)? {
            SendOutcome::Accepted => Ok(ctx.ready_none.clone_ref(py).into_any()),
            SendOutcome::Closed => Err(ctx.client_disconnected(py)),
            SendOutcome::Full => {
                let future = ctx.create_future.bind(py).call0()?;
                match self.session.park(WaitKind::Send, future.clone().unbind()) {
                    Ok(()) => Ok(future.unbind()),
                    Err(_) if self.session.is_disconnected() => Err(ctx.client_disconnected(py)),
                    Err(_) => Ok(ctx.ready_none.clone_ref(py).into_any()),
                }
            }
        }
    }

    /// Done callback of the task running the app.
    fn __call__(&self, py: Python<'_>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        context(py).inflight.bind(py).discard(task)?;
        self.finish(py, task)
    }
}

fn answer(session: &Session, handshake: Handshake) -> PyResult<()> {
    session
        .answer(handshake)
        .map_err(|_| already_answered("websocket.accept"))
}

fn already_answered(kind: &str) -> PyErr {
    PyRuntimeError::new_err(format!(
        "unexpected ASGI message {kind:?}: the app already responded to the WebSocket handshake"
    ))
}

/// Builds the `websocket.*` message dict for `received`.
fn received_message(py: Python<'_>, received: Received) -> PyResult<Bound<'_, PyDict>> {
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

/// Converts ASGI headers (an iterable of `[name, value]` byte pairs).
fn convert_headers(headers: &Bound<'_, PyAny>, kind: &str) -> PyResult<HeaderMap> {
    let mut map = HeaderMap::new();
    for pair in headers.try_iter()? {
        let (name, value): (Vec<u8>, Vec<u8>) = pair?.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "invalid header in {kind}: expected a [name, value] pair of bytes"
            ))
        })?;
        let name = HeaderName::from_bytes(&name).map_err(|_| {
            PyRuntimeError::new_err(format!(
                "invalid header name {:?} in {kind}",
                String::from_utf8_lossy(&name)
            ))
        })?;
        let value = HeaderValue::from_bytes(&value).map_err(|_| {
            PyRuntimeError::new_err(format!(
                "invalid value for header {name:?} in {kind}: control characters are not allowed"
            ))
        })?;
        map.append(name, value);
    }
    Ok(map)
}
