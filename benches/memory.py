"""Per-process memory of fastserve and uvicorn: idle, after load and with idle connections.

For each server and app the script starts one fresh server pinned to a CPU,
then reads /proc/PID/smaps of every process in its tree at these points:

1. idle, two seconds after the first 200;
2. with `--idle` keep-alive connections open, each after one complete
   request. The growth from step 1 divided by their number is the cost of one
   idle connection, as the load comparison measures it;
3. after those connections closed, which shows what the server keeps;
4. after a bounded wrk run (one thread, `--connections`, `--duration`),
   during which the peak of the tree's summed VmRSS is sampled.

Each mapping is put in one group (the executable, libpython, extension
modules, other shared libraries, malloc's main heap, malloc thread arenas,
thread stacks, other anonymous memory) and Rss, Pss, Private_Dirty and
Anonymous are summed per group. The grouping of anonymous mappings is a
heuristic from their shape; see `anon_group`. Pss also depends on other
processes on the machine that map the same files (libc, libpython), so compare
Private_Dirty and Anonymous between runs.

It also prints the server tree's CPU time per request over the wrk run, read
from /proc/PID/stat, which stays meaningful when other work shares the
machine and req/s does not.
"""

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from harness import idle, procs, servers, wrk

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
APPS_DIR = BENCH_DIR / "apps"

APPS = {"raw": ("raw:app", "/"), "fastapi": ("fastapi_app:app", "/json")}

HOST = "127.0.0.1"
FIELDS = ("Rss", "Pss", "Private_Dirty", "Anonymous")

# glibc reserves each malloc thread arena as a 64 MiB aligned region
# (HEAP_MAX_SIZE on 64-bit) and makes only its used head read-write.
MALLOC_ARENA_RESERVE = 64 * 1024 * 1024
PAGE = 4096

# Time for a server to settle after its first 200, and after load, before a
# snapshot. Longer than the 1 s after which fastserve trims its heap once many
# connections have closed, so the snapshot after load shows what stays resident.
SETTLE_S = 2.0


class Mapping:
    """One entry of /proc/PID/smaps: address range, permissions, path and kB fields."""

    def __init__(self, header: str) -> None:
        parts = header.split(maxsplit=5)
        start, end = parts[0].split("-")
        self.start = int(start, 16)
        self.end = int(end, 16)
        self.perms = parts[1]
        self.path = parts[5].strip() if len(parts) > 5 else ""
        self.kib: Counter[str] = Counter()


def read_smaps(pid: int) -> list[Mapping]:
    """Return the mappings of `pid` with their kB fields, or none if the process is gone."""
    mappings: list[Mapping] = []
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return mappings
    for line in lines:
        key, _, rest = line.partition(":")
        if " " not in key and rest.strip().endswith("kB"):
            mappings[-1].kib[key] = int(rest.split()[0])
        elif "-" in line.split(maxsplit=1)[0]:
            mappings.append(Mapping(line))
    return mappings


def anon_group(index: int, mappings: list[Mapping]) -> str:
    """Name the likely owner of an anonymous read-write mapping from its neighbours.

    A thread stack sits right above a no-access guard page, and a malloc
    thread arena is followed by its no-access reserve up to 64 MiB. Anything
    else is other anonymous memory: CPython's small-object arenas (1 MiB
    mappings that the kernel merges when adjacent) and malloc blocks large
    enough to get their own mapping.
    """
    current = mappings[index]
    following = mappings[index + 1] if index + 1 < len(mappings) else None
    previous = mappings[index - 1] if index > 0 else None
    if (
        following is not None
        and following.perms.startswith("---")
        and not following.path
        and following.start == current.end
        and following.end - current.start == MALLOC_ARENA_RESERVE
    ):
        return "malloc thread arenas"
    if (
        previous is not None
        and previous.perms.startswith("---")
        and not previous.path
        and previous.end == current.start
        and previous.end - previous.start == PAGE
    ):
        return "thread stacks"
    return "other anonymous"


def group_of(index: int, mappings: list[Mapping], exe: str) -> str:
    """Return the group a mapping's memory is counted in."""
    mapping = mappings[index]
    path = mapping.path
    if path == exe:
        return "executable"
    if "libpython" in path:
        return "libpython"
    if path.endswith(".so") and ("site-packages" in path or "lib-dynload" in path):
        return "extension modules"
    if ".so" in path:
        return "other shared libraries"
    if path == "[heap]":
        return "malloc main heap"
    if path == "[stack]":
        return "main thread stack"
    if not path and mapping.perms.startswith("rw"):
        return anon_group(index, mappings)
    return "other"


def breakdown(pid: int) -> dict[str, Counter[str]]:
    """Sum FIELDS per group over the mappings of one process."""
    try:
        exe = str(Path(f"/proc/{pid}/exe").resolve())
    except OSError:
        exe = ""
    mappings = read_smaps(pid)
    groups: dict[str, Counter[str]] = {}
    for index, mapping in enumerate(mappings):
        if not mapping.kib["Rss"]:
            continue
        totals = groups.setdefault(group_of(index, mappings, exe), Counter())
        for field in FIELDS:
            totals[field] += mapping.kib[field]
    return groups


def thread_count(pid: int) -> int:
    """Return the number of threads of `pid`."""
    return procs.status_kib(pid, "Threads")


def roles(server: str, pids: list[int]) -> list[tuple[str, int]]:
    """Name each process of the tree: fastserve runs a supervisor and workers."""
    if server == "fastserve" and len(pids) > 1:
        return [("supervisor", pids[0])] + [("worker", pid) for pid in pids[1:]]
    return [(server, pid) for pid in pids]


def snapshot(server: str, proc: procs.ServerProcess) -> dict[str, dict]:
    """Read the groups, their totals and the thread count of every process in the tree."""
    result = {}
    for role, pid in roles(server, proc.pids()):
        groups = breakdown(pid)
        total: Counter[str] = Counter()
        for values in groups.values():
            total.update(values)
        result[role] = {"pid": pid, "groups": groups, "total": total, "threads": thread_count(pid)}
    return result


def print_snapshot(title: str, snap: dict[str, dict], detail: bool) -> None:
    """Print the totals per process and, with `detail`, the groups."""
    print(f"\n### {title}\n")
    print("| process (kB) | threads | Rss | Pss | Private_Dirty | Anonymous |")
    print("|---|---|---|---|---|---|")
    for role, data in snap.items():
        total = data["total"]
        cells = " | ".join(str(total[field]) for field in FIELDS)
        print(f"| {role} | {data['threads']} | {cells} |")
    if len(snap) > 1:
        threads = sum(data["threads"] for data in snap.values())
        cells = " | ".join(str(tree_total(snap, field)) for field in FIELDS)
        print(f"| sum | {threads} | {cells} |")
    if not detail:
        return
    for role, data in snap.items():
        print(f"\n{role} (kB):\n")
        print("| group | Rss | Pss | Private_Dirty | Anonymous |")
        print("|---|---|---|---|---|")
        ordered = sorted(data["groups"].items(), key=lambda item: -item[1]["Rss"])
        for group, values in ordered:
            cells = " | ".join(str(values[field]) for field in FIELDS)
            print(f"| {group} | {cells} |")


def tree_total(snap: dict[str, dict], field: str) -> int:
    """Sum one field over the processes of a snapshot."""
    return sum(data["total"][field] for data in snap.values())


def measure(server: str, app_key: str, args: argparse.Namespace) -> None:
    """Start one server on one app, take the snapshots and print them."""
    app, path = APPS[app_key]
    port = procs.free_port(HOST)
    launch = servers.Launch(app, APPS_DIR, HOST, port)
    tools = servers.Toolchain(args.python, args.fastserve_bin, None, "")
    argv = servers.server_argv(server, launch, tools)
    log_path = args.out_dir / f"memory-{server}-{app_key}.log"
    budget_s = args.start_timeout + args.duration + wrk.EXIT_GRACE_S + 60
    proc = procs.ServerProcess(
        argv,
        cpu=args.server_cpu,
        cwd=APPS_DIR,
        env=servers.server_env(args.python, APPS_DIR),
        log_path=log_path,
        max_lifetime_s=budget_s,
    )
    print(f"\n## {server}, {app_key} app\n\n`{' '.join(argv)}`")
    try:
        proc.wait_first_200(HOST, port, path, args.start_timeout)
        time.sleep(SETTLE_S)
        idle_snap = snapshot(server, proc)
        print_snapshot("idle", idle_snap, args.detail)
        if args.idle:
            measure_idle_connections(server, proc, port, path, idle_snap, args)
        measure_load(server, proc, port, path, args)
    finally:
        proc.stop()


def measure_idle_connections(
    server: str,
    proc: procs.ServerProcess,
    port: int,
    path: str,
    idle_snap: dict[str, dict],
    args: argparse.Namespace,
) -> None:
    """Open `args.idle` connections, print their cost, close them and print what stays."""
    sockets = idle.open_idle_connections(HOST, port, path, args.idle)
    try:
        time.sleep(SETTLE_S)
        open_snap = snapshot(server, proc)
    finally:
        idle.close_all(sockets)
    print_snapshot(f"with {args.idle} idle connections", open_snap, args.detail)
    for field in ("Rss", "Anonymous"):
        grown = tree_total(open_snap, field) - tree_total(idle_snap, field)
        print(f"\n{field} per idle connection: {grown / args.idle:.1f} KiB")

    time.sleep(SETTLE_S)
    closed_snap = snapshot(server, proc)
    print_snapshot(f"after closing the {args.idle} connections", closed_snap, args.detail)


def measure_load(
    server: str, proc: procs.ServerProcess, port: int, path: str, args: argparse.Namespace
) -> None:
    """Run wrk while sampling the peak RSS, then print the CPU per request and a snapshot."""
    cpu_before = proc.cpu_seconds()
    with procs.RssSampler(proc.pid) as sampler:
        result = wrk.run_wrk(
            f"http://{HOST}:{port}{path}",
            wrk.LoadSpec(path),
            connections=args.connections,
            duration_s=args.duration,
            cpu=args.load_cpu,
        )
    cpu_used = proc.cpu_seconds() - cpu_before
    per_request_us = 1e6 * cpu_used / result.requests if result.requests else 0.0
    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration:g}s: {result.requests} requests, "
        f"{result.requests_per_s:,.0f} req/s, server CPU {per_request_us:.2f} µs per request, "
        f"peak summed VmRSS {sampler.peak_kib} kB"
    )
    time.sleep(SETTLE_S)
    print_snapshot("after the wrk run", snapshot(server, proc), args.detail)


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, required=True, help="venv python with the servers")
    parser.add_argument("--fastserve-bin", type=Path, default=REPO_DIR / "target/release/fastserve")
    parser.add_argument("--servers", default="fastserve,uvicorn", help="comma-separated")
    parser.add_argument("--apps", default="raw,fastapi", help="comma-separated: raw, fastapi")
    parser.add_argument("--duration", type=float, default=5.0, help="wrk seconds (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections, 0 to skip")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--start-timeout", type=float, default=30.0, help="seconds")
    parser.add_argument("--detail", action="store_true", help="print the groups per process")
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR / "out", help="server logs")
    args = parser.parse_args()
    # The servers run in the apps folder, so relative paths must not reach them.
    args.fastserve_bin = args.fastserve_bin.resolve()
    return args


def main() -> int:
    """Measure every server on every app."""
    args = parse_args()
    idle.raise_open_file_limit(args.idle + 256)
    for app_key in args.apps.split(","):
        if app_key not in APPS:
            print(f"unknown app {app_key!r}: expected one of {', '.join(APPS)}", file=sys.stderr)
            return 2
        for server in args.servers.split(","):
            measure(server, app_key, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
