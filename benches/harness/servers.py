"""Command lines and versions of the servers under test.

Every server runs one worker, binds 127.0.0.1, logs only warnings and has its
access log off, so none of them pays for logging that the others skip. The
keep-alive timeout is raised so that the idle connections of the keep-alive
scenario stay open for the whole run.
"""

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Longer than any run plus its warm-up, so no server closes idle keep-alive
# connections while they are being counted.
KEEP_ALIVE_TIMEOUT_S = 300

# granian's longest allowed header-read timeout (it rejects more than 60,000 ms).
GRANIAN_HEADER_READ_TIMEOUT_MS = 60_000

SERVER_NAMES = ("fastserve", "uvicorn", "granian", "ceiling")


@dataclass(frozen=True)
class Launch:
    """Everything a command line needs: the app, where it lives, and where to listen."""

    app: str
    app_dir: Path
    host: str
    port: int


@dataclass(frozen=True)
class Toolchain:
    """Paths given on the harness command line."""

    python: Path
    fastserve_bin: Path
    ceiling_bin: Path | None
    ceiling_args: str


def server_argv(name: str, launch: Launch, tools: Toolchain) -> list[str]:
    """Return the command line that starts server `name` for `launch`."""
    if name == "uvicorn":
        return uvicorn_argv(launch, tools.python)
    if name == "granian":
        return granian_argv(launch, tools.python)
    if name == "fastserve":
        return fastserve_argv(launch, tools.fastserve_bin)
    if name == "ceiling":
        if tools.ceiling_bin is None:
            raise ValueError("the ceiling server needs --ceiling-bin PATH")
        args = tools.ceiling_args.format(host=launch.host, port=launch.port)
        return [str(tools.ceiling_bin), *shlex.split(args)]
    raise ValueError(f"unknown server {name!r}: expected one of {', '.join(SERVER_NAMES)}")


def uvicorn_argv(launch: Launch, python: Path) -> list[str]:
    """Return uvicorn's command line with uvloop and httptools, its fastest configuration."""
    return [
        str(python), "-m", "uvicorn", launch.app,
        "--host", launch.host,
        "--port", str(launch.port),
        "--app-dir", str(launch.app_dir),
        "--loop", "uvloop",
        "--http", "httptools",
        "--no-access-log",
        "--log-level", "warning",
        "--timeout-keep-alive", str(KEEP_ALIVE_TIMEOUT_S),
    ]  # fmt: skip


def granian_argv(launch: Launch, python: Path) -> list[str]:
    """Return granian's command line: ASGI, one worker with one runtime thread, uvloop, HTTP/1."""
    return [
        str(python), "-m", "granian",
        "--interface", "asgi",
        "--host", launch.host,
        "--port", str(launch.port),
        "--workers", "1",
        "--runtime-threads", "1",
        "--loop", "uvloop",
        "--http", "1",
        "--no-access-log",
        "--log-level", "warning",
        "--http1-header-read-timeout", str(GRANIAN_HEADER_READ_TIMEOUT_MS),
        launch.app,
    ]  # fmt: skip


def fastserve_argv(launch: Launch, binary: Path) -> list[str]:
    """Return fastserve's command line: defaults apart from address, logging and keep-alive."""
    return [
        str(binary), launch.app,
        "--host", launch.host,
        "--port", str(launch.port),
        "--app-dir", str(launch.app_dir),
        "--no-access-log",
        "--log-level", "warning",
        "--timeout-keep-alive", str(KEEP_ALIVE_TIMEOUT_S),
    ]  # fmt: skip


def server_env(python: Path, app_dir: Path) -> dict[str, str]:
    """Return the environment for every server: the venv of `python` active, app_dir importable.

    fastserve finds the app's dependencies through VIRTUAL_ENV, as it does when
    run from an activated venv.
    """
    env = dict(os.environ)
    venv = python.parent.parent
    if (venv / "pyvenv.cfg").exists():
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(app_dir), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONHOME", None)
    # Keep the servers from writing bytecode next to the apps between runs.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _python_output(python: Path, code: str) -> str:
    """Run a snippet with `python` and return its stripped stdout, or the error."""
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    if proc.returncode != 0:
        last_lines = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"unknown ({last_lines[0]})"
    return proc.stdout.strip()


def server_versions(names: list[str], tools: Toolchain) -> dict[str, str]:
    """Return a version description for each server in `names`."""
    versions: dict[str, str] = {}
    for name in names:
        if name == "uvicorn":
            versions[name] = _python_output(
                tools.python,
                "import uvicorn, uvloop, httptools; "
                "print(f'uvicorn {uvicorn.__version__} (uvloop {uvloop.__version__}, "
                "httptools {httptools.__version__})')",
            )
        elif name == "granian":
            versions[name] = _python_output(
                tools.python, "import granian; print(f'granian {granian.__version__}')"
            )
        elif name == "fastserve":
            versions[name] = _binary_version(tools.fastserve_bin)
        elif name == "ceiling" and tools.ceiling_bin is not None:
            versions[name] = f"{tools.ceiling_bin.name} (pure Rust hyper, no Python)"
    return versions


def _binary_version(binary: Path) -> str:
    """Return the output of `BINARY --version`, or why it is not available."""
    if not binary.exists():
        return f"missing ({binary})"
    try:
        proc = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    if proc.returncode != 0 or not lines:
        return f"unknown (`--version` exited with code {proc.returncode})"
    return lines[0]


def python_version(python: Path) -> str:
    """Return the full version string of the venv's interpreter."""
    return _python_output(python, "import sys; print(sys.version.split()[0])")


def fastapi_version(python: Path) -> str:
    """Return the FastAPI and Starlette versions installed next to `python`."""
    return _python_output(
        python,
        "import fastapi, starlette; "
        "print(f'fastapi {fastapi.__version__}, starlette {starlette.__version__}')",
    )
