"""Backups in a run (setting `backup_url`): snapshots through a member, the cluster record, retention, restore.

Wires the S3 store (`s3.py`), etcd's snapshot stream (`etcd.py`) and etcd's restore tool (`restore_tool.py`) to
the context and the cluster view; every decision about *whether* to back up or restore is made elsewhere (the
plan, the commands), this module only does it.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from etcd_aws_cluster.adapters import restore_tool, scratch, snapshot_save, throwaway_etcd
from etcd_aws_cluster.adapters.compression import CorruptSnapshotError
from etcd_aws_cluster.adapters.etcd import EtcdClient, Tls
from etcd_aws_cluster.adapters.hostfs import local_data_dir
from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3
from etcd_aws_cluster.adapters.wal import read_ids
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.app.replay import Point, Progress, Replayer, loopback_session
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AgentError, ConfigError, EtcdError, RecordRaceError, UnsafeError
from etcd_aws_cluster.base.retry import RECORD_WRITE, attempts
from etcd_aws_cluster.core import deltas, records
from etcd_aws_cluster.core.records import ClusterRecord, SnapshotInfo, SnapshotMeta, format_time
from etcd_aws_cluster.core.view import ClusterView, render_initial_cluster

log = logging.getLogger(__name__)
# Room a restore needs beyond twice the snapshot (the download and the restored db): etcd preallocates its first
# WAL file (64 MiB), and the filesystem must not be left full for etcd's first writes.
RESTORE_HEADROOM = 128 * 1024 * 1024
# Room a spooled backup leaves free beyond its estimate: etcd's own writes go on in the same filesystem.
SPOOL_HEADROOM = 256 * 1024 * 1024

# How fast a snapshot of the db goes up to S3, for the estimate of whether an insurance snapshot fits the time
# left: the slowest path, etcd's JSON gateway, streamed 6-9 MB/s (issue 15, 2 CPUs; etcdctl's path runs at etcd's
# own speed, docs/benchmarks-backup.md); the estimate assumes less, and a throughput measured in this run (db
# bytes per second) replaces it.
SNAPSHOT_THROUGHPUT = 5_000_000.0  # bytes per second
SNAPSHOT_MARGIN = 1.5  # the estimate times this must fit in the insurance's budget
# The insurance snapshot gets at most this share of the time left, and always leaves CHANGE_RESERVE seconds for
# the membership change it guards and the env file: a slow or hanging S3 never eats the deadline of the change.
INSURANCE_SHARE = 0.5
CHANGE_RESERVE = 30.0
# In a step that heals without S3 (the insurance, the record update after the change), an S3 that has answered
# nothing yet in this run must answer its first call within this many seconds, or it counts as silent for the rest
# of the run: a hanging S3 costs a join this much, not a deadline. Healthy S3 answers a small request in ~0.1 s.
S3_ANSWER_WITHIN = 0.75
# Reading the record where no peer answers decides between a restart on local data and the survivors' hand-off:
# a slow S3 (a loaded host, a cold connection) must still be read there, a hanging one costs the reboot seconds.
RECORD_READ_ANSWER_WITHIN = 3.0
RECORD_BUDGET = 10.0  # the most a record update after the change may take
# Applying deltas runs about 1,000 revisions a second (one transaction each, docs in README): it may take this
# share of the time left, so that saving, uploading and restoring the result still fit the run.
REPLAY_SHARE = 0.5


def insurance_budget(remaining: float) -> float:
    """The seconds an insurance snapshot may take when `remaining` seconds are left in the run."""
    return max(0.0, min(remaining * INSURANCE_SHARE, remaining - CHANGE_RESERVE))


def snapshot_seconds(db_size: int, throughput: float = SNAPSHOT_THROUGHPUT) -> float:
    """The seconds a snapshot of a `db_size` bytes db is expected to take, margin included."""
    return db_size / throughput * SNAPSHOT_MARGIN


def restore_token(info: SnapshotInfo) -> str:
    """The --initial-cluster-token every member restores with: the same on every instance, new per snapshot."""
    return f"etcd-aws-cluster-{info.sha256[:16]}"


class Backups:
    """The snapshots and the cluster record of one ASG."""

    def __init__(self, ctx: Context, store: BackupStore) -> None:
        self.ctx = ctx
        self.store = store
        # The record (and its ETag) this run last read through `read_record`: what a boot decision is based on,
        # so the decision's record write replaces exactly that one (None: read it again at the write)
        self._basis: tuple[ClusterRecord | None, str | None] | None = None
        self.throughput = SNAPSHOT_THROUGHPUT  # bytes per second; measured by a snapshot of this run

    @classmethod
    def open(cls, ctx: Context, asg_name: str) -> Backups:
        """The backups of ASG `asg_name` under `backup_url`, with an S3 client of their own: once per run
        (Context.backups)."""
        settings = ctx.settings
        if not settings.backup_url:
            raise ConfigError("backup_url is not set: there are no backups to open")
        s3 = connect_s3(ctx.me.region, ctx.environ, settings.aws_timeout, settings.aws_max_attempts, ctx.deadline)
        store = BackupStore(
            s3,
            settings.backup_url,
            asg_name,
            settings.backup_sse,
            settings.backup_kms_key_id,
            region=ctx.me.region,
            deadline=ctx.deadline,
        )
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
        record = self.store.read_record()  # the snapshot carries its lineage; with no record yet, it begins one
        meta = SnapshotMeta(
            taken_at=ctx.now(),
            revision=status.revision,
            cluster_id=cluster_id,
            etcd_version=status.version,
            members=cluster.initial_cluster(cluster.members),
            source_instance=ctx.me.instance_id,
            lineage=record.lineage if record is not None else records.new_lineage(ctx.now()),
        )
        started = ctx.deadline.elapsed()
        info = self._upload(url, meta)
        took = ctx.deadline.elapsed() - started
        if took > 1.0 and info.db_bytes > 0:
            self.throughput = info.db_bytes / took
        log.info(
            "backup: snapshot of cluster %x at revision %d, %d bytes (%d stored), uploaded to %s in %.1fs",
            cluster_id,
            info.revision,
            info.db_bytes,
            info.size,
            self.store.where(info.key),
            took,
        )
        self.write_record(cluster, newest=info.key, continues=None if record is not None else info)
        return info

    def _upload(self, url: str, meta: SnapshotMeta) -> SnapshotInfo:
        """Spool the snapshot to a file in the data dir when there is room and a tool to read it (taken by etcdctl
        where the host has one: etcd's own speed), so the manifest gets the db's exact revision and hash; otherwise
        stream it through etcd's JSON gateway straight to S3 (the revision a lower bound). Compressed on the way
        up either way, in bounded memory."""
        ctx = self.ctx
        spooled = self._spool_place(meta)
        if spooled is not None:
            spool, tool = spooled
            try:
                saved_by_etcdctl = self._save(url, spool)
                status = restore_tool.db_status(tool, spool)
                with spool.open("rb") as handle:
                    return self.store.upload(
                        handle,
                        replace(meta, revision=status.revision, db_hash=status.hash),
                        check_trailer=saved_by_etcdctl,  # the gateway's stream was checked as it was read
                    )
            except OSError as exc:
                log.warning("backup: cannot spool the snapshot to %s (%s); streaming it", spool, exc.strerror or exc)
            finally:
                spool.unlink(missing_ok=True)
                spool.with_name(spool.name + ".part").unlink(missing_ok=True)  # etcdctl's, if it failed
        return self.store.upload(ctx.etcd.snapshot(url, ctx.call_timeout), meta)

    def _save(self, url: str, spool: Path) -> bool:
        """Save the snapshot of the member at `url` to `spool`: with etcdctl where the host has one (True), else,
        or when it fails, through etcd's JSON gateway (False)."""
        ctx = self.ctx
        etcdctl = snapshot_save.find_etcdctl(ctx.settings.etcdutl)
        if etcdctl is None:
            log.info("backup: no etcdctl on this host; taking the snapshot through etcd's JSON gateway (slower)")
        saved = snapshot_save.save_or_stream(
            etcdctl, ctx.etcd, url, spool, ctx.deadline.remaining(), ctx.call_timeout, "backup"
        )
        if saved:
            log.info("backup: snapshot saved by %s", etcdctl)
        return saved

    def _spool_place(self, meta: SnapshotMeta) -> tuple[Path, restore_tool.RestoreTool] | None:
        """Where to spool this snapshot, and the tool to read it with; None to stream it."""
        ctx = self.ctx
        try:
            data_dir = local_data_dir(ctx.settings.data_dirs())
            if data_dir is None:
                return None
            scratch.sweep_spools(data_dir)
            tool = restore_tool.find_tool(ctx.settings.etcdutl, snapshot_versions=(meta.etcd_version,))
            estimate = (data_dir / "member" / "snap" / "db").stat().st_size
            scratch.ensure_free(data_dir, estimate + estimate // 4 + SPOOL_HEADROOM, "spooling the snapshot")
        except (AgentError, OSError) as exc:
            log.info("backup: streaming the snapshot to S3 (%s)", exc)
            return None
        return scratch.scratch_path(data_dir, scratch.SPOOL_PREFIX, ".db"), tool

    def newest(self) -> SnapshotInfo | None:
        """The newest snapshot of the record's lineage (of any, when there is no record)."""
        record = self.store.read_record()
        found = self.store.list_snapshots()
        if record is not None:
            found = records.of_lineage(found, record.lineage)
        return found[0] if found else None

    def age(self, info: SnapshotInfo) -> float:
        return (self.ctx.now() - info.taken_at).total_seconds()

    def prune(self) -> tuple[SnapshotInfo, ...]:
        """Delete what the retention settings do not keep (our own snapshots only), and the deltas that no kept
        snapshot needs (deltas.retention); returns the snapshots that went."""
        settings = self.ctx.settings
        snapshots = self.store.list_snapshots()
        doomed = records.retention(
            snapshots, self.ctx.now(), settings.backup_keep_last, settings.backup_keep_daily_days
        )
        if doomed:
            self.store.delete(doomed)
            log.info("retention: deleted %d snapshots: %s", len(doomed), ", ".join(i.key for i in doomed))
        unneeded = deltas.retention(snapshots, doomed, self.store.list_deltas())
        if unneeded:
            self.store.delete_deltas(unneeded)
            log.info(
                "retention: deleted %d deltas no kept snapshot needs (revisions %d..%d)",
                len(unneeded),
                min(d.first for d in unneeded),
                max(d.last for d in unneeded),
            )
        return doomed

    # --- around a membership change ---------------------------------------------------------------------
    def guard_change(self, cluster: ClusterView, what: str) -> GuardedChange:
        """The backups' rule for a membership change of `cluster` (adding or removing a member): a snapshot before
        it when one is due and fits (snapshot_before_change, now), the cluster record brought up to date after it
        (GuardedChange.record, once the caller has made the change). Both are best effort and bounded: the change
        heals the cluster, and S3 must neither refuse nor delay it."""
        self.snapshot_before_change(cluster, what)
        return GuardedChange(self, what)

    def snapshot_before_change(self, cluster: ClusterView, what: str) -> None:
        """Before a membership change: a snapshot, unless one is younger than backup_interval or it would not fit
        the time left. Best effort and bounded (insurance_budget; an S3 that does not answer is given up on at
        once): the change it guards heals the cluster, and refusing or delaying it would leave the cluster worse."""
        budget = insurance_budget(self.ctx.deadline.remaining())
        try:
            # At least the first-answer window, so that a skip can name the newest snapshot's age.
            with self.store.limited(max(budget, S3_ANSWER_WITHIN), answer_within=S3_ANSWER_WITHIN):
                self._snapshot_if_it_fits(cluster, what, budget)
        except AgentError as exc:
            log.warning("backup before %s skipped, going on without it (newest snapshot unknown): %s", what, exc)

    def _snapshot_if_it_fits(self, cluster: ClusterView, what: str, budget: float) -> None:
        started = self.ctx.deadline.elapsed()
        newest = self.newest()
        if newest is not None and self.age(newest) < self.ctx.settings.backup_interval:
            log.info("backup before %s: the newest snapshot is %.0fs old; none needed", what, self.age(newest))
            return
        via = sorted(cluster.answered_ips)
        if not via:
            return
        status = self.ctx.etcd.endpoint_status(self.ctx.endpoints.client_url(via[0]), self.ctx.call_timeout)
        db_size = status.db_size if status is not None else 0
        needed = snapshot_seconds(db_size, self.throughput)
        left = budget - (self.ctx.deadline.elapsed() - started)
        if needed > left:
            newest_is = f"the newest snapshot is {self.age(newest):.0f}s old" if newest else "no snapshot exists"
            log.warning(
                "backup before %s skipped: a snapshot of the %.0f MB db would take about %.0fs at %.1f MB/s, "
                "%.0fs are left for it; %s",
                what,
                db_size / 1e6,
                needed,
                self.throughput / 1e6,
                max(0.0, left),
                newest_is,
            )
            return
        self.take(cluster, via[0])

    def record_after(self, what: str, update: Callable[[], object]) -> None:
        """A record update after what it records (a membership change, a member's boot) and the env file: bounded
        like the insurance, and never fatal, since what it records has happened; the next scheduled backup writes
        the record again."""
        try:
            with self.store.limited(min(RECORD_BUDGET, self.ctx.deadline.remaining()), answer_within=S3_ANSWER_WITHIN):
                update()
        except AgentError as exc:
            log.warning("cluster record not updated after %s (best effort, the next backup writes it): %s", what, exc)

    # --- the cluster record ----------------------------------------------------------------------------
    def read_record(self) -> ClusterRecord | None:
        """The cluster record, remembered (with its ETag) as the basis of this run's next boot decision."""
        self._basis = None
        self._basis = self.store.read_record_tagged()
        return self._basis[0]

    def write_record(
        self,
        cluster: ClusterView,
        *,
        newest: str | None = None,
        members: tuple[tuple[str, str], ...] | None = None,
        cluster_id: int | None = None,
        continues: SnapshotInfo | None = None,
        replaces: tuple[int, ...] = (),
    ) -> ClusterRecord:
        """Record that the cluster exists: its id, its members (instance id, peer URL), the newest snapshot (kept
        from the current record unless given) and the lineage (records.record_lineage; `continues`: the snapshot
        whose lineage it continues, e.g. the one restored); a restore's record also the clusters it `replaces`.

        `members` given is a boot decision (a new cluster, a restore): it replaces the record the decision was
        based on, or raises RecordRaceError (decide again) unless the winner recorded the same decision. Any
        other write is a refresh: on a lost race it is applied again to the fresh record, a few times."""
        decision = members is not None
        lost: RecordRaceError | None = None
        for _ in attempts(self.ctx.deadline, RECORD_WRITE):
            if lost is not None:
                log.info("cluster record: %s; applying this change to the fresh record", lost)
            basis = self._basis if decision and self._basis is not None else self.store.read_record_tagged()
            record = self._next_record(cluster, basis[0], newest, members, cluster_id, continues, replaces)
            try:
                etag = self.store.write_record(record, basis[1])
                self._basis = (record, etag) if etag else None
            except RecordRaceError as exc:
                self._basis = None
                fresh = self.read_record()
                if decision and fresh is not None and records.same_decision(fresh, record):
                    log.info("cluster record: another instance recorded the same decision first")
                    return fresh
                if decision:
                    raise RecordRaceError(f"{exc}; deciding again") from None
                lost = exc
                continue
            log.info("cluster record %s: %d members", self.store.where(self.store.record_key), len(record.members))
            return record
        raise RecordRaceError(str(lost))

    def _next_record(
        self,
        cluster: ClusterView,
        current: ClusterRecord | None,
        newest: str | None,
        members: tuple[tuple[str, str], ...] | None,
        cluster_id: int | None,
        continues: SnapshotInfo | None,
        replaces: tuple[int, ...],
    ) -> ClusterRecord:
        now = self.ctx.now()
        return ClusterRecord(
            asg_name=self.store.asg_name,
            cluster_id=cluster_id if cluster_id is not None else cluster.cluster_id,
            members=members if members is not None else owned_members(cluster),
            newest_snapshot=newest if newest is not None or current is None else current.newest_snapshot,
            updated_at=now,
            lineage=records.record_lineage(current, members, continues, now),
            replaces=replaces,
        )

    def write_restore_record(
        self, cluster: ClusterView, info: SnapshotInfo, initial: tuple[tuple[str, str], ...], replaced: tuple[int, ...]
    ) -> ClusterRecord:
        """The record of a restore of `info` into this node's data dir: the new cluster of `initial`, no cluster id
        yet, and the clusters whose data it `replaced`, never the restored data's own (the same snapshot restored
        by the same instances gives the same cluster id)."""
        restored = read_ids(restore_data_dir(self.ctx))
        replaces = tuple(c for c in replaced if restored is None or c != restored.cluster_id)
        return self.write_record(cluster, newest=info.key, members=initial, continues=info, replaces=replaces)

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

    # --- restore ----------------------------------------------------------------------------------------
    def tool_for(self, candidates: tuple[SnapshotInfo, ...]) -> restore_tool.RestoreTool:
        """The tool that may restore every one of `candidates` on this host (ConfigError, naming what to install,
        when there is none): checked before any data is moved."""
        return restore_tool.find_tool(self.ctx.settings.etcdutl, snapshot_versions=[i.etcd_version for i in candidates])

    def restore(
        self,
        candidates: tuple[SnapshotInfo, ...],
        initial: tuple[tuple[str, str], ...],
        *,
        apply_deltas: bool = True,
        point: Point | None = None,
    ) -> Restored:
        """Restore the first of `candidates` whose checksum and db hold into the data dir, as this instance's
        member of a new cluster of `initial`. Everything that can be checked is checked before the data dir is
        touched; everything written on the way stays inside it (scratch.py).

        With `apply_deltas`, the deltas of the snapshot's lineage after it are applied first (app/replay.py) and the
        result, uploaded as a snapshot of the same lineage, is what is restored and what the record names, so
        every other instance restores the same bytes; when that fails the snapshot alone is restored, loudly.
        With a `point`, the deltas up to it are applied and the result is uploaded as a NEW lineage (a fork), and
        nothing is restored unless that worked."""
        ctx = self.ctx
        data_dir = restore_data_dir(ctx)
        tool = self.tool_for(candidates)
        log.info("restore: using %s into %s", tool, data_dir)
        restore_tool.prepare_data_dir(data_dir)
        download = scratch.scratch_path(data_dir, scratch.DOWNLOAD_PREFIX, ".db")
        replayed = scratch.scratch_path(data_dir, scratch.REPLAY_PREFIX, ".db")
        for info in candidates:
            needed = 2 * info.db_bytes + RESTORE_HEADROOM
            scratch.ensure_free(data_dir, needed, f"restoring {self.store.where(info.key)}")
            try:
                self.store.download(info, download)
                done = Restored(info, info)
                if apply_deltas or point is not None:
                    done = self._apply_deltas(tool, download, replayed, info, point)
                source = download if done.info is info else replayed
                # The token, like everything of the new cluster, comes from the snapshot the record names (the
                # one uploaded with the deltas applied): an instance that follows the record gets the same.
                target = restore_tool.RestoreTarget(
                    data_dir,
                    ctx.me.instance_id,
                    render_initial_cluster(initial),
                    restore_token(done.info),
                    ctx.endpoints.peer_url(ctx.me.private_ip),
                )
                # The db's check (`snapshot status` against the manifest) runs beside the restore into the staging
                # dir: the data dir gets nothing unless it passed. The download checked etcd's sha256 trailer (a
                # member's raw db, a survivor's upload, has none; its manifest says so): the tool need not again.
                restore_tool.restore(
                    tool,
                    source,
                    target,
                    # the replay's saved snapshot was not read by the download: etcd's tool checks its trailer
                    skip_hash_check=source is download or not done.info.hash_trailer,
                    verify=functools.partial(check_db, tool, source, done.info, self.store.where(done.info.key)),
                )
            except CorruptSnapshotError as exc:
                log.error("restore: %s; trying the snapshot before it", exc)
                continue
            finally:
                download.unlink(missing_ok=True)
                replayed.unlink(missing_ok=True)
            log.info(
                "restore: restored %s (revision %d) into %s; %s",
                done.info.key,
                done.info.revision,
                data_dir,
                done.summary(),
            )
            return done
        raise UnsafeError(
            f"none of the {len(candidates)} snapshots under backup_url passes its checksum and db check; refusing "
            "to start an empty cluster. Check the bucket (`etcd-aws-cluster restore --list`)"
        )

    # --- deltas -----------------------------------------------------------------------------------------
    def discard(self, restored: Restored) -> None:
        """Delete the snapshot a restore uploaded (its deltas applied) once the record names another restore: no
        instance restores it, and it must not look like the newest data of its lineage. Best effort."""
        if restored.info.key == restored.base.key:
            return
        try:
            self.store.delete([restored.info])
            log.info("restore: deleted %s, which the record does not name", self.store.where(restored.info.key))
        except AgentError as exc:
            log.warning("restore: could not delete %s (%s)", self.store.where(restored.info.key), exc)

    def replayer(self, tool: restore_tool.RestoreTool, info: SnapshotInfo, *, apply_share: float = 1.0) -> Replayer:
        """What replays deltas onto `info` on this host (app/replay.py): its etcd binary (EtcdError naming what to
        install when none fits), etcdctl where there is one, the run's deadline; applying may take `apply_share`
        of the time left."""
        ctx = self.ctx
        return Replayer(
            client=EtcdClient(loopback_session(), Tls(), "v3"),
            tool=tool,
            etcd=throwaway_etcd.find_etcd(tool, info.etcd_version, ctx.environ),
            etcdctl=snapshot_save.find_etcdctl(ctx.settings.etcdutl, ctx.environ),
            deadline=ctx.deadline,
            call_timeout=ctx.call_timeout,
            apply_deadline=Deadline(ctx.deadline.remaining() * apply_share, clock=ctx.deadline.clock),
        )

    def _apply_deltas(
        self, tool: restore_tool.RestoreTool, download: Path, out: Path, info: SnapshotInfo, point: Point | None
    ) -> Restored:
        """The deltas after `info` (downloaded to `download`) applied, the result saved to `out` and uploaded: what
        to restore instead of `info`. Without a point, a failure leaves `info` alone to restore (said loudly)."""
        try:
            return self._replay(tool, download, out, info, point)
        except CorruptSnapshotError:
            raise
        except AgentError as exc:
            if point is not None:
                raise
            out.unlink(missing_ok=True)
            log.error(
                "restore: the deltas after %s could not be applied (%s); restoring the snapshot ALONE: the data "
                "up to revision %d (%s), the writes after it are not restored",
                info.key,
                exc,
                info.revision,
                format_time(info.taken_at),
            )
            progress = Progress(info.revision, info.revision, None)
            try:  # the restored data lacks deltas of its lineage: it begins a lineage of its own (a fork)
                return replace(
                    self._upload_result(tool, download, out, info, progress, None, fork=True), failed=str(exc)
                )
            except CorruptSnapshotError:
                raise
            except AgentError as again:
                log.error("restore: the snapshot alone could not be uploaded as a new lineage either (%s)", again)
                return Restored(info, info, failed=str(exc))

    def _replay(
        self, tool: restore_tool.RestoreTool, download: Path, out: Path, info: SnapshotInfo, point: Point | None
    ) -> Restored:
        ctx = self.ctx
        where = self.store.where(info.key)
        found = deltas.chain(info.revision, self.store.list_deltas(), info.lineage)
        if found.gap_after is not None:
            log.warning(
                "restore: the deltas of lineage %s stop at revision %d: no delta holds the revision after it, the "
                "later ones cannot be applied",
                records.lineage_name(info.lineage),
                found.gap_after,
            )
        if point is not None:
            found = deltas.until(found, revision=point.revision, at=point.at)
        if not found.deltas and point is None and found.gap_after is None:
            return Restored(info, info)
        check_db(tool, download, info, where)  # a corrupt snapshot goes to the next candidate before any replay
        progress = Progress(info.revision, info.revision, None)
        snapshot: Path | None = None
        version = info.etcd_version
        if found.deltas:
            data_dir = download.parent
            scratch.ensure_free(data_dir, 2 * info.db_bytes + RESTORE_HEADROOM, f"applying deltas to {where}")
            replayer = self.replayer(tool, info, apply_share=REPLAY_SHARE)
            workdir = scratch.scratch_path(data_dir, scratch.REPLAY_PREFIX)
            started = ctx.deadline.elapsed()
            result = replayer.run(download, info, found.deltas, self.store.read_delta, workdir, out, point)
            progress, snapshot, version = result.progress, result.snapshot, result.etcd_version
            log.info(
                "restore: replayed %d revisions of %d deltas onto %s in %.1fs",
                progress.revisions,
                progress.deltas,
                info.key,
                ctx.deadline.elapsed() - started,
            )
            if progress.stopped is not None:
                log.error(
                    "restore: the deltas after %s stop early: %s. Restoring what they reach: revision %d (%s); "
                    "the writes after it are not restored",
                    info.key,
                    progress.stopped,
                    progress.revision,
                    format_time(progress.at or info.taken_at),
                )
        # What is restored without every delta of its lineage (a point in time, a damaged delta, a gap) is a new
        # history: it begins a lineage of its own, so that no later restore carries it forward with the deltas
        # it left out (the cluster restored from it never had those writes).
        fork = point is not None or progress.stopped is not None or found.gap_after is not None
        if snapshot is None and not fork:
            return Restored(info, info, progress)
        return self._upload_result(tool, download, out, info, progress, snapshot, fork=fork, version=version)

    def _upload_result(
        self,
        tool: restore_tool.RestoreTool,
        download: Path,
        out: Path,
        info: SnapshotInfo,
        progress: Progress,
        snapshot: Path | None,
        *,
        fork: bool,
        version: str | None = None,
    ) -> Restored:
        """Upload what a restore of `info` restores: the replay's `snapshot` (or the downloaded db itself when no
        revision was applied), in `info`'s lineage or, with `fork`, a new one; the restore then takes it from
        `out`."""
        ctx = self.ctx
        lineage = records.new_lineage(ctx.now()) if fork else info.lineage
        source = snapshot if snapshot is not None else download
        status = restore_tool.db_status(tool, source)
        meta = SnapshotMeta(
            taken_at=progress.at or info.taken_at,
            revision=status.revision,
            cluster_id=info.cluster_id,
            etcd_version=version or info.etcd_version,
            members=info.members,
            source_instance=ctx.me.instance_id,
            hash_trailer=info.hash_trailer if snapshot is None else True,
            db_hash=status.hash,
            lineage=lineage,
        )
        if self.store.snapshot_key(meta) == info.key:  # a fork of this instance's own snapshot, as it is
            meta = replace(meta, taken_at=meta.taken_at + datetime.timedelta(microseconds=1))
        with source.open("rb") as handle:
            uploaded = self.store.upload(handle, meta, check_trailer=meta.hash_trailer)
        if source is download:  # restored from the replay's copy of the same bytes
            os.replace(download, out)
        if fork and info.lineage != lineage:
            log.warning(
                "restore: uploaded as %s, the first snapshot of a new lineage %s: the deltas of lineage %s after "
                "revision %d are left out (restore them by hand: `restore --list`)",
                self.store.where(uploaded.key),
                lineage,
                records.lineage_name(info.lineage),
                progress.revision,
            )
        return Restored(uploaded, info, progress)


@dataclass(frozen=True)
class GuardedChange:
    """A membership change the backups guard (Backups.guard_change): its snapshot before is taken; `record` is
    what follows it."""

    backups: Backups
    what: str

    def record(self, after: ClusterView | Callable[[], ClusterView], *, what: str | None = None) -> None:
        """Bring the cluster record up to date with the cluster `after` the change (a view, or how to look at it:
        then looked at within the record's budget), best effort (Backups.record_after). `what`: what the record
        follows, when that is more than the change guarded (e.g. every removal of a reconcile run)."""
        backups = self.backups

        def write() -> None:
            backups.write_record(after if isinstance(after, ClusterView) else after())

        backups.record_after(what or self.what, write)


@dataclass(frozen=True)
class Restored:
    """What a restore put into the data dir: `info`, the snapshot the record names (one uploaded by this restore
    when it applied deltas), the snapshot it began from (`base`), how far its deltas got, and why they could not
    be applied when they could not (`failed`: the snapshot alone was restored)."""

    info: SnapshotInfo
    base: SnapshotInfo
    progress: Progress | None = None
    failed: str | None = None

    @property
    def revision(self) -> int:
        return self.progress.revision if self.progress is not None else self.base.revision

    @property
    def at(self) -> datetime.datetime:
        at = self.progress.at if self.progress is not None else None
        return at or self.base.taken_at

    def summary(self) -> str:
        """The recovery point, for the log and the command's output."""
        count = self.progress.deltas if self.progress is not None else 0
        text = (
            f"snapshot {self.base.key} + {count} deltas up to revision {self.revision} ({format_time(self.at)}): "
            "the recovery point"
        )
        if self.info.key != self.base.key:
            text += f"; uploaded as {self.info.key} (lineage {records.lineage_name(self.info.lineage)})"
        if self.progress is not None and self.progress.stopped is not None:
            text += f"; the deltas stopped early: {self.progress.stopped}"
        if self.failed is not None:
            text += f"; the deltas could NOT be applied: {self.failed}"
        return text


def check_db(tool: restore_tool.RestoreTool, path: Path, info: SnapshotInfo, where: str) -> None:
    """The downloaded db must be the one its manifest names: its exact revision and hash when the manifest has
    them, else a revision at least the manifest's (read before a streamed snapshot). CorruptSnapshotError if not."""
    try:
        status = restore_tool.db_status(tool, path)
    except EtcdError as exc:
        raise CorruptSnapshotError(f"snapshot {where} is corrupt: {tool.kind} cannot read its db ({exc})") from None
    if info.db_hash is not None:
        if (status.revision, status.hash) != (info.revision, info.db_hash):
            raise CorruptSnapshotError(
                f"snapshot {where} is corrupt: its db is at revision {status.revision} with hash {status.hash}, "
                f"its manifest says revision {info.revision} with hash {info.db_hash}"
            )
    elif status.revision < info.revision:
        raise CorruptSnapshotError(
            f"snapshot {where} is corrupt: its db is at revision {status.revision}, older than the revision "
            f"{info.revision} its manifest says it was taken after"
        )


def owned_members(cluster: ClusterView) -> tuple[tuple[str, str], ...]:
    """(instance id, peer URL) of every member whose instance is known, sorted."""
    return tuple(
        sorted(
            (owner.instance_id, url)
            for m in cluster.members
            if (owner := cluster.owner(m)) is not None
            for url in m.peer_urls[:1]
        )
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
