"""Applying deltas onto a full snapshot: the revisions etcd made after it, replayed into a throwaway etcd, and the
result saved as a snapshot (see `Backups.restore`, which uploads and restores it).

The snapshot is restored without a revision bump into a throwaway single-member etcd (adapters/throwaway_etcd.py),
the deltas' leases are granted with their ids, and each revision of the chain is applied as ONE transaction whose
revision must be the one it had: revisions are kept, so watchers and `mod_revision`s see the same history. A
damaged or unreadable delta ends the replay at the last revision before it (still the best data there is; the
restore goes on with it and says so); etcd giving another revision than the one replayed means the copy no longer
follows the history, and the replay fails (the caller falls back to the snapshot alone).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from etcd_aws_cluster.adapters import snapshot_save, throwaway_etcd
from etcd_aws_cluster.adapters.etcd import EtcdClient, Tls
from etcd_aws_cluster.adapters.restore_tool import RestoreTool
from etcd_aws_cluster.adapters.throwaway_etcd import EtcdBinary
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AgentError, EtcdError
from etcd_aws_cluster.core import deltas as core_deltas
from etcd_aws_cluster.core.deltas import Delta, DeltaInfo, Op, Revision
from etcd_aws_cluster.core.records import SnapshotInfo, format_time

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)
# A lease granted for a replay lives at least this long: it must not expire (etcd would revoke it, deleting its
# keys at a revision of its own) while the replay runs; the restored cluster then counts it down from its TTL.
LEASE_TTL_FLOOR = 60
START_TIMEOUT = 60.0  # the most the throwaway etcd's restore and start may take
LEASE_TICK = 0.25  # how often the lease keeper looks for leases due (etcd's shortest TTL is about 1.5 s)
LEASE_LIST_EVERY = 2.0  # how often it lists the leases again
TIME_UP = "the time for applying deltas ran out (about 1,000 revisions a second; a longer `timeout` applies more)"


@dataclass(frozen=True)
class Point:
    """Where a point-in-time replay stops: after the last revision <= `revision` / received at or before `at`."""

    revision: int | None = None
    at: datetime | None = None

    def __str__(self) -> str:
        if self.revision is not None:
            return f"revision {self.revision}"
        return f"time {format_time(self.at)}" if self.at is not None else "the newest revision"


@dataclass(frozen=True)
class Progress:
    """How far a replay got: the db's revision it started from, the last revision applied (== base when none) and
    when the follower received it, how many revisions and deltas it applied, and why it stopped short (None: it
    reached the end of the chain or the point)."""

    base: int
    revision: int
    at: datetime | None
    revisions: int = 0
    deltas: int = 0
    stopped: str | None = None
    keys: int | None = None  # the live key count the follower counted at `revision`, when it did


@dataclass(frozen=True)
class Replayed:
    """A replay's result: its progress, and the snapshot saved from the throwaway etcd (None when nothing was
    applied: the snapshot it started from is the result)."""

    progress: Progress
    snapshot: Path | None
    etcd_version: str
    live_keys: int | None = None  # a drill's count of the live keys at the revision it reached


class Target(Protocol):
    """What revisions are applied to (the throwaway etcd, through its JSON gateway)."""

    def txn(self, ops: Sequence[Op]) -> int: ...

    def grant_lease(self, lease_id: int, ttl: int) -> bool: ...


class ReplayBroken(EtcdError):
    """The throwaway etcd no longer follows the history being replayed: its result is not to be trusted."""


def read_in_order(
    chain: Sequence[DeltaInfo], read: Callable[[DeltaInfo], Delta]
) -> Iterator[tuple[DeltaInfo, Delta | AgentError]]:
    """Each delta of `chain`, read when it is needed, or the error that reading it raised (and nothing after it)."""
    for info in chain:
        try:
            yield info, read(info)
        except AgentError as exc:
            yield info, exc
            return


def apply(
    target: Target,
    deltas: Iterable[tuple[DeltaInfo, Delta | AgentError]],
    base: int,
    point: Point | None = None,
    deadline: Deadline | None = None,
) -> Progress:
    """Apply the revisions of `deltas` newer than `base` (the db's revision) to `target`, one transaction each, up to
    `point`. Stops at a delta that could not be read or a revision missing from the history (Progress.stopped);
    raises ReplayBroken when the target gives another revision than the one applied."""
    progress = Progress(base, base, None)
    granted: set[int] = set()
    for info, delta in deltas:
        if isinstance(delta, AgentError):
            return replace(progress, stopped=f"delta {info.key} could not be read: {delta}")
        ttls = dict(delta.leases)
        fresh = [r for r in delta.revisions if r.revision > progress.revision]
        for revision in fresh:
            if point is not None and not core_deltas.wanted(revision, until_revision=point.revision, until_at=point.at):
                return progress
            if deadline is not None and deadline.expired:
                return replace(progress, stopped=TIME_UP)
            if revision.revision != progress.revision + 1:
                missing = f"{progress.revision + 1}..{revision.revision - 1}"
                return replace(progress, stopped=f"revisions {missing} are missing from the deltas ({info.key} jumps)")
            _grant(target, revision, ttls, granted)
            got = target.txn(revision.ops)
            if got != revision.revision:
                raise ReplayBroken(
                    f"replaying revision {revision.revision} of {info.key}, etcd made revision {got}: the copy no "
                    "longer follows the history (a lease that expired in it?)"
                )
            progress = replace(
                progress,
                revision=got,
                at=revision.at,
                revisions=progress.revisions + 1,
                deltas=progress.deltas + 1 if revision is fresh[0] else progress.deltas,
                keys=delta.keys if got == delta.header.last else None,  # counted at the delta's end
            )
    return progress


def _grant(target: Target, revision: Revision, ttls: dict[int, int], granted: set[int]) -> None:
    for op in revision.ops:
        if op.lease and op.lease not in granted:
            target.grant_lease(op.lease, max(LEASE_TTL_FLOOR, ttls.get(op.lease, 0)))
            granted.add(op.lease)


class _Gateway:
    """A Target over the throwaway etcd's JSON gateway."""

    def __init__(self, client: EtcdClient, url: str, timeout: float) -> None:
        self.client, self.url, self.timeout = client, url, timeout

    def txn(self, ops: Sequence[Op]) -> int:
        return self.client.txn(self.url, ops, self.timeout)

    def grant_lease(self, lease_id: int, ttl: int) -> bool:
        return self.client.grant_lease(self.url, lease_id, ttl, self.timeout)


class LeaseKeeper:
    """Keeps every lease of the throwaway etcd alive while a replay runs, in a thread of its own: a lease that
    expired there would be revoked at a revision of etcd's own (its keys deleted), and the copy would no longer
    follow the history. Each lease is refreshed at a third of its TTL; the list is read again every
    LEASE_LIST_EVERY seconds (the replay grants leases as it goes). Best effort: what it misses, the revision
    check catches."""

    def __init__(self, client: EtcdClient, url: str, timeout: float) -> None:
        self.client, self.url, self.timeout = client, url, timeout
        self.due: dict[int, float] = {}  # lease id -> when to refresh it next
        self.next_listing = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lease keeper", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while True:  # at once first: a short lease of the snapshot may be near its end (etcd's start counts)
            self._refresh(time.monotonic())
            if self.stop.wait(LEASE_TICK):
                return

    def _refresh(self, now: float) -> None:
        try:
            if now >= self.next_listing:
                self.due = {lease: self.due.get(lease, now) for lease in self.client.leases(self.url, self.timeout)}
                self.next_listing = now + LEASE_LIST_EVERY
            for lease, when in list(self.due.items()):
                if when <= now:
                    ttl = self.client.keep_alive(self.url, lease, self.timeout)
                    if ttl is None:
                        del self.due[lease]
                    else:
                        self.due[lease] = now + max(LEASE_TICK, ttl / 3)
        except AgentError as exc:
            log.debug("replay: keeping the leases alive: %s", exc)


@dataclass
class Replayer:
    """Replays chains of deltas on this host: etcd's restore tool, the host's etcd binary and (where the host has
    one) etcdctl to save the result."""

    client: EtcdClient
    tool: RestoreTool
    etcd: EtcdBinary
    etcdctl: RestoreTool | None
    deadline: Deadline  # the run's: the throwaway's start, the calls, the save
    call_timeout: float
    apply_deadline: Deadline | None = None  # when applying stops, leaving the run time to upload and restore

    def run(
        self,
        snapshot: Path,
        info: SnapshotInfo,
        chain: Sequence[DeltaInfo],
        read: Callable[[DeltaInfo], Delta],
        workdir: Path,
        out: Path,
        point: Point | None = None,
        *,
        drill: bool = False,
    ) -> Replayed:
        """Replay `chain` (read one delta at a time with `read`) onto `snapshot` (the db of `info`) in `workdir`,
        saving the result to `out` when any revision was applied. A `drill` (backup --verify) starts the throwaway
        etcd even without deltas, counts the live keys at the end, and saves nothing."""
        deltas = read_in_order(chain, read)
        first = next(deltas, None)
        if not drill and (first is None or isinstance(first[1], AgentError)):
            # nothing to apply (or the first delta is already unreadable): no throwaway etcd for that
            why = None if first is None else f"delta {first[0].key} could not be read: {first[1]}"
            return Replayed(Progress(info.revision, info.revision, None, stopped=why), None, info.etcd_version)
        with throwaway_etcd.running(
            snapshot,
            self.tool,
            self.etcd,
            workdir,
            ready=lambda url: self.client.revision(url, self.call_timeout),
            timeout=self.deadline.cap(START_TIMEOUT),
            skip_hash_check=not info.hash_trailer,
            db_bytes=info.db_bytes,
        ) as etcd:
            status = self.client.endpoint_status(etcd.client_url, self.call_timeout)
            version = status.version if status is not None and status.version else info.etcd_version
            base = self.client.revision(etcd.client_url, self.call_timeout)
            target = _Gateway(self.client, etcd.client_url, self.call_timeout)
            keeper = LeaseKeeper(EtcdClient(loopback_session(), Tls(), "v3"), etcd.client_url, self.call_timeout)
            pending = _chained(first, deltas) if first is not None else iter(())
            with keeper:
                progress = apply(target, pending, base, point, self.apply_deadline or self.deadline)
            self._check_count(etcd.client_url, progress)
            if drill:
                live = self.client.key_count(etcd.client_url, progress.revision, self.call_timeout)
                return Replayed(progress, None, version, live_keys=live)
            if progress.revisions == 0:
                return Replayed(progress, None, version)
            self._save(etcd.client_url, out)
        return Replayed(progress, out, version)

    def _check_count(self, url: str, progress: Progress) -> None:
        """The live key count against the one the follower counted at the same revision, where it did: a
        difference means the copy is not the history (logged loudly; its revisions all matched, so it stays)."""
        if progress.keys is None or progress.revisions == 0:
            return
        counted = self.client.key_count(url, progress.revision, self.call_timeout)
        if counted != progress.keys:
            log.error(
                "replay: %d keys are live at revision %d, the follower counted %d there: check the restored data",
                counted,
                progress.revision,
                progress.keys,
            )

    def _save(self, url: str, out: Path) -> None:
        """The throwaway etcd's snapshot into `out`: with etcdctl where the host has one, else its JSON gateway."""
        snapshot_save.save_or_stream(
            self.etcdctl, self.client, url, out, self.deadline.cap(600.0), self.call_timeout, "replay"
        )


def loopback_session() -> requests.Session:
    """A session for the throwaway etcd on 127.0.0.1: no proxy from the environment may carry its calls."""
    import requests

    session = requests.Session()
    session.trust_env = False
    return session


def _chained(
    first: tuple[DeltaInfo, Delta | AgentError], rest: Iterator[tuple[DeltaInfo, Delta | AgentError]]
) -> Iterator[tuple[DeltaInfo, Delta | AgentError]]:
    yield first
    yield from rest
