"""Tests of how `fastserve.build_command` turns keyword options into arguments."""

from __future__ import annotations

from pathlib import Path

import fastserve
import pytest

BINARY = "/opt/venv/bin/fastserve"
REAL_FIND_BINARY = fastserve.find_binary


@pytest.fixture(autouse=True)
def fake_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `find_binary` return a fixed path so no installed binary is needed."""
    monkeypatch.setattr(fastserve, "find_binary", lambda: BINARY)


def test_no_app_serves_demo() -> None:
    assert fastserve.build_command() == [BINARY]


def test_app_comes_last() -> None:
    command = fastserve.build_command("main:app", port=8000)
    assert command == [BINARY, "--port", "8000", "main:app"]


def test_underscores_become_dashes() -> None:
    command = fastserve.build_command("main:app", root_path="/api", timeout_keep_alive=5)
    assert command[1:3] == ["--root-path", "/api"]
    assert command[3:5] == ["--timeout-keep-alive", "5"]


def test_true_adds_switch() -> None:
    assert fastserve.build_command("main:app", factory=True)[1:] == ["--factory", "main:app"]


def test_false_omits_plain_switch() -> None:
    assert fastserve.build_command("main:app", factory=False)[1:] == ["main:app"]


def test_false_negates_access_log() -> None:
    command = fastserve.build_command("main:app", access_log=False)
    assert command[1:] == ["--no-access-log", "main:app"]


def test_false_negates_health() -> None:
    command = fastserve.build_command("main:app", health=False)
    assert command[1:] == ["--no-health", "main:app"]


def test_true_keeps_default_health() -> None:
    assert fastserve.build_command("main:app", health=True)[1:] == ["main:app"]


def test_none_omits_option() -> None:
    assert fastserve.build_command("main:app", uds=None)[1:] == ["main:app"]


def test_list_repeats_option() -> None:
    command = fastserve.build_command(None, forwarded_allow_ips=["10.0.0.1", "10.0.0.2"])
    expected = ["--forwarded-allow-ips", "10.0.0.1", "--forwarded-allow-ips", "10.0.0.2"]
    assert command[1:] == expected


def test_path_value_is_converted() -> None:
    command = fastserve.build_command("main:app", app_dir=Path("/srv/app"))
    assert command[1:3] == ["--app-dir", "/srv/app"]


def test_find_binary_reports_search(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fastserve, "find_binary", REAL_FIND_BINARY)
    monkeypatch.setattr(fastserve, "_candidate_dirs", lambda: [tmp_path])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        fastserve.find_binary()
