//! `receive` and `send` for one HTTP request, as the ASGI HTTP spec 2.5
//! defines them.
//!
//! Both return an already-complete awaitable when they can and an asyncio
//! future parked on the [`Exchange`] only when the app must wait: for body
//! that has not arrived, for the end of the exchange, or for the client to
//! read queued response bytes.
//!
//! `http.response.start` is held back until the first body message, so a
//! response sent whole reaches hyper with its exact length. If the task
//! suspends in between, the head goes out on its own at the next loop turn.

use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use super::awaitable::Ready;
use super::dispatch::context;
use crate::bridge::exchange::{Received, SendOutcome};
use crate::bridge::{Exchange, ResponseHead, WaitKind};

thread_local! {
    /// True while the dispatcher starts tasks; it flushes held-back heads
    /// itself then, so `send` schedules no flush of its own.
    pub static DISPATCHING: Cell<bool> = const { Cell::new(false) };
}

/// The ASGI side of one HTTP exchange. Its `receive` and `send` methods are
/// what the app gets; calling the object itself is the task's done callback.
#[pyclass(module = "fastserve")]
#[derive(Debug)]
pub struct HttpCycle {
    exchange: Arc<Exchange>,
    /// `http.response.start` received but not yet handed to hyper.
    held_head: Option<ResponseHead>,
    started: bool,
    finished: bool,
    flush_scheduled: bool,
}

impl HttpCycle {
    pub fn new(exchange: Arc<Exchange>) -> Self {
        Self {
            exchange,
            held_head: None,
            started: false,
            finished: false,
            flush_scheduled: false,
        }
    }

    /// Hands a held-back head to hyper with an open body.
    pub fn flush_held_head(&mut self) {
        self.flush_scheduled = false;
        if let Some(head) = self.held_head.take() {
            // A disconnect here shows up at the next `send`.
            self.exchange.deliver_head(head, Bytes::new(), false);
        }
    }

    /// Reports the end of the task to the exchange and logs what went wrong.
    pub fn finish(&mut self, py: Python<'_>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let ctx = context(py);
        let mut failed = false;
        if task.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            failed = true;
        } else {
            let exception = task.call_method0(intern!(py, "exception"))?;
            if !exception.is_none() {
                failed = true;
                let text = ctx.format_exception.bind(py).call1((exception,))?;
                if self.exchange.is_disconnected() {
                    tracing::debug!(traceback = %text, "ASGI application raised after the client left");
                } else {
                    tracing::error!("exception in ASGI application\n{text}");
                }
            }
        }

        // An app may return without a response once the client has gone,
        // for example after a body over --limit-request-body.
        if !failed && !self.started && !self.exchange.is_disconnected() {
            tracing::error!("ASGI callable returned without sending http.response.start");
        } else if !failed && !self.finished && !self.exchange.is_disconnected() {
            tracing::error!("ASGI callable returned without completing the response");
        }
        self.flush_held_head();
        self.exchange.app_finished(failed || !self.finished);
        Ok(())
    }

    fn start(&mut self, message: &Bound<'_, PyDict>) -> PyResult<()> {
        let py = message.py();
        if self.started {
            return Err(unexpected("http.response.start", "http.response.body"));
        }
        let status = match message.get_item(intern!(py, "status"))? {
            Some(status) => status.extract::<u16>().map_err(|_| {
                PyTypeError::new_err("invalid http.response.start: 'status' must be an int")
            })?,
            None => {
                return Err(PyRuntimeError::new_err(
                    "invalid http.response.start: 'status' is missing",
                ))
            }
        };
        let status = StatusCode::from_u16(status).map_err(|_| {
            PyRuntimeError::new_err(format!(
                "invalid http.response.start: status {status} is not from 100 to 999"
            ))
        })?;
        let headers = match message.get_item(intern!(py, "headers"))? {
            Some(headers) => convert_headers(&headers)?,
            None => HeaderMap::new(),
        };
        self.started = true;
        self.held_head = Some(ResponseHead { status, headers });
        Ok(())
    }

    fn body(&mut self, message: &Bound<'_, PyDict>) -> PyResult<SendOutcome> {
        let py = message.py();
        if !self.started {
            return Err(unexpected("http.response.body", "http.response.start"));
        }
        if self.finished {
            return Err(PyRuntimeError::new_err(
                "unexpected ASGI message 'http.response.body' after the response was complete",
            ));
        }
        let data = match message.get_item(intern!(py, "body"))? {
            None => Bytes::new(),
            Some(body) => match body.cast::<PyBytes>() {
                Ok(bytes) => Bytes::copy_from_slice(bytes.as_bytes()),
                Err(_) => Bytes::from(body.extract::<Vec<u8>>().map_err(|_| {
                    PyTypeError::new_err("invalid http.response.body: 'body' must be bytes")
                })?),
            },
        };
        let more_body = match message.get_item(intern!(py, "more_body"))? {
            None => false,
            Some(more) => more.is_truthy()?,
        };
        self.finished = !more_body;

        Ok(match self.held_head.take() {
            Some(head) => self.exchange.deliver_head(head, data, !more_body),
            None => self.exchange.send_body(data, !more_body),
        })
    }
}

#[pymethods]
impl HttpCycle {
    /// ASGI `receive()`: the next `http.request` or `http.disconnect`.
    fn receive(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let ctx = context(py);
        loop {
            if let Some(received) = self.exchange.try_receive() {
                let message = received_message(py, received)?;
                return Ok(Py::new(py, Ready::with_value(message.into_any().unbind()))?.into_any());
            }
            let future = ctx.create_future.bind(py).call0()?.unbind();
            // On `Err` the body arrived between the check and the park: retry.
            if self
                .exchange
                .park(WaitKind::Receive, future.clone_ref(py))
                .is_ok()
            {
                return Ok(future);
            }
        }
    }

    /// ASGI `send(message)` for `http.response.start` and `http.response.body`.
    fn send(slf: &Bound<'_, Self>, message: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let mut this = slf.borrow_mut();
        let message = message.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err(format!(
                "invalid ASGI message: expected a dict, got {}",
                message
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let kind = match message.get_item(intern!(py, "type"))? {
            Some(kind) => kind,
            None => {
                return Err(PyRuntimeError::new_err(
                    "invalid ASGI message: 'type' is missing",
                ))
            }
        };
        let ctx = context(py);
        let kind = kind.cast::<PyString>()?;

        let outcome = if kind.to_str()? == "http.response.body" {
            this.body(message)?
        } else if kind.to_str()? == "http.response.start" {
            this.start(message)?;
            if !DISPATCHING.get() && !this.flush_scheduled {
                // The task runs on its own; flush the head at the next loop
                // turn unless a body message takes it along first.
                this.flush_scheduled = true;
                ctx.call_soon
                    .bind(py)
                    .call1((slf.getattr(intern!(py, "flush_head"))?,))?;
            }
            SendOutcome::Accepted
        } else {
            return Err(PyRuntimeError::new_err(format!(
                "unexpected ASGI message type {:?} in an HTTP exchange: expected \
                 'http.response.start' or 'http.response.body'",
                kind.to_string()
            )));
        };

        match outcome {
            SendOutcome::Accepted => Ok(ctx.ready_none.clone_ref(py).into_any()),
            SendOutcome::Disconnected => Err(ctx.client_disconnected(py)),
            SendOutcome::Full => {
                let future = ctx.create_future.bind(py).call0()?;
                match this.exchange.park(WaitKind::Send, future.clone().unbind()) {
                    Ok(()) => Ok(future.unbind()),
                    Err(_) if this.exchange.is_disconnected() => Err(ctx.client_disconnected(py)),
                    Err(_) => Ok(ctx.ready_none.clone_ref(py).into_any()),
                }
            }
        }
    }

    /// Flushes a held-back head; scheduled with `call_soon` by `send`.
    fn flush_head(&mut self) {
        self.flush_held_head();
    }

    /// Done callback of the task running the app.
    fn __call__(&mut self, py: Python<'_>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        context(py).inflight.bind(py).discard(task)?;
        self.finish(py, task)
    }
}

/// The `http.request` or `http.disconnect` message for `received`.
pub fn received_message(py: Python<'_>, received: Received) -> PyResult<Bound<'_, PyDict>> {
    let message = PyDict::new(py);
    match received {
        Received::Body { data, more_body } => {
            message.set_item(intern!(py, "type"), intern!(py, "http.request"))?;
            message.set_item(intern!(py, "body"), PyBytes::new(py, &data))?;
            message.set_item(intern!(py, "more_body"), more_body)?;
        }
        Received::Disconnect => {
            message.set_item(intern!(py, "type"), intern!(py, "http.disconnect"))?;
        }
    }
    Ok(message)
}

/// Converts ASGI response headers (an iterable of `[name, value]` byte
/// pairs). The server's default headers are added on the tokio side.
pub fn convert_headers(headers: &Bound<'_, PyAny>) -> PyResult<HeaderMap> {
    let mut map = HeaderMap::new();
    for pair in headers.try_iter()? {
        let pair = pair?;
        let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair.extract().map_err(|_| {
            PyTypeError::new_err(
                "invalid header in http.response.start: expected a [name, value] pair",
            )
        })?;
        let (Ok(name), Ok(value)) = (name.cast::<PyBytes>(), value.cast::<PyBytes>()) else {
            return Err(PyTypeError::new_err(
                "invalid header in http.response.start: name and value must be bytes",
            ));
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            PyRuntimeError::new_err(format!(
                "invalid header name {:?} in http.response.start",
                String::from_utf8_lossy(name.as_bytes())
            ))
        })?;
        let value = HeaderValue::from_bytes(value.as_bytes()).map_err(|_| {
            PyRuntimeError::new_err(format!(
                "invalid value for header {name:?} in http.response.start: control characters are not allowed"
            ))
        })?;
        map.append(name, value);
    }
    Ok(map)
}

fn unexpected(got: &str, expected: &str) -> PyErr {
    PyRuntimeError::new_err(format!(
        "unexpected ASGI message '{got}': expected '{expected}'"
    ))
}
