"""A minimal WebSocket client over a plain socket, for tests that send frames no library sends.

It performs the opening handshake itself and reads and writes single frames
(RFC 6455 §5.2), so tests can fragment messages, put control frames between
fragments, set RSV1 by hand or send invalid UTF-8.
"""

import base64
import os
import socket
import struct
import zlib
from dataclasses import dataclass

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# The four bytes a permessage-deflate sender strips from each message (RFC 7692 §7.2.1).
DEFLATE_TAIL = b"\x00\x00\xff\xff"


@dataclass
class Frame:
    """One frame as read from the server."""

    fin: bool
    rsv1: bool
    opcode: int
    payload: bytes

    def close_code(self) -> int | None:
        """Return the close code of a close frame, or None if it carries none."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        return struct.unpack("!H", self.payload[:2])[0]


class RawWebSocket:
    """A WebSocket client connection that sends and reads raw frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.status = 0
        self.headers: dict[str, str] = {}

    def handshake(self, path: str, extra_headers: list[tuple[str, str]] | None = None) -> int:
        """Send the opening handshake for `path` and return the response status."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            "host: testserver",
            "upgrade: websocket",
            "connection: Upgrade",
            f"sec-websocket-key: {key}",
            "sec-websocket-version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in extra_headers or []]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        return self.status

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> None:
        """Send one masked frame, as a client must."""
        first = opcode
        if fin:
            first |= 0x80
        if rsv1:
            first |= 0x40
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", first, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", first, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, length)
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_close(self, code: int, reason: bytes = b"") -> None:
        """Send a close frame with `code` and `reason`."""
        self.send_frame(OP_CLOSE, struct.pack("!H", code) + reason)

    def read_frame(self) -> Frame:
        """Read one frame; raise ConnectionError if the server closed the socket first."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._take(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._take(8))[0]
        payload = self._take(length)
        return Frame(
            fin=bool(first & 0x80), rsv1=bool(first & 0x40), opcode=first & 0x0F, payload=payload
        )

    def read_until_close(self) -> Frame:
        """Skip frames until a close frame arrives and return it."""
        while True:
            frame = self.read_frame()
            if frame.opcode == OP_CLOSE:
                return frame

    def close(self) -> None:
        """Close the socket without a closing handshake."""
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken


def deflate_message(data: bytes) -> bytes:
    """Compress one message as permessage-deflate does without context takeover."""
    compressor = zlib.compressobj(wbits=-15)
    compressed = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert compressed.endswith(DEFLATE_TAIL)
    return compressed[: -len(DEFLATE_TAIL)]


def inflate_message(data: bytes) -> bytes:
    """Decompress one permessage-deflate message."""
    return zlib.decompressobj(wbits=-15).decompress(data + DEFLATE_TAIL)
