"""The atomic write: the old file stays byte for byte on any failure; '-' is stdout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from etcd_aws_cluster.adapters import atomic_file
from etcd_aws_cluster.base.errors import OutputError


def test_write_is_atomic_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "etcd-cluster"
    old_umask = os.umask(0o077)
    try:
        atomic_file.write(str(path), "A=1\n")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "A=1\n"
    assert path.stat().st_mode & 0o777 == 0o644
    atomic_file.write(str(path), "A=2\n")
    assert path.read_text() == "A=2\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["etcd-cluster"]


def test_failed_write_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "etcd-cluster"
    path.write_text("OLD=1\n")
    tmp_path.chmod(0o500)
    try:
        if os.access(tmp_path, os.W_OK):  # root ignores the mode bits: use a path that cannot be a dir
            target = str(path / "child")
            with pytest.raises(OutputError):
                atomic_file.write(target, "NEW=1\n")
        else:
            with pytest.raises(OutputError):
                atomic_file.write(str(path), "NEW=1\n")
    finally:
        tmp_path.chmod(0o700)
    assert path.read_text() == "OLD=1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etcd-cluster"]


def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    atomic_file.write("-", "A=1\n")
    assert capsys.readouterr().out == "A=1\n"
