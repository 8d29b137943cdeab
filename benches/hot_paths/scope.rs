//! Building the ASGI `http` scope for a typical browser request.

use std::hint::black_box;
use std::sync::Arc;

use criterion::Criterion;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::drivers::time_steps;
use crate::inputs::RequestTemplate;
use fastserve::bridge::{Bridge, Exchange, RequestHead};
use fastserve::python::{build_http_scope, ScopeDefaults};

/// Measures `build_http_scope` for a `GET` with a query and 12 headers.
pub fn bench(criterion: &mut Criterion) {
    let bridge = Arc::new(Bridge::new().expect("an eventfd can be created"));
    let exchange = Exchange::with_body(bridge, bytes::Bytes::new());
    let head = RequestTemplate::new("/items/42?q=shoes&page=2").head(exchange);
    let defaults = Python::attach(|py| {
        let defaults = lifespan_defaults(py);
        check_scope(py, &defaults, &head);
        defaults
    });

    let mut group = criterion.benchmark_group("scope");
    group.bench_function("http_get_12_headers", |bencher| {
        bencher.iter_custom(|iterations| {
            time_steps(iterations, |py| {
                let scope = build_http_scope(py, &defaults, black_box(&head));
                black_box(scope.expect("the scope is built"));
            })
        });
    });
    group.finish();
}

/// Builds the defaults of an app that runs lifespan and is mounted at the
/// root, as a FastAPI app served without `--root-path` is. Each scope then
/// carries a copy of the (empty) lifespan state.
fn lifespan_defaults(py: Python<'_>) -> ScopeDefaults {
    ScopeDefaults {
        root_path: PyString::new(py, "").unbind(),
        state: Some(PyDict::new(py).unbind()),
    }
}

/// Checks the scope's key values once, so a change that breaks the scope
/// fails the benchmark run, not only its numbers.
fn check_scope(py: Python<'_>, defaults: &ScopeDefaults, head: &RequestHead) {
    let scope = build_http_scope(py, defaults, head).expect("the scope is built");
    let item = |key: &str| {
        scope
            .get_item(key)
            .expect("scope lookups do not raise")
            .unwrap_or_else(|| panic!("the scope has no {key:?}"))
    };
    let text = |key: &str| item(key).extract::<String>().expect("a str value");
    assert_eq!(text("type"), "http");
    assert_eq!(text("method"), "GET");
    assert_eq!(text("path"), "/items/42");

    let query: Vec<u8> = item("query_string").extract().expect("a bytes value");
    assert_eq!(query, b"q=shoes&page=2");
    assert_eq!(item("headers").len().expect("a list"), 12);
    let client: (String, u16) = item("client").extract().expect("a (host, port) tuple");
    assert_eq!(client, ("192.168.1.23".to_owned(), 52814));
    assert!(item("state").is_instance_of::<PyDict>());
}
