#!/usr/bin/env python3
"""Side-by-side load comparison of fastserve, uvicorn and granian (and a pure-Rust ceiling).

Each run starts a fresh server process pinned to one CPU with taskset and loads
it with wrk pinned to another CPU. It records req/s, p50/p99 latency, the
server's idle and peak RSS, the CPU use of both sides, and the time from spawn
to the first 200. Results go to benches/results.md (tables), a chart next to it, and raw JSON
in benches/out/.

    python3 benches/compare.py --python .venv/bin/python            # every scenario
    python3 benches/compare.py --quick --servers uvicorn,granian    # smoke test
    python3 benches/compare.py --app main:app --path /items --app-dir ~/src/api

See benches/README.md for what the numbers mean and how to keep them honest.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import sys
from pathlib import Path

from harness import chart, idle, report, runner, servers, wrk
from harness.scenarios import SCENARIOS, Scenario, user_scenario

BENCHES_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCHES_DIR.parent

DEFAULT_DURATION_S = 10.0
QUICK_DURATION_S = 2.0
DEFAULT_WARMUP_S = 1.0
QUICK_WARMUP_S = 0.5

# Sockets the harness may hold at once: the idle connections, wrk's, and slack.
OPEN_FILES_NEEDED = 4096


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse the command line and fill in the defaults that depend on --quick and --app."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    load = parser.add_argument_group("load")
    load.add_argument("--duration", type=float, help="seconds per measured run (default 10)")
    load.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    load.add_argument(
        "--runs",
        type=int,
        default=1,
        help="runs per server and scenario, the tables show the median (default 1)",
    )
    load.add_argument(
        "--warmup",
        type=float,
        help="seconds of unrecorded load before each measured run (default 1, 0.5 with --quick)",
    )
    load.add_argument("--quick", action="store_true", help="2 s runs, for smoke tests")
    load.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="seconds to wait before each run for both CPUs to be idle (default 60)",
    )
    load.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        help="times to repeat a run in which other work took more than 10 %% of either CPU "
        "(default 2)",
    )
    load.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to")
    load.add_argument("--load-cpu", type=int, default=1, help="CPU wrk and the harness run on")
    load.add_argument(
        "--start-timeout",
        type=float,
        default=30.0,
        help="seconds a server may take to return its first 200 (default 30)",
    )

    choice = parser.add_argument_group("what to compare")
    choice.add_argument(
        "--servers",
        help="comma-separated: fastserve, uvicorn, granian (default all three, "
        "fastserve,uvicorn with --app)",
    )
    choice.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, from: {', '.join(SCENARIOS)}",
    )
    choice.add_argument(
        "--fastserve-bin",
        type=Path,
        default=REPO_DIR / "target/release/fastserve",
        help="fastserve binary (default target/release/fastserve)",
    )
    choice.add_argument(
        "--python",
        type=Path,
        default=Path(sys.executable),
        help="python of the venv that runs uvicorn and granian and contains the "
        "apps' dependencies (default: the one running this script)",
    )
    choice.add_argument(
        "--ceiling-bin",
        type=Path,
        help="pure-Rust hello server to show the rig's limit (hello and keepalive scenarios only)",
    )
    choice.add_argument(
        "--ceiling-args",
        default="--host {host} --port {port}",
        help="arguments for --ceiling-bin, with {host} and {port} filled in (default: %(default)s)",
    )

    user = parser.add_argument_group(
        "your own app (prints the table, default servers fastserve,uvicorn)"
    )
    user.add_argument("--app", help="module:attribute of your ASGI app")
    user.add_argument("--path", default="/", help="route to load (default /)")
    user.add_argument("--method", default="GET", help="request method (default GET)")
    user.add_argument("--body-file", type=Path, help="file sent as the request body")
    user.add_argument(
        "--content-type",
        help="content-type of the body (default application/json for a .json file, "
        "otherwise application/octet-stream)",
    )
    user.add_argument(
        "--app-dir",
        type=Path,
        default=Path("."),
        help="directory the app module is imported from (default .)",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--from-json",
        type=Path,
        help="render the tables and chart again from a JSON file in --out-dir, without running",
    )
    output.add_argument(
        "--output",
        type=Path,
        help="Markdown results (default "
        "benches/results.md; in --app mode only printed unless given)",
    )
    output.add_argument(
        "--out-dir",
        type=Path,
        default=BENCHES_DIR / "out",
        help="raw JSON and server logs (default benches/out)",
    )
    args = parser.parse_args(argv)

    args.duration = args.duration or (QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S)
    if args.warmup is None:
        args.warmup = QUICK_WARMUP_S if args.quick else DEFAULT_WARMUP_S
    if args.servers is None:
        args.servers = "fastserve,uvicorn" if args.app else "fastserve,uvicorn,granian"
    return args


def validate(args: argparse.Namespace) -> tuple[list[str], list[Scenario]]:
    """Check the arguments against the machine and return the servers and scenarios to run."""
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in servers.SERVER_NAMES or n == "ceiling"]
    if unknown:
        fail(f"unknown server {unknown[0]!r}: expected fastserve, uvicorn or granian")
    if args.ceiling_bin:
        if not args.ceiling_bin.exists():
            fail(f"--ceiling-bin {args.ceiling_bin} not found")
        names.append("ceiling")
    if "fastserve" in names and not args.fastserve_bin.exists():
        fail(
            f"fastserve binary not found at {args.fastserve_bin}; build it with "
            "`PYO3_PYTHON=<venv python> cargo build --release`, pass --fastserve-bin, "
            "or leave it out with --servers uvicorn,granian"
        )
    if not args.python.exists():
        fail(f"--python {args.python} not found")

    cpus = os.sched_getaffinity(0)
    for flag, cpu in (("--server-cpu", args.server_cpu), ("--load-cpu", args.load_cpu)):
        if cpu not in cpus:
            fail(f"{flag} {cpu} is not available here (CPUs: {sorted(cpus)})")
    if args.server_cpu == args.load_cpu:
        fail("--server-cpu and --load-cpu must differ, or wrk and the server share one CPU")

    if args.app:
        body = args.body_file.read_bytes() if args.body_file else None
        content_type = args.content_type or guess_content_type(args.body_file)
        app_dir = args.app_dir.resolve()
        method = args.method.upper()
        return names, [user_scenario(args.app, args.path, method, body, content_type, app_dir)]
    keys = [k.strip() for k in args.scenarios.split(",") if k.strip()]
    missing = [k for k in keys if k not in SCENARIOS]
    if missing:
        fail(f"unknown scenario {missing[0]!r}: expected one of {', '.join(SCENARIOS)}")
    return names, [SCENARIOS[k] for k in keys]


def guess_content_type(body_file: Path | None) -> str:
    """Return application/json for a .json body file, otherwise application/octet-stream."""
    if body_file is not None and body_file.suffix == ".json":
        return "application/json"
    return "application/octet-stream"


def fail(message: str) -> None:
    """Print a usage error and exit with status 2."""
    print(f"compare.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def run_all(
    names: list[str], scenarios: list[Scenario], cfg: runner.RunConfig, args: argparse.Namespace
) -> list:
    """Run every server on every scenario `args.runs` times, servers interleaved within each run."""
    records = []
    for run_index in range(args.runs):
        for scenario in scenarios:
            for server in names:
                if server == "ceiling" and not scenario.ceiling:
                    continue
                idle_counts = [0, scenario.idle_connections] if scenario.idle_connections else [0]
                for idle_count in idle_counts:
                    label = f"run {run_index + 1}/{args.runs} {scenario.key} {server}"
                    if idle_count:
                        label += f" +{idle_count} idle"
                    records += run_with_retries(
                        server, scenario, cfg, args, run_index, idle_count, label
                    )
    return records


def run_with_retries(
    server: str,
    scenario: Scenario,
    cfg: runner.RunConfig,
    args: argparse.Namespace,
    run_index: int,
    idle_count: int,
    label: str,
) -> list[dict]:
    """Run once, and again up to --retry-noisy times while other work disturbed the run.

    Every attempt is returned. The ones superseded by a retry carry "discarded": true,
    so the tables leave them out.
    """
    attempts: list[dict] = []
    for attempt in range(args.retry_noisy + 1):
        waited_s, busy = runner.wait_for_quiet(cfg, args.quiet_wait)
        print(f"{label} ...", file=sys.stderr, flush=True)
        record = runner.run_once(server, scenario, cfg, run_index, idle_count)
        record["quiet_wait_s"] = waited_s
        record["cpu_busy_before_percent"] = busy
        record["attempt"] = attempt
        print(f"{label}: {one_line(record)}", file=sys.stderr, flush=True)
        attempts.append(record)
        if not runner.is_noisy(record):
            break
    for record in attempts[:-1]:
        record["discarded"] = True
    return attempts


def one_line(record: dict) -> str:
    """Return a progress summary of one record."""
    if "error" in record:
        return "FAILED " + record["error"].splitlines()[0]
    return (
        f"{record['requests_per_s']:,.0f} req/s, p99 {record['p99_ms']:.2f} ms, "
        f"peak RSS {record['peak_rss_mib']:.1f} MiB, "
        f"server CPU {record['server_cpu_percent']:.0f} % "
        f"(other load {record['server_cpu_other_percent']:.0f} %), "
        f"wrk CPU {record['wrk_cpu_percent']:.0f} % "
        f"(other load {record['load_cpu_other_percent']:.0f} %)"
    )


def machine_info(args: argparse.Namespace, names: list[str]) -> dict:
    """Collect what the results header states about the machine and software."""
    tools = toolchain(args)
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    return {
        "command": shlex.join(["python3", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": servers.python_version(args.python),
        "python_path": str(args.python),
        "frameworks": servers.fastapi_version(args.python),
        "wrk": wrk.wrk_version(),
        "versions": servers.server_versions(names, tools),
        "connections": args.connections,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "runs": args.runs,
        "server_cpu": args.server_cpu,
        "load_cpu": args.load_cpu,
    }


def toolchain(args: argparse.Namespace) -> servers.Toolchain:
    """Build the server toolchain from the arguments."""
    return servers.Toolchain(
        python=args.python,
        fastserve_bin=args.fastserve_bin.resolve(),
        ceiling_bin=args.ceiling_bin.resolve() if args.ceiling_bin else None,
        ceiling_args=args.ceiling_args,
    )


def render(info: dict, names: list[str], scenarios: list[Scenario], records: list) -> str:
    """Return the Markdown results page."""
    summaries = report.summarise(records)
    labels = {name: info["versions"].get(name, name) for name in names}
    lines = [
        "# Load comparison results",
        "",
        "Generated by `benches/compare.py`; see `benches/README.md` for the method.",
        "",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}",
        f"- CPU: {info['cpu_model']} ({info['cpu_count']} CPUs); server on CPU "
        f"{info['server_cpu']}, wrk on CPU {info['load_cpu']}",
        f"- kernel: {info['kernel']}",
        f"- Python: {info['python']} ({info['frameworks']})",
        f"- load: {info['wrk']}, 1 thread, {info['connections']} connections, "
        f"{info['duration_s']:g} s after {info['warmup_s']:g} s warm-up, "
        f"median of {info['runs']} run(s), fresh server process per run",
    ]
    lines += [f"- {name}: {version}" for name, version in info["versions"].items()]
    lines += [
        "",
        "RSS is the sum of VmRSS over the server's process tree (supervisor and worker",
        "where there are two). Peak RSS is sampled every 100 ms during the measured run.",
        "Summed VmRSS counts pages the tree's processes share (the binary, libpython)",
        "once per process; PSS, read from /proc/PID/smaps_rollup right after the run and",
        "summed over the tree, counts them once.",
        "",
    ]
    for scenario in scenarios:
        lines += [f"## {scenario.title}", ""]
        if scenario.idle_connections:
            lines += report.keepalive_table(scenario, names, summaries, labels)
        else:
            lines += report.scenario_table(scenario, names, summaries, labels, info["runs"])
        lines.append("")
    lines += [
        "## Start to first 200",
        "",
        "Seconds from spawn to the first 200 response. For a POST route of `--app` the",
        "probe is a GET on that route, so it counts the first response of any status.",
        "",
    ]
    lines += report.startup_table(names, records, labels)
    return "\n".join(lines) + "\n"


def chart_series(names: list[str], scenarios: list[Scenario], records: list) -> tuple:
    """Return (scenario labels, req/s series, p99 series) for the chart."""
    summaries = report.summarise(records)
    labels = [s.key for s in scenarios]
    rps: chart.Series = {name: {} for name in names}
    p99: chart.Series = {name: {} for name in names}
    for scenario in scenarios:
        for name in names:
            summary = summaries.get((scenario.key, name, scenario.idle_connections))
            if summary is None or summary.runs == 0:
                continue
            rps[name][scenario.key] = summary.get("requests_per_s") or 0.0
            p99[name][scenario.key] = summary.get("p99_ms") or 0.0
    return labels, rps, p99


def main(argv: list[str]) -> int:
    """Run the comparison (or reload one with --from-json), write the results, return the status."""
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        info, records = data["info"], data["records"]
        scenarios = [scenario_from_info(entry) for entry in info["scenarios"]]
        write_outputs(args, info, info["servers"], scenarios, records)
        return 0

    names, scenarios = validate(args)
    # SIGTERM unwinds like Ctrl-C, so the running server is stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    idle.raise_open_file_limit(OPEN_FILES_NEEDED)
    # The harness samples RSS and keeps the idle sockets open, so it stays off the server's CPU.
    os.sched_setaffinity(0, {args.load_cpu})

    info = machine_info(args, names)
    info["servers"] = names
    info["scenarios"] = [
        {"key": s.key, "title": s.title, "idle_connections": s.idle_connections} for s in scenarios
    ]
    cfg = runner.RunConfig(
        host="127.0.0.1",
        server_cpu=args.server_cpu,
        load_cpu=args.load_cpu,
        connections=args.connections,
        duration_s=args.duration,
        warmup_s=args.warmup,
        start_timeout_s=args.start_timeout,
        out_dir=args.out_dir.resolve(),
        tools=toolchain(args),
        body_dir=args.out_dir.resolve() / "bodies",
    )
    records = run_all(names, scenarios, cfg, args)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = cfg.out_dir / f"compare-{stamp}.json"
    json_path.write_text(json.dumps({"info": info, "records": records}, indent=2) + "\n")
    print(f"wrote {json_path}", file=sys.stderr)

    write_outputs(args, info, names, scenarios, records)
    failed = [r for r in records if "error" in r]
    return 1 if failed and len(failed) == len(records) else 0


def scenario_from_info(entry: dict) -> Scenario:
    """Rebuild a scenario from the summary stored in the JSON, for rendering only."""
    if entry["key"] in SCENARIOS:
        return SCENARIOS[entry["key"]]
    return Scenario(
        entry["key"], entry["title"], "", "", idle_connections=entry["idle_connections"]
    )


def write_outputs(
    args: argparse.Namespace, info: dict, names: list[str], scenarios: list[Scenario], records: list
) -> None:
    """Write the Markdown page and the chart, or print the page in --app mode without --output."""
    page = render(info, names, scenarios, records)
    output = args.output or (None if args.app else BENCHES_DIR / "results.md")
    if output is None:
        print(page)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    labels, rps, p99 = chart_series(names, scenarios, records)
    title = f"{info['connections']} connections, {info['duration_s']:g} s, {info['cpu_model']}"
    chart_path = chart.draw(output.with_suffix(".png"), labels, rps, p99, title)
    print(f"wrote {output} and {chart_path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
