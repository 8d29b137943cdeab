//! Converting headers across the boundary: request headers into the
//! scope's list of byte pairs, and ASGI response headers into a `HeaderMap`.

use std::hint::black_box;

use criterion::Criterion;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::drivers::time_steps;
use crate::inputs::{
    asgi_headers, header_map, BROWSER_HEADERS, FASTAPI_JSON_HEADERS, FASTAPI_MIDDLEWARE_HEADERS,
};
use fastserve::python::{convert_headers, header_list};

/// Measures `header_list` for the browser's 12 request headers and
/// `convert_headers` for two sets of FastAPI response headers.
pub fn bench(criterion: &mut Criterion) {
    let request_headers = header_map(&BROWSER_HEADERS);
    let (json_headers, middleware_headers) = Python::attach(|py| {
        check_request_headers(py, &request_headers);
        let json = asgi_headers(py, &FASTAPI_JSON_HEADERS);
        let middleware = asgi_headers(py, &FASTAPI_MIDDLEWARE_HEADERS);
        check_response_headers(&json, &FASTAPI_JSON_HEADERS);
        check_response_headers(&middleware, &FASTAPI_MIDDLEWARE_HEADERS);
        (json.unbind(), middleware.unbind())
    });

    let mut group = criterion.benchmark_group("headers");
    group.bench_function("request_to_python/browser_12", |bencher| {
        bencher.iter_custom(|iterations| {
            time_steps(iterations, |py| {
                let list = header_list(py, black_box(&request_headers), None);
                black_box(list.expect("the header list is built"));
            })
        });
    });
    let response_sets = [
        ("response_from_python/fastapi_json_2", &json_headers),
        (
            "response_from_python/with_middleware_7",
            &middleware_headers,
        ),
    ];
    for (name, headers) in response_sets {
        group.bench_function(name, |bencher| {
            bencher.iter_custom(|iterations| {
                time_steps(iterations, |py| {
                    let map = convert_headers(black_box(headers.bind(py)), "http.response.start");
                    black_box(map.expect("the headers are valid"));
                })
            });
        });
    }
    group.finish();
}

/// Checks that the list contains every header as a `(name, value)` pair of
/// bytes, in the order of the map.
fn check_request_headers(py: Python<'_>, headers: &http::HeaderMap) {
    let list = header_list(py, headers, None).expect("the header list is built");
    assert_eq!(list.len(), headers.len());
    for (item, (name, value)) in list.iter().zip(headers) {
        let pair: (Vec<u8>, Vec<u8>) = item.extract().expect("a pair of bytes");
        assert_eq!(pair.0, name.as_str().as_bytes());
        assert_eq!(pair.1, value.as_bytes());
    }
}

/// Checks that every ASGI header arrives in the map with its value.
fn check_response_headers(list: &Bound<'_, PyList>, expected: &[(&str, &str)]) {
    let (map, sent) =
        convert_headers(list.as_any(), "http.response.start").expect("the headers are valid");
    assert!(sent.is_none(), "lower-case grouped headers need no restore");
    assert_eq!(map.len(), expected.len());
    for (name, value) in expected {
        assert_eq!(map.get(*name).map(|v| v.as_bytes()), Some(value.as_bytes()));
    }
}
