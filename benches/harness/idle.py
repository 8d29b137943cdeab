"""Idle keep-alive connections: open many, each after one complete request, and count survivors."""

import resource
import socket

RESPONSE_TIMEOUT_S = 5.0
READ_SIZE = 4096


class IdleConnectionError(RuntimeError):
    """Raised when a connection cannot be opened or its first response is incomplete."""


def raise_open_file_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards the hard limit; return the new soft limit.

    Servers started afterwards inherit the limit, so they can accept the idle
    connections as well.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def open_idle_connections(host: str, port: int, path: str, count: int) -> list[socket.socket]:
    """Open `count` connections; each sends one GET and reads its response, then stays open."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection((host, port), timeout=RESPONSE_TIMEOUT_S)
            sockets.append(sock)
            sock.sendall(request)
            _read_response(sock)
    except (OSError, IdleConnectionError) as exc:
        close_all(sockets)
        raise IdleConnectionError(
            f"failed after {len(sockets)} of {count} idle connections: {exc}"
        ) from exc
    return sockets


def _read_response(sock: socket.socket) -> None:
    """Read one response with a content-length body, so the connection is idle afterwards."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(READ_SIZE)
        if not chunk:
            raise IdleConnectionError("connection closed before the response head ended")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise IdleConnectionError(f"expected 200, got {head.splitlines()[0]!r}")
    length = _content_length(head)
    while len(body) < length:
        chunk = sock.recv(READ_SIZE)
        if not chunk:
            raise IdleConnectionError("connection closed before the response body ended")
        body += chunk


def _content_length(head: bytes) -> int:
    """Return the content-length of a response head; the idle scenario needs one."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    raise IdleConnectionError("response has no content-length, use a route that sets one")


def count_open(sockets: list[socket.socket]) -> int:
    """Return how many connections the server has not closed, without blocking."""
    still_open = 0
    for sock in sockets:
        # A socket with a timeout would wait for data before the peek, so make it non-blocking.
        sock.setblocking(False)
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            still_open += 1
            continue
        except OSError:
            continue
        # Unread bytes on an idle connection would be a server bug, but the socket is open.
        if data:
            still_open += 1
    return still_open


def close_all(sockets: list[socket.socket]) -> None:
    """Close every socket, ignoring ones that already failed."""
    for sock in sockets:
        try:
            sock.close()
        except OSError:
            pass
