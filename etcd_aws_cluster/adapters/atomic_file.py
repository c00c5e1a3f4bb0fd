"""Write a file atomically: temp file in the target dir, fsync, rename, fsync the dir; '-' means stdout."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from etcd_aws_cluster.base.errors import OutputError

MODE = 0o644
# Not an ETCD_AWS_CLUSTER_* setting on purpose: only tests set it (see _test_pause).
TEST_PAUSE_VARIABLE = "_ETCD_AWS_CLUSTER_TEST_WRITE_PAUSE"


def write(path: str, text: str) -> None:
    """Write atomically: temp file in the target dir, fsync, rename, fsync the dir. '-' means stdout.

    On any failure the old file is left exactly as it was. Callers hold the host lock, so temp files left by a
    killed run can be removed here.
    """
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(path)
    directory = target.parent
    tmp_name = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob(f".{target.name}.*.tmp"):  # from a run killed mid-write
            with contextlib.suppress(OSError):
                leftover.unlink()
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), MODE)
            os.fsync(handle.fileno())
        _test_pause()
        os.replace(tmp_name, target)
        tmp_name = None
        _test_pause()
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _test_pause() -> None:
    """Tests only: with TEST_PAUSE_VARIABLE set, pause just before and just after the rename, so that a test's
    kill -9 lands exactly there (tests/integration/test_safety.py)."""
    seconds = os.environ.get(TEST_PAUSE_VARIABLE)
    if seconds:
        time.sleep(float(seconds))
