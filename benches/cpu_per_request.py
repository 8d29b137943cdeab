"""Compare fastserve builds by the worker's CPU time per request under wrk.

Requests per second swing with whatever else runs on the machine. The CPU
time the worker spends per request moves much less, so it is the number to
quote for a change on the request path. Each build in --bin is started in
turn (server on one CPU, wrk on the other), warmed up, loaded for a fixed
time, and its worker's utime+stime from /proc/PID/stat is divided by the
requests wrk completed. Runs alternate between the builds.

    python3 benches/cpu_per_request.py --python .venv/bin/python \\
        --bin /tmp/before/fastserve --bin target/release/fastserve --runs 3

Traffic goes to 127.0.0.1 only; every server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

APPS_DIR = Path(__file__).resolve().parent / "apps"
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
STARTUP_TIMEOUT_SECONDS = 30.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", action="append", required=True, help="fastserve binary; repeat")
    parser.add_argument("--python", required=True, help="python of the venv that contains the app")
    parser.add_argument("--app", default="raw:app", help="app in benches/apps (default raw:app)")
    parser.add_argument("--path", default="/", help="path to load (default /)")
    parser.add_argument("--port", type=int, default=18400, help="port on 127.0.0.1")
    parser.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    parser.add_argument("--runs", type=int, default=3, help="runs per binary")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    return parser.parse_args()


def cpu_ticks(pid: int) -> int:
    """Return utime + stime of `pid` in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def worker_pid(supervisor: int) -> int:
    """Return the supervisor's child, the worker that serves requests."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    if not children:
        raise RuntimeError(f"supervisor {supervisor} has no worker")
    return int(children[0])


def wait_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    """Wait until `url` responds; fail if the server exits or takes too long."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before it responded")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                response.read()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no response from {url} within {STARTUP_TIMEOUT_SECONDS} s")


def wrk(url: str, seconds: int, connections: int) -> tuple[int, float]:
    """Run wrk pinned to CPU 1; return (requests, requests per second)."""
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    requests = re.search(r"(\d+) requests in", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not requests or not rate:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    return int(requests.group(1)), float(rate.group(1))


def measure(binary: str, args: argparse.Namespace) -> tuple[float, float]:
    """Serve the app with `binary`; return (requests per second, CPU µs per request)."""
    env = dict(os.environ, VIRTUAL_ENV=str(Path(args.python).absolute().parent.parent))
    command = [
        "taskset", "-c", "0", str(Path(binary).resolve()), args.app, "--host", "127.0.0.1",
        "--port", str(args.port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=APPS_DIR, env=env, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{args.port}{args.path}"
        wait_ready(url, server)
        worker = worker_pid(server.pid)
        wrk(url, 2, args.connections)
        before = cpu_ticks(worker)
        requests, rate = wrk(url, args.duration, args.connections)
        used = cpu_ticks(worker) - before
        return rate, used / TICKS_PER_SECOND * 1e6 / requests
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main() -> int:
    args = parse_args()
    results: dict[str, list[tuple[float, float]]] = {binary: [] for binary in args.bin}
    for run in range(args.runs):
        for binary in args.bin:
            rate, micros = measure(binary, args)
            results[binary].append((rate, micros))
            print(f"run {run + 1} {binary}: {rate:,.0f} req/s, {micros:.2f} µs CPU per request")
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")
    for binary, runs in results.items():
        micros = sorted(m for _, m in runs)
        print(f"{binary}: median {micros[len(micros) // 2]:.2f} µs per request ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
