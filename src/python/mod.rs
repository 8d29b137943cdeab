//! The Python thread: the embedded interpreter, the asyncio loop, the app.
//!
//! This is the only module that touches pyo3. The main thread initialises
//! CPython; one OS thread then imports the app, runs lifespan startup and
//! runs the event loop until an [`Event::Stop`] arrives through the bridge.
//! Tokio threads never attach to the interpreter.

mod awaitable;
mod dispatch;
mod headers;
mod http;
mod interpreter;
mod scope;
mod websocket;
mod websocket_message;

use std::ffi::CString;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule, PySet, PyString};

use tokio::sync::oneshot;

use crate::bridge::{Bridge, Event};
use crate::cli::{LifespanMode, LoopKind};
use crate::config::{AppSource, Config};
use crate::health::Health;
use dispatch::{Context, Dispatcher};

// The request-path steps the criterion benchmarks in benches/ measure one
// by one. Everything else in the submodules stays private to the crate.
pub use awaitable::Ready;
pub use headers::convert_headers;
pub use http::{HttpCycle, DISPATCHING};
pub use scope::{build_http_scope, header_list, ScopeDefaults};

const RUNTIME_SOURCE: &str = include_str!("runtime.py");
const DEMO_SOURCE: &str = include_str!("demo.py");

/// How long lifespan shutdown may take before the loop is stopped anyway.
pub const LIFESPAN_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the app could not be served. Each leads to exit code 3.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Interpreter(#[from] interpreter::InitError),
    /// The app, its import or its lifespan startup failed; the text is the
    /// message or traceback for the operator.
    #[error("{0}")]
    App(String),
    #[error("failed to start the Python thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the Python thread ended before it reported start-up")]
    ThreadDied,
}

/// Facts about the running interpreter, for the start-up log.
#[derive(Debug)]
pub struct Started {
    pub event_loop: String,
    pub python_version: String,
}

/// The result of start-up, sent by the Python thread once the app is ready.
pub type StartupResult = Result<Started, StartupError>;

/// Starts the embedded interpreter on the calling thread, which then never
/// runs Python again. Call once, before [`PythonThread::spawn`].
pub fn initialize() -> Result<(), StartupError> {
    let venv = interpreter::find_virtualenv();
    interpreter::initialize(venv.as_deref())?;
    // `threading` takes the thread that first imports it as the main
    // thread. Import it here so that this thread, which Python's signal
    // module also treats as main, is the one, and the loop thread is not:
    // uvloop then leaves signal handling alone.
    Python::attach(|py| py.import("threading").map(drop))
        .map_err(|err| StartupError::App(format!("importing threading failed: {err}")))
}

/// The running Python thread.
#[derive(Debug)]
pub struct PythonThread {
    thread: JoinHandle<()>,
    done: mpsc::Receiver<()>,
    bridge: Arc<Bridge>,
}

impl PythonThread {
    /// Starts the Python thread, which imports the app, runs lifespan
    /// startup and reports the outcome on the returned channel.
    pub fn spawn(
        config: &Config,
        bridge: Arc<Bridge>,
        health: Arc<Health>,
    ) -> Result<(Self, oneshot::Receiver<StartupResult>), StartupError> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let config = config.clone();
        let thread_bridge = Arc::clone(&bridge);
        let thread = std::thread::Builder::new()
            .name("python".into())
            .spawn(move || {
                run(&config, thread_bridge, health, ready_tx);
                let _ = done_tx.send(());
            })?;
        Ok((
            Self {
                thread,
                done: done_rx,
                bridge,
            },
            ready_rx,
        ))
    }

    /// Asks the loop to run lifespan shutdown and stop, and waits up to
    /// `timeout` for it. Returns whether it stopped in time.
    pub fn stop(self, timeout: Duration) -> bool {
        self.bridge.submit(Event::Stop);
        let stopped = self.done.recv_timeout(timeout).is_ok();
        if stopped {
            let _ = self.thread.join();
        }
        stopped
    }
}

fn run(
    config: &Config,
    bridge: Arc<Bridge>,
    health: Arc<Health>,
    ready: oneshot::Sender<StartupResult>,
) {
    Python::attach(|py| {
        let event_loop = match prepare(py, config, bridge, health) {
            Ok(prepared) => prepared,
            Err(err) => {
                let _ = ready.send(Err(err));
                return;
            }
        };
        let started = Started {
            event_loop: event_loop.1,
            python_version: Python::version_str()
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned(),
        };
        let _ = ready.send(Ok(started));

        if let Err(err) = event_loop.0.call_method0(intern!(py, "run_forever")) {
            tracing::error!(error = %err, "the event loop stopped with an error");
        }
    });
}

/// Loads the app, creates the loop, runs lifespan startup and installs the
/// dispatcher. Returns the loop and its name.
fn prepare<'py>(
    py: Python<'py>,
    config: &Config,
    bridge: Arc<Bridge>,
    health: Arc<Health>,
) -> Result<(Bound<'py, PyAny>, String), StartupError> {
    let runtime = load_source(
        py,
        RUNTIME_SOURCE,
        "fastserve_runtime.py",
        "fastserve._runtime",
    )
    .map_err(|err| StartupError::App(format!("fastserve's runtime failed to load: {err}")))?;
    let fail = |err: PyErr| StartupError::App(startup_message(py, &runtime, &err));

    let app = load_app(py, &runtime, config).map_err(fail)?;
    let loop_kind = match config.event_loop {
        LoopKind::Auto => "auto",
        LoopKind::Asyncio => "asyncio",
        LoopKind::Uvloop => "uvloop",
    };
    let (event_loop, loop_name): (Bound<'py, PyAny>, String) = runtime
        .call_method1("new_event_loop", (loop_kind,))
        .and_then(|r| r.extract())
        .map_err(fail)?;
    py.import("asyncio")
        .and_then(|asyncio| asyncio.call_method1("set_event_loop", (&event_loop,)))
        .map_err(fail)?;

    let mode = match config.lifespan {
        LifespanMode::Auto => "auto",
        LifespanMode::On => "on",
        LifespanMode::Off => "off",
    };
    let log = wrap_pyfunction!(log_from_python, py).map_err(fail)?;
    let lifespan = runtime
        .getattr("Lifespan")
        .and_then(|cls| cls.call1((&app, mode, log)))
        .map_err(fail)?;
    let startup = lifespan.call_method0("startup").map_err(fail)?;
    event_loop
        .call_method1("run_until_complete", (startup,))
        .map_err(fail)?;

    let context =
        build_context(py, config, bridge, &runtime, app, &event_loop, &lifespan).map_err(fail)?;
    let fd = context.bridge.fd();
    dispatch::install(py, context).map_err(fail)?;
    let dispatcher = Bound::new(py, Dispatcher::default()).map_err(fail)?;
    event_loop
        .call_method1("add_reader", (fd, dispatcher))
        .map_err(fail)?;

    let call_later = event_loop.getattr("call_later").map_err(fail)?.unbind();
    let heartbeat = Bound::new(py, Heartbeat { health, call_later }).map_err(fail)?;
    heartbeat.call0().map_err(fail)?;
    Ok((event_loop, loop_name))
}

fn load_app<'py>(
    py: Python<'py>,
    runtime: &Bound<'py, PyModule>,
    config: &Config,
) -> PyResult<Bound<'py, PyAny>> {
    match &config.app {
        AppSource::Demo => {
            load_source(py, DEMO_SOURCE, "fastserve_demo.py", "fastserve_demo")?.getattr("app")
        }
        AppSource::Import { module, attribute } => {
            let app_dir = config.app_dir.to_string_lossy().into_owned();
            runtime.call_method1("load_app", (module, attribute, config.factory, app_dir))
        }
    }
}

fn build_context<'py>(
    py: Python<'py>,
    config: &Config,
    bridge: Arc<Bridge>,
    runtime: &Bound<'py, PyModule>,
    app: Bound<'py, PyAny>,
    event_loop: &Bound<'py, PyAny>,
    lifespan: &Bound<'py, PyAny>,
) -> PyResult<Context> {
    let supported: bool = lifespan.getattr("supported")?.extract()?;
    let state = if supported {
        Some(lifespan.getattr("state")?.cast_into::<PyDict>()?.unbind())
    } else {
        None
    };

    let eager_task = if py.version_info() >= (3, 12) {
        let kwargs = PyDict::new(py);
        kwargs.set_item("loop", event_loop)?;
        kwargs.set_item("eager_start", true)?;
        Some((
            py.import("asyncio")?.getattr("Task")?.unbind(),
            kwargs.unbind(),
        ))
    } else {
        None
    };

    let stop_fn = runtime.getattr("stop")?;
    let timeout = LIFESPAN_SHUTDOWN_TIMEOUT.as_secs_f64();
    let functools = py.import("functools")?;
    let stop = functools.call_method1("partial", (stop_fn, lifespan, timeout))?;

    Ok(Context {
        bridge,
        app: app.unbind(),
        create_future: event_loop.getattr("create_future")?.unbind(),
        call_soon: event_loop.getattr("call_soon")?.unbind(),
        create_task: event_loop.getattr("create_task")?.unbind(),
        inflight: PySet::empty(py)?.unbind(),
        ready_none: Py::new(py, awaitable::Ready::none())?,
        client_disconnected: runtime.getattr("ClientDisconnected")?.unbind(),
        format_exception: runtime.getattr("format_exception")?.unbind(),
        scope_defaults: ScopeDefaults {
            root_path: PyString::new(py, &config.root_path).unbind(),
            state,
        },
        eager_task,
        stop: stop.unbind(),
    })
}

/// Compiles `source` as a module named `module_name`.
fn load_source<'py>(
    py: Python<'py>,
    source: &str,
    file_name: &str,
    module_name: &str,
) -> PyResult<Bound<'py, PyModule>> {
    let to_c = |text: &str| {
        CString::new(text)
            .map_err(|_| pyo3::exceptions::PyValueError::new_err("NUL byte in embedded source"))
    };
    PyModule::from_code(py, &to_c(source)?, &to_c(file_name)?, &to_c(module_name)?)
}

/// The operator-facing text for a start-up failure: the message alone for
/// the runtime's own `StartupError`, the full traceback for anything else.
fn startup_message(py: Python<'_>, runtime: &Bound<'_, PyModule>, err: &PyErr) -> String {
    let is_startup_error = runtime
        .getattr("StartupError")
        .map(|cls| err.value(py).is_instance(&cls).unwrap_or(false))
        .unwrap_or(false);
    if is_startup_error {
        return err.value(py).to_string();
    }
    runtime
        .getattr("format_exception")
        .and_then(|format| format.call1((err.value(py),)))
        .and_then(|text| text.extract::<String>())
        .unwrap_or_else(|_| err.to_string())
}

/// A callback that records a heartbeat in [`Health`] and schedules itself
/// again, so a blocked event loop shows as a stale heartbeat.
#[pyclass(frozen, module = "fastserve")]
#[derive(Debug)]
struct Heartbeat {
    health: Arc<Health>,
    call_later: Py<PyAny>,
}

#[pymethods]
impl Heartbeat {
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.health.beat();
        let delay = crate::health::HEARTBEAT_INTERVAL.as_secs_f64();
        this.call_later.bind(slf.py()).call1((delay, slf)).map(drop)
    }
}

/// Log lines written by the Python runtime glue, at the level it names.
#[pyfunction]
fn log_from_python(level: &str, message: &str) {
    match level {
        "error" => tracing::error!("{message}"),
        "warning" => tracing::warn!("{message}"),
        "debug" => tracing::debug!("{message}"),
        _ => tracing::info!("{message}"),
    }
}
