//! An awaitable that is already complete.
//!
//! `send()` and `receive()` usually finish at once: the chunk fits in the
//! queue, or the body is already read. Returning this instead of an asyncio
//! `Future` saves creating, resolving and scheduling a future per call; the
//! `await` takes one `__next__` call and never suspends the task.

use pyo3::exceptions::{PyBaseException, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// An awaitable whose result is known when it is created.
#[pyclass(frozen, module = "fastserve", name = "Ready")]
#[derive(Debug)]
pub struct Ready {
    value: Option<Py<PyAny>>,
}

impl Ready {
    /// An awaitable that evaluates to `value`.
    pub fn with_value(value: Py<PyAny>) -> Self {
        Self { value: Some(value) }
    }

    /// An awaitable that evaluates to `None`.
    pub fn none() -> Self {
        Self { value: None }
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Finishes the `await` at once: raising StopIteration carries the value.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match &self.value {
            None => Ok(None),
            Some(value) => Err(PyStopIteration::new_err((value.clone_ref(py),))),
        }
    }

    fn send(&self, py: Python<'_>, _value: Py<PyAny>) -> PyResult<Option<Py<PyAny>>> {
        self.__next__(py)
    }

    /// Raises the exception thrown in, as a generator that has finished would.
    #[pyo3(signature = (exception, *_rest))]
    fn throw(&self, exception: Bound<'_, PyAny>, _rest: &Bound<'_, PyTuple>) -> PyResult<()> {
        if exception.is_instance_of::<PyBaseException>() {
            return Err(PyErr::from_value(exception));
        }
        Err(PyErr::from_value(exception.call0()?))
    }

    fn close(&self) {}
}
