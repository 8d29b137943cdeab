"""Build the fastserve wheel, install it into a new virtual environment and run it.

This checks what `pip install ./python` gives a user: the binary in the environment's
`bin/`, linked to a libpython it can find, and `python -m fastserve` passing arguments
and the exit status through to it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "python"

# A release build with link-time optimisation from an empty target folder takes
# several minutes on two cores.
BUILD_TIMEOUT_SECONDS = 1800
RUN_TIMEOUT_SECONDS = 60
# How much of a failed build's output to show.
OUTPUT_TAIL_CHARS = 4000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the wheel is built for Linux only"),
    # The first test also builds the wheel, so the suite's per-test timeout is too short.
    pytest.mark.timeout(BUILD_TIMEOUT_SECONDS + RUN_TIMEOUT_SECONDS),
]

# The contract's exit status for a usage or configuration error.
EXIT_USAGE = 2


def cargo_version() -> str:
    """Return the crate version from Cargo.toml, which maturin gives the wheel."""
    manifest = (REPO_ROOT / "Cargo.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', manifest, re.MULTILINE)
    assert match is not None, "no version line in Cargo.toml"
    return match.group(1)


def wheel_target_dir() -> Path:
    """Return the Cargo target folder for the wheel build.

    scripts/test points CARGO_TARGET_DIR at the folder of the binary under test and
    builds it with the pyo3 variables that maturin sets, so maturin finds the build
    up to date and only packages it. Other variables mean a rebuild in the same place.
    """
    base = os.environ.get("CARGO_TARGET_DIR")
    return Path(base) if base else REPO_ROOT / "target"


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel with the running interpreter and install it into a new venv."""
    wheel_dir = tmp_path_factory.mktemp("wheels")
    env = dict(os.environ, CARGO_TARGET_DIR=str(wheel_target_dir()))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheel_dir), PACKAGE_DIR],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
    )
    if build.returncode != 0:
        output = (build.stdout + build.stderr)[-OUTPUT_TAIL_CHARS:]
        pytest.fail(f"pip wheel {PACKAGE_DIR} failed:\n{output}", pytrace=False)

    wheels = list(wheel_dir.glob("fastserve-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {wheel_dir}, found {wheels}"

    venv_dir = tmp_path_factory.mktemp("venv")
    venv.create(venv_dir, with_pip=True)
    python = venv_dir / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--no-deps", wheels[0]],
        check=False,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    if install.returncode != 0:
        output = (install.stdout + install.stderr)[-OUTPUT_TAIL_CHARS:]
        pytest.fail(f"pip install {wheels[0]} failed:\n{output}", pytrace=False)
    return venv_dir


def run_in(venv_dir: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command from the venv's bin folder without activating the venv."""
    command = [venv_dir / "bin" / args[0], *args[1:]]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS
    )


def test_wheel_installs_binary(installed_venv: Path) -> None:
    binary = installed_venv / "bin" / "fastserve"
    assert binary.is_file()
    assert os.access(binary, os.X_OK)


def test_binary_finds_libpython(installed_venv: Path) -> None:
    ldd = subprocess.run(
        ["ldd", installed_venv / "bin" / "fastserve"],
        check=False,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    assert ldd.returncode == 0, ldd.stderr
    assert "not found" not in ldd.stdout, ldd.stdout
    expected = f"libpython{sys.version_info.major}.{sys.version_info.minor}"
    assert re.search(rf"{re.escape(expected)}\S* => /", ldd.stdout), ldd.stdout


def test_binary_version(installed_venv: Path) -> None:
    result = run_in(installed_venv, "fastserve", "--version")
    assert result.returncode == 0, result.stderr
    assert cargo_version() in result.stdout


def test_module_version(installed_venv: Path) -> None:
    result = run_in(installed_venv, "python", "-m", "fastserve", "--version")
    assert result.returncode == 0, result.stderr
    assert cargo_version() in result.stdout


def test_module_help(installed_venv: Path) -> None:
    result = run_in(installed_venv, "python", "-m", "fastserve", "--help")
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout


def test_module_passes_exit_status(installed_venv: Path) -> None:
    result = run_in(installed_venv, "python", "-m", "fastserve", "--no-such-option")
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "--no-such-option" in result.stderr


def test_run_replaces_process(installed_venv: Path) -> None:
    code = "import fastserve; fastserve.run(None, version=True); print('still here')"
    result = run_in(installed_venv, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert cargo_version() in result.stdout
    assert "still here" not in result.stdout


def test_package_version_matches(installed_venv: Path) -> None:
    code = "import fastserve; print(fastserve.__version__)"
    result = run_in(installed_venv, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == cargo_version()
