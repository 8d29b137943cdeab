//! The Python side of the benchmarks: the coroutines in `drivers.py`, and
//! a timer that holds the GIL for one sample at a time.

use std::ffi::CString;
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

const SOURCE: &str = include_str!("drivers.py");

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Returns the `drivers.py` module, compiling it on first use.
///
/// # Panics
/// If the module does not compile.
pub fn module(py: Python<'_>) -> &Bound<'_, PyModule> {
    MODULE
        .get_or_try_init(py, || {
            let source = CString::new(SOURCE).expect("drivers.py contains no NUL byte");
            PyModule::from_code(py, &source, c"drivers.py", c"hot_paths_drivers").map(Bound::unbind)
        })
        .expect("drivers.py compiles")
        .bind(py)
}

/// Steps `coroutine` to its end with `drivers.run_to_end` and returns its
/// result.
///
/// # Panics
/// If the coroutine raises or suspends.
pub fn run_to_end<'py>(coroutine: &Bound<'py, PyAny>) -> Bound<'py, PyAny> {
    module(coroutine.py())
        .getattr("run_to_end")
        .and_then(|run| run.call1((coroutine,)))
        .unwrap_or_else(|err| panic!("a benchmark coroutine failed: {err}"))
}

/// Runs `sample` with the GIL held and returns the time it reports.
///
/// Each criterion sample takes the GIL once, so the Python thread's event
/// loop can run its heartbeat between samples instead of waiting for the
/// whole benchmark.
pub fn with_gil(sample: impl FnOnce(Python<'_>) -> Duration) -> Duration {
    Python::attach(sample)
}

/// Times `iterations` calls of `step` with the GIL held.
pub fn time_steps(iterations: u64, mut step: impl FnMut(Python<'_>)) -> Duration {
    with_gil(|py| {
        let start = Instant::now();
        for _ in 0..iterations {
            step(py);
        }
        start.elapsed()
    })
}
