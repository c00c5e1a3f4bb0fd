"""Restore drills (`backup --verify`): the newest snapshot of the record's lineage and its deltas restored the way a
real restore would, into scratch, and checked against what was recorded; the result stored beside the snapshot.

The snapshot is downloaded with both checksums checked, its db read by etcd's tool (`snapshot status`: revision and
hash against the manifest), restored with etcd's tool into a throwaway etcd that must start from it, and every
delta of its chain applied with the revisions they had (app/replay.py). The drill passes when all of that held, the
deltas reached the revision their names promise without a hole, and the live key count there is the one the
follower counted. Nothing of the cluster is touched: the drill writes only its scratch place and its result.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from etcd_aws_cluster.adapters import scratch
from etcd_aws_cluster.adapters.hostfs import local_data_dir
from etcd_aws_cluster.app.backups import RESTORE_HEADROOM, Backups, check_db
from etcd_aws_cluster.app.replay import Progress
from etcd_aws_cluster.base.errors import AgentError, DrillFailedError, UnsafeError
from etcd_aws_cluster.core import deltas
from etcd_aws_cluster.core.records import SnapshotInfo, Verification, format_time

log = logging.getLogger(__name__)
# systemd sets it for a unit with CacheDirectory= (etcd-aws-cluster-verify.service): the drill's scratch place there
CACHE_DIRECTORY = "CACHE_DIRECTORY"


@dataclass(frozen=True)
class Drilled:
    """What a drill reached: the replay's progress, the live keys at its revision, and where its deltas end."""

    progress: Progress
    live_keys: int | None
    reach: deltas.Chain


def place(backups: Backups) -> Path:
    """Where the drill writes its scratch: the unit's cache directory, else the filesystem of etcd's data (the
    data dir, as restores use it), else the temporary directory."""
    ctx = backups.ctx
    cache = ctx.environ.get(CACHE_DIRECTORY, "").split(":")[0]
    if cache and Path(cache).is_dir():
        return Path(cache)
    found = local_data_dir(ctx.settings.data_dirs())
    if found is not None and os.access(found, os.W_OK):
        return found
    return Path(tempfile.gettempdir())


def verify(backups: Backups) -> Verification:
    """Run a drill of the newest snapshot of the record's lineage and its deltas; store and return its result.
    UnsafeError when there is nothing to verify; the result says whether the drill passed."""
    store = backups.store
    newest = backups.newest()
    if newest is None:
        raise UnsafeError("nothing to verify: there is no snapshot of the record's lineage under backup_url")
    reach = deltas.chain(newest.revision, store.list_deltas(), newest.lineage)
    log.info(
        "drill: restoring %s (revision %d) and %d deltas up to revision %d",
        store.where(newest.key),
        newest.revision,
        len(reach.deltas),
        reach.last,
    )
    try:
        drilled = _drill(backups, newest, reach)
    except AgentError as exc:
        result = _result(backups, newest, None, [f"the restore failed: {exc}"])
    else:
        result = _result(backups, newest, drilled, _problems(drilled))
    store.write_verification(result)
    return result


def _drill(backups: Backups, info: SnapshotInfo, reach: deltas.Chain) -> Drilled:
    ctx = backups.ctx
    store = backups.store
    tool = backups.tool_for((info,))
    where = place(backups)
    scratch.sweep_drills(where)
    scratch.ensure_free(where, 3 * info.db_bytes + RESTORE_HEADROOM, f"a restore drill of {store.where(info.key)}")
    download = scratch.scratch_path(where, scratch.DOWNLOAD_PREFIX, ".db")
    try:
        store.download(info, download)
        check_db(tool, download, info, store.where(info.key))
        replayer = backups.replayer(tool, info)
        workdir = scratch.scratch_path(where, scratch.REPLAY_PREFIX)
        out = scratch.scratch_path(where, scratch.REPLAY_PREFIX, ".db")
        replayed = replayer.run(download, info, reach.deltas, store.read_delta, workdir, out, drill=True)
    finally:
        download.unlink(missing_ok=True)
    log.info("drill: reached revision %d after %.1fs", replayed.progress.revision, ctx.deadline.elapsed())
    return Drilled(replayed.progress, replayed.live_keys, reach)


def _problems(drilled: Drilled) -> list[str]:
    progress, reach = drilled.progress, drilled.reach
    problems = []
    if progress.stopped is not None:
        problems.append(f"the deltas stopped early: {progress.stopped}")
    elif progress.revision < reach.last:
        problems.append(f"the deltas reached revision {progress.revision}, their names promise {reach.last}")
    if reach.gap_after is not None:
        problems.append(
            f"no delta holds revision {reach.gap_after + 1}: the deltas after it cannot be restored (a follower "
            "that stopped, or deltas deleted by hand?)"
        )
    if progress.keys is not None and drilled.live_keys != progress.keys:
        problems.append(
            f"{drilled.live_keys} keys are live at revision {progress.revision}, the follower counted {progress.keys}"
        )
    return problems


def _result(backups: Backups, info: SnapshotInfo, drilled: Drilled | None, problems: list[str]) -> Verification:
    progress = drilled.progress if drilled is not None else None
    revision = progress.revision if progress is not None else info.revision
    recovered_at = (progress.at if progress is not None else None) or info.taken_at
    applied = progress.deltas if progress is not None else 0
    keys = drilled.live_keys if drilled is not None else None
    if problems:
        verdict = "; ".join(problems)
    else:
        counted = "" if progress is None or progress.keys is None else " (as the follower counted)"
        verdict = (
            f"the snapshot's checksums, revision and db hash held, etcd started from it, {applied} deltas applied "
            f"with their revisions up to revision {revision}; {keys} keys live{counted}"
        )
    return Verification(
        snapshot=info.key,
        verified_at=backups.ctx.now(),
        ok=not problems,
        revision=revision,
        recovered_at=recovered_at,
        deltas=applied,
        keys=keys,
        verdict=verdict,
    )


def require_passed(result: Verification, where: str) -> None:
    """DrillFailedError when the drill did not pass (after its result is stored)."""
    if not result.ok:
        raise DrillFailedError(
            f"restore drill of {where} FAILED: {result.verdict}; the last good recovery point is at most revision "
            f"{result.revision} ({format_time(result.recovered_at)})"
        )
