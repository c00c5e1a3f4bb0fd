"""Errors no command turned into an AgentError still end with one line and exit 1; the traceback only with -v."""

from __future__ import annotations

import errno
import importlib
import types
from pathlib import Path

import pytest

from etcd_aws_cluster import cli


@pytest.fixture
def command_raising(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[BaseException]:
    """Every command raises the exception the test puts in the returned list."""
    raised: list[BaseException] = []

    def run(settings: object, args: object) -> int:
        raise raised[0]

    monkeypatch.setenv("ETCD_AWS_CLUSTER_CONFIG", str(tmp_path / "none.toml"))
    real_import = importlib.import_module

    def import_module(name: str, package: str | None = None) -> object:
        if name.startswith("etcd_aws_cluster.commands."):
            return types.SimpleNamespace(run=run)
        return real_import(name, package)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    return raised


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            OSError(errno.EBUSY, "Device or resource busy", "/var/lib/etcd", None, "/var/lib/etcd.stale"),
            "error (system): Device or resource busy: /var/lib/etcd -> /var/lib/etcd.stale (run with -v",
        ),
        (KeyError("members"), "error (internal): KeyError: 'members' (run with -v"),
    ],
)
def test_an_unexpected_error_is_one_line_and_exit_1(
    command_raising: list[BaseException], capsys: pytest.CaptureFixture[str], error: BaseException, line: str
) -> None:
    command_raising.append(error)
    assert cli.main(["run"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and line in err


def test_verbose_shows_the_traceback(command_raising: list[BaseException], capsys: pytest.CaptureFixture[str]) -> None:
    command_raising.append(OSError(errno.EIO, "Input/output error", "/var/lib/etcd/member/wal"))
    assert cli.main(["-v", "run"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "error (system): Input/output error: /var/lib/etcd/member/wal" in err
