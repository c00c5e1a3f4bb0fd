"""The follower's loop (`backup --follow`) against fakes of etcd, its watch and the store: what it uploads, where it
starts after a leader change, and what it does when leadership goes, the watch's start is compacted, S3 fails or it
is stopped. Short real intervals: the loop waits on its watch thread's queue."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any, cast

import pytest

from etcd_aws_cluster.adapters.etcd import EtcdClient, EtcdFailure, EtcdRequestError, WatchCompacted, WatchMessage
from etcd_aws_cluster.app import follow
from etcd_aws_cluster.app.follow import Follower, Timing
from etcd_aws_cluster.app.metrics import RunMetrics
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AwsError
from etcd_aws_cluster.core.deltas import Delta, DeltaInfo, Op, Revision
from etcd_aws_cluster.core.model import Endpoints, EndpointStatus
from etcd_aws_cluster.core.records import SnapshotInfo

ME = "i-0000000000000000a"
OTHER = "i-0000000000000000b"
LINEAGE = "20261207T100000Z-0123abcd"
CLUSTER = 0xC1
MEMBER = 0x11
T0 = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
FAST = Timing(interval=0.3, max_bytes=1 << 20, snapshot_interval=3600, leader_poll=0.05, handover_slack=0.3)


def now() -> datetime:
    return datetime.now(timezone.utc)


def snapshot(revision: int) -> SnapshotInfo:
    return SnapshotInfo(
        key=f"snapshots/r{revision}.db",
        taken_at=now(),
        revision=revision,
        cluster_id=CLUSTER,
        etcd_version="3.5.30",
        sha256="0" * 64,
        size=100,
        members=(),
        source_instance=ME,
        lineage=LINEAGE,
    )


def info(first: int, last: int, instance: str = OTHER) -> DeltaInfo:
    return DeltaInfo(f"deltas/r{first}-r{last}-{instance}", LINEAGE, first, last, T0, instance, "0" * 64, 10)


def change(revision: int, lease: int = 0) -> WatchMessage:
    return WatchMessage(CLUSTER, revisions=(Revision(revision, now(), (Op("put", b"k", b"v", lease),)),))


class FakeWatch:
    def __init__(self, start: int) -> None:
        self.start = start
        self.feed: queue.Queue[WatchMessage | EtcdRequestError | None] = queue.Queue()
        self.closed = threading.Event()
        self.feed.put(WatchMessage(CLUSTER, created=True))

    def messages(self) -> Iterator[WatchMessage]:
        while not self.closed.is_set():
            try:
                item = self.feed.get(timeout=0.02)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, EtcdRequestError):
                raise item
            yield item

    def close(self) -> None:
        self.closed.set()


class FakeEtcd:
    """This host's member (leader or not, at a revision), the leases and the key count; and its watches."""

    def __init__(self, revision: int = 10) -> None:
        self.leader = True
        self.revision = revision
        self.watches: list[FakeWatch] = []
        self.tls = None

    def endpoint_status(self, url: str, timeout: float) -> EndpointStatus:
        return EndpointStatus(MEMBER, MEMBER if self.leader else 0x22, revision=self.revision)

    def lease_ttl(self, url: str, lease: int, timeout: float) -> int:
        return 60

    def key_count(self, url: str, revision: int, timeout: float) -> int:
        return 3

    def watch(self, url: str, start: int, **_: Any) -> FakeWatch:
        watch = FakeWatch(start)
        self.watches.append(watch)
        return watch

    @property
    def current(self) -> FakeWatch:
        return self.watches[-1]


class FakeStore:
    def __init__(self) -> None:
        self.deltas: list[DeltaInfo] = []
        self.uploaded: list[Delta] = []
        self.failures = 0
        self.silent: str | None = None
        self.budgets: list[float] = []

    def list_deltas(self) -> tuple[DeltaInfo, ...]:
        return tuple(sorted(self.deltas, key=lambda d: (d.first, d.last)))

    def put_delta(self, delta: Delta) -> DeltaInfo:
        if self.failures:
            self.failures -= 1
            raise AwsError("S3 is down")
        self.uploaded.append(delta)
        found = info(delta.header.first, delta.header.last, delta.header.instance)
        self.deltas.append(found)
        return found

    def where(self, key: str) -> str:
        return f"s3://b/{key}"

    @contextlib.contextmanager
    def limited(self, seconds: float, *, answer_within: float | None = None) -> Iterator[None]:
        self.budgets.append(seconds)
        yield


class FakeBackups:
    def __init__(self, store: FakeStore, etcd: FakeEtcd, newest: SnapshotInfo | None) -> None:
        self.store = store
        self.etcd = etcd
        self.snapshots = [newest] if newest else []
        self.taken: list[SnapshotInfo] = []

    def newest(self) -> SnapshotInfo | None:
        return self.snapshots[-1] if self.snapshots else None

    def age(self, info: SnapshotInfo) -> float:
        return 0.0

    def take(self, cluster: object, via_ip: str) -> SnapshotInfo:
        taken = snapshot(self.etcd.revision)
        self.snapshots.append(taken)
        self.taken.append(taken)
        return taken

    def prune(self) -> tuple[SnapshotInfo, ...]:
        return ()


class Running:
    """A follower running in a thread, with its fakes."""

    def __init__(self, newest: SnapshotInfo | None = None, timing: Timing = FAST, revision: int = 10) -> None:
        self.etcd = FakeEtcd(revision)
        self.store = FakeStore()
        self.backups = FakeBackups(self.store, self.etcd, newest)
        cluster = SimpleNamespace(require_one_cluster=lambda: None)
        self.ctx = SimpleNamespace(
            deadline=Deadline(30),
            etcd=self.etcd,
            me=SimpleNamespace(instance_id=ME, private_ip="127.0.0.9"),
            endpoints=Endpoints(),
            call_timeout=1.0,
            now=now,
            settings=SimpleNamespace(api="auto", metrics_file=None),
            metrics=RunMetrics(),
            asg_name="etcd",
            find_asg=lambda: None,
            observe=lambda asg: cluster,
        )
        self.stop = threading.Event()
        self.follower = Follower(
            cast(Any, self.ctx), cast(Any, self.backups), self.stop, timing, watcher=cast(EtcdClient, self.etcd)
        )
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.follower.run()

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the follower did not stop"

    def feed(self, *items: WatchMessage | EtcdRequestError | None) -> None:
        for item in items:
            self.etcd.current.feed.put(item)

    def ranges(self) -> list[tuple[int, int, list[int]]]:
        return [(d.header.first, d.header.last, [r.revision for r in d.revisions]) for d in self.store.uploaded]


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "RETRY_BASE", 0.02)


def test_the_leader_uploads_one_delta_per_interval_and_nothing_while_quiet() -> None:
    with Running(newest=snapshot(10)) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        assert run.etcd.current.start == 11
        run.feed(change(11, lease=7), change(12))
        eventually(lambda: len(run.store.uploaded) == 1)
        time.sleep(FAST.interval * 2)  # quiet: no upload
        assert run.ranges() == [(11, 12, [11, 12])]
        delta = run.store.uploaded[0]
        assert delta.leases == ((7, 60),) and delta.keys == 3
        assert (delta.header.lineage, delta.header.cluster_id, delta.header.instance) == (LINEAGE, CLUSTER, ME)
        run.feed(WatchMessage(CLUSTER, progress=20), change(21))
        eventually(lambda: len(run.store.uploaded) == 2)
    assert run.ranges()[1] == (13, 21, [21])  # the quiet range 13-20 belongs to the next delta
    assert run.code == 0


def test_stopping_uploads_what_is_pending_at_once() -> None:
    slow = Timing(interval=60, max_bytes=1 << 20, snapshot_interval=3600, leader_poll=0.05, handover_slack=0.1)
    with Running(newest=snapshot(10), timing=slow) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        run.feed(change(11))
        eventually(lambda: run.follower._queue.empty())
        time.sleep(0.1)
    assert run.ranges() == [(11, 11, [11])] and run.code == 0


def test_stopping_while_s3_fails_gives_up_within_its_budget_and_says_what_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slow = Timing(interval=60, max_bytes=1 << 20, snapshot_interval=3600, leader_poll=0.05, handover_slack=0.1)
    with Running(newest=snapshot(10), timing=slow) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        run.feed(change(11))
        eventually(lambda: run.follower._queue.empty())
        time.sleep(0.1)
        run.store.failures = 10**6
    assert run.code == 0 and not run.store.uploaded
    assert run.store.budgets == [follow.FINAL_BUDGET]
    assert "revisions 11-11 were not uploaded" in caplog.text


def test_a_new_leader_starts_after_the_previous_leaders_last_delta() -> None:
    """Taking over at revision 25 with deltas listed up to 20: it waits for the previous leader's flush (21-25)."""
    run = Running(newest=snapshot(10), revision=25)
    run.store.deltas = [info(11, 20)]
    with run:
        time.sleep(0.1)
        assert not run.etcd.watches  # still waiting for the flush
        run.store.deltas.append(info(21, 25))
        eventually(lambda: len(run.etcd.watches) == 1)
        assert run.etcd.current.start == 26


def test_a_new_leader_waits_a_bounded_time_for_a_flush_that_never_comes() -> None:
    run = Running(newest=snapshot(10), revision=25)
    run.store.deltas = [info(11, 20)]
    started = time.monotonic()
    with run:
        eventually(lambda: len(run.etcd.watches) == 1)
        waited = time.monotonic() - started
        assert run.etcd.current.start == 21  # the watch replays 21-25: no gap
    assert FAST.interval + FAST.handover_slack - 0.1 <= waited < FAST.interval + FAST.handover_slack + 2


def test_a_cluster_behind_the_stored_history_gets_a_full_snapshot_to_follow_from() -> None:
    """Restored to an earlier point (revision 15) while deltas of its lineage reach 20: watching from 21 would skip
    its next writes 16-20."""
    run = Running(newest=snapshot(10), revision=15)
    run.store.deltas = [info(11, 20)]
    with run:
        eventually(lambda: len(run.etcd.watches) == 1)
        assert [s.revision for s in run.backups.taken] == [15]
        assert run.etcd.current.start == 16


def test_no_snapshot_yet_takes_one_first_and_follows_after_it() -> None:
    with Running(newest=None, revision=33) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        assert [s.revision for s in run.backups.taken] == [33]
        assert run.etcd.current.start == 34


def test_losing_leadership_flushes_and_stands_by_then_leading_again_resumes() -> None:
    slow = Timing(interval=60, max_bytes=1 << 20, snapshot_interval=3600, leader_poll=0.05, handover_slack=0.2)
    with Running(newest=snapshot(10), timing=slow) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        run.feed(change(11), change(12))
        eventually(lambda: run.follower._queue.empty())
        time.sleep(0.1)
        run.etcd.leader = False
        eventually(lambda: len(run.store.uploaded) == 1)
        eventually(lambda: run.etcd.current.closed.is_set())
        time.sleep(0.2)
        assert len(run.etcd.watches) == 1  # standing by
        run.etcd.revision = 12
        run.etcd.leader = True
        eventually(lambda: len(run.etcd.watches) == 2)
        assert run.etcd.current.start == 13
    assert run.ranges() == [(11, 12, [11, 12])]


def test_a_compacted_start_takes_a_full_snapshot_and_follows_after_it() -> None:
    with Running(newest=snapshot(10)) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        run.etcd.revision = 50
        run.feed(WatchCompacted("etcd has compacted its history up to revision 40", 40))
        eventually(lambda: len(run.etcd.watches) == 2)
        assert [s.revision for s in run.backups.taken] == [50]
        assert run.etcd.current.start == 51
        run.feed(change(51))
        eventually(lambda: len(run.store.uploaded) == 1)
    assert run.ranges() == [(51, 51, [51])]


def test_a_broken_watch_is_opened_again_from_the_next_revision() -> None:
    with Running(newest=snapshot(10)) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        run.feed(change(11), EtcdRequestError("broke", failure=EtcdFailure.UNREACHABLE, transient=True))
        eventually(lambda: len(run.etcd.watches) == 2, timeout=10)
        assert run.etcd.current.start == 12
        run.feed(change(12))
        eventually(lambda: len(run.store.uploaded) == 1)
    assert run.ranges() == [(11, 12, [11, 12])] and not run.backups.taken


def test_a_failed_upload_keeps_the_revisions_for_the_next_try() -> None:
    with Running(newest=snapshot(10)) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        run.store.failures = 2
        run.feed(change(11))
        eventually(lambda: len(run.store.uploaded) == 1, timeout=10)
        assert run.store.failures == 0
    assert run.ranges() == [(11, 11, [11])]


def test_another_cluster_under_the_watch_starts_over() -> None:
    with Running(newest=snapshot(10)) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        run.feed(change(11), WatchMessage(CLUSTER + 1, revisions=()))
        eventually(lambda: len(run.etcd.watches) == 2, timeout=10)
    assert run.ranges()[0] == (11, 11, [11])  # what the old cluster had went up first


def test_past_the_memory_cap_the_changes_are_dropped_for_a_full_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "PENDING_CAP", 1000)
    tiny = Timing(interval=60, max_bytes=100, snapshot_interval=3600, leader_poll=0.05, handover_slack=0.1)
    with Running(newest=snapshot(10), timing=tiny) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        run.store.failures = 10**6  # S3 down
        run.etcd.revision = 30
        run.feed(*(change(r) for r in range(11, 30)))
        eventually(lambda: len(run.backups.taken) == 1, timeout=10)
        eventually(lambda: len(run.etcd.watches) == 2)
        assert run.etcd.current.start == 31
        run.store.failures = 0
    assert not any(first <= 29 for first, _, _ in run.ranges())


def test_the_full_snapshot_is_taken_every_backup_interval_while_deltas_go_on() -> None:
    often = Timing(interval=0.2, max_bytes=1 << 20, snapshot_interval=0.5, leader_poll=0.05, handover_slack=0.1)
    with Running(newest=snapshot(10), timing=often) as run:
        eventually(lambda: len(run.etcd.watches) == 1)
        eventually(lambda: len(run.backups.taken) >= 1, timeout=5)
        run.feed(change(11))
        eventually(lambda: len(run.store.uploaded) == 1)
        assert len(run.etcd.watches) == 1  # the watch went on


def test_not_the_leader_stands_by_and_never_watches() -> None:
    run = Running(newest=snapshot(10))
    run.etcd.leader = False
    with run:
        time.sleep(0.3)
        assert not run.etcd.watches and not run.store.uploaded
    assert run.code == 0


def test_timing_comes_from_the_settings() -> None:
    settings = SimpleNamespace(backup_delta_interval=10.0, backup_delta_max_bytes=8 << 20, backup_interval=3600.0)
    timing = Timing.of(cast(Any, settings))
    assert (timing.interval, timing.max_bytes, timing.snapshot_interval) == (10.0, 8 << 20, 3600.0)
    assert timing.pending_cap >= 8 * timing.max_bytes
    assert timedelta(seconds=timing.leader_poll) <= timedelta(seconds=2)
