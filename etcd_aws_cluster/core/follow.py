"""What `backup --follow` holds between two uploads: the revisions watched since the last delta, and when they are
due. Pure: the follower (app/follow.py) feeds it what the watch says and the time, and uploads what it hands out.

The next delta covers `first`..`covered`: `first` is where the watch started, or the revision after the last delta
uploaded; `covered` the newest revision every change up to which has been seen (the newest revision watched, or a
progress notification's). Nothing pending and nothing changed: nothing is due, whatever the time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from etcd_aws_cluster.core.deltas import Revision

# What one change is taken to add to a delta beside its key and value (its line's JSON and revision number), and
# how much base64 adds to those: an estimate of the encoded size, so that a delta is cut near backup_delta_max_bytes
# without encoding it at every change.
CHANGE_OVERHEAD = 96
BASE64_GROWTH = 4 / 3


def encoded_size(revision: Revision) -> int:
    """About how many bytes `revision` takes in an encoded delta."""
    return CHANGE_OVERHEAD + sum(
        CHANGE_OVERHEAD + int((len(op.key) + len(op.value)) * BASE64_GROWTH) for op in revision.ops
    )


@dataclass(frozen=True)
class Batch:
    """The next delta: revisions `first`..`last`, and the changes in that range (none in a quiet range)."""

    first: int
    last: int
    revisions: tuple[Revision, ...]
    size: int  # estimated encoded bytes

    @property
    def leases(self) -> tuple[int, ...]:
        """The leases the puts of this delta attach their keys to, sorted."""
        return tuple(sorted({op.lease for revision in self.revisions for op in revision.ops if op.lease}))


@dataclass
class Pending:
    """The revisions watched since the last delta uploaded (see the module's doc)."""

    first: int
    revisions: list[Revision] = field(default_factory=list)
    covered: int = field(init=False)
    size: int = 0
    since: float | None = None  # the clock's time when the oldest pending change arrived

    def __post_init__(self) -> None:
        self.covered = self.first - 1

    @property
    def next_revision(self) -> int:
        """Where a watch opened again starts: the first revision not seen yet."""
        return self.covered + 1

    def add(self, revisions: Iterable[Revision], now: float) -> int:
        """Take the revisions a watch sent; those already seen (a watch opened again sends them twice) are skipped.
        Returns how many were new."""
        added = 0
        for revision in revisions:
            if revision.revision <= self.covered:
                continue
            self.revisions.append(revision)
            self.covered = revision.revision
            self.size += encoded_size(revision)
            added += 1
        if added and self.since is None:
            self.since = now
        return added

    def progress(self, revision: int) -> None:
        """etcd says every change up to `revision` has been sent (a progress notification)."""
        self.covered = max(self.covered, revision)

    def due(self, now: float, interval: float, max_bytes: int) -> bool:
        """A delta is due: changes are pending, and the oldest has waited `interval` seconds or they reach
        `max_bytes`."""
        if not self.revisions or self.since is None:
            return False
        return self.size >= max_bytes or now - self.since >= interval

    def age(self, now: float) -> float:
        """How long the oldest pending change has waited (0 with none)."""
        return 0.0 if self.since is None else now - self.since

    def batch(self) -> Batch | None:
        """The next delta, or None when no change is pending."""
        if not self.revisions:
            return None
        return Batch(self.first, self.covered, tuple(self.revisions), self.size)

    def uploaded(self, batch: Batch) -> None:
        """`batch` is stored: the next delta starts after it."""
        self.revisions = [r for r in self.revisions if r.revision > batch.last]
        self.first = batch.last + 1
        self.size = sum(encoded_size(r) for r in self.revisions)
        self.since = None if not self.revisions else self.since

    def restart(self, first: int) -> None:
        """Drop everything pending: the next delta starts at `first` (after a full snapshot at `first` - 1)."""
        self.revisions = []
        self.first = first
        self.covered = first - 1
        self.size = 0
        self.since = None
