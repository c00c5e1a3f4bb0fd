"""Local etcd data: found, read, or refused when it cannot be read; stale data kept where etcd will not use it."""

from __future__ import annotations

import datetime
import errno
import os
from pathlib import Path

import pytest

from etcd_aws_cluster.adapters import hostfs
from etcd_aws_cluster.adapters.hostfs import host_lock, local_data_dir, move_aside
from etcd_aws_cluster.adapters.wal import WalIds, read_ids
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import LockError, UnsafeError
from tests.unit.adapters.test_wal import data_dir_with_wal

NOW = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)


def test_a_data_dir_with_a_wal_is_found_and_a_missing_one_is_not(tmp_path: Path) -> None:
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    found = data_dir_with_wal(tmp_path / "data")
    assert local_data_dir((missing, empty)) is None
    assert local_data_dir((missing, found)) == found


@pytest.mark.parametrize("breakage", ["wal is a file", "symlink loop"])
def test_an_unreadable_data_dir_is_refused_not_read_as_empty(tmp_path: Path, breakage: str) -> None:
    # chmod 000 does not stop root: a file where the WAL dir should be, or a symlink loop, fails the same way.
    member = tmp_path / "data" / "member"
    member.mkdir(parents=True)
    if breakage == "wal is a file":
        (member / "wal").write_text("not a directory")
    else:
        (member / "wal").symlink_to(member / "wal")
    with pytest.raises(UnsafeError, match=r"cannot read etcd data dir .*member/wal"):
        local_data_dir((tmp_path / "data",))


def test_an_io_error_reading_the_data_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_scandir(path: object) -> object:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(hostfs.os, "scandir", failing_scandir)
    with pytest.raises(UnsafeError, match="Input/output error"):
        local_data_dir((tmp_path,))


def test_stale_data_is_renamed_to_a_sibling(tmp_path: Path) -> None:
    data = data_dir_with_wal(tmp_path / "etcd")
    moved = move_aside(data, NOW)
    assert moved == tmp_path / "etcd.stale-20240506T070809Z"
    assert (moved / "member" / "wal").is_dir()
    assert data.is_dir() and not any(data.iterdir())
    assert local_data_dir((data,)) is None


def test_data_moved_aside_twice_in_one_second_keeps_both_copies(tmp_path: Path) -> None:
    first = move_aside(data_dir_with_wal(tmp_path / "etcd"), NOW)
    second = move_aside(data_dir_with_wal(tmp_path / "etcd"), NOW)
    third = move_aside(data_dir_with_wal(tmp_path / "etcd"), NOW)
    assert (first.name, second.name, third.name) == (
        "etcd.stale-20240506T070809Z",
        "etcd.stale-20240506T070809Z-2",
        "etcd.stale-20240506T070809Z-3",
    )
    assert all((moved / "member" / "wal").is_dir() for moved in (first, second, third))


@pytest.mark.parametrize(
    "code", [errno.EBUSY, errno.EXDEV, errno.EROFS, errno.EACCES, errno.EPERM], ids=errno.errorcode.get
)
def test_a_data_dir_that_cannot_be_renamed_keeps_its_data_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    data = data_dir_with_wal(tmp_path / "etcd")
    (data / "keep.txt").write_text("other files stay")
    real_rename = os.rename

    def rename(src: object, dst: object) -> None:
        if Path(str(src)) == data:  # the data dir itself is a mount point or its parent is read-only
            raise OSError(code, os.strerror(code))
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(hostfs.os, "rename", rename)
    moved = move_aside(data, NOW)
    assert moved == data / ".stale-20240506T070809Z"
    assert read_ids(moved) == WalIds(0x1234, 0xABCD)
    assert not (data / "member").exists() and (data / "keep.txt").exists()
    assert local_data_dir((data,)) is None


def test_stale_data_that_cannot_be_moved_at_all_is_refused_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = data_dir_with_wal(tmp_path / "etcd")

    def rename(src: object, dst: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(hostfs.os, "rename", rename)
    with pytest.raises(UnsafeError, match="move it away by hand"):
        move_aside(data, NOW)
    assert local_data_dir((data,)) == data


def test_the_lock_file_is_never_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    lock = tmp_path / "lock"
    lock.symlink_to(target)
    with pytest.raises(LockError, match="it is a symlink"), host_lock(lock, Deadline(1)):
        pass
    assert not target.exists()
