//! The Python thread's side of the bridge: one callback, run by the event
//! loop whenever the bridge's eventfd is readable, that handles every queued
//! event in one pass.
//!
//! For a new request it builds the scope, calls the app and starts the
//! coroutine as a task. On Python 3.12 and later the task starts eagerly, so
//! a handler that never suspends runs to completion inside this pass, with
//! no trip through the loop's ready queue.

use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PySet};

use super::awaitable::Ready;
use super::http::{received_message, HttpCycle, DISPATCHING};
use super::scope::{build_http_scope, ScopeDefaults};
use super::websocket;
use crate::bridge::Exchange;
use crate::bridge::{Bridge, DeferWakers, Event, RequestHead, WaitKind};

static CONTEXT: PyOnceLock<Context> = PyOnceLock::new();

/// Per-process objects the request path needs, set once before serving.
#[derive(Debug)]
pub struct Context {
    pub bridge: Arc<Bridge>,
    pub app: Py<PyAny>,
    pub create_future: Py<PyAny>,
    pub call_soon: Py<PyAny>,
    pub create_task: Py<PyAny>,
    /// Tasks that did not finish in their first step. asyncio keeps only
    /// weak references to tasks, so this set keeps them alive.
    pub inflight: Py<PySet>,
    pub ready_none: Py<Ready>,
    pub client_disconnected: Py<PyAny>,
    pub format_exception: Py<PyAny>,
    pub scope_defaults: ScopeDefaults,
    /// `asyncio.Task` and `{"loop": loop, "eager_start": True}` on Python
    /// 3.12 and later; `None` where tasks cannot start eagerly.
    pub eager_task: Option<(Py<PyAny>, Py<PyDict>)>,
    /// A zero-argument callable that returns the coroutine to run on stop.
    pub stop: Py<PyAny>,
}

impl Context {
    /// The exception `send()` raises after the client has gone.
    pub fn client_disconnected(&self, py: Python<'_>) -> PyErr {
        match self
            .client_disconnected
            .bind(py)
            .call1(("the client closed the connection",))
        {
            Ok(exception) => PyErr::from_value(exception),
            Err(err) => err,
        }
    }

    pub(super) fn start_task<'py>(
        &self,
        py: Python<'py>,
        coro: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match &self.eager_task {
            Some((task_type, kwargs)) => task_type.bind(py).call((coro,), Some(kwargs.bind(py))),
            None => self.create_task.bind(py).call1((coro,)),
        }
    }
}

/// Installs the context; called once on the Python thread before serving.
pub fn install(py: Python<'_>, context: Context) -> PyResult<()> {
    CONTEXT
        .set(py, context)
        .map_err(|_| PyRuntimeError::new_err("fastserve: the request context was installed twice"))
}

/// The installed context.
///
/// # Panics
/// If called before [`install`]; the dispatcher is registered only after it.
pub fn context(py: Python<'_>) -> &Context {
    CONTEXT
        .get(py)
        .expect("request context used before it was installed")
}

/// The eventfd reader callback.
#[pyclass(module = "fastserve")]
#[derive(Debug, Default)]
pub struct Dispatcher {
    events: Vec<Event>,
}

#[pymethods]
impl Dispatcher {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn __call__(&mut self, py: Python<'_>) {
        let ctx = context(py);
        ctx.bridge.take_events(&mut self.events);

        DISPATCHING.set(true);
        let _deferred = DeferWakers::start();
        for event in self.events.drain(..) {
            let result = match event {
                Event::Request(head) => start_request(py, ctx, *head),
                Event::Wake(parked) => {
                    resolve_parked(py, ctx, &*parked.exchange, parked.kind, parked.future)
                }
                Event::WebSocket(head) => websocket::start_session(py, ctx, *head),
                Event::WakeSession(parked) => {
                    resolve_parked(py, ctx, &*parked.session, parked.kind, parked.future)
                }
                Event::Stop => stop(py, ctx),
            };
            if let Err(err) = result {
                let text = describe(py, ctx, &err);
                tracing::error!("fastserve failed to handle an event on the Python thread\n{text}");
            }
        }
        DISPATCHING.set(false);
    }
}

fn start_request(py: Python<'_>, ctx: &Context, head: RequestHead) -> PyResult<()> {
    let exchange = Arc::clone(&head.exchange);
    let cycle = Bound::new(py, HttpCycle::new(Arc::clone(&exchange)))?;

    let started = (|| {
        let scope = build_http_scope(py, &ctx.scope_defaults, &head)?;
        let receive = cycle.getattr(intern!(py, "receive"))?;
        let send = cycle.getattr(intern!(py, "send"))?;
        let coro = ctx.app.bind(py).call1((scope, receive, send))?;
        ctx.start_task(py, coro)
    })();

    let task = match started {
        Ok(task) => task,
        Err(err) => {
            tracing::error!("exception in ASGI application\n{}", describe(py, ctx, &err));
            exchange.app_finished(true);
            return Ok(());
        }
    };

    if task.call_method0(intern!(py, "done"))?.is_truthy()? {
        cycle.borrow_mut().finish(py, &task)?;
    } else {
        cycle.borrow_mut().flush_held_head();
        ctx.inflight.bind(py).add(&task)?;
        task.call_method1(intern!(py, "add_done_callback"), (cycle,))?;
    }
    Ok(())
}

/// Shared state that `receive()` and `send()` futures park on: an HTTP
/// exchange or a WebSocket session.
pub trait ParkTarget {
    fn is_disconnected(&self) -> bool;
    /// The next `receive()` message, or `None` when the app must wait.
    fn next_message<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>>;
    /// Parks `future`; returns it back if what it waits for already holds.
    fn park(&self, kind: WaitKind, future: Py<PyAny>) -> Result<(), Py<PyAny>>;
}

impl ParkTarget for Exchange {
    fn is_disconnected(&self) -> bool {
        Exchange::is_disconnected(self)
    }

    fn next_message<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.try_receive()
            .map(|received| received_message(py, received))
            .transpose()
    }

    fn park(&self, kind: WaitKind, future: Py<PyAny>) -> Result<(), Py<PyAny>> {
        Exchange::park(self, kind, future)
    }
}

/// Resolves a future parked on `target` that the tokio side sent back, or
/// parks it again when it was woken early (for example by body read-ahead).
pub fn resolve_parked(
    py: Python<'_>,
    ctx: &Context,
    target: &impl ParkTarget,
    kind: WaitKind,
    mut future: Py<PyAny>,
) -> PyResult<()> {
    loop {
        let bound = future.bind(py);
        // A task cancelled while it waited has cancelled the future too.
        if bound.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        match kind {
            WaitKind::Send if target.is_disconnected() => {
                let err = ctx.client_disconnected(py);
                bound.call_method1(intern!(py, "set_exception"), (err.value(py),))?;
                return Ok(());
            }
            WaitKind::Send => {
                bound.call_method1(intern!(py, "set_result"), (py.None(),))?;
                return Ok(());
            }
            WaitKind::Receive => {
                if let Some(message) = target.next_message(py)? {
                    bound.call_method1(intern!(py, "set_result"), (message,))?;
                    return Ok(());
                }
                match target.park(WaitKind::Receive, future.clone_ref(py)) {
                    Ok(()) => return Ok(()),
                    Err(returned) => future = returned,
                }
            }
        }
    }
}

fn stop(py: Python<'_>, ctx: &Context) -> PyResult<()> {
    let coro = ctx.stop.bind(py).call0()?;
    let task = ctx.create_task.bind(py).call1((coro,))?;
    ctx.inflight.bind(py).add(task)?;
    Ok(())
}

/// The traceback of `err` as text, or its plain message if formatting fails.
pub fn describe(py: Python<'_>, ctx: &Context, err: &PyErr) -> String {
    ctx.format_exception
        .bind(py)
        .call1((err.value(py),))
        .and_then(|text| text.extract::<String>())
        .unwrap_or_else(|_| err.to_string())
}
