#!/usr/bin/env python3
"""Sort perf samples of fastserve into cost categories and render the tables.

The input is `perf script -F comm,tid,time,period,event,ip,sym,dso,srcline
--full-source-path` for a recording with DWARF call graphs. The source path
of each frame, inlined frames included, shows which crate, fastserve module
or CPython file it is in. Fat LTO inlines most Rust code, so symbol names
alone would hide it. Each sample goes to exactly one category:

1. Innermost frame in the kernel: a context switch if `__schedule` is on the
   stack, malloc/free if glibc's allocator made the syscall (brk), else the
   syscall it is in (socket read, socket write, epoll_wait, eventfd, other)
   or kernel work outside syscalls (page faults, interrupts).
2. Innermost frame in glibc's allocator, CPython's object allocator or the
   vDSO: malloc/free, pymalloc or clock reads.
3. Otherwise the frames are walked from the innermost outwards, and the
   first frame that belongs to a component decides: a fastserve module,
   hyper, tokio's runtime, uvloop, the C `_asyncio` Task, CPython's eval
   loop (Python code) or its cyclic GC. Code that fastserve calls into
   (tokio::sync and wakers, the http and bytes crates, pyo3 helpers, std,
   libc string functions, CPython's object API) is transparent, so its
   cost counts for the caller. A pyo3 frame crossed on the way to a
   Python-side owner counts as the call glue between Python and Rust.

With CPython's perf trampolines (PYTHONPERFSUPPORT=1) the perf map names
Python functions, which splits Python code into asyncio's and the app's.
Without them all Python code counts as the app's.

    python3 benches/profile/breakdown.py benches/out/profile/hello.perf.txt
    python3 benches/profile/breakdown.py --records benches/out/profile/records.json
"""

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent.parent

# Category keys in table order, with the label the tables show.
CATEGORIES = {
    "hyper_tokio": "hyper, hyper-util, tokio and mio (user space)",
    "fastserve_tokio": "fastserve's code on the tokio thread: connection, head scan, request head",
    "sys_socket_read": "syscalls: socket reads",
    "sys_socket_write": "syscalls: socket writes, with loopback delivery to wrk",
    "sys_epoll": "syscalls: epoll_wait",
    "sys_eventfd": "syscalls: eventfd reads and writes (wake-ups)",
    "sys_other": "syscalls: other",
    "sched": "context switches (the tokio and Python threads share one CPU)",
    "kernel_other": "kernel outside syscalls (page faults, interrupts)",
    "bridge": "bridge hand-off: exchange, queue, dispatch pass, wakers",
    "send_receive": "ASGI send() and receive() in Rust",
    "scope": "scope building",
    "pyo3": "pyo3 call glue between Python and Rust",
    "loop": "event loop machinery: uvloop, _asyncio Task, asyncio Python code",
    "app": "the app: its Python code and the framework's",
    "malloc": "malloc/free (glibc, from Rust and C, with its brk calls)",
    "pymalloc": "pymalloc (CPython's object allocator)",
    "gc": "CPython's cyclic garbage collector (collections only)",
    "clock": "clock reads (vDSO clock_gettime)",
    "other": "other (thread start, unresolved frames)",
}

KERNEL_DSO = "[kernel.kallsyms]"
PERF_MAP_PREFIX = "py::"

# glibc syscall wrappers, matched against the innermost user-space frame of a
# kernel sample. Sockets go through recv and writev in hyper and tokio, so a
# plain read or write from these servers is an eventfd: the bridge's, or the
# one tokio's driver is woken through. A server that also writes files or
# logs would need the kernel markers below instead.
SYSCALL_WRAPPERS = (
    ("sys_socket_write", ("writev", "send")),
    ("sys_socket_read", ("recv",)),
    ("sys_epoll", ("epoll",)),
    ("sys_eventfd", ("__GI___libc_write", "__GI___libc_read", "__libc_write", "__libc_read")),
)
# Kernel functions that identify a syscall, for samples without a known wrapper.
KERNEL_MARKERS = (
    ("sys_eventfd", ("eventfd_write", "eventfd_read")),
    ("sys_epoll", ("do_epoll_wait", "ep_poll", "__x64_sys_epoll_wait", "__x64_sys_epoll_pwait")),
    ("sys_socket_write", ("sock_write_iter", "tcp_sendmsg", "do_writev", "__sys_sendto")),
    ("sys_socket_read", ("sock_read_iter", "tcp_recvmsg", "__sys_recvfrom", "__sys_recvmsg")),
    ("sys_other", ("do_syscall_64",)),
)
# Kernel work counts as malloc/free when a glibc allocator frame is among
# this many user-space frames next to the kernel. glibc calls brk through
# __brk, sbrk and __glibc_morecore from sysmalloc or systrim.
ALLOCATOR_CALLER_DEPTH = 6
ALLOCATOR_SYSCALL_WRAPPERS = frozenset({"__brk", "__GI___sbrk", "__glibc_morecore"})

# fastserve's source files by path in the repository, most specific first.
FASTSERVE_OWNERS = (
    ("src/python/scope.rs", "scope"),
    ("src/python/http.rs", "send_receive"),
    ("src/python/awaitable.rs", "send_receive"),
    ("src/python/", "bridge"),
    ("src/bridge/", "bridge"),
    ("src/", "fastserve_tokio"),
    # The pure-Rust ceiling server.
    ("examples/", "fastserve_tokio"),
)
CRATE_SOURCE = re.compile(r"/(?P<crate>[A-Za-z0-9_-]+?)-\d+\.\d+\.\d+[^/]*/src/(?P<file>.+)$")
RUNTIME_CRATES = frozenset({"hyper", "hyper-util", "mio", "httparse", "h2"})
# tokio code that fastserve calls into, whose cost belongs to the caller. On
# the Python thread, which never runs the tokio runtime, all tokio and mio
# frames are wake-ups of tokio tasks made by the bridge.
TOKIO_TRANSPARENT_FILES = ("sync/", "runtime/task/waker.rs")
TOKIO_TRANSPARENT_NAMES = re.compile(r"unpark|schedule|wake")
PYTHON_THREAD = "python"
CPYTHON_SOURCE = re.compile(r"/Python-3\.\d+\.\d+[^/]*/(?P<file>.+)$")
EVAL_LOOP_FILES = ("Python/ceval.c", "Python/bytecodes.c", "Python/generated_cases.c.h")
GLIBC_ALLOCATOR_FILES = ("malloc/malloc.c", "malloc/arena.c")
GC_COLLECT = "gc_collect_main"

THREAD_ROOTS = frozenset({"_start", "clone3", "clone", "start_thread", "__libc_start_main"})
HEADER = re.compile(r"^(?P<comm>.+?)\s+(?P<tid>\d+)\s+[\d.]+:\s+(?P<period>\d+)\s+\S+:")
FRAME = re.compile(r"^\t\s*(?P<addr>[0-9a-f]+)\s(?P<sym>.*?)(?:\s\((?P<dso>[^()]*)\))?$")
SRCLINE = re.compile(r"^  (?P<path>.*?)(?::\d+)?(?: \(inlined\))?$")


@dataclass
class Frame:
    """One stack frame: symbol, object file and source file (empty when unknown)."""

    name: str
    dso: str = ""
    source: str = ""
    inlined: bool = False


@dataclass
class Sample:
    """One perf sample: thread name, weight (cpu-clock period, ns), frames innermost first."""

    thread: str
    weight: int
    frames: list[Frame] = field(default_factory=list)


def parse_perf_script(lines: Iterable[str]) -> Iterator[Sample]:
    """Yield the samples of `perf script` output with srcline.

    perf prints a function's inlined callees before it, at the same address
    and without an object file. They get the object file of that function.
    """
    sample: Sample | None = None
    pending: list[tuple[str, Frame]] = []

    def settle(address: str | None, dso: str) -> None:
        for pending_address, frame in pending:
            if pending_address == address:
                frame.dso = dso
        pending.clear()

    for raw in lines:
        line = raw.rstrip("\n")
        if not line:
            if sample is not None:
                settle(None, "")
                yield sample
            sample = None
            continue
        if sample is None:
            match = HEADER.match(line)
            if match:
                sample = Sample(match["comm"], int(match["period"]))
            continue
        if line.startswith("\t"):
            match = FRAME.match(line)
            if not match:
                continue
            frame = Frame(match["sym"], match["dso"] or "")
            sample.frames.append(frame)
            if frame.dso:
                settle(match["addr"], frame.dso)
            else:
                frame.inlined = True
                pending.append((match["addr"], frame))
        elif line.startswith("  ") and sample.frames:
            match = SRCLINE.match(line)
            path = match["path"] if match else ""
            if path.startswith(("/", "./")):
                sample.frames[-1].source = path
    if sample is not None:
        settle(None, "")
        yield sample


def read_samples(path: Path) -> list[Sample]:
    """Read and parse a stored `perf script` output file."""
    with path.open(errors="replace") as text:
        return list(parse_perf_script(text))


def kernel_category(frames: list[Frame]) -> tuple[str, str]:
    """Return the category of a sample in the kernel, and the kernel's entry point for it.

    A context switch counts as such in whichever syscall it happens. A syscall
    or page fault that comes from glibc's allocator (brk, first touch of new
    heap pages) counts as malloc/free.
    """
    kernel = [frame.name for frame in frames if frame.dso == KERNEL_DSO]
    user = [frame for frame in frames if frame.dso != KERNEL_DSO]
    # The syscall handler is the frame just inside do_syscall_64.
    entry = kernel[-1] if kernel else "?"
    if "do_syscall_64" in kernel:
        position = kernel.index("do_syscall_64")
        entry = kernel[position - 1] if position > 0 else entry
    if "__schedule" in kernel:
        return "sched", entry
    if any(is_glibc_allocator(frame) for frame in user[:ALLOCATOR_CALLER_DEPTH]):
        return "malloc", entry
    if "do_syscall_64" in kernel and user:
        wrapper = user[0].name
        for category, parts in SYSCALL_WRAPPERS:
            if any(part in wrapper for part in parts):
                return category, entry
    names = set(kernel)
    for category, markers in KERNEL_MARKERS:
        if names.intersection(markers):
            return category, entry
    return "kernel_other", entry


def is_glibc_allocator(frame: Frame) -> bool:
    """Return True for a frame of glibc's malloc implementation or its brk wrappers."""
    return frame.name in ALLOCATOR_SYSCALL_WRAPPERS or any(
        part in frame.source for part in GLIBC_ALLOCATOR_FILES
    )


def python_category(frames: list[Frame], start: int) -> str:
    """Return the category of Python code that the eval loop at frames[start] runs.

    The nearest perf-map frame further out names the Python function when
    CPython's trampolines are on.
    """
    for frame in frames[start + 1 :]:
        if frame.name.startswith(PERF_MAP_PREFIX):
            return "loop" if "/asyncio/" in frame.name else "app"
        if not cpython_file(frame).startswith(EVAL_LOOP_FILES):
            break
    return "app"


def cpython_file(frame: Frame) -> str:
    """Return the frame's path inside the CPython source tree, or "" when it is not CPython's."""
    match = CPYTHON_SOURCE.search(frame.source)
    return match["file"] if match else ""


def fastserve_file(frame: Frame) -> str:
    """Return the frame's path inside this repository, or "" when it is not fastserve's."""
    prefix = f"{REPO_DIR}/"
    return frame.source[len(prefix) :] if frame.source.startswith(prefix) else ""


def frame_owner(frames: list[Frame], index: int, on_python_thread: bool) -> str | None:
    """Return the category that frame `index` claims, or None when it is transparent."""
    frame = frames[index]
    if frame.name.startswith(PERF_MAP_PREFIX):
        return "loop" if "/asyncio/" in frame.name else "app"
    if "/uvloop/" in frame.dso or "_asyncio." in frame.dso:
        return "loop"
    local = fastserve_file(frame)
    if local:
        return next((owner for prefix, owner in FASTSERVE_OWNERS if local.startswith(prefix)), None)
    cpython = cpython_file(frame)
    if cpython:
        if cpython.startswith(EVAL_LOOP_FILES):
            return python_category(frames, index)
        if cpython == "Modules/gcmodule.c" and any(f.name == GC_COLLECT for f in frames):
            return "gc"
        # Object tracking in gcmodule.c is part of allocating, so it is transparent.
        return None
    crate = CRATE_SOURCE.search(frame.source)
    if crate is None:
        return None
    if on_python_thread and crate["crate"] in ("tokio", "mio"):
        return None
    if crate["crate"] in RUNTIME_CRATES:
        return "hyper_tokio"
    if crate["crate"] == "tokio":
        transparent = crate["file"].startswith(TOKIO_TRANSPARENT_FILES) or bool(
            TOKIO_TRANSPARENT_NAMES.search(frame.name)
        )
        return None if transparent else "hyper_tokio"
    return None


def is_pyo3(frame: Frame) -> bool:
    """Return True for a frame of pyo3's own source."""
    crate = CRATE_SOURCE.search(frame.source)
    return crate is not None and crate["crate"] in ("pyo3", "pyo3-ffi")


def classify(sample: Sample) -> tuple[str, str]:
    """Return the category key of one sample and the frame or entry point that decided it."""
    frames = sample.frames
    if not frames:
        return "other", "[no frames]"
    leaf = frames[0]
    if leaf.dso == KERNEL_DSO:
        return kernel_category(frames)
    if leaf.dso == "[vdso]":
        return "clock", frame_label(leaf)
    if is_glibc_allocator(leaf):
        return "malloc", frame_label(leaf)
    if cpython_file(leaf) == "Objects/obmalloc.c":
        return "pymalloc", frame_label(leaf)

    crossed_pyo3 = False
    for index, frame in enumerate(frames):
        owner = frame_owner(frames, index, sample.thread == PYTHON_THREAD)
        if owner is None:
            crossed_pyo3 = crossed_pyo3 or is_pyo3(frame)
            continue
        if crossed_pyo3 and owner in ("loop", "app"):
            return "pyo3", frame_label(frames[index - 1])
        return owner, frame_label(frame)
    return "other", frame_label(frames[-1])


def frame_label(frame: Frame) -> str:
    """Return the frame's short name and, where known, its source file for the tables."""
    name = shorten(frame.name)
    local = fastserve_file(frame)
    crate = CRATE_SOURCE.search(frame.source)
    if local:
        return f"{name} ({local})"
    if crate:
        return f"{name} ({crate['crate']}/{crate['file']})"
    if cpython_file(frame):
        return f"{name} ({cpython_file(frame)})"
    return name


def stack_state(sample: Sample) -> str:
    """Return how far the unwinder got: to a thread's start, to a Python frame, or neither."""
    names = [frame.name for frame in sample.frames[-3:]]
    if any(name in THREAD_ROOTS or name.endswith("main") for name in names):
        return "complete"
    if names and names[-1].startswith(PERF_MAP_PREFIX):
        return "ends at a Python frame"
    return "truncated"


def leaf_label(sample: Sample) -> str:
    """Return the innermost frame as `symbol [object file]`."""
    if not sample.frames:
        return "[no frames]"
    leaf = sample.frames[0]
    dso = Path(leaf.dso).name if leaf.dso.startswith("/") else leaf.dso
    if leaf.dso.endswith(".map"):
        dso = "perf map"
    # perf marks some libc leaves (memcpy) as inlined with no caller at their address.
    return f"{shorten(leaf.name)} [{dso or 'object unknown'}]"


def summarize(samples: list[Sample], top: int = 15) -> dict:
    """Return shares in percent per category, thread and stack state, and the top frames."""
    total = sum(sample.weight for sample in samples) or 1
    categories: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    states: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    deciders: dict[str, Counter[str]] = {key: Counter() for key in CATEGORIES}
    for sample in samples:
        category, decider = classify(sample)
        categories[category] += sample.weight
        deciders[category][decider] += sample.weight
        threads[sample.thread] += sample.weight
        states[stack_state(sample)] += sample.weight
        leaves[leaf_label(sample)] += sample.weight

    def percent(counter: Counter[str], count: int | None = None) -> dict[str, float]:
        return {key: 100 * value / total for key, value in counter.most_common(count)}

    return {
        "samples": len(samples),
        "sampled_cpu_s": total / 1e9,
        "categories": {key: 100 * categories[key] / total for key in CATEGORIES},
        "threads": percent(threads),
        "stacks": percent(states),
        "top_leaves": percent(leaves, top),
        # For each category, the frames (or kernel entry points) that decided most of it.
        "deciders": {key: percent(counter, 5) for key, counter in deciders.items() if counter},
    }


def fold(samples: list[Sample]) -> str:
    """Return the samples as folded stacks for inferno-flamegraph, one sample counting 1.

    The root frame is the thread's name. Names are shortened with `shorten`,
    kernel frames end in `_[k]` and Python functions from the perf map in
    `_[j]`, which inferno's `java` palette colours orange and green.
    """
    stacks: Counter[str] = Counter()
    for sample in samples:
        names = [sample.thread]
        for frame in reversed(sample.frames):
            name = shorten(frame.name).replace(";", ",")
            if frame.dso == KERNEL_DSO:
                name += "_[k]"
            elif frame.name.startswith(PERF_MAP_PREFIX):
                name += "_[j]"
            names.append(name)
        stacks[";".join(names)] += 1
    return "".join(f"{stack} {count}\n" for stack, count in sorted(stacks.items()))


def shorten(frame: str) -> str:
    """Drop Rust generic arguments from a frame name, keeping `<Type as Trait>` paths.

    `poll<hyper::...<...>>` becomes `poll` and `Conn<I,B,T>::write_head`
    becomes `Conn::write_head`, which keeps flame graph labels readable and
    the files small.
    """
    out: list[str] = []
    depth = 0
    for index, char in enumerate(frame):
        if char == "<":
            # A `<` right after a name opens generic arguments. Anywhere else
            # it opens a qualified path such as `<A as B>::f`.
            previous = frame[index - 1] if index else ""
            if depth > 0 or previous.isalnum() or previous in "_>":
                depth += 1
                continue
        elif char == ">" and depth > 0:
            depth -= 1
            continue
        if depth == 0:
            out.append(char)
    return "".join(out)


def one_line(record: dict) -> str:
    """Return a one-line summary of a profiled target for the console."""
    return (
        f"  {record['target']}: {record['profiled']['requests_per_s']:,.0f} req/s under perf "
        f"({record['plain']['requests_per_s']:,.0f} without), "
        f"{record['cpu_us_per_request']:.2f} µs CPU per request, other load "
        f"{record['other_load_percent_server_cpu']:.0f} % server CPU / "
        f"{record['other_load_percent_load_cpu']:.0f} % wrk CPU"
    )


def category_rows(records: list[dict]) -> list[str]:
    """Return the category table: share and µs per request of each record, side by side."""
    head = "| category | " + " | ".join(f"{r['target']} % | µs/req" for r in records) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(records)]
    for key, label in CATEGORIES.items():
        cells = []
        for record in records:
            share = record["breakdown"]["categories"][key]
            cells.append(f"{share:.1f} | {share * record['cpu_us_per_request'] / 100:.2f}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    totals = " | ".join(f"100.0 | {r['cpu_us_per_request']:.2f}" for r in records)
    rows.append(f"| **all: server CPU per request** | {totals} |")
    return rows


def run_rows(records: list[dict]) -> list[str]:
    """Return the table of run conditions: throughput with and without perf, CPU and load."""
    rows = [
        "| target | req/s under perf | req/s without perf | server CPU % | µs CPU/req "
        "| load average before | other load % server/wrk CPU | stacks complete % |",
        "|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in records:
        rows.append(
            f"| {r['target']} | {r['profiled']['requests_per_s']:,.0f} "
            f"| {r['plain']['requests_per_s']:,.0f} | {r['server_cpu_percent']:.0f} "
            f"| {r['cpu_us_per_request']:.2f} | {r['loadavg_before']} "
            f"| {r['other_load_percent_server_cpu']:.0f} / {r['other_load_percent_load_cpu']:.0f} "
            f"| {r['breakdown']['stacks'].get('complete', 0.0):.0f} |"
        )
    return rows


def render(records: list[dict], command: str) -> str:
    """Return breakdown.md: run conditions, categories, threads, counts and top frames."""
    lines = [
        "# Where fastserve's CPU time goes, by category",
        "",
        'Generated by `benches/profile/record.py`; see benches/README.md, "Where the time goes".',
        "",
        f"- command: `{command}`",
        "- µs/req: the category's share of the sampled CPU time times the server's CPU time",
        "  per request in the profiled run (CPU seconds of the serving process / requests).",
        "- other load: busy time of the server's CPU that was not the server, and of wrk's CPU",
        "  that was neither wrk nor perf, in percent of the run.",
        "",
        *run_rows(records),
        "",
        "## Categories",
        "",
        *category_rows(records),
        "",
        "## Threads",
        "",
    ]
    for r in records:
        shares = ", ".join(
            f"{name} {share:.1f} %" for name, share in r["breakdown"]["threads"].items()
        )
        lines.append(f"- {r['target']}: {shares}")
    lines += ["", "## Syscalls and context switches per request", ""]
    lines += [
        "Counted with `perf stat --per-thread` in a separate run of half the duration.",
        "",
    ]
    for r in records:
        counts = r.get("per_request_counts") or {}
        text = ", ".join(f"{name} {value:.3f}" for name, value in counts.items() if value >= 0.0005)
        lines.append(f"- {r['target']}: {text}")
    lines += ["", "## What decided each category", ""]
    for r in records:
        lines += [f"### {r['target']}", ""]
        for key, frames in r["breakdown"]["deciders"].items():
            text = "; ".join(f"`{name}` {share:.1f}" for name, share in frames.items())
            lines.append(f"- {key}: {text}")
        lines.append("")
    lines += ["## Top functions by self time", ""]
    for r in records:
        lines += [f"### {r['target']}", "", "| % | function [object] |", "|---:|---|"]
        for label, share in r["breakdown"]["top_leaves"].items():
            lines.append(f"| {share:.1f} | `{label}` |")
        lines.append("")
    return "\n".join(lines)


def rerender(records_path: Path, output: Path) -> None:
    """Classify the stored `perf script` files of a run again and rewrite its breakdown table.

    The `.perf.txt` files are expected next to `records.json`, as record.py
    leaves them.
    """
    records = json.loads(records_path.read_text())
    for record in records:
        text = records_path.parent / f"{record['target']}.perf.txt"
        record["breakdown"] = summarize(read_samples(text))
    records_path.write_text(json.dumps(records, indent=2) + "\n")
    command = records[0].get("command", "python3 benches/profile/record.py") if records else ""
    output.write_text(render(records, command) + "\n")


def main(argv: list[str]) -> int:
    """Print the category shares of one stored `perf script` output, or rewrite a run's table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "perf_script", type=Path, nargs="?", help="output of `perf script` with srcline"
    )
    parser.add_argument(
        "--us-per-request", type=float, help="server CPU µs per request, to print µs per category"
    )
    parser.add_argument(
        "--records",
        type=Path,
        help="records.json of a run: classify its samples again and write --output",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "breakdown.md",
        help="table to write with --records (default benches/profile/breakdown.md)",
    )
    args = parser.parse_args(argv)
    if args.records:
        rerender(args.records, args.output)
        return 0
    if args.perf_script is None:
        parser.error("give a perf script file, or --records")
    summary = summarize(read_samples(args.perf_script))
    print(f"{summary['samples']} samples, {summary['sampled_cpu_s']:.2f} s of CPU")
    for key, share in summary["categories"].items():
        micros = f"  {share * args.us_per_request / 100:6.2f} µs" if args.us_per_request else ""
        print(f"{share:5.1f} %{micros}  {CATEGORIES[key]}")
    for name, share in summary["threads"].items():
        print(f"thread {name}: {share:.1f} %")
    for state, share in summary["stacks"].items():
        print(f"stacks {state}: {share:.1f} %")
    for key, frames in summary["deciders"].items():
        print(f"{key}: " + "; ".join(f"{name[:70]} {share:.1f}" for name, share in frames.items()))
    for label, share in summary["top_leaves"].items():
        print(f"{share:5.1f} %  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
