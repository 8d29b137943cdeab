"""HTTP/2 over cleartext with prior knowledge (h2c), which fastserve serves and uvicorn does not."""

from collections.abc import Callable

import httpx
import pytest

from servers import FASTSERVE, Server

pytestmark = pytest.mark.fastserve_only


@pytest.fixture
def server(kind: str, shared_server: Callable[..., Server]) -> Server:
    """Return the shared fastserve that serves raw_apps:app."""
    assert kind == FASTSERVE
    return shared_server(kind)


def h2_client() -> httpx.Client:
    """Return a client that speaks HTTP/2 only, without TLS."""
    return httpx.Client(http1=False, http2=True, timeout=10)


def test_http2_scope_version_and_host(kind: str, server: Server) -> None:
    with h2_client() as client:
        response = client.get(f"{server.url}/scope/some%20path?q=1")
    assert response.http_version == "HTTP/2"
    scope = response.json()["scope"]
    assert scope["http_version"] == "2"
    assert scope["path"] == "/scope/some path"
    assert scope["query_string"] == "q=1"
    first_name, first_value = scope["headers"][0]
    assert first_name == "host", "the :authority pseudo-header becomes the first host header"
    assert first_value == f"127.0.0.1:{server.port}"
    assert not any(name.startswith(":") for name, _ in scope["headers"])


def test_http2_streams_request_body(kind: str, server: Server) -> None:
    payload = bytes(range(256)) * 1024
    with h2_client() as client:
        response = client.post(f"{server.url}/echo", content=payload)
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.content == payload


def test_http2_requests_share_one_connection(kind: str, server: Server) -> None:
    with h2_client() as client:
        responses = [client.get(f"{server.url}/hello") for _ in range(20)]
    assert {r.status_code for r in responses} == {200}
    assert {r.http_version for r in responses} == {"HTTP/2"}


def test_http2_no_content_has_no_body(kind: str, server: Server) -> None:
    """The app sends a content-length and body bytes with its 204; neither goes out."""
    with h2_client() as client:
        response = client.get(f"{server.url}/no-content")
        after = client.get(f"{server.url}/hello")
    assert response.status_code == 204
    assert "content-length" not in response.headers
    assert response.content == b""
    assert after.status_code == 200
