"""Backpressure: large request and response bodies must stream, not pile up in the server.

Each test samples the resident set size of the server process and its
children while the transfer runs, and compares the peak with the size
before the transfer.
"""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import Launch
from rawhttp import build_request
from servers import Server, read_record, tree_rss_kib

UPLOAD_BYTES = 100 * 1024 * 1024
UPLOAD_CHUNK = b"u" * 65536
# Far below the 100 MiB that moves through the server in each test, and far
# above the few MiB of socket and channel buffers a streaming server needs.
MAX_RSS_GROWTH_KIB = 60 * 1024
SAMPLE_INTERVAL_S = 0.02
# How long the slow reader test leaves the response unread.
STALL_S = 2.0
STALLED_STREAM_BYTES = 1 << 30


class RssSampler:
    """Peak summed RSS of a process tree, sampled in a background thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline_kib = tree_rss_kib(pid)
        self.peak_kib = self.baseline_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))
            time.sleep(SAMPLE_INTERVAL_S)

    @property
    def growth_kib(self) -> int:
        """Return the peak minus the baseline, in KiB."""
        return self.peak_kib - self.baseline_kib

    @contextmanager
    def sampling(self) -> Iterator["RssSampler"]:
        """Sample while the block runs."""
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))


def warm_up(server: Server) -> None:
    """Run a few requests so lazy allocations happen before the baseline."""
    for _ in range(3):
        with server.open() as conn:
            conn.request("POST", "/count", body=b"w" * 65536)
            conn.request("GET", "/stream?size=1048576&name=warm-up")


def test_large_upload_keeps_rss_bounded(kind: str, launch: Launch) -> None:
    server = launch(kind, "raw_apps:app", "--no-access-log")
    warm_up(server)
    sampler = RssSampler(server.pid)
    with sampler.sampling(), server.open(timeout=30) as conn:
        conn.send(build_request("POST", "/count", [("content-length", str(UPLOAD_BYTES))]))
        for _ in range(UPLOAD_BYTES // len(UPLOAD_CHUNK)):
            conn.send(UPLOAD_CHUNK)
        response = conn.read_response("POST")
    assert response.status == 200
    assert json.loads(response.body)["bytes"] == UPLOAD_BYTES
    assert sampler.growth_kib < MAX_RSS_GROWTH_KIB, (
        f"RSS grew by {sampler.growth_kib} KiB during a {UPLOAD_BYTES} byte upload"
    )


def test_slow_reader_keeps_rss_bounded(kind: str, launch: Launch) -> None:
    server = launch(kind, "raw_apps:app", "--no-access-log")
    warm_up(server)
    sampler = RssSampler(server.pid)
    target = f"/stream?size={STALLED_STREAM_BYTES}&name=stalled"
    with sampler.sampling(), server.open() as conn:
        conn.send(build_request("GET", target))
        assert conn.sock.recv(1024).startswith(b"HTTP/1.1 200")
        time.sleep(STALL_S)
        progress = read_record(server.record_dir, "stream-stalled")
    # send() must wait for the client, so the app stays far behind the full size.
    assert progress["sent"] < 64 * 1024 * 1024, progress
    assert sampler.growth_kib < MAX_RSS_GROWTH_KIB, (
        f"RSS grew by {sampler.growth_kib} KiB while the client read nothing"
    )
