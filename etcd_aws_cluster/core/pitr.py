"""Point-in-time restore (`restore --at TIME`, `restore --revision N`): which snapshots may begin it, or why none.

A point is restorable in a lineage when it lies between the lineage's oldest snapshot and the newest revision its
deltas reach (core.deltas.restorable), and the snapshot at or before it has deltas reaching it without a gap. The
candidates are that lineage's snapshots at or before the point, newest first (a corrupt one falls to the one before,
whose deltas reach further back). Everything is refused before anything moves.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core import deltas as core_deltas
from etcd_aws_cluster.core import records
from etcd_aws_cluster.core.deltas import DeltaInfo, Restorable
from etcd_aws_cluster.core.records import SnapshotInfo, format_time


def describe_range(reach: Restorable) -> str:
    return (
        f"revision {reach.oldest_revision} ({format_time(reach.oldest_at)}) to revision {reach.newest_revision} "
        f"({format_time(reach.newest_at)})"
    )


def _inside(reach: Restorable, revision: int | None, at: datetime | None) -> bool:
    if revision is not None:
        return reach.oldest_revision <= revision <= reach.newest_revision
    return at is not None and reach.oldest_at <= at <= reach.newest_at


def _before(info: SnapshotInfo, revision: int | None, at: datetime | None) -> bool:
    if revision is not None:
        return info.revision <= revision
    return at is not None and info.taken_at <= at


def candidates(
    snapshots: Iterable[SnapshotInfo],
    deltas: Iterable[DeltaInfo],
    lineage: str | None,
    *,
    revision: int | None = None,
    at: datetime | None = None,
) -> tuple[SnapshotInfo, ...]:
    """The snapshots of `lineage` a restore to `revision` / time `at` may begin from, newest first; UnsafeError,
    naming the restorable ranges, when the point is outside the lineage's range or its deltas do not reach it."""
    if revision is not None:
        point = f"revision {revision}"
    elif at is not None:
        point = f"time {format_time(at)}"
    else:
        raise ValueError("a point in time is a revision or a time")
    snapshots, deltas = tuple(snapshots), tuple(deltas)
    ranges = {reach.lineage: reach for reach in core_deltas.restorable(snapshots, deltas)}
    reach = ranges.get(lineage)
    if reach is None or not _inside(reach, revision, at):
        known = "; ".join(f"lineage {records.lineage_name(r.lineage)}: {describe_range(r)}" for r in ranges.values())
        raise UnsafeError(
            f"{point} is outside what lineage {records.lineage_name(lineage)} can restore "
            f"({describe_range(reach) if reach is not None else 'it has no snapshot'}); restorable: "
            f"{known or 'nothing'}. `etcd-aws-cluster restore --list` shows the ranges"
        )
    found = tuple(info for info in records.of_lineage(snapshots, lineage) if _before(info, revision, at))
    if not found:  # inside the range, so only a snapshot taken after its own revision's time could do this
        raise UnsafeError(f"no snapshot of lineage {records.lineage_name(lineage)} is at or before {point}")
    reached = core_deltas.chain(found[0].revision, deltas, lineage)
    if revision is not None:
        short = reached.last < revision
    else:  # a gap before the time: revisions up to it may be lost in it
        short = reached.gap_after is not None and at is not None and (reached.last_at or found[0].taken_at) < at
    if short:
        raise UnsafeError(
            f"{point} cannot be restored: snapshot {found[0].key} (revision {found[0].revision}) and its deltas "
            f"reach only revision {reached.last} (no delta holds revision {reached.last + 1})"
        )
    return found
