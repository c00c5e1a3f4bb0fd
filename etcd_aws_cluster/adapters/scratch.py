"""The agent's own scratch files in etcd's data dir: their names, the free-space check, and the sweep of a killed
run's leftovers.

Everything a restore, a hand-off or a backup writes on its way lives INSIDE the data dir: that is the one place
the unit lets the agent write (ProtectSystem=strict, ReadWritePaths=/var/lib/etcd), and the same filesystem as
etcd's data even when the data dir is a mount point, so the result moves into place with a rename.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from etcd_aws_cluster.base.errors import UnsafeError

log = logging.getLogger(__name__)

STAGING_PREFIX = ".restoring-"  # + pid: a restore's output before it moves into place
DOWNLOAD_PREFIX = ".snapshot-"  # + pid + .db: a downloaded snapshot (s3.download's .part beside it)
HANDOFF_PREFIX = ".handoff-"  # + pid + .db: a survivor's copy of its member/snap/db
SPOOL_PREFIX = ".spool-"  # + pid + .db: a backup's snapshot before its upload
# + pid: a replay's throwaway etcd (its data dir and log); + pid + .db: the snapshot saved from it
REPLAY_PREFIX = ".replay-"
PREFIXES = (STAGING_PREFIX, DOWNLOAD_PREFIX, HANDOFF_PREFIX, SPOOL_PREFIX, REPLAY_PREFIX)
# The pid in a scratch name; earlier agents named theirs after the data dir, beside it (.<name>.restoring-<pid>).
SCRATCH_NAME = re.compile(r"\.(?:[^/]*\.)?(?:restoring|snapshot|handoff|spool|replay)-(?P<pid>[0-9]{1,10})(?:[.-].*)?")
MIB = 1024 * 1024


def scratch_path(data_dir: Path, prefix: str, suffix: str = "") -> Path:
    """This run's scratch file or dir of kind `prefix` inside `data_dir`."""
    return data_dir / f"{prefix}{os.getpid()}{suffix}"


def is_scratch(name: str) -> bool:
    return SCRATCH_NAME.fullmatch(name) is not None


def pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def ensure_free(directory: Path, needed: int, what: str) -> None:
    """Refuse (UnsafeError) before writing anything when `directory`'s filesystem has less than `needed` bytes."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise UnsafeError(f"{what}: cannot tell the free space in {directory}: {exc.strerror or exc}") from None
    if free < needed:
        raise UnsafeError(
            f"{what}: {directory} has {free // MIB} MiB free, {needed // MIB} MiB needed; "
            "free some space there (or grow the volume) and rerun"
        )


def sweep(data_dirs: Iterable[Path]) -> list[Path]:
    """Remove the scratch files of runs that are no longer running (killed, or the host lost power): inside each
    data dir, and the ones earlier agents left beside it. Call it under the host lock. Returns what went."""
    gone: list[Path] = []
    for data_dir in data_dirs:
        gone += _sweep_dir(data_dir, None) + _sweep_dir(data_dir.parent, data_dir.name)
    return gone


def sweep_spools(data_dir: Path) -> list[Path]:
    """A killed backup's spool (a whole db) in `data_dir`: a backup, which runs without the host lock, removes
    only these, and only of pids that no longer run, so the next boot need not wait to get the space back."""
    return _sweep_dir(data_dir, None, (SPOOL_PREFIX,))


def sweep_drills(directory: Path) -> list[Path]:
    """A killed drill's download and throwaway etcd dir in `directory`: a drill, which runs without the host lock,
    removes only these, and only of pids that no longer run."""
    return _sweep_dir(directory, None, (DOWNLOAD_PREFIX, REPLAY_PREFIX))


def _sweep_dir(directory: Path, legacy_of: str | None, prefixes: tuple[str, ...] = PREFIXES) -> list[Path]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []  # absent or unreadable: nothing of ours can be there
    gone = []
    for name in names:
        match = SCRATCH_NAME.fullmatch(name)
        if legacy_of is None:  # ours, or the .part of one of ours (s3.download names it `.<name>.<random>.part`)
            wanted = name.startswith(prefixes) or name[1:].startswith(prefixes)
        else:
            wanted = name.startswith((f".{legacy_of}.", f"..{legacy_of}."))
        if match is None or not wanted:
            continue
        if pid_running(int(match["pid"])):
            continue
        path = directory / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("could not remove %s, left by a run that was killed: %s", path, exc.strerror or exc)
            continue
        log.warning("removed %s, left by a run that was killed (pid %s)", path, match["pid"])
        gone.append(path)
    return gone
