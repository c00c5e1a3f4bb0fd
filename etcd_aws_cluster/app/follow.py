"""`backup --follow`: the leader's member watches every change and uploads it as deltas between full snapshots.

Only the member that etcd says is the leader works (asked of this host's member, again at every delta and every
`leader_poll` seconds); the others stand by. Taking over, it starts after what the previous leader uploaded: at the
newest snapshot of the record's lineage, or after the end of the chain of deltas that follows it (core.deltas.chain),
waiting a bounded time (backup_delta_interval + HANDOVER_SLACK) for the previous leader's last flush, so that a
leader change leaves no gap and at most a short overlap. With no snapshot yet it takes one first.

Then: revisions collect (core/follow.py) and go up as one delta once the oldest has waited backup_delta_interval
seconds, or sooner past backup_delta_max_bytes; a full snapshot every backup_interval (then retention). A start
revision etcd has compacted, or a watch that cannot be opened again from the next revision, starts a full snapshot
at once and deltas after its revision. Leadership lost: what is pending goes up, then it stands by. Stopping (SIGTERM)
does the same, then returns. S3 and etcd errors are logged and retried with backoff; what is pending is kept, up to
a hard cap past which it is dropped for a full snapshot.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from etcd_aws_cluster.adapters.etcd import EtcdClient, EtcdRequestError, Watch, WatchCompacted, WatchMessage
from etcd_aws_cluster.app import metrics
from etcd_aws_cluster.base.deadline import Deadline, backoff
from etcd_aws_cluster.base.errors import AgentError
from etcd_aws_cluster.core import deltas
from etcd_aws_cluster.core.deltas import Delta, DeltaHeader
from etcd_aws_cluster.core.follow import Batch, Pending

if TYPE_CHECKING:
    from etcd_aws_cluster.app.backups import Backups
    from etcd_aws_cluster.app.context import Context
    from etcd_aws_cluster.app.settings import Settings
    from etcd_aws_cluster.core.model import EndpointStatus
    from etcd_aws_cluster.core.records import SnapshotInfo

log = logging.getLogger(__name__)

# How long a new leader waits, beyond backup_delta_interval, for the previous leader's last delta to be listed.
HANDOVER_SLACK = 5.0
# A quiet watch ends after this many seconds without a message and is opened again from the next revision: a
# stream that died without a word (a host gone, a dropped connection) is noticed by then.
WATCH_IDLE = 60.0
# The most the main loop waits for a watch message before it looks at the time again.
TICK = 0.25
# Changes that could not go up are dropped past this many (estimated) bytes, or this many times
# backup_delta_max_bytes if larger, for a full snapshot: memory stays bounded while S3 is down.
PENDING_CAP = 64 * 1024 * 1024
PENDING_CAP_DELTAS = 8
# Backoff of the retries (S3 uploads, opening the watch, snapshots), seconds.
RETRY_BASE = 1.0
RETRY_CAP = 30.0
# Watch messages read ahead of the loop (one may hold up to 1000 revisions while the watch catches up).
WATCH_QUEUE = 16
# Tries of the last delta when leadership is lost or the follower stops, and the seconds they may take together
# (etcd-aws-cluster-backup-follow.service's TimeoutStopSec= is 90).
FINAL_TRIES = 3
FINAL_BUDGET = 60.0
# Lease TTLs remembered (a lease's granted TTL never changes); past this many the memory starts afresh.
TTL_CACHE = 10_000


@dataclass(frozen=True)
class Timing:
    """The follower's periods, from the settings (tests shorten them)."""

    interval: float  # backup_delta_interval
    max_bytes: int  # backup_delta_max_bytes
    snapshot_interval: float  # backup_interval
    leader_poll: float = 1.5
    handover_slack: float = HANDOVER_SLACK
    idle_timeout: float = WATCH_IDLE

    @classmethod
    def of(cls, settings: Settings) -> Timing:
        return cls(settings.backup_delta_interval, settings.backup_delta_max_bytes, settings.backup_interval)

    @property
    def pending_cap(self) -> int:
        return max(PENDING_CAP, PENDING_CAP_DELTAS * self.max_bytes)


class _Nothing:
    """No watch message within the tick."""


NOTHING = _Nothing()
# What the watch's reader thread hands the loop: a message, the error that ended the stream, or None (it ended).
Item = Union[WatchMessage, EtcdRequestError, None, _Nothing]


class LeadershipLost(Exception):  # noqa: N818 -- a turn of the loop, not a failure
    """This member is no longer the leader."""


class Stopping(LeadershipLost):
    """The follower is stopping while it waits (for a snapshot's retry): leave as when leadership goes."""


class StartOver(Exception):  # noqa: N818
    """What is followed changed under the watch (another cluster id: a restore): start again from the record."""


class Follower:
    """The loop of `backup --follow` on one member (see the module's doc). `run` returns once `stop` is set."""

    def __init__(
        self,
        ctx: Context,
        backups: Backups,
        stop: threading.Event,
        timing: Timing,
        *,
        watcher: EtcdClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import requests

        self.ctx = ctx
        self.backups = backups
        self.store = backups.store
        self.stop = stop
        self.timing = timing
        self.clock = clock
        # The watch streams in a thread of its own, on a session of its own
        self.watcher = watcher or EtcdClient(requests.Session(), ctx.etcd.tls, ctx.settings.api)
        self.local_url = ctx.endpoints.client_url(ctx.me.private_ip)
        # A few messages ahead at most: past that the reader waits, and etcd holds the rest
        self._queue: queue.Queue[tuple[int, Item]] = queue.Queue(maxsize=WATCH_QUEUE)
        self._generation = 0
        self._watch: Watch | None = None
        self._opened_at = 0.0
        self._ttls: dict[int, int] = {}
        self.cluster_id: int | None = None
        self.lineage: str | None = None
        self._snapshot_at: float | None = None  # the clock's time of the newest full snapshot
        self._last_status: str | None = None

    # --- the outer loop: leader or standing by ------------------------------------------------------------
    def run(self) -> int:
        trouble = 0
        while not self.stop.is_set():
            self._step()
            status = self._leader()
            if status is None:
                self.stop.wait(self.timing.leader_poll)
                continue
            try:
                self._lead(status)
                trouble = 0
            except LeadershipLost:
                trouble = 0
            except StartOver as exc:
                log.warning("follow: %s; starting over from the cluster record", exc)
            except AgentError as exc:
                pause = backoff(trouble, base=RETRY_BASE, cap=RETRY_CAP)
                trouble += 1
                log.warning("follow: %s; trying again in %.0fs", exc, pause)
                self.stop.wait(pause)
            finally:
                self._close_watch()
        log.info("follow: stopped")
        return 0

    def _step(self) -> None:
        """Each step of the loop gets the run's whole timeout, and S3 another chance after a silence."""
        self.ctx.deadline.restart()
        self.store.silent = None

    def _leader(self) -> EndpointStatus | None:
        """This member's status when it is the leader, else None (said once per change)."""
        try:
            status = self.ctx.etcd.endpoint_status(self.local_url, self.ctx.call_timeout)
        except AgentError as exc:
            self._say(f"standing by: this host's etcd does not answer ({exc})")
            return None
        if status is None:
            self._say("standing by: this host's etcd has no v3 gateway (needed to watch)")
            return None
        if status.leader == 0 or status.leader != status.member_id:
            leader = f"member {status.leader:x}" if status.leader else "no member"
            self._say(f"standing by: this member ({status.member_id:x}) is not the leader; {leader} is")
            return None
        self._say(f"this member ({status.member_id:x}) is the leader")
        return status

    def _say(self, status: str) -> None:
        if status != self._last_status:
            log.info("follow: %s", status)
            self._last_status = status

    # --- leading -------------------------------------------------------------------------------------------
    def _lead(self, status: EndpointStatus) -> None:
        start = self._start(status)
        pending = Pending(first=start)
        self.cluster_id = None
        self._open_watch(start)
        next_check = self.clock() + self.timing.leader_poll
        upload_at = 0.0  # no upload before this time (after a failed one)
        uploads_failed = 0
        snapshot_at = 0.0
        snapshots_failed = 0
        try:
            while not self.stop.is_set():
                self._step()
                item = self._next(TICK)
                if not isinstance(item, _Nothing):
                    self._take(item, pending)
                now = self.clock()
                if now >= next_check:
                    self._still_leader()
                    next_check = now + self.timing.leader_poll
                if pending.size > self.timing.pending_cap:
                    self._overflow(pending)
                    continue
                if pending.due(now, self.timing.interval, self.timing.max_bytes) and now >= upload_at:
                    self._still_leader()
                    if self._upload(pending):
                        uploads_failed = 0
                    else:
                        upload_at = self.clock() + backoff(uploads_failed, base=RETRY_BASE, cap=RETRY_CAP)
                        uploads_failed += 1
                if self._snapshot_due(now) and now >= snapshot_at:
                    if self._scheduled_snapshot():
                        snapshots_failed = 0
                    else:
                        snapshot_at = self.clock() + backoff(snapshots_failed, base=RETRY_BASE, cap=RETRY_CAP)
                        snapshots_failed += 1
        except LeadershipLost as exc:
            self._final(pending, "stopping" if isinstance(exc, Stopping) else "this member lost the leadership")
            raise
        except StartOver:
            self._final(pending, "the cluster changed")
            raise
        except AgentError as exc:
            self._final(pending, f"following failed ({exc})")
            raise
        self._final(pending, "stopping")

    def _still_leader(self) -> None:
        if self._leader() is None:
            raise LeadershipLost

    def _start(self, status: EndpointStatus) -> int:
        """The revision to watch from: after the newest snapshot of the record's lineage and the deltas that follow
        it, once the previous leader's last delta is listed (or after a bounded wait). Takes a snapshot when there
        is none."""
        newest = self.backups.newest()
        if newest is None:
            log.info("follow: no full snapshot of this cluster's lineage yet: taking one to follow from")
            info = self._snapshot()
            log.info("follow: following from revision %d, after the snapshot just taken", info.revision + 1)
            return info.revision + 1
        self.lineage = newest.lineage
        self._snapshot_at = self.clock() - max(0.0, self.backups.age(newest))
        me = self.ctx.me.instance_id
        listed_at_takeover = {d.key for d in self.store.list_deltas()}
        wait_until = self.clock() + self.timing.interval + self.timing.handover_slack
        while True:
            listed = self.store.list_deltas()
            end = max(newest.revision, deltas.chain(newest.revision, listed, newest.lineage).last)
            flushed = [d for d in listed if d.key not in listed_at_takeover and d.instance != me]
            if end >= status.revision:
                why = f"they reach revision {status.revision}, the cluster's when this member took over"
            elif flushed:
                why = f"the previous leader's last delta is listed ({flushed[-1].instance}, up to {flushed[-1].last})"
            elif self.clock() >= wait_until or self.stop.is_set():
                waited = self.timing.interval + self.timing.handover_slack
                why = f"no delta of a previous leader appeared within {waited:.0f}s"
            else:
                self.stop.wait(min(1.0, self.timing.leader_poll))
                self._step()
                continue
            return self._after(end, newest.revision, why)

    def _after(self, end: int, snapshot_revision: int, why: str) -> int:
        """The revision after `end`, where the stored history ends, if this cluster has got that far; else (a
        cluster restored to an earlier point) a full snapshot now and the revision after it: watching from a
        revision the cluster has not reached would skip its next writes."""
        current = self._leader()
        if current is None:
            raise LeadershipLost
        if end > current.revision:
            log.warning(
                "follow: the newest snapshot and its deltas reach revision %d, but this cluster is at revision %d: "
                "they are not its history (restored to an earlier point?); taking a full snapshot to follow from",
                end,
                current.revision,
            )
            info = self._snapshot()
            log.info("follow: following from revision %d, after the snapshot just taken", info.revision + 1)
            return info.revision + 1
        log.info(
            "follow: following from revision %d: the newest snapshot is at revision %d, its deltas reach revision "
            "%d; %s",
            end + 1,
            snapshot_revision,
            end,
            why,
        )
        return end + 1

    # --- the watch -----------------------------------------------------------------------------------------
    def _open_watch(self, start: int) -> None:
        """Watch from `start` in a reader thread; a failure to open is handed to the loop like a broken stream."""
        self._close_watch()
        self._generation += 1
        generation = self._generation
        self._opened_at = self.clock()
        try:
            watch = self.watcher.watch(
                self.local_url,
                start,
                connect_timeout=self.ctx.call_timeout,
                idle_timeout=self.timing.idle_timeout,
                now=self.ctx.now,
            )
        except EtcdRequestError as exc:
            self._queue.put((generation, exc))
            return
        self._watch = watch
        threading.Thread(target=self._read, args=(watch, generation), name=f"watch-{generation}", daemon=True).start()

    def _read(self, watch: Watch, generation: int) -> None:
        try:
            for message in watch.messages():
                self._queue.put((generation, message))
        except EtcdRequestError as exc:
            self._queue.put((generation, exc))
            return
        self._queue.put((generation, None))

    def _close_watch(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._generation += 1  # whatever the closed watch still hands over is ignored

    def _next(self, timeout: float) -> Item:
        try:
            generation, item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return NOTHING
        return item if generation == self._generation else NOTHING

    def _take(self, item: Item, pending: Pending) -> None:
        """One thing the watch said."""
        if isinstance(item, WatchMessage):
            if self.cluster_id is None:
                self.cluster_id = item.cluster_id
            elif item.cluster_id != self.cluster_id:
                raise StartOver(f"the watch now sees cluster {item.cluster_id:x}, not {self.cluster_id:x} (restored?)")
            pending.add(item.revisions, self.clock())
            pending.progress(item.progress)
            return
        if isinstance(item, WatchCompacted):
            log.warning(
                "follow: cannot watch from revision %d: %s; taking a full snapshot now, then deltas after it",
                pending.next_revision,
                item,
            )
            self._resnapshot(pending)
            return
        if isinstance(item, EtcdRequestError) and not item.transient:
            log.warning(
                "follow: the watch from revision %d cannot go on (%s); a full snapshot now, then deltas after it",
                pending.next_revision,
                item,
            )
            self._resnapshot(pending)
            return
        lived = self.clock() - self._opened_at
        if item is None and lived >= self.timing.idle_timeout:
            log.debug("follow: the watch was quiet for %.0fs; opening it again", lived)
        else:
            why = "it ended" if item is None else str(item)
            pause = min(RETRY_CAP, backoff(0 if lived > 5 else 2, base=RETRY_BASE, cap=RETRY_CAP))
            log.warning(
                "follow: the watch broke (%s); opening it again from revision %d in %.1fs",
                why,
                pending.next_revision,
                pause,
            )
            self.stop.wait(pause)
            self._still_leader()
        self._open_watch(pending.next_revision)

    # --- deltas --------------------------------------------------------------------------------------------
    def _upload(self, pending: Pending) -> bool:
        """Upload what is pending as one delta; False (logged) when that failed: it stays pending."""
        batch = pending.batch()
        if batch is None:
            return True
        try:
            delta = self._delta(batch)
            info = self.store.put_delta(delta)
        except (AgentError, ValueError) as exc:  # ValueError: a delta core.deltas refuses to encode
            log.warning(
                "follow: delta r%d-r%d (%d revisions) not uploaded, kept for the next try: %s",
                batch.first,
                batch.last,
                len(batch.revisions),
                exc,
            )
            return False
        pending.uploaded(batch)
        lag = (self.ctx.now() - batch.revisions[0].at).total_seconds()
        log.info(
            "follow: uploaded delta r%d-r%d (%d revisions, %d bytes, lag %.1fs) to %s",
            batch.first,
            batch.last,
            len(batch.revisions),
            info.size,
            lag,
            self.store.where(info.key),
        )
        metrics.write_now(self.ctx.settings, metrics.delta_uploaded(self.ctx.asg_name, lag, batch.last, time.time()))
        return True

    def _delta(self, batch: Batch) -> Delta:
        if self.cluster_id is None:  # a batch holds watched revisions, so the watch has spoken
            raise AgentError("no cluster id seen on the watch")
        header = DeltaHeader(self.lineage, self.cluster_id, batch.first, batch.last, self.ctx.me.instance_id)
        leases = tuple((lease, self._ttl(lease)) for lease in batch.leases)
        return Delta(header, batch.revisions, leases, self._key_count(batch.last))

    def _ttl(self, lease: int) -> int:
        """The TTL `lease` was granted with, 0 when it is gone already (its keys' deletions follow in a later
        revision)."""
        if lease not in self._ttls:
            if len(self._ttls) >= TTL_CACHE:
                self._ttls.clear()
            self._ttls[lease] = self.ctx.etcd.lease_ttl(self.local_url, lease, self.ctx.call_timeout) or 0
        return self._ttls[lease]

    def _key_count(self, revision: int) -> int | None:
        """The live keys at `revision`, when etcd still has that revision (a check for the restore side)."""
        try:
            return self.ctx.etcd.key_count(self.local_url, revision, self.ctx.call_timeout)
        except EtcdRequestError as exc:
            log.debug("follow: no key count at revision %d: %s", revision, exc)
            return None

    def _final(self, pending: Pending, why: str) -> None:
        """Upload what is pending before standing by or stopping: a few tries, then say what is left out."""
        batch = pending.batch()
        if batch is None:
            log.info("follow: %s; nothing pending", why)
            return
        log.info("follow: %s; uploading the pending revisions %d-%d", why, batch.first, batch.last)
        self._step()
        budget = Deadline(FINAL_BUDGET, clock=self.clock)
        # Within the unit's TimeoutStopSec, however slow S3 is: its calls end with the budget
        with self.store.limited(FINAL_BUDGET):
            for attempt in range(FINAL_TRIES):
                if self._upload(pending):
                    return
                if attempt + 1 == FINAL_TRIES or not budget.pause(backoff(attempt, base=RETRY_BASE, cap=5.0)):
                    break
        log.error(
            "follow: revisions %d-%d were not uploaded; the next leader's watch covers them unless etcd compacts them "
            "first (then its full snapshot does)",
            batch.first,
            batch.last,
        )

    def _overflow(self, pending: Pending) -> None:
        log.error(
            "follow: %d bytes of changes (revisions %d-%d) could not be uploaded, more than the %d kept in memory: "
            "dropping them for a full snapshot",
            pending.size,
            pending.first,
            pending.covered,
            self.timing.pending_cap,
        )
        pending.restart(pending.next_revision)
        self._resnapshot(pending, flush=False)

    # --- full snapshots ------------------------------------------------------------------------------------
    def _snapshot_due(self, now: float) -> bool:
        return self._snapshot_at is None or now - self._snapshot_at >= self.timing.snapshot_interval

    def _snapshot(self) -> SnapshotInfo:
        """A full snapshot through this host's member (as the scheduled backup takes it), then retention."""
        ctx = self.ctx
        started = self.clock()
        cluster = ctx.observe(ctx.find_asg())
        cluster.require_one_cluster()
        info = self.backups.take(cluster, ctx.me.private_ip)
        ctx.metrics.backed_up(ctx.asg_name, info, self.clock() - started)
        self._snapshot_at = self.clock()
        self.lineage = info.lineage
        try:
            self.backups.prune()
        except AgentError as exc:
            log.warning("follow: retention after the snapshot failed (the next one tries again): %s", exc)
        metrics.write_now(ctx.settings, ctx.metrics.update)
        return info

    def _scheduled_snapshot(self) -> bool:
        """The snapshot every backup_interval, while the watch goes on; False (logged) when it failed."""
        try:
            info = self._snapshot()
        except AgentError as exc:
            log.warning("follow: the scheduled full snapshot failed: %s", exc)
            return False
        log.info("follow: full snapshot at revision %d taken; deltas go on", info.revision)
        return True

    def _resnapshot(self, pending: Pending, *, flush: bool = True) -> None:
        """A full snapshot now, and deltas after its revision: when the watch cannot go on from the next revision.
        Retried with backoff while this member leads and the follower runs."""
        self._close_watch()
        if flush:
            self._final(pending, "the watch cannot go on")
        attempt = 0
        while True:
            self._step()
            try:
                info = self._snapshot()
                break
            except AgentError as exc:
                pause = backoff(attempt, base=RETRY_BASE, cap=RETRY_CAP)
                attempt += 1
                log.warning("follow: full snapshot failed: %s; trying again in %.0fs", exc, pause)
            if self.stop.wait(pause):
                raise Stopping
            self._still_leader()
        log.info("follow: full snapshot at revision %d; following from revision %d", info.revision, info.revision + 1)
        pending.restart(info.revision + 1)
        self._open_watch(info.revision + 1)
