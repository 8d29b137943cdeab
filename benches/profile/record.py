#!/usr/bin/env python3
"""Profile fastserve under wrk load with perf and draw flame graphs.

For each target the script starts the server pinned to one CPU, warms it up
and loads it with wrk three times: for --duration without perf, for half of
it under `perf stat` (context switches and syscalls per thread), and for
--duration under `perf record`, attached to the process that serves requests
(the fastserve worker, not the supervisor). It folds the stacks, draws a
flame graph with inferno and sorts every sample into the cost categories of
`breakdown.py`.

    python3 benches/profile/record.py --python .venv/bin/python
    python3 benches/profile/record.py --python .venv/bin/python --targets hello --duration 5

Targets: `hello` (benches/apps/raw.py, GET /), `fastapi` (fastapi_app.py,
GET /json), the same two with `-pyframes` (CPython's perf trampolines on, so
Python function names show), and `ceiling` (target/release/examples/hello,
pure Rust). Flame graphs and breakdown tables go to benches/profile/; perf
data, folded stacks and logs go to benches/out/profile/, which git ignores.
See benches/README.md, "Where the time goes".
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PROFILE_DIR = Path(__file__).resolve().parent
BENCHES_DIR = PROFILE_DIR.parent
REPO_DIR = BENCHES_DIR.parent
sys.path.insert(0, str(BENCHES_DIR))
sys.path.insert(0, str(PROFILE_DIR))

import breakdown  # noqa: E402
from harness import procs, servers, wrk  # noqa: E402
from harness.scenarios import SCENARIOS, fetch_once  # noqa: E402

HOST = "127.0.0.1"
SERVER_CPU = 0
LOAD_CPU = 1
CONNECTIONS = 64
START_TIMEOUT_S = 30.0
WARMUP_S = 1.0
# Time allowed for perf to attach to the process's threads before wrk starts.
PERF_ATTACH_S = 0.5
# perf writes its buffers and exits on SIGINT. A large DWARF recording takes a
# few seconds to write.
PERF_STOP_TIMEOUT_S = 60.0
# perf script resolves inlined frames and source lines with addr2line, which is
# slow on a fat-LTO binary. Ten seconds of samples take well under a minute.
PERF_SCRIPT_TIMEOUT_S = 600.0
# Frames narrower than this many pixels of the 1600-pixel-wide SVG (0.1 % of
# the samples) are left out, which keeps each file below about 100 KiB. The
# breakdown tables count every sample.
SVG_WIDTH_PX = 1600
MIN_WIDTH_PX = 1.6
# A CPU counts as quiet when it was less busy than QUIET_BUSY_PERCENT over
# QUIET_WINDOW_S. A run in which other work took more than NOISY_PERCENT of
# either CPU is repeated, up to --retry-noisy times. benches/compare.py uses
# the same limits.
QUIET_WINDOW_S = 1.0
QUIET_BUSY_PERCENT = 10.0
NOISY_PERCENT = 10.0
# Syscalls counted per thread in the counting run, besides context switches.
COUNTED_SYSCALLS = (
    "epoll_wait", "epoll_pwait", "recvfrom", "writev", "read", "write", "brk", "futex",
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """One profiled server: which binary, which app and route, and whether Python frames show."""

    name: str
    scenario: str
    server: str
    python_frames: bool = False


TARGETS = {
    target.name: target
    for target in (
        Target("hello", "hello", "fastserve"),
        Target("fastapi", "fastapi", "fastserve"),
        Target("hello-pyframes", "hello", "fastserve", python_frames=True),
        Target("fastapi-pyframes", "fastapi", "fastserve", python_frames=True),
        Target("ceiling", "hello", "ceiling"),
    )
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--python",
        type=Path,
        default=REPO_DIR / ".venv" / "bin" / "python",
        help="python of the venv that holds FastAPI (default .venv/bin/python)",
    )
    parser.add_argument(
        "--targets",
        default="hello,fastapi,hello-pyframes,fastapi-pyframes,ceiling",
        help=f"comma-separated, from: {', '.join(TARGETS)}",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--frequency", type=int, default=999, help="perf samples per second")
    parser.add_argument(
        "--stack-size",
        type=int,
        default=32768,
        help="bytes of user stack perf copies per sample for DWARF unwinding",
    )
    parser.add_argument(
        "--fastserve-bin", type=Path, default=REPO_DIR / "target" / "release" / "fastserve"
    )
    parser.add_argument(
        "--ceiling-bin",
        type=Path,
        default=REPO_DIR / "target" / "release" / "examples" / "hello",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="seconds to wait for both CPUs to be idle before each target",
    )
    parser.add_argument(
        "--retry-noisy", type=int, default=2, help="repeats of a target whose run was noisy"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=BENCHES_DIR / "out" / "profile", help="raw data and logs"
    )
    parser.add_argument(
        "--svg-dir", type=Path, default=PROFILE_DIR, help="flame graphs and breakdown tables"
    )
    return parser.parse_args(argv)


def check_tools(args: argparse.Namespace, targets: list[Target]) -> None:
    """Exit with a message when a program or binary the run needs is missing."""
    for tool, hint in (
        ("perf", "apt-get install -y linux-perf"),
        ("wrk", "apt-get install -y wrk"),
        ("taskset", "apt-get install -y util-linux"),
        ("inferno-flamegraph", "cargo install inferno"),
    ):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found on PATH; install it with `{hint}`")
    needed = {"fastserve": args.fastserve_bin, "ceiling": args.ceiling_bin}
    for target in targets:
        binary = needed[target.server]
        if not binary.is_file():
            sys.exit(
                f"{binary} not found; build it with `cargo build --release` "
                "(add `--example hello` for the ceiling)"
            )
    if not args.python.is_file():
        sys.exit(f"{args.python} not found; pass --python with the venv's python")


def server_command(target: Target, args: argparse.Namespace, port: int) -> list[str]:
    """Return the server's command line, the same one benches/compare.py uses."""
    scenario = SCENARIOS[target.scenario]
    launch = servers.Launch(scenario.app, scenario.app_dir, HOST, port)
    tools = servers.Toolchain(
        python=args.python,
        fastserve_bin=args.fastserve_bin,
        ceiling_bin=args.ceiling_bin,
        ceiling_args="--host {host} --port {port}",
    )
    return servers.server_argv(target.server, launch, tools)


def serving_pid(proc: procs.ServerProcess, target: Target) -> int:
    """Return the PID that handles requests: fastserve's single worker, or the ceiling itself."""
    if target.server == "ceiling":
        return proc.pid
    children = procs.child_pids(proc.pid)
    if len(children) != 1:
        raise RuntimeError(
            f"expected one fastserve worker under PID {proc.pid}, found {children}: "
            "the script profiles a server started with one worker"
        )
    return children[0]


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages from /proc/loadavg."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def wait_for_quiet(max_wait_s: float) -> float:
    """Wait until both CPUs were idle for one second, or `max_wait_s` passed.

    Returns the busy percent of the busier CPU over the last second.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = [procs.cpu_busy_seconds(cpu)[0] for cpu in (SERVER_CPU, LOAD_CPU)]
        time.sleep(QUIET_WINDOW_S)
        after = [procs.cpu_busy_seconds(cpu)[0] for cpu in (SERVER_CPU, LOAD_CPU)]
        busy = max(100 * (b - a) / QUIET_WINDOW_S for a, b in zip(before, after, strict=True))
        if busy < QUIET_BUSY_PERCENT or time.monotonic() >= deadline:
            return busy


def record_argv(pid: int, data: Path, args: argparse.Namespace) -> list[str]:
    """Return the `perf record` command: cpu-clock samples with DWARF stacks of every thread."""
    return [
        "perf", "record",
        "-e", "cpu-clock",
        "-F", str(args.frequency),
        "--call-graph", f"dwarf,{args.stack_size}",
        "-p", str(pid),
        "-o", str(data),
    ]  # fmt: skip


def stat_argv(pid: int, output: Path) -> list[str]:
    """Return the `perf stat` command that counts context switches and syscalls per thread."""
    events = ["context-switches"] + [f"syscalls:sys_enter_{name}" for name in COUNTED_SYSCALLS]
    return [
        "perf", "stat", "--per-thread", "-x", ",",
        "-e", ",".join(events),
        "-p", str(pid),
        "-o", str(output),
    ]  # fmt: skip


def start_perf(perf_argv: list[str], args: argparse.Namespace, log: Path) -> subprocess.Popen:
    """Start a perf command pinned to the load CPU, and give it time to attach."""
    argv = ["taskset", "-c", str(LOAD_CPU), *perf_argv]
    with log.open("wb") as output:
        perf = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    # Hard bound, like the servers': the timer ends perf even if this script hangs.
    killer = threading.Timer(args.duration + PERF_STOP_TIMEOUT_S * 2, perf.kill)
    killer.daemon = True
    killer.start()
    time.sleep(PERF_ATTACH_S)
    if perf.poll() is not None:
        raise RuntimeError(f"{perf_name(perf)} exited with code {perf.returncode}; see {log}")
    return perf


def perf_name(perf: subprocess.Popen) -> str:
    """Return `perf record` or `perf stat` from the command line `start_perf` built."""
    return " ".join(perf.args[3:5])


def stop_perf(perf: subprocess.Popen) -> float:
    """Stop perf with SIGINT, wait for it to write its data, return the CPU seconds it used."""
    perf.send_signal(signal.SIGINT)
    deadline = time.monotonic() + PERF_STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(perf.pid, os.WNOHANG)
        if pid == perf.pid:
            perf.returncode = os.waitstatus_to_exitcode(status)
            # perf exits with the SIGINT it forwards to itself after writing.
            if perf.returncode not in (0, -signal.SIGINT):
                raise RuntimeError(f"{perf_name(perf)} exited with code {perf.returncode}")
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.1)
    perf.kill()
    perf.wait()
    raise RuntimeError(f"{perf_name(perf)} did not stop within {PERF_STOP_TIMEOUT_S:.0f} s")


def measure(
    proc: procs.ServerProcess, target: Target, args: argparse.Namespace, port: int, data: Path
) -> dict:
    """Warm up, then load the server without perf, under perf stat and under perf record.

    Returns the record of the target: both wrk results, the counts per
    request, the server's CPU time per request and the other load.
    """
    scenario = SCENARIOS[target.scenario]
    proc.wait_first_200(HOST, port, scenario.path, START_TIMEOUT_S)
    status, body = fetch_once(HOST, port, scenario)
    problem = scenario.check_response(status, body)
    if problem:
        raise RuntimeError(f"wrong response to GET {scenario.path}: {problem}")
    pid = serving_pid(proc, target)

    url = f"http://{HOST}:{port}{scenario.path}"
    spec = wrk.LoadSpec(scenario.path)
    load = {"connections": CONNECTIONS, "cpu": LOAD_CPU}
    wrk.run_wrk(url, spec, duration_s=WARMUP_S, **load)
    plain = wrk.run_wrk(url, spec, duration_s=args.duration, **load)

    stat_path = args.out_dir / f"{target.name}.stat.csv"
    stat = start_perf(stat_argv(pid, stat_path), args, args.out_dir / f"{target.name}.stat.log")
    try:
        counted = wrk.run_wrk(url, spec, duration_s=args.duration / 2, **load)
    finally:
        stop_perf(stat)

    record: dict = {
        "target": target.name,
        "command": "python3 benches/profile/record.py " + " ".join(sys.argv[1:]),
        "pid": pid,
        "loadavg_before": load_average(),
    }
    record["per_request_counts"] = per_request_counts(stat_path, counted.requests)
    cpu_before = procs.cpu_seconds(pid)
    server_busy_before, _ = procs.cpu_busy_seconds(SERVER_CPU)
    load_busy_before, _ = procs.cpu_busy_seconds(LOAD_CPU)
    perf = start_perf(record_argv(pid, data, args), args, args.out_dir / f"{target.name}.perf.log")
    try:
        profiled = wrk.run_wrk(url, spec, duration_s=args.duration, **load)
    finally:
        perf_cpu_s = stop_perf(perf)
    # The busy times run from before perf started until it stopped, a little
    # longer than this window, so the other-load figures err on the high side.
    window_s = profiled.duration_s + PERF_ATTACH_S
    server_cpu_s = procs.cpu_seconds(pid) - cpu_before
    server_busy_s = procs.cpu_busy_seconds(SERVER_CPU)[0] - server_busy_before
    load_busy_s = procs.cpu_busy_seconds(LOAD_CPU)[0] - load_busy_before
    record["loadavg_after"] = load_average()

    record["plain"] = plain.as_dict()
    record["profiled"] = profiled.as_dict()
    record["server_cpu_s"] = server_cpu_s
    record["server_cpu_percent"] = 100 * server_cpu_s / profiled.duration_s
    record["cpu_us_per_request"] = 1e6 * server_cpu_s / profiled.requests
    # Busy time of each CPU that belonged to neither the server nor wrk and perf.
    other_server_s = server_busy_s - server_cpu_s
    other_load_s = load_busy_s - profiled.wrk_cpu_s - perf_cpu_s
    record["other_load_percent_server_cpu"] = max(0.0, 100 * other_server_s / window_s)
    record["other_load_percent_load_cpu"] = max(0.0, 100 * other_load_s / window_s)
    record["perf_cpu_s"] = perf_cpu_s
    return record


def per_request_counts(stat_path: Path, requests: int) -> dict[str, float]:
    """Read `perf stat -x, --per-thread` output and return each thread's counts per request.

    Keys are `<thread> <event>`, for example `python epoll_pwait`, where the
    thread is its comm: `fastserve` runs tokio and `python` the event loop.
    """
    counts: dict[str, float] = {}
    for line in stat_path.read_text().splitlines():
        fields = line.split(",")
        if line.startswith("#") or len(fields) < 4 or not fields[1].isdigit():
            continue
        thread = fields[0].rpartition("-")[0]
        event = fields[3].removeprefix("syscalls:sys_enter_")
        key = f"{thread} {event}"
        counts[key] = counts.get(key, 0.0) + int(fields[1]) / max(requests, 1)
    return counts


def write_perf_script(data: Path, text: Path) -> None:
    """Write `perf script` output with full source paths, which breakdown.py classifies by."""
    argv = [
        "perf", "script", "-i", str(data),
        "-F", "comm,tid,time,period,event,ip,sym,dso,srcline",
        "--full-source-path",
    ]  # fmt: skip
    with text.open("wb") as output:
        subprocess.run(
            argv,
            stdout=output,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=PERF_SCRIPT_TIMEOUT_S,
        )


def draw(folded: str, svg: Path, title: str, subtitle: str) -> None:
    """Draw a flame graph from folded stacks with inferno-flamegraph."""
    argv = [
        "inferno-flamegraph",
        "--title", title,
        "--subtitle", subtitle,
        "--colors", "java",
        "--minwidth", str(MIN_WIDTH_PX),
        "--width", str(SVG_WIDTH_PX),
        "--hash",
    ]  # fmt: skip
    with svg.open("wb") as output:
        subprocess.run(argv, input=folded.encode(), stdout=output, check=True, timeout=120)


def profile(target: Target, args: argparse.Namespace) -> dict:
    """Run one target end to end and return its record, breakdown included."""
    port = procs.free_port(HOST)
    env = servers.server_env(args.python, SCENARIOS[target.scenario].app_dir)
    if target.python_frames:
        env["PYTHONPERFSUPPORT"] = "1"
    else:
        env.pop("PYTHONPERFSUPPORT", None)
    data = args.out_dir / f"{target.name}.perf.data"
    proc = procs.ServerProcess(
        server_command(target, args, port),
        cpu=SERVER_CPU,
        cwd=REPO_DIR,
        env=env,
        log_path=args.out_dir / f"{target.name}.server.log",
        max_lifetime_s=START_TIMEOUT_S + WARMUP_S + 2 * args.duration + 2 * PERF_STOP_TIMEOUT_S,
    )
    try:
        record = measure(proc, target, args, port, data)
    finally:
        proc.stop()

    perf_map = Path(f"/tmp/perf-{record['pid']}.map")
    text = args.out_dir / f"{target.name}.perf.txt"
    try:
        write_perf_script(data, text)
    finally:
        # CPython writes the map for perf; it is needed only until perf script has run.
        if target.python_frames:
            perf_map.unlink(missing_ok=True)
    samples = breakdown.read_samples(text)
    folded = breakdown.fold(samples)
    # Folded stacks can be compared between runs with inferno-diff-folded.
    (args.out_dir / f"{target.name}.folded").write_text(folded)

    record["breakdown"] = breakdown.summarize(samples)
    rps = record["profiled"]["requests_per_s"]
    subtitle = (
        f"{record['breakdown']['samples']:,} samples of cpu-clock at {args.frequency} Hz; "
        f"{rps:,.0f} req/s under perf, {record['plain']['requests_per_s']:,.0f} without; "
        f"{record['cpu_us_per_request']:.1f} µs CPU per request; "
        f"load average {record['loadavg_before']}"
    )
    scenario = SCENARIOS[target.scenario]
    title = f"{target.server} {target.name}: {scenario.title}"
    draw(folded, args.svg_dir / f"{target.name}.svg", title, subtitle)
    return record


def main(argv: list[str]) -> int:
    """Profile every requested target and write the records and the combined table."""
    args = parse_args(argv)
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        sys.exit(f"unknown target(s) {', '.join(unknown)}: expected some of {', '.join(TARGETS)}")
    targets = [TARGETS[name] for name in names]
    args.python = args.python.absolute()
    check_tools(args, targets)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.svg_dir.mkdir(parents=True, exist_ok=True)

    records = []
    for target in targets:
        for attempt in range(args.retry_noisy + 1):
            busy = wait_for_quiet(args.quiet_wait)
            print(
                f"profiling {target.name}, attempt {attempt + 1} (load average "
                f"{load_average()}, busier CPU {busy:.0f} % before the start)",
                file=sys.stderr,
            )
            record = profile(target, args)
            print(breakdown.one_line(record), file=sys.stderr)
            noisy = max(
                record["other_load_percent_server_cpu"], record["other_load_percent_load_cpu"]
            )
            record["attempt"] = attempt + 1
            if noisy <= NOISY_PERCENT:
                break
            print(f"  other load {noisy:.0f} % > {NOISY_PERCENT:.0f} %: noisy", file=sys.stderr)
        records.append(record)
    (args.out_dir / "records.json").write_text(json.dumps(records, indent=2) + "\n")
    command = "python3 benches/profile/record.py " + " ".join(argv)
    (args.svg_dir / "breakdown.md").write_text(breakdown.render(records, command) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
