//! The `send` and `receive` awaitables: `Ready` against the resolved
//! asyncio future it replaces, and `HttpCycle.send` and `receive` for a
//! request whose response and body go through at once.

use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use futures_util::task::noop_waker_ref;
use http::StatusCode;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::drivers::{self, run_to_end, with_gil};
use crate::inputs::{asgi_headers, HELLO_BODY};
use fastserve::bridge::exchange::HeadOutcome;
use fastserve::bridge::{Bridge, Exchange};
use fastserve::python::{HttpCycle, Ready, DISPATCHING};

/// Exchanges made per batch for the `HttpCycle` benchmarks. Each batch is
/// made before its timer starts and freed after it stops, so the numbers
/// leave out creating and freeing the exchange and its `HttpCycle`.
const CYCLES_PER_BATCH: u64 = 256;

/// The response headers `benches/apps/raw.py` sends with its hello.
const HELLO_HEADERS: [(&str, &str); 2] = [("content-type", "text/plain"), ("content-length", "13")];

pub fn bench(criterion: &mut Criterion) {
    bench_ready(criterion);
    bench_cycle(criterion);
}

/// Measures one `await` of a `Ready`, as `send` returns it, against
/// creating, resolving and awaiting an asyncio future.
fn bench_ready(criterion: &mut Criterion) {
    let (ready, create_future, event_loop) = Python::attach(|py| {
        let ready = Py::new(py, Ready::none()).expect("a Ready can be created");
        // A loop of the type the server runs only creates the futures here;
        // awaiting a future that is done does not need a running loop.
        let event_loop = new_event_loop(py);
        let create_future = event_loop
            .getattr("create_future")
            .expect("loops have create_future");
        (ready, create_future.unbind(), event_loop.unbind())
    });

    let mut group = criterion.benchmark_group("awaitable");
    group.bench_function("ready_await", |bencher| {
        bencher.iter_custom(|iterations| {
            with_gil(|py| {
                let coroutine = drivers::module(py)
                    .getattr("await_repeatedly")
                    .and_then(|f| f.call1((&ready, iterations)))
                    .expect("the coroutine is created");
                let start = Instant::now();
                black_box(run_to_end(&coroutine));
                start.elapsed()
            })
        });
    });
    group.bench_function("future_create_resolve_await", |bencher| {
        bencher.iter_custom(|iterations| {
            with_gil(|py| {
                let coroutine = drivers::module(py)
                    .getattr("await_done_futures")
                    .and_then(|f| f.call1((&create_future, iterations)))
                    .expect("the coroutine is created");
                let start = Instant::now();
                black_box(run_to_end(&coroutine));
                start.elapsed()
            })
        });
    });
    group.finish();

    Python::attach(|py| {
        event_loop
            .bind(py)
            .call_method0("close")
            .expect("the loop closes");
    });
}

/// Measures `send` of a whole response (start, then body) and one
/// `receive` of a body that is already there, each on a fresh exchange.
fn bench_cycle(criterion: &mut Criterion) {
    let bridge = Arc::new(Bridge::new().expect("an eventfd can be created"));
    let (start, body) = Python::attach(|py| {
        let (start, body) = hello_messages(py);
        check_send(py, &bridge, &start, &body);
        check_receive(py, &bridge);
        (start.unbind(), body.unbind())
    });

    let mut group = criterion.benchmark_group("http_cycle");
    group.bench_function("send_start_and_body", |bencher| {
        bencher.iter_custom(|iterations| {
            time_batches(iterations, |py, count| {
                let (_exchanges, sends) = new_cycles(py, &bridge, count, "send");
                let coroutine = drivers::module(py)
                    .getattr("send_responses")
                    .and_then(|f| f.call1((sends, &start, &body)))
                    .expect("the coroutine is created");
                let start = Instant::now();
                as_dispatcher(|| black_box(run_to_end(&coroutine)));
                start.elapsed()
            })
        });
    });
    group.bench_function("receive_whole_body", |bencher| {
        bencher.iter_custom(|iterations| {
            time_batches(iterations, |py, count| {
                let (_exchanges, receives) = new_cycles(py, &bridge, count, "receive");
                let coroutine = drivers::module(py)
                    .getattr("receive_from_each")
                    .and_then(|f| f.call1((receives,)))
                    .expect("the coroutine is created");
                let start = Instant::now();
                as_dispatcher(|| black_box(run_to_end(&coroutine)));
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// Runs `batch` for `iterations` items in batches of [`CYCLES_PER_BATCH`]
/// and adds up the times it reports.
fn time_batches(iterations: u64, mut batch: impl FnMut(Python<'_>, u64) -> Duration) -> Duration {
    with_gil(|py| {
        let mut total = Duration::ZERO;
        let mut remaining = iterations;
        while remaining > 0 {
            let count = remaining.min(CYCLES_PER_BATCH);
            total += batch(py, count);
            remaining -= count;
        }
        total
    })
}

/// Runs `step` as the dispatcher runs an eager task: with `DISPATCHING`
/// set, so a response start is held back for the body that follows instead
/// of being flushed by a callback on the event loop.
fn as_dispatcher<T>(step: impl FnOnce() -> T) -> T {
    DISPATCHING.set(true);
    let output = step();
    DISPATCHING.set(false);
    output
}

/// Makes `count` exchanges whose request body is complete and empty, each
/// with its `HttpCycle`, and returns them with the cycles' bound `method`
/// (`"send"` or `"receive"`) in a list.
fn new_cycles<'py>(
    py: Python<'py>,
    bridge: &Arc<Bridge>,
    count: u64,
    method: &str,
) -> (Vec<Arc<Exchange>>, Bound<'py, PyList>) {
    let methods = PyList::empty(py);
    let mut exchanges = Vec::new();
    for _ in 0..count {
        let exchange = Exchange::with_body(Arc::clone(bridge), Bytes::new());
        let cycle = Bound::new(py, HttpCycle::new(Arc::clone(&exchange)))
            .expect("an HttpCycle can be created");
        let bound_method = cycle.getattr(method).expect("HttpCycle has the method");
        methods.append(bound_method).expect("lists accept items");
        exchanges.push(exchange);
    }
    (exchanges, methods)
}

/// Builds the two messages of `raw.py`'s hello response.
fn hello_messages(py: Python<'_>) -> (Bound<'_, PyDict>, Bound<'_, PyDict>) {
    let start = PyDict::new(py);
    let body = PyDict::new(py);
    let filled = (|| -> PyResult<()> {
        start.set_item("type", "http.response.start")?;
        start.set_item("status", 200)?;
        start.set_item("headers", asgi_headers(py, &HELLO_HEADERS))?;
        body.set_item("type", "http.response.body")?;
        body.set_item("body", PyBytes::new(py, HELLO_BODY))?;
        Ok(())
    })();
    filled.expect("dicts accept items");
    (start, body)
}

/// Checks that sending the hello through fresh cycles completes at once and
/// hands hyper a 200 with the body and its exact length.
fn check_send(
    py: Python<'_>,
    bridge: &Arc<Bridge>,
    start: &Bound<'_, PyDict>,
    body: &Bound<'_, PyDict>,
) {
    let (exchanges, sends) = new_cycles(py, bridge, 2, "send");
    let coroutine = drivers::module(py)
        .getattr("send_responses")
        .and_then(|f| f.call1((sends, start, body)))
        .expect("the coroutine is created");
    as_dispatcher(|| run_to_end(&coroutine));

    let mut context = Context::from_waker(noop_waker_ref());
    for exchange in exchanges {
        let Poll::Ready(HeadOutcome::Started { head, body_len }) = exchange.poll_head(&mut context)
        else {
            panic!("send did not hand the response head over");
        };
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers.len(), HELLO_HEADERS.len());
        assert_eq!(body_len, Some(HELLO_BODY.len() as u64));
        let Poll::Ready(Some(Ok(chunk))) = exchange.poll_chunk(&mut context) else {
            panic!("send did not queue the body");
        };
        assert_eq!(chunk.as_ref(), HELLO_BODY);
    }
}

/// Checks that `receive` on a request with an empty, complete body returns
/// the one `http.request` message at once.
fn check_receive(py: Python<'_>, bridge: &Arc<Bridge>) {
    let (_exchanges, receives) = new_cycles(py, bridge, 2, "receive");
    let coroutine = drivers::module(py)
        .getattr("receive_from_each")
        .and_then(|f| f.call1((receives,)))
        .expect("the coroutine is created");
    let message = as_dispatcher(|| run_to_end(&coroutine));
    let message = message.cast::<PyDict>().expect("receive returns a dict");
    let item = |key: &str| {
        message
            .get_item(key)
            .expect("dict lookups do not raise")
            .unwrap_or_else(|| panic!("the message has no {key:?}"))
    };
    let kind: String = item("type").extract().expect("a str value");
    assert_eq!(kind, "http.request");
    let body: Vec<u8> = item("body").extract().expect("a bytes value");
    assert!(body.is_empty());
    assert!(!item("more_body").is_truthy().expect("a bool value"));
}

/// Creates an event loop of the kind `--loop auto` picks: uvloop when it is
/// importable, else asyncio.
fn new_event_loop(py: Python<'_>) -> Bound<'_, PyAny> {
    let uvloop = py.import("uvloop");
    let event_loop = match uvloop {
        Ok(uvloop) => uvloop.call_method0("new_event_loop"),
        Err(_) => py
            .import("asyncio")
            .and_then(|asyncio| asyncio.call_method0("new_event_loop")),
    };
    event_loop.expect("an event loop can be created")
}
