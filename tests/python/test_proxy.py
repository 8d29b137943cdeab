"""Proxy headers: the client address and scheme a trusted proxy reports.

Raw requests go to proxy_apps:app, whose /scope route returns the scope
values proxy headers change. The uvicorn-compatible cases (X-Forwarded-For
and X-Forwarded-Proto) run against uvicorn too and must give the same client
and scheme. `Forwarded`, X-Forwarded-Host/Port/Prefix are fastserve only.
"""

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from rawhttp import Connection
from servers import Server, free_port

Launch = Callable[..., Server]

APP = "proxy_apps:app"
FASTAPI_APP = "proxy_apps:fastapi_app"
# A second loopback address to connect from, so one machine has two peers.
OTHER_LOOPBACK = "127.0.0.2"


def scope_via(
    server: Server,
    headers: list[tuple[str, str]],
    source: str | None = None,
    target: str = "/scope",
) -> dict[str, Any]:
    """Send GET `target` with `headers`, optionally from `source`, and return the JSON body."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((server.host, server.port))
    with Connection(sock) as conn:
        response = conn.request("GET", target, headers)
    assert response.status == 200, response.body
    return json.loads(response.body)


def raw_scope(server: Server, request: bytes) -> dict[str, Any]:
    """Send the raw `request` bytes and return the JSON body."""
    with server.open() as conn:
        conn.send(request)
        response = conn.read_response()
    assert response.status == 200, response.body
    return json.loads(response.body)


def can_bind(address: str) -> bool:
    """Return whether a socket can bind `address` on this machine."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
        return True
    except OSError:
        return False


# (name, X-Forwarded-For value, expected client host) for a trusted peer with
# --forwarded-allow-ips 127.0.0.1,10.0.0.0/8.
XFF_CASES = [
    ("single hop", "203.0.113.7", "203.0.113.7"),
    ("multi hop, trusted right", "203.0.113.7, 10.0.0.5, 10.1.2.3", "203.0.113.7"),
    ("spoofed left entry", "198.51.100.66, 203.0.113.7, 10.0.0.5", "203.0.113.7"),
    ("all hops trusted", "10.0.0.1, 10.0.0.2", "10.0.0.1"),
    ("ipv6 client", "2001:db8::17, 10.0.0.5", "2001:db8::17"),
    ("client with port", "203.0.113.7:4711", "203.0.113.7"),
]


@pytest.mark.parametrize(("name", "xff", "expected"), XFF_CASES, ids=[c[0] for c in XFF_CASES])
def test_xff_client_matrix(kind: str, launch: Launch, name: str, xff: str, expected: str) -> None:
    server = launch(kind, APP, "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8")
    scope = scope_via(server, [("X-Forwarded-For", xff), ("X-Forwarded-Proto", "https")])
    assert scope["client"][0] == expected
    assert scope["scheme"] == "https"


def test_xff_port_kept(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    scope = scope_via(server, [("X-Forwarded-For", "203.0.113.7:4711")])
    assert scope["client"] == ["203.0.113.7", 4711]


def test_untrusted_peer_cannot_spoof(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--forwarded-allow-ips", "10.0.0.1")
    scope = scope_via(server, [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https")])
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


def test_no_proxy_headers_ignores_them(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--no-proxy-headers")
    scope = scope_via(server, [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https")])
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


@pytest.mark.skipif(not can_bind(OTHER_LOOPBACK), reason=f"cannot bind {OTHER_LOOPBACK}")
@pytest.mark.parametrize(
    ("allow", "trusted"), [("127.0.0.0/24", True), ("127.0.0.1", False)], ids=["cidr", "single"]
)
def test_cidr_trusted_peer(kind: str, launch: Launch, allow: str, trusted: bool) -> None:
    server = launch(kind, APP, "--forwarded-allow-ips", allow)
    scope = scope_via(server, [("X-Forwarded-For", "203.0.113.7")], source=OTHER_LOOPBACK)
    assert scope["client"][0] == ("203.0.113.7" if trusted else OTHER_LOOPBACK)


def test_star_trusts_everyone(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--forwarded-allow-ips", "*")
    scope = scope_via(server, [("X-Forwarded-For", "198.51.100.1, 203.0.113.7")])
    assert scope["client"][0] == "198.51.100.1"


def test_allow_ips_from_uvicorn_env(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, env={"FORWARDED_ALLOW_IPS": "10.0.0.1"})
    scope = scope_via(server, [("X-Forwarded-For", "1.2.3.4")])
    assert scope["client"][0] == "127.0.0.1", "FORWARDED_ALLOW_IPS was not read"


@pytest.mark.fastserve_only
def test_fastserve_env_wins_over_uvicorn_env(kind: str, launch: Launch) -> None:
    env = {"FORWARDED_ALLOW_IPS": "10.0.0.1", "FASTSERVE_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    server = launch(kind, APP, env=env)
    scope = scope_via(server, [("X-Forwarded-For", "1.2.3.4")])
    assert scope["client"][0] == "1.2.3.4"


def test_repeated_xff_lines_join_in_order(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8")
    request = (
        b"GET /scope HTTP/1.1\r\nHost: t\r\n"
        b"X-Forwarded-For: 198.51.100.66\r\n"
        b"X-Forwarded-For: 203.0.113.7, 10.0.0.5\r\n\r\n"
    )
    assert raw_scope(server, request)["client"][0] == "203.0.113.7"


def test_repeated_proto_lines_last_wins(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    request = (
        b"GET /scope HTTP/1.1\r\nHost: t\r\n"
        b"X-Forwarded-Proto: http\r\nX-Forwarded-Proto: https\r\n\r\n"
    )
    assert raw_scope(server, request)["scheme"] == "https"


def test_proto_list_uses_rightmost_value(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    scope = scope_via(server, [("X-Forwarded-Proto", "https, http")])
    assert scope["scheme"] == "http"


def test_empty_xff_keeps_peer(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    request = b"GET /scope HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: \r\n\r\n"
    assert raw_scope(server, request)["client"][0] == "127.0.0.1"


@pytest.mark.uvicorn_differs(reason="uvicorn passes a non-address XFF entry on as the client host")
@pytest.mark.parametrize(
    "value", [b"203.0.113.7\xff", b"caf\xc3\xa9", b"garbage", b"unknown"], ids=repr
)
def test_malformed_xff_ignored(kind: str, launch: Launch, value: bytes) -> None:
    server = launch(kind, APP)
    request = b"GET /scope HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: " + value + b"\r\n\r\n"
    assert raw_scope(server, request)["client"][0] == "127.0.0.1"


def test_non_ascii_proto_ignored(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    request = b"GET /scope HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: htt\xffps\r\n\r\n"
    scope = raw_scope(server, request)
    assert scope["scheme"] == "http"
    assert scope["client"][0] == "127.0.0.1"


def wait_ipv6_ready(server: Server, port: int, timeout: float = 15.0) -> None:
    """Wait until `server` answers on [::1]:port, failing with its stderr if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc is not None
        if server.proc.poll() is not None:
            pytest.fail(f"server exited early:\n{server.stderr_text()}")
        try:
            with socket.create_connection(("::1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                if sock.recv(16).startswith(b"HTTP/"):
                    return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"server not ready on [::1]:{port}:\n{server.stderr_text()}")


@pytest.mark.skipif(not can_bind("::1"), reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_peer_and_client(kind: str, launch: Launch) -> None:
    port = free_port()
    server = launch(
        kind, APP, "--host", "::1", "--port", str(port), port_flag=False, port=port, start=False
    )
    wait_ipv6_ready(server, port)
    with socket.create_connection(("::1", port), timeout=10) as sock, Connection(sock) as conn:
        plain = json.loads(conn.request("GET", "/scope").body)
        headers = [("X-Forwarded-For", "2001:db8::9"), ("X-Forwarded-Proto", "https")]
        forwarded = json.loads(conn.request("GET", "/scope", headers).body)
    assert plain["client"][0] == "::1"
    assert forwarded["client"][0] == "2001:db8::9"
    assert forwarded["scheme"] == "https"


def test_proto_drives_fastapi_url_for(kind: str, launch: Launch) -> None:
    server = launch(kind, FASTAPI_APP)
    with server.open() as conn:
        response = conn.request(
            "GET", "/link", [("Host", "shop.example"), ("X-Forwarded-Proto", "https")]
        )
    assert response.status == 200
    assert json.loads(response.body)["url"] == "https://shop.example/items/1"


@pytest.mark.fastserve_only
def test_uds_peer_is_trusted(kind: str, launch: Launch, tmp_path: Any) -> None:
    path = tmp_path / "fs.sock"
    server = launch(kind, APP, port_flag=False, uds=path)
    with server.open() as conn:
        response = conn.request("GET", "/scope", [("X-Forwarded-For", "203.0.113.7")])
    assert json.loads(response.body)["client"][0] == "203.0.113.7"


# ----- beyond uvicorn: opt-in headers ---------------------------------------------


@pytest.mark.fastserve_only
@pytest.mark.parametrize(
    ("forwarded", "client", "scheme"),
    [
        ('for="[2001:db8:cafe::17]:4711";proto=https', ["2001:db8:cafe::17", 4711], "https"),
        ("for=192.0.2.60;proto=http;by=203.0.113.43", ["192.0.2.60", 0], "http"),
        ("for=_hidden;proto=https", ["_hidden", 0], "https"),
        ("for=unknown", ["unknown", 0], "http"),
        (
            "for=198.51.100.1, for=203.0.113.7;proto=https, for=10.0.0.2",
            ["203.0.113.7", 0],
            "https",
        ),
    ],
    ids=["ipv6 quoted", "ipv4", "obfuscated", "unknown", "multi hop"],
)
def test_forwarded_header(
    kind: str, launch: Launch, forwarded: str, client: list[Any], scheme: str
) -> None:
    server = launch(
        kind,
        APP,
        "--forwarded-headers",
        "forwarded",
        "--forwarded-allow-ips",
        "127.0.0.1,10.0.0.0/8",
    )
    scope = scope_via(server, [("Forwarded", forwarded)])
    assert scope["client"] == client
    assert scope["scheme"] == scheme


@pytest.mark.fastserve_only
def test_forwarded_off_by_default(kind: str, launch: Launch) -> None:
    server = launch(kind, APP)
    scope = scope_via(server, [("Forwarded", "for=203.0.113.7;proto=https")])
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


@pytest.mark.fastserve_only
def test_forwarded_malformed_ignored(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--forwarded-headers", "all")
    scope = scope_via(server, [("Forwarded", 'for="203.0.113.7;proto=https')])
    assert scope["client"][0] == "127.0.0.1"
    assert scope["scheme"] == "http"


@pytest.mark.fastserve_only
def test_forwarded_host_and_port(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--forwarded-headers", "all")
    headers = [
        ("Host", "app.internal:8080"),
        ("X-Forwarded-Host", "shop.example"),
        ("X-Forwarded-Port", "8443"),
        ("X-Forwarded-Proto", "https"),
    ]
    scope = scope_via(server, headers)
    assert scope["host"] == ["shop.example:8443"]
    assert scope["server"] == ["shop.example", 8443]
    assert scope["scheme"] == "https"


@pytest.mark.fastserve_only
def test_forwarded_host_from_untrusted_peer_ignored(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--forwarded-headers", "all", "--forwarded-allow-ips", "10.0.0.1")
    headers = [("Host", "app.internal"), ("X-Forwarded-Host", "evil.example")]
    scope = scope_via(server, headers + [("X-Forwarded-Prefix", "/evil")])
    assert scope["host"] == ["app.internal"]
    assert scope["root_path"] == ""


@pytest.mark.fastserve_only
def test_prefix_sets_root_path_and_path(kind: str, launch: Launch) -> None:
    server = launch(
        kind, APP, "--forwarded-headers", "x-forwarded-prefix", "--root-path", "/ignored"
    )
    scope = scope_via(server, [("X-Forwarded-Prefix", "/svc/")])
    assert scope["root_path"] == "/svc"
    assert scope["path"] == "/svc/scope"


@pytest.mark.fastserve_only
def test_prefix_drives_fastapi_docs(kind: str, launch: Launch) -> None:
    server = launch(kind, FASTAPI_APP, "--forwarded-headers", "all")
    headers = [
        ("X-Forwarded-Prefix", "/svc"),
        ("X-Forwarded-Proto", "https"),
        ("Host", "a.example"),
    ]
    with server.open() as conn:
        docs = conn.request("GET", "/docs", headers)
        openapi = conn.request("GET", "/openapi.json", headers)
        link = conn.request("GET", "/link", headers)
    assert docs.status == 200
    assert b"'/svc/openapi.json'" in docs.body
    assert openapi.status == 200
    assert json.loads(openapi.body)["servers"] == [{"url": "/svc"}]
    assert json.loads(link.body)["url"] == "https://a.example/svc/items/1"


@pytest.mark.fastserve_only
def test_invalid_allow_ips_exits_2(kind: str, launch: Launch) -> None:
    server = launch(kind, APP, "--forwarded-allow-ips", "127.0.0.1,localhost", start=False)
    assert server.wait(10) == 2
    assert '"localhost"' in server.stderr_text()
