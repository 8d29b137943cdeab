"""Start the fastserve ASGI server from Python.

The server is a Rust binary, installed as `fastserve` in the environment's scripts
directory (the `bin/` of a virtual environment). This package finds that binary and
starts it: `python -m fastserve ARGS` and `run()` both replace the current process
with it, so signals and the exit status reach the server directly.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn, TypeAlias

__all__ = ["OptionValue", "build_command", "find_binary", "run"]

try:
    __version__ = version("fastserve")
except PackageNotFoundError:
    # Imported from a source checkout rather than an installed wheel.
    __version__ = "0.0.0"

BINARY_NAME = "fastserve"

# Switches that have both `--NAME` and `--no-NAME`, so `False` must be spelled out
# rather than left to the default. Other switches with `False` are left out.
# NOTE: keep both sets in step with the binary's options (src/cli.rs).
_NEGATABLE_SWITCHES = frozenset({"access_log", "date_header", "proxy_headers", "server_header"})
# Switches that are on by default and exist only as `--no-NAME`.
_NEGATIVE_ONLY_SWITCHES = frozenset({"health"})

OptionValue: TypeAlias = str | int | float | bool | os.PathLike[str] | Sequence[str] | None
"""A value for one keyword option of `run()` or `build_command()`."""


def _candidate_dirs() -> list[Path]:
    """List the folders that may contain the binary, the most likely first."""
    dirs = [Path(sysconfig.get_path("scripts"))]

    # `pip install --user` puts scripts in the user scheme's folder instead.
    user_scheme = f"{os.name}_user"
    if user_scheme in sysconfig.get_scheme_names():
        dirs.append(Path(sysconfig.get_path("scripts", user_scheme)))

    dirs.append(Path(sys.executable).parent)
    return dirs


def find_binary() -> str:
    """Return the path of the `fastserve` binary installed with this package.

    Looks in the scripts directory of the running interpreter's environment, then the
    user scripts directory, then beside `sys.executable`, then on `PATH`.

    Raises:
        FileNotFoundError: no executable `fastserve` was found in any of those places.
    """
    searched = _candidate_dirs()
    for folder in searched:
        candidate = folder / BINARY_NAME
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)

    on_path = shutil.which(BINARY_NAME)
    if on_path is not None:
        return on_path

    folders = ", ".join(str(folder) for folder in searched)
    raise FileNotFoundError(
        f"fastserve binary not found in {folders} or on PATH; "
        "reinstall the package with `pip install fastserve` in this environment"
    )


def _option_args(name: str, value: OptionValue) -> list[str]:
    """Turn one keyword option into command-line arguments."""
    flag = "--" + name.replace("_", "-")
    negative_flag = "--no-" + name.replace("_", "-")

    if value is None:
        return []
    if name in _NEGATIVE_ONLY_SWITCHES and isinstance(value, bool):
        return [] if value else [negative_flag]
    if value is True:
        return [flag]
    if value is False:
        return [negative_flag] if name in _NEGATABLE_SWITCHES else []
    if isinstance(value, str | os.PathLike | int | float):
        return [flag, os.fspath(value) if isinstance(value, os.PathLike) else str(value)]

    # Any other sequence repeats the option once per item.
    args: list[str] = []
    for item in value:
        args += [flag, str(item)]
    return args


def build_command(app: str | None = None, **options: OptionValue) -> list[str]:
    """Build the fastserve command line for an app and keyword options.

    Each keyword becomes a long option with underscores turned into dashes:
    `port=8000` gives `--port 8000`, `root_path="/api"` gives `--root-path /api`.
    `True` adds a switch (`factory=True` gives `--factory`). `False` adds the negative
    form for switches that have one (`access_log=False` gives `--no-access-log`,
    `health=False` gives `--no-health`) and is left out otherwise. `None` leaves the
    option out. A list or tuple repeats the
    option once per item. The binary checks names and values, so a misspelt option
    fails there with exit status 2.

    Args:
        app: the ASGI app as `"module:attribute"`; `None` serves the built-in demo app.
        **options: fastserve's command-line options, named as in `fastserve --help`.

    Returns:
        The argument list, starting with the binary's path, ready for `subprocess.run`
        or `os.execv`.
    """
    binary = find_binary()
    command = [binary]
    for name, value in options.items():
        command += _option_args(name, value)

    if app is not None:
        command.append(app)
    return command


def run(app: str | None = None, **options: OptionValue) -> NoReturn:
    """Replace the current process with a fastserve server for `app`.

    This calls `os.execv`, so it does not return. The server takes over the process
    id, receives its signals and sets the exit status: 0 after a clean shutdown, 1 on
    a runtime failure, 2 for a bad option, 3 when the app cannot start. The app is
    imported by the server's own embedded interpreter from `app_dir` (default: the
    current directory), not by this process. To run the server as a child process
    instead, pass `build_command(app, **options)` to `subprocess.run`.

    Args:
        app: the ASGI app as `"module:attribute"`; `None` serves the built-in demo app.
        **options: command-line options as keywords; see `build_command()`.

    Raises:
        FileNotFoundError: the fastserve binary is not installed.
        OSError: the binary could not be executed.
    """
    command = build_command(app, **options)

    # Python's buffered output would be lost when the process image is replaced.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
