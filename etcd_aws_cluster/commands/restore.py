"""`etcd-aws-cluster restore`: list the snapshots under backup_url, or restore one on this instance.

`--list` shows every complete snapshot, grouped by lineage (the cluster record's first, marked current), newest
first, each lineage's restorable range and deltas, and marks the one the boot agent would take. Without it, this
instance's data dir is restored as its member of a new cluster of the ASG's current instances, the record continues
the restored snapshot's lineage, and the env file is written with ETCD_INITIAL_CLUSTER_STATE=new:

- by default, the newest snapshot of the record's lineage (of all when there is no record) and the deltas after
  it, the result uploaded as a snapshot of that lineage;
- `--snapshot KEY` (any lineage): exactly that snapshot, no deltas (what the other instances run after one did);
- `--at TIME` / `--revision N`: the snapshot at or before that point and the deltas up to it, the result uploaded
  as a snapshot of a NEW lineage (a fork: automatic restores never go back to the old lineage's newer data).

The output names the snapshot restored; every other instance of the group then runs `restore --snapshot KEY` with
it. Run with etcd stopped everywhere; local data is moved aside first, never deleted.
"""

from __future__ import annotations

import argparse
import logging
import sys

from etcd_aws_cluster.adapters import atomic_file, scratch
from etcd_aws_cluster.adapters.hostfs import host_lock, local_data_dir, move_aside
from etcd_aws_cluster.adapters.wal import read_ids
from etcd_aws_cluster.app.backups import Backups, Restored, restore_data_dir, utc_age
from etcd_aws_cluster.app.boot import Runner
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.app.replay import Point
from etcd_aws_cluster.base.errors import AgentError, RecordRaceError, UnsafeError
from etcd_aws_cluster.commands.backup import require_backups
from etcd_aws_cluster.core import deltas as core_deltas
from etcd_aws_cluster.core import pitr, records, recovery, view
from etcd_aws_cluster.core.deltas import DeltaInfo, Restorable
from etcd_aws_cluster.core.model import AsgView, Decision, Plan
from etcd_aws_cluster.core.records import ClusterRecord, SnapshotInfo, format_time

log = logging.getLogger(__name__)


def render_list(
    backups: Backups,
    snapshots: tuple[SnapshotInfo, ...],
    record: ClusterRecord | None,
    deltas: tuple[DeltaInfo, ...] | None = (),
) -> str:
    """The listing; `deltas` None: they could not be listed (said instead of their ranges)."""
    if not snapshots:
        return f"no snapshots under {backups.store.where(backups.store.snapshot_prefix)}\n"
    now = backups.ctx.now()
    chosen = _default(snapshots, record)
    ranges = {r.lineage: r for r in core_deltas.restorable(snapshots, deltas or ())}
    lines = ["  KEY  TAKEN  AGE  REVISION  DB-SIZE  STORED  CODEC  CLUSTER  ETCD"]
    for lineage in _lineages(snapshots, record):
        current = record is not None and lineage == record.lineage
        lines.append(f"lineage {records.lineage_name(lineage)}{' (current: the cluster record)' if current else ''}")
        lines.append(f"  restorable: {_reach(ranges[lineage]) if deltas is not None else '(deltas not listed)'}")
        for info in records.of_lineage(snapshots, lineage):
            mark = "*" if chosen and info.key == chosen[0].key else " "
            lines.append(
                f"{mark} {info.key}  {format_time(info.taken_at)}  {utc_age(now, info.taken_at)}  {info.revision}  "
                f"{info.db_bytes}  {info.size}  {info.compression or 'none'}  {info.cluster_id:x}  {info.etcd_version}"
            )
    lines.append(
        "* the one a boot would restore (newest of the record's lineage by revision, then time; of all when there "
        "is no record); a corrupt one falls to the next. Other lineages: `restore --snapshot KEY`"
    )
    return "\n".join(lines) + "\n"


def _reach(reach: Restorable) -> str:
    text = f"{pitr.describe_range(reach)}; {reach.deltas} deltas, {reach.delta_bytes} bytes stored"
    if reach.gap_after is not None:
        text += f"; no delta holds revision {reach.gap_after + 1}: later deltas cannot be applied"
    return text


def _listed_deltas(backups: Backups) -> tuple[DeltaInfo, ...] | None:
    try:
        return backups.store.list_deltas()
    except AgentError as exc:
        log.warning("cannot list the deltas (%s); listing the snapshots without their restorable ranges", exc)
        return None


def _lineages(snapshots: tuple[SnapshotInfo, ...], record: ClusterRecord | None) -> list[str | None]:
    """The record's lineage first, then the others by their newest snapshot."""
    order = list(dict.fromkeys(info.lineage for info in records.newest_first(snapshots)))
    if record is not None and record.lineage in order:
        order.remove(record.lineage)
        order.insert(0, record.lineage)
    return order


def _default(snapshots: tuple[SnapshotInfo, ...], record: ClusterRecord | None) -> tuple[SnapshotInfo, ...]:
    """What a restore without --snapshot takes, in order: the record's lineage (all when there is no record)."""
    return records.newest_first(snapshots) if record is None else records.of_lineage(snapshots, record.lineage)


def _listed_record(backups: Backups) -> ClusterRecord | None:
    """The record, for marking the current lineage; a listing goes on without it (it is what helps see why)."""
    try:
        return backups.store.read_record()
    except AgentError as exc:
        log.warning("cannot read the cluster record (%s); listing without marking the current lineage", exc)
        return None


def _initial_cluster(ctx: Context, asg: AsgView) -> tuple[tuple[str, str], ...]:
    shortfall = view.incomplete(asg)
    if shortfall:
        raise UnsafeError(f"{shortfall}: every member of the restored cluster must be known; rerun when it is")
    pairs = view.initial_peers(asg, ctx.endpoints)
    if ctx.me.instance_id not in {name for name, _ in pairs}:
        raise UnsafeError(f"this instance is not InService/Pending in ASG {asg.name}")
    return pairs


def _choose(
    snapshots: tuple[SnapshotInfo, ...], key: str | None, record: ClusterRecord | None
) -> tuple[SnapshotInfo, ...]:
    if key is None:
        candidates = _default(snapshots, record)
        if not candidates:
            hint = records.other_lineages_hint(snapshots, record.lineage) if record is not None else ""
            raise UnsafeError(f"there is no snapshot under backup_url to restore{hint}")
        return candidates
    chosen = tuple(info for info in snapshots if info.key == key)
    if not chosen:
        raise UnsafeError(f"no complete snapshot {key} under backup_url (`etcd-aws-cluster restore --list`)")
    return chosen


def _point(args: argparse.Namespace) -> Point | None:
    revision, at = getattr(args, "revision", None), getattr(args, "at", None)
    return Point(revision, at) if revision is not None or at is not None else None


def _point_candidates(
    backups: Backups, snapshots: tuple[SnapshotInfo, ...], record: ClusterRecord | None, point: Point
) -> tuple[SnapshotInfo, ...]:
    """The snapshots a restore to `point` begins from, in the record's lineage (the newest one's when there is no
    record); refused (nothing moved) when that lineage cannot reach the point."""
    newest = records.newest_first(snapshots)
    if record is None and not newest:
        raise UnsafeError("there is no snapshot under backup_url to restore")
    lineage = record.lineage if record is not None else newest[0].lineage
    return pitr.candidates(snapshots, backups.store.list_deltas(), lineage, revision=point.revision, at=point.at)


def run(ctx: Context, args: argparse.Namespace) -> int:
    backups = require_backups(ctx)
    if getattr(args, "list", False):
        snapshots = backups.store.list_snapshots()
        deltas = _listed_deltas(backups) if snapshots else ()
        sys.stdout.write(render_list(backups, snapshots, _listed_record(backups), deltas))
        return 0
    record = backups.read_record()  # the record this restore replaces (a conditional write, after the restore)
    snapshots = backups.store.list_snapshots()
    point = _point(args)
    key = getattr(args, "snapshot", None)
    if point is not None:
        candidates = _point_candidates(backups, snapshots, record, point)
    else:
        candidates = _choose(snapshots, key, record)
    asg = ctx.find_asg()
    cluster = ctx.observe(asg)
    if cluster.answered:
        answering = ", ".join(sorted(cluster.answered_ips))
        raise UnsafeError(f"etcd answers on {answering}: stop etcd on every instance of ASG {asg.name} first")
    initial = _initial_cluster(ctx, asg)
    restore_data_dir(ctx)  # the setting and the tool are checked before anything moves
    backups.tool_for(candidates)
    with host_lock(ctx.settings.lock_file, ctx.deadline):
        scratch.sweep(ctx.settings.data_dirs())
        existing = local_data_dir(ctx.settings.data_dirs())
        ids = read_ids(existing) if existing is not None else None
        local_ids = (ids.member_id, ids.cluster_id) if ids is not None else None
        # The record names the clusters this restore replaces: an instance left out boots into the restore.
        replaced = recovery.replaced_clusters(record, (), local_ids)
        if existing is not None:
            log.warning("restore: moved this node's etcd data %s to %s", existing, move_aside(existing, ctx.now()))
        started = ctx.deadline.elapsed()
        restored = backups.restore(candidates, initial, apply_deltas=key is None, point=point)
        info = restored.info
        ctx.metrics.restored(info.revision, ctx.deadline.elapsed() - started, ctx.now().timestamp())
        try:
            backups.write_restore_record(cluster, info, initial, replaced)
        except RecordRaceError:
            moved = move_aside(restore_data_dir(ctx), ctx.now())  # etcd must not start from a decision that lost
            backups.discard(restored)
            raise RecordRaceError(
                f"another instance recorded another decision while this one restored {info.key}; the restored "
                f"data is moved aside to {moved}. Check `etcd-aws-cluster restore --list` and rerun"
            ) from None
        plan = Plan(Decision.RESTORE, f"restored {info.key} by hand", "new", initial, restore=(info,))
        outcome = Runner(ctx).outcome(plan)
        atomic_file.write(ctx.settings.output, outcome.text)
    sys.stdout.write(_report(ctx, restored, point))
    return 0


def _report(ctx: Context, restored: Restored, point: Point | None) -> str:
    info = restored.info
    lines = [
        f"restored {info.key} (revision {info.revision}) into {restore_data_dir(ctx)}; wrote {ctx.settings.output}.",
        f"{restored.summary()}.",
    ]
    if point is not None:
        lines.append(
            f"The point asked was {point}; the restored data is a new lineage "
            f"{records.lineage_name(info.lineage)} (automatic restores follow it from now on)."
        )
        if restored.revision < (point.revision or 0) or (restored.progress and restored.progress.stopped):
            lines.append("WARNING: the deltas stopped before the point asked (see above): this is the nearest data.")
    lines.append(
        f"On every other instance of the group run `etcd-aws-cluster restore --snapshot {info.key}`, "
        "then start etcd everywhere."
    )
    return "\n".join(lines) + "\n"
