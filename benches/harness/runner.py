"""Run one scenario against one fresh server process and collect every measurement."""

import http.client
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import idle, procs, servers, wrk
from .scenarios import Scenario, fetch_once

KIB_PER_MIB = 1024

# Time for a server to settle after its first 200 before idle RSS is read.
SETTLE_S = 0.5

# A CPU counts as idle when it was busy less than QUIET_BUSY_PERCENT over QUIET_WINDOW_S.
QUIET_WINDOW_S = 1.0
QUIET_BUSY_PERCENT = 10.0

# Share of a CPU taken by other work (processes, interrupts) above which a run
# counts as noisy. Loopback interrupt work alone stays below this on an idle machine.
NOISY_OTHER_LOAD_PERCENT = 10.0

# Time after the idle connections are open before RSS is read again, so the
# server has finished allocating for them.
IDLE_SETTLE_S = 1.0


@dataclass(frozen=True)
class RunConfig:
    """Settings shared by every run of one harness invocation."""

    host: str
    server_cpu: int
    load_cpu: int
    connections: int
    duration_s: float
    warmup_s: float
    start_timeout_s: float
    out_dir: Path
    tools: servers.Toolchain
    body_dir: Path


def run_once(
    server: str, scenario: Scenario, cfg: RunConfig, run_index: int, idle_count: int
) -> dict:
    """Start `server` fresh, load it with `scenario` and stop it, returning the JSON record.

    A failure is recorded in the "error" field rather than raised, so one broken
    server does not stop the comparison.
    """
    record: dict = {
        "server": server,
        "scenario": scenario.key,
        "run": run_index,
        "idle_connections": idle_count,
    }
    port = procs.free_port(cfg.host)
    launch = servers.Launch(scenario.app, scenario.app_dir, cfg.host, port)
    argv = servers.server_argv(server, launch, cfg.tools)
    record["argv"] = argv
    log_path = cfg.out_dir / "logs" / f"{scenario.key}-{server}-run{run_index}-idle{idle_count}.log"
    proc = procs.ServerProcess(
        argv,
        cpu=cfg.server_cpu,
        cwd=scenario.app_dir,
        env=servers.server_env(cfg.tools.python, scenario.app_dir),
        log_path=log_path,
        max_lifetime_s=_max_lifetime(cfg),
    )
    try:
        _measure(proc, port, scenario, cfg, idle_count, record)
    except (
        procs.ServerStartError,
        wrk.WrkError,
        idle.IdleConnectionError,
        http.client.HTTPException,
        OSError,
        ValueError,
    ) as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        record["exit_code"] = proc.stop()
        record["log"] = str(log_path)
    return record


def wait_for_quiet(cfg: RunConfig, max_wait_s: float) -> tuple[float, float]:
    """Wait until both CPUs were idle for one second, or `max_wait_s` passed.

    Returns the seconds waited and the busiest CPU's load in percent over the last second.
    """
    started = time.monotonic()
    while True:
        before = [procs.cpu_busy_seconds(cpu)[0] for cpu in (cfg.server_cpu, cfg.load_cpu)]
        time.sleep(QUIET_WINDOW_S)
        after = [procs.cpu_busy_seconds(cpu)[0] for cpu in (cfg.server_cpu, cfg.load_cpu)]
        busy = max(100 * (b - a) / QUIET_WINDOW_S for a, b in zip(before, after, strict=True))
        waited = time.monotonic() - started
        if busy < QUIET_BUSY_PERCENT or waited >= max_wait_s:
            return waited, busy


def is_noisy(record: dict) -> bool:
    """Return True when other work took a visible share of either CPU during the run."""
    shares = (record.get("server_cpu_other_percent"), record.get("load_cpu_other_percent"))
    return any(share is not None and share > NOISY_OTHER_LOAD_PERCENT for share in shares)


def _max_lifetime(cfg: RunConfig) -> float:
    """Return the hard bound on one server's life: start, warm-up, load and slack."""
    return cfg.start_timeout_s + cfg.warmup_s + cfg.duration_s + 2 * wrk.EXIT_GRACE_S + 30


def _measure(
    proc: procs.ServerProcess,
    port: int,
    scenario: Scenario,
    cfg: RunConfig,
    idle_count: int,
    record: dict,
) -> None:
    """Wait for the first response, check it, warm up, then take the measured run."""
    # A POST route cannot be probed with GET, so the user's POST scenario waits for
    # any response on its path. The built-in apps return 200 on "/".
    if scenario.method == "GET":
        ready_path, any_status = scenario.path, False
    elif scenario.key == "user":
        ready_path, any_status = scenario.path, True
    else:
        ready_path, any_status = "/", False
    record["start_to_first_200_s"] = proc.wait_first_200(
        cfg.host, port, ready_path, cfg.start_timeout_s, any_status
    )
    # The PID lets an engineer attach `perf record -p PID` while the load runs.
    print(
        f"  {server_label(proc)} pid {proc.pid} answered 200 after "
        f"{record['start_to_first_200_s']:.3f} s",
        file=sys.stderr,
        flush=True,
    )
    time.sleep(SETTLE_S)
    record["idle_rss_mib"] = proc.rss_kib() / KIB_PER_MIB
    record["processes"] = len(proc.pids())

    status, body = fetch_once(cfg.host, port, scenario)
    problem = scenario.check_response(status, body)
    if problem:
        raise procs.ServerStartError(
            f"wrong response to {scenario.method} {scenario.path}: {problem}"
        )

    url = f"http://{cfg.host}:{port}{scenario.path}"
    spec = _load_spec(scenario, cfg)
    if cfg.warmup_s > 0:
        wrk.run_wrk(
            url, spec, connections=cfg.connections, duration_s=cfg.warmup_s, cpu=cfg.load_cpu
        )

    sockets = []
    try:
        if idle_count:
            sockets = _open_idle(proc, cfg, port, scenario.path, idle_count, record)
        cpu_before = proc.cpu_seconds()
        busy_before, steal_before = procs.cpu_busy_seconds(cfg.server_cpu)
        load_busy_before, _ = procs.cpu_busy_seconds(cfg.load_cpu)
        with procs.RssSampler(proc.pid) as sampler:
            result = wrk.run_wrk(
                url, spec, connections=cfg.connections, duration_s=cfg.duration_s, cpu=cfg.load_cpu
            )
        server_cpu_s = proc.cpu_seconds() - cpu_before
        busy_after, steal_after = procs.cpu_busy_seconds(cfg.server_cpu)
        load_busy_after, _ = procs.cpu_busy_seconds(cfg.load_cpu)
        if idle_count:
            record["idle_still_open"] = idle.count_open(sockets)
    finally:
        idle.close_all(sockets)

    hwm_sum_kib, hwm_max_kib = proc.hwm_kib()
    record["pss_after_mib"] = proc.pss_kib() / KIB_PER_MIB
    record.update(result.as_dict())
    record["server_cpu_percent"] = 100 * server_cpu_s / result.duration_s
    # Time the server's CPU spent on anything but the server: other processes and
    # interrupt work. More than a few percent means the machine was not quiet.
    other_s = (busy_after - busy_before) - server_cpu_s
    record["server_cpu_other_percent"] = max(0.0, 100 * other_s / result.duration_s)
    record["server_cpu_steal_percent"] = 100 * (steal_after - steal_before) / result.duration_s
    # The same for the load CPU: what took it besides wrk (the harness's sampler is tiny).
    load_other_s = (load_busy_after - load_busy_before) - result.wrk_cpu_s
    record["load_cpu_other_percent"] = max(0.0, 100 * load_other_s / result.duration_s)
    record["peak_rss_mib"] = sampler.peak_kib / KIB_PER_MIB
    record["rss_samples"] = sampler.samples
    record["vmhwm_sum_mib"] = hwm_sum_kib / KIB_PER_MIB
    record["vmhwm_max_process_mib"] = hwm_max_kib / KIB_PER_MIB


def server_label(proc: procs.ServerProcess) -> str:
    """Return the program name of the server, without the taskset prefix."""
    return Path(proc.argv[3]).name if proc.argv[3:] else "server"


def _open_idle(
    proc: procs.ServerProcess, cfg: RunConfig, port: int, path: str, count: int, record: dict
) -> list:
    """Open the idle connections and record the server's RSS before and after."""
    rss_before = proc.rss_kib()
    sockets = idle.open_idle_connections(cfg.host, port, path, count)
    time.sleep(IDLE_SETTLE_S)
    rss_after = proc.rss_kib()
    record["rss_before_idle_mib"] = rss_before / KIB_PER_MIB
    record["rss_with_idle_mib"] = rss_after / KIB_PER_MIB
    record["kib_per_idle_connection"] = (rss_after - rss_before) / count
    record["idle_open_after_settle"] = idle.count_open(sockets)
    return sockets


def _load_spec(scenario: Scenario, cfg: RunConfig) -> wrk.LoadSpec:
    """Return the wrk request for the scenario, writing its body to a file when it has one."""
    if scenario.body is None:
        return wrk.LoadSpec(scenario.path, scenario.method)
    cfg.body_dir.mkdir(parents=True, exist_ok=True)
    body_file = cfg.body_dir / f"{scenario.key}.body"
    body_file.write_bytes(scenario.body)
    return wrk.LoadSpec(scenario.path, scenario.method, body_file, scenario.content_type)
