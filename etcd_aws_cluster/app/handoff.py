"""The survivors' hand-offs: the I/O side of the survivors' case of recovery.py.

When no etcd answers, a cluster record exists, and the recorded members' instances still in the ASG are fewer
than a quorum of the recorded members, each of those instances publishes a hand-off for this record: its db
revision and cluster id, or that it has no data. When its revision is newer than the newest snapshot, it first
uploads a copy of its `member/snap/db` as a snapshot (a raw db: no sha256 trailer, and its manifest says so), so
the hand-off is written only once its upload is complete and listed. The hand-offs are read before the snapshots
are listed, so whoever sees every hand-off also sees every upload they name.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from etcd_aws_cluster.adapters import local_etcd, restore_tool, scratch
from etcd_aws_cluster.app.backups import RECORD_BUDGET, RECORD_READ_ANSWER_WITHIN, Backups
from etcd_aws_cluster.base.errors import AgentError, UnsafeError
from etcd_aws_cluster.core import records, recovery
from etcd_aws_cluster.core.model import AsgView
from etcd_aws_cluster.core.records import ClusterRecord, Handoff, SnapshotInfo, SnapshotMeta

log = logging.getLogger(__name__)
# Left free beyond the copy of the db: etcd, started after the agent, writes to the same filesystem.
COPY_HEADROOM = 64 * 1024 * 1024


@dataclass(frozen=True)
class RecoveryFacts:
    """What the backups say when no etcd answers: the record, the snapshots, and the survivors' hand-offs."""

    record: ClusterRecord | None = None
    snapshots: tuple[SnapshotInfo, ...] = ()  # of the record's lineage only
    handoffs: tuple[Handoff, ...] = ()
    lineage_hint: str = ""  # when the record's lineage has no snapshot but others do (records.other_lineages_hint)


def gather(
    backups: Backups, asg: AsgView, data_dir: Path | None, local_ids: tuple[int, int] | None, *, publish: bool
) -> RecoveryFacts:
    """Read the record; in the survivors' case hand this instance's data off (unless `publish` is False, a dry
    run), then read every survivor's hand-off and, after them, the snapshots of the record's lineage."""
    record = _read_record(backups, best_effort=data_dir is not None)
    if record is None:
        return RecoveryFacts()
    alive = recovery.alive_recorded(asg, record)
    if not recovery.lacks_quorum(alive, record):
        # A node with data restarts from it at once (one read of the record), unless the record superseded it: it
        # may then take part in the recorded restore. One without data needs the snapshots.
        if data_dir is None or recovery.superseded(record, local_ids):
            return _with_snapshots(backups, record)
        return RecoveryFacts(record)
    if publish and backups.ctx.me.instance_id in alive:
        hand_off(backups, record, data_dir, local_ids)
    handoffs = backups.store.read_handoffs(alive)
    return replace(_with_snapshots(backups, record), handoffs=handoffs)


def _with_snapshots(backups: Backups, record: ClusterRecord) -> RecoveryFacts:
    """The record with the snapshots of its lineage: what the decision may choose from."""
    listed = backups.store.list_snapshots()
    mine = records.of_lineage(listed, record.lineage)
    return RecoveryFacts(record, mine, lineage_hint=records.other_lineages_hint(listed, record.lineage))


def _read_record(backups: Backups, *, best_effort: bool) -> ClusterRecord | None:
    """The record. A node with data restarts from it whenever the record cannot be read, as it did before
    records existed: a whole-cluster reboot must not depend on S3."""
    if not best_effort:
        return backups.read_record()
    try:
        # Within the record update's budget, with a longer first answer (backups.RECORD_READ_ANSWER_WITHIN): a slow
        # S3 is still read, a silent one costs a whole-cluster reboot seconds at most.
        with backups.store.limited(RECORD_BUDGET, answer_within=RECORD_READ_ANSWER_WITHIN):
            return backups.read_record()
    except AgentError as exc:
        if backups.ctx.deadline.expired:
            # Not a silent S3 but the end of the run: this look may follow a wait for a restore (hand-offs) whose
            # record would forbid a restart on this data. Give up; the next run looks again.
            raise UnsafeError(
                f"the run's deadline passed before the cluster record could be read ({exc}); not restarting on "
                "local data that a recorded restore may have replaced"
            ) from None
        log.warning("cannot read the cluster record (%s); deciding from local data alone", exc)
        return None


def hand_off(backups: Backups, record: ClusterRecord, data_dir: Path | None, local_ids: tuple[int, int] | None) -> None:
    """Publish this instance's hand-off for `record`, once: a later look (or run) of the same incident finds it."""
    store, ctx = backups.store, backups.ctx
    me = ctx.me.instance_id
    if recovery.current_handoffs(record, store.read_handoffs([me])):
        return  # etcd has not run since (no quorum to commit anything): its data is what the hand-off says
    if data_dir is None or local_ids is None:
        handoff = Handoff(me, record.updated_at, None, None, None, ctx.now())
    elif recovery.foreign_data(record, local_ids):
        return  # the decision refuses, naming it; nothing of another cluster is handed off
    else:
        handoff = _with_data(backups, record, data_dir, local_ids[1])
    store.write_handoff(handoff)
    log.info(
        "survivors: handed off %s: %s",
        store.where(store.handoff_key(me)),
        "no data" if not handoff.has_data else f"revision {handoff.revision}, uploaded {handoff.uploaded or 'nothing'}",
    )


def _with_data(backups: Backups, record: ClusterRecord, data_dir: Path, cluster_id: int) -> Handoff:
    """This node's db revision (read on a copy, with etcd's own tool), its db uploaded when that is the newest.
    The copy goes inside the data dir (the one place the unit lets the agent write), after a free-space check."""
    store, ctx = backups.store, backups.ctx
    tool = restore_tool.find_tool(ctx.settings.etcdutl)
    db = data_dir / "member" / "snap" / "db"
    copy = scratch.scratch_path(data_dir, scratch.HANDOFF_PREFIX, ".db")
    scratch.ensure_free(data_dir, db.stat().st_size + COPY_HEADROOM, f"copying {db} for the survivors' hand-off")
    try:
        shutil.copyfile(db, copy)
        status = restore_tool.db_status(tool, copy)
        snapshots = records.of_lineage(store.list_snapshots(), record.lineage)
        uploaded = None
        if not snapshots or status.revision > snapshots[0].revision:
            version = local_etcd.shown(tool.version)
            meta = SnapshotMeta(
                ctx.now(),
                status.revision,
                cluster_id,
                version,
                record.members,
                ctx.me.instance_id,
                hash_trailer=False,
                db_hash=status.hash,
                lineage=record.lineage,
            )
            with copy.open("rb") as handle:
                uploaded = store.upload(handle, meta).key
            log.info(
                "survivors: this node's db (revision %d) is newer than every snapshot: uploaded it", status.revision
            )
        return Handoff(ctx.me.instance_id, record.updated_at, status.revision, cluster_id, uploaded, ctx.now())
    finally:
        copy.unlink(missing_ok=True)
