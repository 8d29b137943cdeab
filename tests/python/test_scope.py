"""The HTTP scope: its types on every server, and fastserve's scope compared with uvicorn's.

Both servers serve raw_apps:app with `--root-path /api`, and the same request
bytes go to each. The scopes they report must be equal, except for the keys
in KNOWN_SCOPE_DIFFERENCES, which get checks of their own.
"""

import json
from collections.abc import Callable
from typing import Any

import pytest

from servers import FASTSERVE, UVICORN, Server

SharedServer = Callable[..., Server]

ROOT_PATH = "/api"

# Scope keys in which fastserve and uvicorn may differ, and why. Everything
# else in the scope must be equal.
KNOWN_SCOPE_DIFFERENCES = {
    "server": "each server reports its own listening port",
    "client": "each connection has its own ephemeral client port",
    "asgi": 'fastserve implements HTTP spec_version "2.5", uvicorn 0.55 reports "2.3"',
    "extensions": "each server offers its own extensions, and uvicorn offers none",
    "raw_path": (
        "fastserve passes the path bytes as received, as the ASGI spec defines raw_path; "
        "uvicorn 0.55 puts the root path in front of them"
    ),
}

# Request bytes sent to both servers. Each target is relative to the root path.
SCOPE_REQUESTS = {
    "percent-encoded path and repeated query": (
        b"GET /scope/a%20b%2Fc/%C3%A9?x=1&y=%20&x=2 HTTP/1.1\r\n"
        b"Host: example.test\r\n"
        b"X-Repeated: one\r\n"
        b"Mixed-Case-Name: Mixed Case Value\r\n"
        b"X-Repeated: two\r\n"
        b"\r\n"
    ),
    "plain path": b"GET /scope/plain HTTP/1.1\r\nHost: example.test\r\n\r\n",
    "http/1.0 without host": b"GET /scope/old?legacy HTTP/1.0\r\n\r\n",
    "post with body": (
        b"POST /scope/form HTTP/1.1\r\n"
        b"Host: example.test\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 11\r\n"
        b"\r\n"
        b"hello=world"
    ),
    "empty query string": b"GET /scope? HTTP/1.1\r\nHost: example.test\r\n\r\n",
}

# The headers of the "percent-encoded path and repeated query" request, in order.
REPEATED_HEADERS_IN_ORDER = [
    ["host", "example.test"],
    ["x-repeated", "one"],
    ["mixed-case-name", "Mixed Case Value"],
    ["x-repeated", "two"],
]


def fetch_scope(server: Server, request: bytes) -> dict[str, Any]:
    """Send `request` and return the JSON report of raw_apps:scope_dump."""
    with server.open() as conn:
        conn.send(request)
        response = conn.read_response()
    assert response.status == 200, response.body
    return json.loads(response.body)


def without_known_differences(report: dict[str, Any]) -> dict[str, Any]:
    """Return the report without the keys in KNOWN_SCOPE_DIFFERENCES."""
    scope = {k: v for k, v in report["scope"].items() if k not in KNOWN_SCOPE_DIFFERENCES}
    types = {k: v for k, v in report["types"].items() if k not in KNOWN_SCOPE_DIFFERENCES}
    return {**report, "scope": scope, "types": types}


def scope_differences(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, object]:
    """Return {key: (fastserve value, uvicorn value)} for every unexpected difference."""
    ours = without_known_differences(ours)
    theirs = without_known_differences(theirs)
    differences: dict[str, object] = {}
    for section in ("scope", "types"):
        for key in sorted(set(ours[section]) | set(theirs[section])):
            mine = ours[section].get(key, "<missing>")
            other = theirs[section].get(key, "<missing>")
            if mine != other:
                differences[f"{section}.{key}"] = (mine, other)
    for key in ("header_types", "body_length"):
        if ours[key] != theirs[key]:
            differences[key] = (ours[key], theirs[key])
    return differences


@pytest.mark.parametrize("case", sorted(SCOPE_REQUESTS))
def test_scope_types(kind: str, shared_server: SharedServer, case: str) -> None:
    server = shared_server(kind, "raw_apps:app", "--root-path", ROOT_PATH)
    report = fetch_scope(server, SCOPE_REQUESTS[case])
    scope = report["scope"]
    types = report["types"]
    assert scope["type"] == "http"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == ROOT_PATH
    assert scope["path"].startswith(ROOT_PATH + "/scope")
    assert types["path"] == "str"
    assert types["raw_path"] == "bytes"
    assert types["query_string"] == "bytes"
    assert types["headers"] in ("list", "tuple")
    # The HTTP/1.0 request has no headers at all.
    assert report["header_types"] in ([], ["bytes"])
    assert types["client"] in ("list", "tuple")
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["asgi"]["version"] == "3.0"


def test_scope_percent_decoding(kind: str, shared_server: SharedServer) -> None:
    server = shared_server(kind, "raw_apps:app", "--root-path", ROOT_PATH)
    report = fetch_scope(server, SCOPE_REQUESTS["percent-encoded path and repeated query"])
    scope = report["scope"]
    assert scope["path"] == "/api/scope/a b/c/\u00e9"
    # Whether the root path comes first differs, see KNOWN_SCOPE_DIFFERENCES.
    assert scope["raw_path"].endswith("/scope/a%20b%2Fc/%C3%A9")
    assert scope["query_string"] == "x=1&y=%20&x=2"
    assert scope["method"] == "GET"
    assert scope["http_version"] == "1.1"
    assert scope["headers"] == REPEATED_HEADERS_IN_ORDER


def test_scope_header_order_kept(kind: str, shared_server: SharedServer) -> None:
    """Check the order across names too, which the ASGI spec leaves free but uvicorn keeps."""
    server = shared_server(kind, "raw_apps:app", "--root-path", ROOT_PATH)
    report = fetch_scope(server, SCOPE_REQUESTS["percent-encoded path and repeated query"])
    assert report["scope"]["headers"] == REPEATED_HEADERS_IN_ORDER


def test_scope_header_order_kept_when_pipelined(kind: str, shared_server: SharedServer) -> None:
    """The second head follows a chunked body, so its order comes from framing-aware scanning."""
    server = shared_server(kind, "raw_apps:app", "--root-path", ROOT_PATH)
    first = (
        b"POST /scope/first HTTP/1.1\r\nHost: example.test\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    with server.open() as conn:
        conn.send(first + SCOPE_REQUESTS["percent-encoded path and repeated query"])
        responses = [conn.read_response(), conn.read_response()]
    assert [response.status for response in responses] == [200, 200]
    assert json.loads(responses[1].body)["scope"]["headers"] == REPEATED_HEADERS_IN_ORDER


def test_scope_http10(kind: str, shared_server: SharedServer) -> None:
    server = shared_server(kind, "raw_apps:app", "--root-path", ROOT_PATH)
    report = fetch_scope(server, SCOPE_REQUESTS["http/1.0 without host"])
    assert report["scope"]["http_version"] == "1.0"
    assert report["scope"]["query_string"] == "legacy"


@pytest.mark.fastserve_only
@pytest.mark.parametrize("case", sorted(SCOPE_REQUESTS))
def test_scope_matches_uvicorn(kind: str, shared_server: SharedServer, case: str) -> None:
    fastserve = shared_server(FASTSERVE, "raw_apps:app", "--root-path", ROOT_PATH)
    uvicorn = shared_server(UVICORN, "raw_apps:app", "--root-path", ROOT_PATH)
    ours = fetch_scope(fastserve, SCOPE_REQUESTS[case])
    theirs = fetch_scope(uvicorn, SCOPE_REQUESTS[case])
    assert scope_differences(ours, theirs) == {}


@pytest.mark.fastserve_only
def test_scope_known_differences(kind: str, shared_server: SharedServer) -> None:
    fastserve = shared_server(FASTSERVE, "raw_apps:app", "--root-path", ROOT_PATH)
    scope = fetch_scope(fastserve, SCOPE_REQUESTS["plain path"])["scope"]
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["server"] == ["127.0.0.1", fastserve.port]
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope.get("extensions", {}), dict)
    assert scope["raw_path"] == "/scope/plain"
