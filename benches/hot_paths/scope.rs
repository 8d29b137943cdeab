//! Building the ASGI `http` scope for a typical browser request, and for
//! the load comparison's request with its one header.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::Criterion;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::drivers::time_steps;
use crate::inputs::{RequestTemplate, BROWSER_HEADERS, WRK_HEADERS};
use fastserve::bridge::{Bridge, Exchange, RequestHead};
use fastserve::python::{build_http_scope, ScopeDefaults};

/// Measures `build_http_scope` for a `GET` with a query, once with the
/// browser's 12 headers and once with wrk's one.
pub fn bench(criterion: &mut Criterion) {
    let bridge = Arc::new(Bridge::new().expect("an eventfd can be created"));
    let target = "/items/42?q=shoes&page=2";
    let cases = [
        (
            "http_get_12_headers",
            RequestTemplate::new(target, &BROWSER_HEADERS),
        ),
        (
            "http_get_1_header",
            RequestTemplate::new(target, &WRK_HEADERS),
        ),
    ];
    let defaults = Python::attach(lifespan_defaults);

    let mut group = criterion.benchmark_group("scope");
    for (name, template) in cases {
        let head = template.head(Exchange::with_body(Arc::clone(&bridge), Bytes::new()));
        Python::attach(|py| check_scope(py, &defaults, &head));
        group.bench_function(name, |bencher| {
            bencher.iter_custom(|iterations| {
                time_steps(iterations, |py| {
                    let scope = build_http_scope(py, &defaults, black_box(&head));
                    black_box(scope.expect("the scope is built"));
                })
            });
        });
    }
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
    assert_eq!(item("headers").len().expect("a list"), head.headers.len());
    let client: (String, u16) = item("client").extract().expect("a (host, port) tuple");
    assert_eq!(client, ("192.168.1.23".to_owned(), 52814));
    assert!(item("state").is_instance_of::<PyDict>());
}
