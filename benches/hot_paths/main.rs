//! Criterion micro-benchmarks of the per-request path on the Python thread:
//! building the scope, converting headers, the `send` and `receive`
//! awaitables, and the hand-off of requests through the bridge.
//!
//! `cargo bench --bench hot_paths` measures; `cargo test --release --bench
//! hot_paths` runs every benchmark once as a test, as scripts/test does.
//! Every reported time is per item: per scope, per header list, per await,
//! per request. Results and how to read them are in benches/README.md.
//!
//! Python starts as in a worker: `python::initialize` on the main thread,
//! then `PythonThread::spawn`, which loads the app, creates the event loop
//! (uvloop when importable, as `--loop auto`), runs lifespan startup and
//! installs the dispatcher on the bridge's eventfd. The app is the raw ASGI
//! hello of the load comparison, `benches/apps/raw.py`. What differs from a
//! worker:
//!
//! - There is no socket, hyper or supervisor. The bridge benchmark builds
//!   each `RequestHead` itself and reads the response off the `Exchange`
//!   with the calls that fastserve's response body makes.
//! - The interpreter finds a virtual environment only through
//!   `VIRTUAL_ENV`, because the benchmark binary does not sit in a venv's
//!   `bin/`. Without it, the base interpreter runs and the loop is asyncio.
//! - The benchmarks of single steps call into Python from the main thread,
//!   which a worker never uses again after `initialize`, while the loop
//!   thread waits in its selector. They take the GIL once per sample, so
//!   the loop's heartbeat (every 200 ms) runs between samples.

mod awaitable;
mod bridge;
mod drivers;
mod headers;
mod inputs;
mod scope;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use criterion::Criterion;
use fastserve::bridge::Bridge;
use fastserve::cli::Cli;
use fastserve::config::{Config, Environment};
use fastserve::health::Health;
use fastserve::python::{self, PythonThread, Started};

/// Directory of `raw.py`, the app that the bridge benchmark sends requests to.
const APPS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/apps");

/// Time allowed for lifespan shutdown at the end, as a worker allows it:
/// the lifespan timeout plus one second for stopping the loop.
const STOP_TIMEOUT: Duration = Duration::from_secs(python::LIFESPAN_SHUTDOWN_TIMEOUT.as_secs() + 1);

/// The running Python thread and the bridge it drains.
#[derive(Debug)]
pub struct PythonSide {
    pub bridge: Arc<Bridge>,
    thread: PythonThread,
}

impl PythonSide {
    /// Starts the interpreter and the Python thread the way a worker does,
    /// with `raw:app` and the options a worker would read from the
    /// command line and the `FASTSERVE_*` variables.
    ///
    /// # Panics
    /// If the configuration is invalid or the app does not start; the
    /// benchmarks cannot run then.
    fn start() -> (Self, Started) {
        let args = [
            "fastserve",
            "raw:app",
            "--app-dir",
            APPS_DIR,
            "--log-level",
            "warning",
        ];
        let cli = Cli::try_parse_from(args).expect("the benchmark's command line is valid");
        let config = Config::from_cli(cli, Environment::from_process())
            .expect("the benchmark's configuration is valid");
        fastserve::logging::init(
            config.log_level,
            config.access_log,
            config.log_format,
            config.access_log_format,
        );

        python::initialize().expect("the Python interpreter starts");
        let bridge = Arc::new(Bridge::new().expect("an eventfd can be created"));
        let loop_timeout = config
            .health
            .as_ref()
            .map_or(Duration::MAX, |health| health.loop_timeout);
        let health = Arc::new(Health::new(loop_timeout));
        let (thread, startup) = PythonThread::spawn(&config, Arc::clone(&bridge), health)
            .expect("the Python thread starts");
        let started = match startup.blocking_recv() {
            Ok(Ok(started)) => started,
            Ok(Err(err)) => panic!("the benchmark app failed to start: {err}"),
            Err(_) => panic!("the Python thread ended before it reported start-up"),
        };
        (Self { bridge, thread }, started)
    }

    /// Runs lifespan shutdown and stops the event loop.
    fn stop(self) {
        if !self.thread.stop(STOP_TIMEOUT) {
            eprintln!("warning: the Python thread did not stop within {STOP_TIMEOUT:?}");
        }
    }
}

fn main() {
    let (python_side, started) = PythonSide::start();
    eprintln!(
        "hot_paths: Python {}, event loop {}",
        started.python_version, started.event_loop
    );

    let mut criterion = Criterion::default().configure_from_args();
    scope::bench(&mut criterion);
    headers::bench(&mut criterion);
    awaitable::bench(&mut criterion);
    bridge::bench(&mut criterion, &python_side);
    criterion.final_summary();

    python_side.stop();
}
