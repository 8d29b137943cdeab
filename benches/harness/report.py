"""Aggregate run records (median over runs) and render Markdown tables."""

import statistics
from dataclasses import dataclass, field

from .runner import NOISY_OTHER_LOAD_PERCENT
from .scenarios import Scenario

BASELINE = "uvicorn"


@dataclass
class Summary:
    """Median figures of one server in one scenario, over the runs that succeeded."""

    server: str
    scenario: str
    idle_connections: int
    runs: int = 0
    failures: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    rps_min: float = 0.0
    rps_max: float = 0.0
    wrk_errors: int = 0

    def get(self, key: str) -> float | None:
        """Return the median of `key`, or None when no run produced it."""
        return self.values.get(key)


MEDIAN_KEYS = (
    "requests_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "peak_rss_mib",
    "idle_rss_mib",
    "pss_after_mib",
    "vmhwm_sum_mib",
    "server_cpu_percent",
    "server_cpu_other_percent",
    "server_cpu_steal_percent",
    "load_cpu_other_percent",
    "wrk_cpu_percent",
    "start_to_first_200_s",
    "rss_before_idle_mib",
    "rss_with_idle_mib",
    "kib_per_idle_connection",
    "idle_still_open",
)


def summarise(records: list[dict]) -> dict[tuple[str, str, int], Summary]:
    """Group records by (scenario, server, idle connections) and take medians."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for record in records:
        if record.get("discarded"):
            continue
        key = (record["scenario"], record["server"], record["idle_connections"])
        groups.setdefault(key, []).append(record)

    summaries = {}
    for key, group in groups.items():
        summary = Summary(server=key[1], scenario=key[0], idle_connections=key[2])
        good = [r for r in group if "error" not in r]
        summary.failures = [r["error"] for r in group if "error" in r]
        summary.runs = len(good)
        for name in MEDIAN_KEYS:
            numbers = [r[name] for r in good if r.get(name) is not None]
            if numbers:
                summary.values[name] = statistics.median(numbers)
        rates = [r["requests_per_s"] for r in good]
        if rates:
            summary.rps_min, summary.rps_max = min(rates), max(rates)
        summary.wrk_errors = sum(sum(r["errors"].values()) for r in good)
        summaries[key] = summary
    return summaries


def _num(value: float | None, digits: int = 0) -> str:
    """Format a number with thousands separators, or a dash when it is missing."""
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    """Format value / base as "1.23", or a dash when either is missing."""
    if value is None or not base:
        return "–"
    return f"{value / base:.2f}"


def scenario_table(
    scenario: Scenario, servers: list[str], summaries: dict, labels: dict[str, str], runs: int
) -> list[str]:
    """Return the Markdown lines of one scenario's table, one row per server."""
    header = [
        "server", "req/s", "× uvicorn", "p50 ms", "p99 ms", "peak RSS MiB", "× uvicorn RSS",
        "idle RSS MiB", "PSS after MiB", "× uvicorn PSS", "server CPU %", "wrk CPU %",
        "other load % server/wrk CPU",
    ]  # fmt: skip
    if runs > 1:
        header.insert(2, "req/s min–max")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = summaries.get((scenario.key, BASELINE, 0))
    notes: list[str] = []
    for server in servers:
        summary = summaries.get((scenario.key, server, 0))
        if summary is None:
            continue
        if summary.runs == 0:
            notes.append(f"{labels.get(server, server)} failed: {_first(summary.failures)}")
            continue
        rps = summary.get("requests_per_s")
        rss = summary.get("peak_rss_mib")
        row = [
            labels.get(server, server),
            _num(rps),
            _ratio(rps, base.get("requests_per_s") if base else None),
            _num(summary.get("p50_ms"), 2),
            _num(summary.get("p99_ms"), 2),
            _num(rss, 1),
            _ratio(rss, base.get("peak_rss_mib") if base else None),
            _num(summary.get("idle_rss_mib"), 1),
            _num(summary.get("pss_after_mib"), 1),
            _ratio(summary.get("pss_after_mib"), base.get("pss_after_mib") if base else None),
            _num(summary.get("server_cpu_percent")),
            _num(summary.get("wrk_cpu_percent")),
            f"{_num(summary.get('server_cpu_other_percent'))} / "
            f"{_num(summary.get('load_cpu_other_percent'))}",
        ]
        if runs > 1:
            row.insert(2, f"{_num(summary.rps_min)}–{_num(summary.rps_max)}")
        lines.append("| " + " | ".join(row) + " |")
        notes.extend(_run_notes(labels.get(server, server), summary))
    return lines + ([""] + [f"- {note}" for note in notes] if notes else [])


def keepalive_table(
    scenario: Scenario, servers: list[str], summaries: dict, labels: dict[str, str]
) -> list[str]:
    """Return the Markdown lines comparing 64 active connections with and without idle ones."""
    idle_count = scenario.idle_connections
    header = [
        "server", "req/s, 64 active", f"req/s, 64 active + {idle_count:,} idle", "ratio",
        "p99 ms with idle", "RSS before idle MiB", "RSS with idle MiB", "KiB per idle conn",
        "idle still open at end",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes: list[str] = []
    for server in servers:
        alone = summaries.get((scenario.key, server, 0))
        loaded = summaries.get((scenario.key, server, idle_count))
        if alone is None or loaded is None:
            continue
        label = labels.get(server, server)
        if loaded.runs == 0 or alone.runs == 0:
            notes.append(f"{label} failed: {_first(loaded.failures + alone.failures)}")
            continue
        row = [
            label,
            _num(alone.get("requests_per_s")),
            _num(loaded.get("requests_per_s")),
            _ratio(loaded.get("requests_per_s"), alone.get("requests_per_s")),
            _num(loaded.get("p99_ms"), 2),
            _num(loaded.get("rss_before_idle_mib"), 1),
            _num(loaded.get("rss_with_idle_mib"), 1),
            _num(loaded.get("kib_per_idle_connection"), 1),
            f"{_num(loaded.get('idle_still_open'))} of {idle_count:,}",
        ]
        lines.append("| " + " | ".join(row) + " |")
        notes.extend(_run_notes(label, alone) + _run_notes(label, loaded))
    return lines + ([""] + [f"- {note}" for note in notes] if notes else [])


def startup_table(servers: list[str], records: list[dict], labels: dict[str, str]) -> list[str]:
    """Return the Markdown lines of spawn-to-first-200 times over every start of each server."""
    lines = [
        "| server | median s | min s | max s | starts |",
        "|---|---|---|---|---|",
    ]
    for server in servers:
        times = [
            r["start_to_first_200_s"]
            for r in records
            if r["server"] == server and "start_to_first_200_s" in r and not r.get("discarded")
        ]
        if not times:
            continue
        lines.append(
            f"| {labels.get(server, server)} | {statistics.median(times):.3f} | "
            f"{min(times):.3f} | {max(times):.3f} | {len(times)} |"
        )
    return lines


def _run_notes(label: str, summary: Summary) -> list[str]:
    """Return notes about failed runs and wrk errors of one summary."""
    notes = []
    if summary.failures:
        notes.append(f"{label}: {len(summary.failures)} run(s) failed: {_first(summary.failures)}")
    server_other = summary.get("server_cpu_other_percent") or 0.0
    load_other = summary.get("load_cpu_other_percent") or 0.0
    if max(server_other, load_other) > NOISY_OTHER_LOAD_PERCENT:
        notes.append(
            f"{label}: other work took {server_other:.0f} % of the server's CPU and "
            f"{load_other:.0f} % of wrk's CPU during the run, so the machine was not quiet "
            "and this row is not reliable"
        )
    if summary.wrk_errors:
        notes.append(f"{label}: wrk counted {summary.wrk_errors:,} socket or non-2xx errors")
    return notes


def _first(failures: list[str]) -> str:
    """Return the first failure message on one line, shortened for a table note."""
    if not failures:
        return "no runs"
    return failures[0].splitlines()[0][:300]
