"""What `backup --follow` holds between two uploads: which revisions the next delta covers, and when it is due
(a fake clock: plain numbers)."""

from __future__ import annotations

from datetime import datetime, timezone

from etcd_aws_cluster.core.deltas import Op, Revision
from etcd_aws_cluster.core.follow import Pending, encoded_size

AT = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)


def rev(n: int, *ops: Op) -> Revision:
    return Revision(n, AT, ops or (Op("put", f"k{n}".encode(), b"v"),))


def test_a_delta_covers_from_the_watch_start_to_the_newest_revision_seen() -> None:
    pending = Pending(first=11)
    assert pending.batch() is None and pending.next_revision == 11
    pending.add([rev(12), rev(15)], now=0.0)
    batch = pending.batch()
    assert batch is not None
    assert (batch.first, batch.last, [r.revision for r in batch.revisions]) == (11, 15, [12, 15])
    assert pending.next_revision == 16


def test_after_an_upload_the_next_delta_starts_after_it() -> None:
    pending = Pending(first=1)
    pending.add([rev(3)], now=0.0)
    first = pending.batch()
    assert first is not None
    pending.uploaded(first)
    assert pending.batch() is None and pending.first == 4 and pending.size == 0 and pending.since is None
    pending.add([rev(4), rev(5)], now=1.0)
    second = pending.batch()
    assert second is not None and (second.first, second.last) == (4, 5)


def test_revisions_seen_twice_are_taken_once() -> None:
    """A watch opened again from the next revision may send what the broken one sent last."""
    pending = Pending(first=1)
    assert pending.add([rev(1), rev(2)], now=0.0) == 2
    assert pending.add([rev(2), rev(3)], now=0.1) == 1
    batch = pending.batch()
    assert batch is not None and [r.revision for r in batch.revisions] == [1, 2, 3]


def test_nothing_pending_is_never_due_whatever_the_time() -> None:
    pending = Pending(first=5)
    assert not pending.due(now=1e9, interval=10, max_bytes=1)
    pending.progress(9)  # a quiet range: covered, but nothing changed
    assert not pending.due(now=1e9, interval=10, max_bytes=1)
    assert pending.batch() is None and pending.next_revision == 10


def test_a_delta_is_due_once_its_oldest_change_has_waited_the_interval() -> None:
    pending = Pending(first=1)
    pending.add([rev(1)], now=100.0)
    pending.add([rev(2)], now=108.0)
    assert not pending.due(now=109.9, interval=10, max_bytes=1 << 20)
    assert pending.due(now=110.0, interval=10, max_bytes=1 << 20)
    assert pending.age(110.0) == 10.0


def test_a_delta_is_due_sooner_past_max_bytes() -> None:
    pending = Pending(first=1)
    big = Op("put", b"big", b"x" * 3000)
    pending.add([rev(1, big)], now=0.0)
    assert pending.size >= encoded_size(rev(1, big)) > 4000
    assert not pending.due(now=0.0, interval=10, max_bytes=8000)
    pending.add([rev(2, big)], now=0.0)
    assert pending.due(now=0.0, interval=10, max_bytes=8000)


def test_a_progress_notification_extends_the_next_delta_over_a_quiet_range() -> None:
    pending = Pending(first=1)
    pending.add([rev(2)], now=0.0)
    pending.progress(7)
    pending.progress(5)  # never backwards
    batch = pending.batch()
    assert batch is not None and (batch.first, batch.last) == (1, 7)


def test_the_leases_of_a_batch_are_those_its_puts_attach_keys_to() -> None:
    pending = Pending(first=1)
    pending.add(
        [rev(1, Op("put", b"a", b"1", lease=7), Op("delete", b"b")), rev(2, Op("put", b"c", b"1", lease=3))], now=0
    )
    batch = pending.batch()
    assert batch is not None and batch.leases == (3, 7)


def test_restart_drops_everything_pending_for_a_new_start() -> None:
    pending = Pending(first=1)
    pending.add([rev(1), rev(2)], now=0.0)
    pending.restart(41)
    assert pending.batch() is None and pending.first == 41 and pending.next_revision == 41 and pending.size == 0
