"""Backups in a run (setting `backup_url`): snapshots through a member, the cluster record, retention, restore.

Wires the S3 store (`s3.py`), etcd's snapshot stream (`etcd.py`) and etcd's restore tool (`restore_tool.py`) to
the context and the cluster view; every decision about *whether* to back up or restore is made elsewhere (the
plan, the commands), this module only does it.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

from etcd_aws_cluster import records, restore_tool
from etcd_aws_cluster.context import Context
from etcd_aws_cluster.errors import AgentError, ConfigError, EtcdError, UnsafeError
from etcd_aws_cluster.records import ClusterRecord, SnapshotInfo, SnapshotMeta
from etcd_aws_cluster.s3 import BackupStore, CorruptSnapshotError, connect_s3
from etcd_aws_cluster.view import ClusterView, render_initial_cluster
from etcd_aws_cluster.waldata import read_ids

log = logging.getLogger(__name__)


def restore_token(info: SnapshotInfo) -> str:
    """The --initial-cluster-token every member restores with: the same on every instance, new per snapshot."""
    return f"etcd-aws-cluster-{info.sha256[:16]}"


class Backups:
    """The snapshots and the cluster record of one ASG."""

    def __init__(self, ctx: Context, store: BackupStore) -> None:
        self.ctx = ctx
        self.store = store

    @classmethod
    def open(cls, ctx: Context, asg_name: str) -> Backups | None:
        """The backups of ASG `asg_name`, or None when `backup_url` is not set."""
        settings = ctx.settings
        if not settings.backup_url:
            return None
        s3 = connect_s3(ctx.me.region, ctx.environ, settings.aws_timeout, settings.aws_max_attempts)
        store = BackupStore(s3, settings.backup_url, asg_name, settings.backup_sse, settings.backup_kms_key_id)
        return cls(ctx, store)

    # --- snapshots -------------------------------------------------------------------------------------
    def take(self, cluster: ClusterView, via_ip: str) -> SnapshotInfo:
        """Snapshot the cluster through the member on `via_ip`, upload it, and refresh the record."""
        ctx = self.ctx
        cluster_id = cluster.cluster_id
        if cluster_id is None:
            raise EtcdError("cannot back up: the members do not name one cluster id (v2 API only?)")
        url = ctx.endpoints.client_url(via_ip)
        status = ctx.etcd.endpoint_status(url, ctx.call_timeout)
        if status is None or not status.version:
            raise EtcdError(f"cannot back up through {url}: it does not answer the v3 status call")
        meta = SnapshotMeta(
            taken_at=ctx.now(),
            revision=status.revision,
            cluster_id=cluster_id,
            etcd_version=status.version,
            members=cluster.initial_cluster(cluster.members),
            source_instance=ctx.me.instance_id,
        )
        started = ctx.deadline.elapsed()
        info = self.store.upload(ctx.etcd.snapshot(url, ctx.call_timeout), meta)
        log.info(
            "backup: snapshot of cluster %x at revision %d, %d bytes, uploaded to %s in %.1fs",
            cluster_id,
            info.revision,
            info.size,
            self.store.where(info.key),
            ctx.deadline.elapsed() - started,
        )
        self.write_record(cluster, newest=info.key)
        return info

    def newest(self) -> SnapshotInfo | None:
        found = self.store.list_snapshots()
        return found[0] if found else None

    def age(self, info: SnapshotInfo) -> float:
        return (self.ctx.now() - info.taken_at).total_seconds()

    def insure(self, cluster: ClusterView, what: str) -> None:
        """Before a membership change: a snapshot, unless one is younger than backup_interval. A failure is
        logged, not fatal: the change it guards heals the cluster, and refusing it would leave the cluster worse."""
        try:
            newest = self.newest()
            if newest is not None and self.age(newest) < self.ctx.settings.backup_interval:
                log.info("backup before %s: the newest snapshot is %.0fs old; none needed", what, self.age(newest))
                return
            via = sorted(cluster.answered_ips)
            if via:
                self.take(cluster, via[0])
        except AgentError as exc:
            log.warning("backup before %s failed, going on without it: %s", what, exc)

    def prune(self) -> tuple[SnapshotInfo, ...]:
        """Delete what the retention settings do not keep (our own snapshots only); returns what went."""
        settings = self.ctx.settings
        doomed = records.retention(
            self.store.list_snapshots(), self.ctx.now(), settings.backup_keep_last, settings.backup_keep_daily_days
        )
        if doomed:
            self.store.delete(doomed)
            log.info("retention: deleted %d snapshots: %s", len(doomed), ", ".join(i.key for i in doomed))
        return doomed

    # --- the cluster record ----------------------------------------------------------------------------
    def write_record(
        self,
        cluster: ClusterView,
        *,
        newest: str | None = None,
        members: tuple[tuple[str, str], ...] | None = None,
        cluster_id: int | None = None,
        replaces: tuple[int, ...] = (),
    ) -> ClusterRecord:
        """Record that the cluster exists: its id, its members (instance id, peer URL) and the newest snapshot
        (kept from the current record unless given); a restore's record also the clusters it `replaces`."""
        if members is None:
            members = tuple(
                sorted(
                    (owner.instance_id, url)
                    for m in cluster.members
                    if (owner := cluster.owner(m)) is not None
                    for url in m.peer_urls[:1]
                )
            )
        if newest is None:
            current = self.store.read_record()
            newest = current.newest_snapshot if current is not None else None
        record = ClusterRecord(
            asg_name=self.store.asg_name,
            cluster_id=cluster_id if cluster_id is not None else cluster.cluster_id,
            members=members,
            newest_snapshot=newest,
            updated_at=self.ctx.now(),
            replaces=replaces,
        )
        self.store.write_record(record)
        log.info("cluster record %s: %d members", self.store.where(self.store.record_key), len(members))
        return record

    def write_restore_record(
        self, cluster: ClusterView, info: SnapshotInfo, initial: tuple[tuple[str, str], ...], replaced: tuple[int, ...]
    ) -> ClusterRecord:
        """The record of a restore of `info` into this node's data dir: the new cluster of `initial`, no cluster id
        yet, and the clusters whose data it `replaced`, never the restored data's own (the same snapshot restored
        by the same instances gives the same cluster id)."""
        restored = read_ids(restore_data_dir(self.ctx))
        replaces = tuple(c for c in replaced if restored is None or c != restored.cluster_id)
        return self.write_record(cluster, newest=info.key, members=initial, replaces=replaces)

    def complete_record(self, cluster: ClusterView) -> None:
        """On a member's boot: write the record when there is none (backups were just turned on), or give it the
        cluster id that a record written by `new` or a restore could not know yet."""
        if cluster.cluster_id is None or not cluster.count().ok:
            return
        try:
            record = self.store.read_record()
            if record is None or record.cluster_id is None:
                self.write_record(cluster, newest=record.newest_snapshot if record is not None else None)
        except AgentError as exc:
            log.warning("could not bring the cluster record up to date: %s", exc)

    # --- restore ---------------------------------------------------------------------------------------
    def restore(self, candidates: tuple[SnapshotInfo, ...], initial: tuple[tuple[str, str], ...]) -> SnapshotInfo:
        """Restore the first of `candidates` whose checksum holds into the data dir, as this instance's member of
        a new cluster of `initial`. Everything that can be checked is checked before the data dir is touched."""
        ctx = self.ctx
        data_dir = restore_data_dir(ctx)
        tool = restore_tool.find_tool(ctx.settings.etcdutl)
        log.info("restore: using %s into %s", tool, data_dir)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        download = data_dir.with_name(f".{data_dir.name}.snapshot-{os.getpid()}.db")
        for info in candidates:
            try:
                self.store.download(info, download)
            except CorruptSnapshotError as exc:
                log.error("restore: %s; trying the snapshot before it", exc)
                continue
            try:
                target = restore_tool.RestoreTarget(
                    data_dir,
                    ctx.me.instance_id,
                    render_initial_cluster(initial),
                    restore_token(info),
                    ctx.endpoints.peer_url(ctx.me.private_ip),
                )
                # A member's raw db (a survivor's upload) has no sha256 trailer; its manifest says so.
                restore_tool.restore(tool, download, target, skip_hash_check=not info.hash_trailer)
            finally:
                download.unlink(missing_ok=True)
            log.info("restore: restored %s (revision %d) into %s", info.key, info.revision, data_dir)
            return info
        raise UnsafeError(
            f"none of the {len(candidates)} snapshots under backup_url passes its checksum; refusing to start "
            "an empty cluster. Check the bucket (`etcd-aws-cluster restore --list`)"
        )


def restore_data_dir(ctx: Context) -> Path:
    """Where a restore writes: the data_dir setting (a restore must not guess where etcd looks)."""
    if ctx.settings.data_dir is None:
        raise ConfigError("restoring a snapshot needs the data_dir setting: etcd's data dir (ETCD_DATA_DIR)")
    return ctx.settings.data_dir


def utc_age(now: datetime.datetime, then: datetime.datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
