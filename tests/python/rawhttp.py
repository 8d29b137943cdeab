"""A small HTTP/1.x client over a plain socket, for tests where the bytes matter.

Unlike httpx it keeps header order, duplicate headers and the raw head, reads
1xx responses as responses of their own, and reports a response that the
server cut off instead of hiding it.
"""

import socket
from dataclasses import dataclass, field

MAX_LINE = 1 << 20


class IncompleteResponseError(Exception):
    """The connection ended before a complete response arrived."""


class ConnectionClosedError(IncompleteResponseError):
    """The connection ended before the first byte of a response."""


@dataclass
class Response:
    """One parsed HTTP/1.x response."""

    version: bytes
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    raw_head: bytes = b""
    chunk_sizes: list[int] = field(default_factory=list)

    def header(self, name: str) -> bytes | None:
        """Return the first value of header `name` (any case), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[bytes]:
        """Return every value of header `name` (any case), in order."""
        wanted = name.lower().encode()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header_names(self) -> list[bytes]:
        """Return the header names in lower case, in order."""
        return [key.lower() for key, _ in self.headers]


def build_request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    """Build request bytes, adding `host` and, for a body, `content-length` unless given."""
    headers = list(headers or [])
    names = {name.lower() for name, _ in headers}
    if "host" not in names:
        headers.insert(0, ("host", "testserver"))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        headers.append(("content-length", str(len(body))))
    lines = [f"{method} {target} {version}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*parts: bytes) -> bytes:
    """Encode `parts` as a chunked body, ending with the last chunk."""
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part)
    return encoded + b"0\r\n\r\n"


class Connection:
    """One client connection: `request()`, or `send()` then `read_response()`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket."""
        self.reader.close()
        self.sock.close()

    def settimeout(self, seconds: float) -> None:
        """Set the timeout of every following socket operation."""
        self.sock.settimeout(seconds)

    def send(self, data: bytes) -> None:
        """Send `data` as it is."""
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        version: str = "HTTP/1.1",
    ) -> Response:
        """Send one request and return its final response (1xx responses skipped)."""
        self.send(build_request(method, target, headers, body, version))
        return self.read_final_response(method)

    def read_final_response(self, method: str = "GET") -> Response:
        """Read responses until one that is not 1xx, and return it."""
        while True:
            response = self.read_response(method)
            if response.status >= 200:
                return response

    def read_response(self, method: str = "GET") -> Response:
        """Read one response, 1xx included. `method` decides whether a body may follow."""
        status_line = self.reader.readline(MAX_LINE)
        if not status_line:
            raise ConnectionClosedError("connection closed before a status line")
        if not status_line.endswith(b"\r\n"):
            raise IncompleteResponseError(f"incomplete status line {status_line!r}")
        version, status, reason = (status_line.rstrip(b"\r\n").split(b" ", 2) + [b""])[:3]
        response = Response(version=version, status=int(status), reason=reason, headers=[])
        head = [status_line]
        while True:
            line = self.reader.readline(MAX_LINE)
            head.append(line)
            if not line.endswith(b"\r\n"):
                raise IncompleteResponseError(f"connection closed inside the head: {head!r}")
            if line == b"\r\n":
                break
            name, _, value = line.rstrip(b"\r\n").partition(b":")
            response.headers.append((name, value.strip(b" \t")))
        response.raw_head = b"".join(head)
        self._read_body(response, method)
        return response

    def _read_body(self, response: Response, method: str) -> None:
        """Read the body that the status, method and framing headers announce."""
        if response.status < 200 or response.status in (204, 304) or method == "HEAD":
            return
        encoding = response.header("transfer-encoding")
        length = response.header("content-length")
        if encoding is not None and encoding.lower() == b"chunked":
            response.body = self._read_chunked(response.chunk_sizes)
        elif length is not None:
            response.body = self._read_exact(int(length))
        else:
            response.body = self.reader.read()

    def _read_exact(self, size: int) -> bytes:
        data = self.reader.read(size)
        if len(data) != size:
            raise IncompleteResponseError(f"body ended after {len(data)} of {size} bytes")
        return data

    def _read_chunked(self, sizes: list[int]) -> bytes:
        parts = []
        while True:
            line = self.reader.readline(MAX_LINE)
            if not line.endswith(b"\r\n"):
                raise IncompleteResponseError(f"chunked body cut off after {sum(sizes)} bytes")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                break
            sizes.append(size)
            parts.append(self._read_exact(size))
            if self.reader.readline(MAX_LINE) != b"\r\n":
                raise IncompleteResponseError("chunk not followed by CRLF")
        while True:
            trailer = self.reader.readline(MAX_LINE)
            if not trailer:
                raise IncompleteResponseError("connection closed inside the trailers")
            if trailer == b"\r\n":
                return b"".join(parts)

    def wait_closed(self, timeout: float = 3.0) -> bool:
        """Return whether the server closes the connection within `timeout`, with no more data."""
        self.sock.settimeout(timeout)
        try:
            return self.reader.read(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def read_available(self, timeout: float) -> bytes:
        """Return the bytes that arrive within `timeout` (stops early at EOF)."""
        self.sock.settimeout(timeout)
        data = b""
        try:
            while True:
                chunk = self.reader.read1(65536)
                if not chunk:
                    return data
                data += chunk
        except (TimeoutError, ConnectionResetError):
            return data
