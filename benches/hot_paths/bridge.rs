//! The hand-off of a batch of requests from a tokio thread to the Python
//! thread and back, with the app sending a response to each one.
//!
//! The tokio side runs the way a worker's does: a current-thread runtime
//! that flushes the bridge before it parks, so the requests queued in one
//! pass reach Python with one eventfd write. Each request queues its head,
//! waits for the response head and reads the body off the exchange with
//! the calls that fastserve's response body makes. On the Python thread
//! the real dispatcher builds each scope, starts the app (`raw.py`'s hello)
//! as an eager task and wakes the tokio side at the end of its pass.
//!
//! A timed request therefore covers the bridge, the Python side of a hello
//! request and the tokio side's share of the exchange. It leaves out
//! parsing the request and writing the response, which hyper does.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use futures_util::future::join_all;
use http::StatusCode;
use tokio::runtime::Runtime;

use crate::inputs::{RequestTemplate, BROWSER_HEADERS, HELLO_BODY, WRK_HEADERS};
use crate::PythonSide;
use fastserve::bridge::exchange::HeadOutcome;
use fastserve::bridge::{Bridge, Event, Exchange};

/// Requests with the browser's headers queued in one pass of the tokio
/// side. One request pays a full round of wake-ups; larger batches share it.
const BATCH_SIZES: [u64; 3] = [1, 16, 64];

/// Batch size for requests with wrk's one header, the request of the load
/// comparison. The largest batch leaves the least wake-up cost per request,
/// so this comes closest to the Python side's own cost.
const WRK_BATCH_SIZE: u64 = 64;

/// Measures the time per request for batches of [`BATCH_SIZES`] browser
/// requests and of [`WRK_BATCH_SIZE`] wrk requests.
pub fn bench(criterion: &mut Criterion, python_side: &PythonSide) {
    let bridge = &python_side.bridge;
    let runtime = tokio_side(bridge);
    let browser = RequestTemplate::new("/", &BROWSER_HEADERS);
    let wrk = RequestTemplate::new("/", &WRK_HEADERS);
    let mut cases: Vec<(String, &RequestTemplate, u64)> = BATCH_SIZES
        .iter()
        .map(|&size| (format!("browser_12_batch_{size}"), &browser, size))
        .collect();
    cases.push((
        format!("wrk_1_batch_{WRK_BATCH_SIZE}"),
        &wrk,
        WRK_BATCH_SIZE,
    ));

    let mut group = criterion.benchmark_group("bridge");
    for (name, template, batch_size) in cases {
        check_batch(&runtime, bridge, template, batch_size);
        let id = BenchmarkId::new("hello_per_request", name);
        group.bench_function(id, |bencher| {
            bencher.iter_custom(|iterations| {
                // Whole batches only: the last one may run a few requests
                // past `iterations`, so the time is scaled back to them.
                let batches = iterations.div_ceil(batch_size);
                let start = Instant::now();
                for _ in 0..batches {
                    let lengths = runtime.block_on(run_batch(bridge, template, batch_size));
                    assert!(lengths.iter().all(|&length| length == HELLO_BODY.len()));
                }
                let requests = batches * batch_size;
                start.elapsed().mul_f64(iterations as f64 / requests as f64)
            });
        });
    }
    group.finish();
}

/// Builds a current-thread runtime that flushes `bridge` each time before
/// its thread parks and runs the wake-up relay, as a worker's runtime does.
/// Call it once per process: the relay is one per process.
fn tokio_side(bridge: &Arc<Bridge>) -> Runtime {
    let park_bridge = Arc::clone(bridge);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || park_bridge.flush())
        .build()
        .expect("the tokio runtime starts");
    runtime.spawn(fastserve::bridge::relay::run());
    runtime
}

/// Sends `batch_size` requests at once and returns each body's length.
async fn run_batch(
    bridge: &Arc<Bridge>,
    template: &RequestTemplate,
    batch_size: u64,
) -> Vec<usize> {
    join_all((0..batch_size).map(|_| exchange_hello(bridge, template))).await
}

/// Queues one request for the Python thread, waits for its response and
/// reads the body. Returns the body's length.
///
/// # Panics
/// If the app fails, or responds with a status other than 200.
async fn exchange_hello(bridge: &Arc<Bridge>, template: &RequestTemplate) -> usize {
    let exchange = Exchange::with_body(Arc::clone(bridge), Bytes::new());
    let head = template.head(Arc::clone(&exchange));
    bridge.submit_deferred(Event::Request(Box::new(head)));

    let outcome = poll_fn(|context| exchange.poll_head(context)).await;
    let HeadOutcome::Started { head, .. } = outcome else {
        panic!("the app failed before it sent http.response.start");
    };
    assert_eq!(head.status, StatusCode::OK);

    let mut length = 0;
    while let Some(chunk) = poll_fn(|context| exchange.poll_chunk(context)).await {
        length += chunk.expect("the app completes the body").len();
    }
    length
}

/// Runs one batch and checks every response, so a broken hand-off fails
/// the run, not only its numbers.
fn check_batch(
    runtime: &Runtime,
    bridge: &Arc<Bridge>,
    template: &RequestTemplate,
    batch_size: u64,
) {
    let lengths = runtime.block_on(run_batch(bridge, template, batch_size));
    assert_eq!(lengths.len() as u64, batch_size);
    for length in lengths {
        assert_eq!(length, HELLO_BODY.len());
    }
}
