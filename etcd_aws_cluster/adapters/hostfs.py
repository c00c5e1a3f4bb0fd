"""This host's file system around etcd's data: is there member data, moving stale data aside (never deleting
it), and the lock that serializes the agent's runs on one host."""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import LockError, UnsafeError

log = logging.getLogger(__name__)


# Renaming the data dir itself fails when it is a mount point (EBUSY; a bind mount such as systemd's
# ReadWritePaths= or `docker -v`: EXDEV on some kernels) or its parent is read-only (EROFS under
# ProtectSystem=strict; EACCES/EPERM in other sandboxes). Its contents are then moved aside inside it.
IN_PLACE_ERRNOS = frozenset({errno.EBUSY, errno.EXDEV, errno.EROFS, errno.EACCES, errno.EPERM})
STALE_PREFIX = ".stale-"


def local_data_dir(candidates: tuple[Path, ...]) -> Path | None:
    """The data dir holding etcd member data (a WAL), if any.

    Fails closed: only a missing `member/wal` means "no data here"; a data dir that cannot be read (permissions,
    I/O error, a file where a directory should be) raises UnsafeError rather than reading as empty, which would
    turn a restart into a new cluster or a join.
    """
    for directory in candidates:
        wal = directory / "member" / "wal"
        try:
            with os.scandir(wal) as entries:
                if any(entry.name.endswith(".wal") for entry in entries):
                    return directory
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UnsafeError(
                f"cannot read etcd data dir {wal}: {exc.strerror or exc}; refusing to decide without knowing "
                "whether this node has member data (fix the data dir, or move it away by hand)"
            ) from None
    return None


def unused(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, ... the first that does not exist: two moves aside in one second (a restore
    run twice) each keep their own copy (under the host lock, nothing else names one meanwhile)."""
    found, n = path, 1
    while found.exists() or found.is_symlink():
        n += 1
        found = path.with_name(f"{path.name}-{n}")
    return found


def move_aside(directory: Path, now: datetime.datetime) -> Path:
    """Keep stale etcd data (never delete it) where etcd will not start from it; return where it went.

    First choice: rename the data dir to a timestamped sibling and leave an empty one in its place. When the dir
    itself cannot be renamed (a mount point, a read-only parent), its `member` subdir moves into a timestamped
    `.stale-<UTC>` subdir of the data dir instead: etcd 3.4 and 3.5 start from a data dir with an extra subdir
    (they warn "found invalid file ... under data dir" and go on; tests/integration/test_safety.py).
    """
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    target = unused(directory.with_name(f"{directory.name}{STALE_PREFIX}{stamp}"))
    try:
        info = directory.stat()
        try:
            os.rename(directory, target)
        except OSError as exc:
            if exc.errno not in IN_PLACE_ERRNOS:
                raise
            log.info("cannot rename %s (%s); moving its member data aside inside it", directory, exc.strerror)
            return _move_member_inside(directory, unused(directory / f"{STALE_PREFIX}{stamp}"), info)
        directory.mkdir(mode=0o700)
    except OSError as exc:
        raise UnsafeError(
            f"cannot move stale etcd data in {directory} aside: {exc.strerror or exc}; "
            f"move it away by hand (keep it) and rerun"
        ) from None
    _give_back(directory, info)
    return target


def _move_member_inside(directory: Path, stale: Path, info: os.stat_result) -> Path:
    stale.mkdir(mode=0o700)
    _give_back(stale, info)
    os.rename(directory / "member", stale / "member")
    return stale


def _give_back(path: Path, info: os.stat_result) -> None:
    """Give a directory the agent made to the data dir's owner, so that etcd (not root) can use it."""
    try:
        os.chown(path, info.st_uid, info.st_gid)
    except OSError as exc:
        log.warning("could not give %s to uid %d: %s; etcd may not be able to use it", path, info.st_uid, exc)


@contextlib.contextmanager
def host_lock(path: Path, deadline: Deadline) -> Iterator[None]:
    """Serialize runs on one host; wait for another run under the deadline. Never follows a symlink."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise LockError(f"cannot open lock file {path}: {reason}") from None
    with os.fdopen(fd, "a") as handle:
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.info("another run holds %s; waiting for it", path)
                    announced = True
                if not deadline.pause(0.1):
                    raise LockError(f"another run held {path} until the deadline") from None
        yield
