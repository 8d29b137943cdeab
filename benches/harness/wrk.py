"""Run wrk pinned to the load-generator CPU and parse the JSON line its Lua script prints."""

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("wrk_report.lua")
JSON_PREFIX = "WRK_JSON "

# wrk gets this long past --duration to connect, finish and print before it is killed.
EXIT_GRACE_S = 30.0

# A request slower than this counts as a timeout error in wrk (its default is 2 s).
REQUEST_TIMEOUT_S = 5


class WrkError(RuntimeError):
    """Raised when wrk is missing, fails, or prints no result line."""


@dataclass(frozen=True)
class LoadSpec:
    """Request that wrk repeats: method, path and an optional body file."""

    path: str
    method: str = "GET"
    body_file: Path | None = None
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms), errors and wrk's own CPU use."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: dict[str, int]
    wrk_cpu_percent: float
    wrk_cpu_s: float
    raw: dict[str, float]

    def as_dict(self) -> dict[str, object]:
        """Return the result as plain data for the JSON output."""
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "requests_per_s": self.requests_per_s,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "max_ms": self.max_ms,
            "errors": self.errors,
            "wrk_cpu_percent": self.wrk_cpu_percent,
        }


def wrk_version(binary: str = "wrk") -> str:
    """Return the first line of `wrk --version` (wrk prints it and exits 1)."""
    path = shutil.which(binary)
    if path is None:
        return "not installed"
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    lines = (proc.stdout or proc.stderr).splitlines()
    # The first line ends in a copyright notice that the results header does not need.
    return lines[0].split(" Copyright")[0].strip() if lines else "unknown"


def run_wrk(
    url: str,
    spec: LoadSpec,
    *,
    connections: int,
    duration_s: float,
    cpu: int,
    binary: str = "wrk",
) -> WrkResult:
    """Run one closed-loop wrk load (one thread, pinned to `cpu`) against `url`."""
    if shutil.which(binary) is None:
        raise WrkError(f"{binary} not found on PATH; install it with `apt-get install -y wrk`")
    argv = [
        "taskset", "-c", str(cpu),
        binary,
        "--threads", "1",
        "--connections", str(connections),
        "--duration", f"{max(1, round(duration_s))}s",
        "--timeout", f"{REQUEST_TIMEOUT_S}s",
        "--script", str(LUA_SCRIPT),
        url,
    ]  # fmt: skip
    env = dict(os.environ)
    env["WRK_METHOD"] = spec.method
    env["WRK_BODY_FILE"] = str(spec.body_file) if spec.body_file else ""
    env["WRK_CONTENT_TYPE"] = spec.content_type

    output, cpu_s, wall_s = _run_measured(argv, env, duration_s + EXIT_GRACE_S)
    return _parse(output, cpu_s, wall_s)


def _run_measured(
    argv: list[str], env: dict[str, str], timeout_s: float
) -> tuple[str, float, float]:
    """Run argv, return (stdout+stderr, CPU seconds it used, wall seconds)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    killer = threading.Timer(timeout_s, proc.kill)
    killer.daemon = True
    killer.start()
    # Read to EOF before reaping, so wrk never blocks on a full pipe.
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    # os.wait4 reaps wrk and returns its resource usage, which Popen.wait would discard.
    _, status, usage = os.wait4(proc.pid, 0)
    killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.monotonic() - started
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with code {proc.returncode}: {output.strip()[-500:]}")
    return output, usage.ru_utime + usage.ru_stime, wall_s


def _parse(output: str, cpu_s: float, wall_s: float) -> WrkResult:
    """Build a WrkResult from the WRK_JSON line of wrk's output."""
    lines = [line for line in output.splitlines() if line.startswith(JSON_PREFIX)]
    if not lines:
        raise WrkError(f"wrk printed no {JSON_PREFIX.strip()} line: {output.strip()[-500:]}")
    raw = json.loads(lines[-1][len(JSON_PREFIX) :])
    duration_s = raw["duration_us"] / 1e6
    errors = {key.removeprefix("errors_"): raw[key] for key in raw if key.startswith("errors_")}
    return WrkResult(
        requests=raw["requests"],
        duration_s=duration_s,
        requests_per_s=raw["requests"] / duration_s if duration_s else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        p999_ms=raw["p999_us"] / 1000,
        max_ms=raw["latency_max_us"] / 1000,
        errors=errors,
        wrk_cpu_percent=100 * cpu_s / wall_s if wall_s else 0.0,
        wrk_cpu_s=cpu_s,
        raw=raw,
    )
