//! `receive` and `send` for one WebSocket session, as the ASGI HTTP &
//! WebSocket spec 2.5 defines them.
//!
//! `receive()` returns an already-complete awaitable when a message is
//! queued and parks an asyncio future on the [`Session`] otherwise. `send()`
//! queues frames for the tokio task and makes the app wait only when too
//! many bytes are queued for a client that does not read.

use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::awaitable::Ready;
use super::dispatch::{context, describe, Context, ParkTarget};
use super::scope::build_websocket_scope;
use super::websocket_message::{
    parse_accept, parse_close, parse_denial_body, parse_denial_start, parse_send, received_message,
};
use crate::bridge::exchange::WaitKind;
use crate::bridge::session::{Handshake, Outgoing, SendOutcome, Session, WebSocketHead};

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
        let scope = build_websocket_scope(py, &ctx.scope_defaults, &head)?;
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

impl ParkTarget for Session {
    fn is_disconnected(&self) -> bool {
        Session::is_disconnected(self)
    }

    fn next_message<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.try_receive()
            .map(|received| received_message(py, received))
            .transpose()
    }

    fn park(&self, kind: WaitKind, future: Py<PyAny>) -> Result<(), Py<PyAny>> {
        Session::park(self, kind, future)
    }
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
        match kind {
            "websocket.accept" if !self.answered => {
                let accept = parse_accept(message)?;
                self.answered = true;
                self.accepted = true;
                answer(&self.session, accept)?;
                Ok(SendOutcome::Accepted)
            }
            "websocket.close" if !self.answered => {
                self.answered = true;
                answer(&self.session, Handshake::Reject)?;
                Ok(SendOutcome::Accepted)
            }
            "websocket.http.response.start" if !self.answered => {
                let (status, headers) = parse_denial_start(message)?;
                self.answered = true;
                self.session
                    .start_denial(status, headers)
                    .map_err(|_| already_answered("websocket.http.response.start"))?;
                Ok(SendOutcome::Accepted)
            }
            "websocket.http.response.body" if self.session.denial_started() => {
                let (body, more_body) = parse_denial_body(message)?;
                self.session.denial_body(&body, more_body);
                Ok(SendOutcome::Accepted)
            }
            "websocket.send" if self.accepted => {
                let data = parse_send(message)?;
                Ok(self.session.send(Outgoing::Message(data)))
            }
            "websocket.close" if self.accepted => {
                let close = parse_close(message)?;
                Ok(self.session.send(close))
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
