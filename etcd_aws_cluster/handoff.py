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
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from etcd_aws_cluster import recovery, restore_tool
from etcd_aws_cluster.backups import Backups
from etcd_aws_cluster.errors import AgentError
from etcd_aws_cluster.model import AsgView
from etcd_aws_cluster.records import ClusterRecord, Handoff, SnapshotInfo, SnapshotMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryFacts:
    """What the backups say when no etcd answers: the record, the snapshots, and the survivors' hand-offs."""

    record: ClusterRecord | None = None
    snapshots: tuple[SnapshotInfo, ...] = ()
    handoffs: tuple[Handoff, ...] = ()


def gather(
    backups: Backups, asg: AsgView, data_dir: Path | None, local_ids: tuple[int, int] | None, *, publish: bool
) -> RecoveryFacts:
    """Read the record; in the survivors' case hand this instance's data off (unless `publish` is False, a dry
    run), then read every survivor's hand-off and, after them, the snapshots."""
    record = _read_record(backups, best_effort=data_dir is not None)
    if record is None:
        return RecoveryFacts()
    alive = recovery.alive_recorded(asg, record)
    if not recovery.lacks_quorum(alive, record):
        # A node with data restarts from it at once (one read of the record), unless the record superseded it: it
        # may then take part in the recorded restore. One without data needs the snapshots.
        listed = data_dir is None or bool(recovery.superseded(record, local_ids))
        return RecoveryFacts(record, backups.store.list_snapshots() if listed else ())
    if publish and backups.ctx.me.instance_id in alive:
        hand_off(backups, record, data_dir, local_ids)
    handoffs = backups.store.read_handoffs(alive)
    return RecoveryFacts(record, backups.store.list_snapshots(), handoffs)


def _read_record(backups: Backups, *, best_effort: bool) -> ClusterRecord | None:
    """The record. A node with data restarts from it whenever the record cannot be read, as it did before
    records existed: a whole-cluster reboot must not depend on S3."""
    if not best_effort:
        return backups.store.read_record()
    try:
        return backups.store.read_record()
    except AgentError as exc:
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
    """This node's db revision (read on a copy, with etcd's own tool), its db uploaded when that is the newest."""
    store, ctx = backups.store, backups.ctx
    tool = restore_tool.find_tool(ctx.settings.etcdutl)
    fd, name = tempfile.mkstemp(prefix=f".{data_dir.name}.handoff-", suffix=".db", dir=data_dir.parent)
    os.close(fd)
    copy = Path(name)
    try:
        shutil.copyfile(data_dir / "member" / "snap" / "db", copy)
        revision = restore_tool.db_revision(tool, copy)
        snapshots = store.list_snapshots()
        uploaded = None
        if not snapshots or revision > snapshots[0].revision:
            version = ".".join(map(str, tool.version))
            meta = SnapshotMeta(ctx.now(), revision, cluster_id, version, record.members, ctx.me.instance_id, False)
            with copy.open("rb") as handle:
                uploaded = store.upload(handle, meta).key
            log.info("survivors: this node's db (revision %d) is newer than every snapshot: uploaded it", revision)
        return Handoff(ctx.me.instance_id, record.updated_at, revision, cluster_id, uploaded, ctx.now())
    finally:
        copy.unlink(missing_ok=True)
