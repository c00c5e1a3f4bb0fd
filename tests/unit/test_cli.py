"""How the command line reports errors: one line, "error (<label>): ..." and the exit code of the error's kind;
errors no command turned into an AgentError end with exit 1, the traceback only with -v."""

from __future__ import annotations

import errno
import importlib
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest

from etcd_aws_cluster import cli
from etcd_aws_cluster.adapters.etcd import EtcdFailure, EtcdRequestError
from etcd_aws_cluster.base.errors import EXIT_CODES, AgentError, LockError, RecordRaceError, UnsafeError


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


@pytest.mark.parametrize(
    ("error", "line", "code"),
    [
        # The failure (refused) is a detail of an etcd error: the label is the class's, never "refused" (exit 6's)
        (
            EtcdRequestError("http://127.0.0.9:2379 refused the connection", failure=EtcdFailure.REFUSED),
            "error (etcd): http://127.0.0.9:2379 refused the connection",
            5,
        ),
        (UnsafeError("removing it would lose quorum"), "error (refused): removing it would lose quorum", 6),
        (RecordRaceError("the record changed"), "error (record changed): the record changed", 6),
        (LockError("another run holds /run/lock"), "error (lock): another run holds /run/lock", 8),
    ],
)
def test_an_agent_error_prints_its_kinds_label_and_exits_with_its_code(
    command_raising: list[BaseException], capsys: pytest.CaptureFixture[str], error: AgentError, line: str, code: int
) -> None:
    command_raising.append(error)
    assert cli.main(["run"]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and line in err


def test_help_lists_every_exit_code_of_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code, meaning in EXIT_CODES:
        assert f"  {code}  {meaning}" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-07T10:15:00Z", datetime(2026, 12, 7, 10, 15, tzinfo=timezone.utc)),
        ("2026-12-07T10:15:00.250000+00:00", datetime(2026, 12, 7, 10, 15, 0, 250000, tzinfo=timezone.utc)),
    ],
)
def test_restore_at_takes_an_iso_8601_utc_time(text: str, expected: datetime) -> None:
    assert cli.build_parser().parse_args(["restore", "--at", text]).at == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["restore", "--at", "2026-12-07T10:15:00"],  # no offset: a restore never guesses a time zone
        ["restore", "--at", "2026-12-07T10:15:00+01:00"],
        ["restore", "--at", "yesterday"],
        ["restore", "--revision", "0"],
        ["restore", "--revision", "-3"],
        ["restore", "--revision", "12", "--at", "2026-12-07T10:15:00Z"],
        ["restore", "--snapshot", "k", "--revision", "12"],
    ],
)
def test_restore_refuses_a_point_that_is_not_one(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "restore" in capsys.readouterr().err
