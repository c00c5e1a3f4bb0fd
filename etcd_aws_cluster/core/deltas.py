"""Deltas: the revisions etcd made between full snapshots, as `backup --follow` watched them, and the pure choices.

A delta covers the revisions `first`..`last` of one lineage (a quiet stretch has no revision lines) and holds, per
revision, every event etcd gave for it: one revision is one transaction, applied again as one, so a restore keeps
revisions as they were. Stored as JSON lines (header, one line per revision, trailer with the sha256 of every line
before it), compressed by the adapter; everything a listing needs (range, time of the last revision, writer, sha256
of the stored bytes) is in the object's name, so choosing deltas never reads one.

Read back from S3, a delta is untrusted: every line is checked, and any damage raises DamagedDeltaError, at which a
restore stops (the revisions before it are still the best data there is).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core.records import LINEAGE, SnapshotInfo

DELTA_FORMAT = "etcd-aws-cluster/delta"
DELTA_VERSION = 1
LEGACY_DIR = "legacy"  # the directory of the lineage None (data from before lineages)
SUFFIX = ".jsonl.zst"
NAME = re.compile(
    r"r(?P<first>[0-9]{20})-r(?P<last>[0-9]{20})-(?P<at>[0-9]{8}T[0-9]{12}Z)-(?P<instance>"
    + validate.INSTANCE_ID.pattern
    + ")"
    r"-(?P<sha256>[0-9a-f]{64})" + re.escape(SUFFIX)
)
NAME_TIME = "%Y%m%dT%H%M%S%fZ"
MAX_KEY_BYTES = 1536  # etcd's default --max-request-bytes bounds a key and value; ours reads generously above
MAX_VALUE_BYTES = 64 * 1024 * 1024
MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL


class DamagedDeltaError(UnsafeError):
    """A stored delta is not what its name and trailer say: a restore stops before it."""


@dataclass(frozen=True)
class Op:
    """One event of a revision: a put (with its lease, 0 for none) or a delete of one key."""

    kind: Literal["put", "delete"]
    key: bytes
    value: bytes = b""
    lease: int = 0


@dataclass(frozen=True)
class Revision:
    """Every event etcd gave for one revision, and when the follower received it (what `restore --at` goes by)."""

    revision: int
    at: datetime
    ops: tuple[Op, ...]


@dataclass(frozen=True)
class DeltaHeader:
    lineage: str | None
    cluster_id: int
    first: int
    last: int
    instance: str


@dataclass(frozen=True)
class Delta:
    header: DeltaHeader
    revisions: tuple[Revision, ...]
    leases: tuple[tuple[int, int], ...] = ()  # (lease id, granted TTL in seconds) of the leases its puts name
    keys: int | None = None  # the live key count at `last`, when the follower counted it

    @property
    def last_at(self) -> datetime:
        """The time of its newest revision (of its newest event: a delta is uploaded only with revisions)."""
        if not self.revisions:
            raise ValueError("a delta without revisions has no time")
        return self.revisions[-1].at


@dataclass(frozen=True)
class DeltaInfo:
    """A stored delta, as its listing says: everything here is in its key (and the size from the listing)."""

    key: str
    lineage: str | None
    first: int
    last: int
    last_at: datetime
    instance: str
    sha256: str
    size: int


# -- names ----------------------------------------------------------------------------------------------------


def lineage_dir(lineage: str | None) -> str:
    return LEGACY_DIR if lineage is None else lineage


def delta_name(header: DeltaHeader, last_at: datetime, sha256: str) -> str:
    """The object name (below the lineage's directory) of a delta with this header, newest time and stored sha256."""
    at = last_at.astimezone(timezone.utc).strftime(NAME_TIME)
    instance = validate.instance_id(header.instance, "a delta")
    return f"r{header.first:020d}-r{header.last:020d}-{at}-{instance}-{sha256}{SUFFIX}"


def parse_delta_key(key: str, tail: str, size: int, source: str) -> DeltaInfo | None:
    """What the key `key`, whose part below the deltas prefix is `tail` (`<lineage dir>/<name>`), says; None when
    it is not a delta's key of ours."""
    directory, _, name = tail.partition("/")
    match = NAME.fullmatch(name)
    if match is None or not (directory == LEGACY_DIR or LINEAGE.fullmatch(directory)) or size < 0:
        return None
    first, last = int(match["first"]), int(match["last"])
    try:
        at = datetime.strptime(match["at"], NAME_TIME).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    if not 0 < first <= last:
        return None
    return DeltaInfo(
        key=key,
        lineage=None if directory == LEGACY_DIR else directory,
        first=first,
        last=last,
        last_at=at,
        instance=validate.instance_id(match["instance"], source),
        sha256=match["sha256"],
        size=size,
    )


# -- the stored form ------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _line(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=False).encode() + b"\n"


def _op_json(op: Op) -> list[object]:
    if op.kind == "put":
        return ["put", _b64(op.key), _b64(op.value), op.lease]
    return ["delete", _b64(op.key)]


def _millis(at: datetime) -> int:
    return round(at.timestamp() * 1000)


def encode(delta: Delta) -> bytes:
    """The delta as JSON lines: a header, one line per revision (oldest first), a trailer with the sha256 of all
    lines before it."""
    check(delta)
    header = delta.header
    lines = [
        _line(
            {
                "format": DELTA_FORMAT,
                "version": DELTA_VERSION,
                "lineage": header.lineage,
                "cluster_id": f"{header.cluster_id:x}",
                "first": header.first,
                "last": header.last,
                "instance": header.instance,
            }
        )
    ]
    lines += [
        _line({"r": r.revision, "at": _millis(r.at), "ops": [_op_json(op) for op in r.ops]}) for r in delta.revisions
    ]
    body = b"".join(lines)
    trailer = {
        "revisions": len(delta.revisions),
        "leases": [list(pair) for pair in delta.leases],
        "keys": delta.keys,
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return body + _line(trailer)


def check(delta: Delta) -> None:
    """A delta's revisions are inside its range, strictly increasing, each with events, no key twice in one."""
    header = delta.header
    if not 0 < header.first <= header.last:
        raise ValueError(f"a delta's range {header.first}..{header.last} is not one")
    previous = header.first - 1
    for revision in delta.revisions:
        if not previous < revision.revision <= header.last:
            raise ValueError(f"revision {revision.revision} is out of order or outside {header.first}..{header.last}")
        keys = [op.key for op in revision.ops]
        if not keys or len(set(keys)) != len(keys) or not all(keys):
            raise ValueError(f"revision {revision.revision} needs events, each of its own non-empty key")
        previous = revision.revision


def _damaged(source: str, why: str) -> DamagedDeltaError:
    return DamagedDeltaError(f"delta {source} is damaged: {why}")


def _int(value: object, what: str, source: str, upper: int = 2**63) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < upper:
        return value
    raise _damaged(source, f"{what} {validate.shown(value)} is not a number in range")


def _bytes(value: object, what: str, source: str, limit: int) -> bytes:
    if not isinstance(value, str) or len(value) > (limit + 2) // 3 * 4:
        raise _damaged(source, f"{what} is not base64 of at most {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _damaged(source, f"{what} is not base64") from None


def _op(raw: object, source: str) -> Op:
    if isinstance(raw, list) and len(raw) == 4 and raw[0] == "put":
        key = _bytes(raw[1], "a key", source, MAX_KEY_BYTES * 64)
        return Op("put", key, _bytes(raw[2], "a value", source, MAX_VALUE_BYTES), _int(raw[3], "a lease", source))
    if isinstance(raw, list) and len(raw) == 2 and raw[0] == "delete":
        return Op("delete", _bytes(raw[1], "a key", source, MAX_KEY_BYTES * 64))
    raise _damaged(source, f"{validate.shown(raw, 80)} is not an event")


def _object(line: bytes, source: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        raise _damaged(source, f"its {what} is not JSON") from None
    if not isinstance(value, dict):
        raise _damaged(source, f"its {what} is not an object")
    return value


def _header(line: bytes, source: str) -> DeltaHeader:
    raw = _object(line, source, "header")
    expected = {"format", "version", "lineage", "cluster_id", "first", "last", "instance"}
    if set(raw) != expected or raw["format"] != DELTA_FORMAT or raw["version"] != DELTA_VERSION:
        raise _damaged(source, "its header is not a version 1 delta's")
    lineage = raw["lineage"]
    if lineage is not None and not (isinstance(lineage, str) and LINEAGE.fullmatch(lineage)):
        raise _damaged(source, "its lineage is not one")
    cluster = raw["cluster_id"]
    if not isinstance(cluster, str) or not re.fullmatch(r"[0-9a-f]{1,16}", cluster) or int(cluster, 16) == 0:
        raise _damaged(source, "its cluster id is not one")
    instance = raw["instance"]
    if not isinstance(instance, str) or not validate.INSTANCE_ID.fullmatch(instance):
        raise _damaged(source, "its instance id is not one")
    first, last = _int(raw["first"], "first", source), _int(raw["last"], "last", source)
    return DeltaHeader(lineage, int(cluster, 16), first, last, instance)


def _revision(line: bytes, source: str) -> Revision:
    raw = _object(line, source, "revision line")
    if set(raw) != {"r", "at", "ops"} or not isinstance(raw["ops"], list):
        raise _damaged(source, "a revision line is not one")
    at = datetime.fromtimestamp(_int(raw["at"], "a time", source, 2**45) / 1000, tz=timezone.utc)
    return Revision(_int(raw["r"], "a revision", source), at, tuple(_op(op, source) for op in raw["ops"]))


def _trailer(line: bytes, body: bytes, count: int, source: str) -> tuple[tuple[tuple[int, int], ...], int | None]:
    raw = _object(line, source, "trailer")
    if set(raw) != {"revisions", "leases", "keys", "sha256"}:
        raise _damaged(source, "its trailer is not one (cut short?)")
    if raw["sha256"] != hashlib.sha256(body).hexdigest():
        raise _damaged(source, "its lines do not match the sha256 of its trailer")
    if raw["revisions"] != count:
        raise _damaged(source, f"it has {count} revision lines, its trailer says {validate.shown(raw['revisions'])}")
    leases = raw["leases"]
    if not isinstance(leases, list) or not all(isinstance(p, list) and len(p) == 2 for p in leases):
        raise _damaged(source, "its leases are not a list of (id, ttl)")
    pairs = tuple((_int(p[0], "a lease", source), _int(p[1], "a lease TTL", source, MAX_LEASE_TTL)) for p in leases)
    keys = None if raw["keys"] is None else _int(raw["keys"], "the key count", source)
    return pairs, keys


def decode(data: bytes, source: str) -> Delta:
    """The delta stored as `data` (decompressed). DamagedDeltaError on anything but a whole, valid delta."""
    lines = data.split(b"\n")
    if len(lines) < 3 or lines[-1] != b"":
        raise _damaged(source, "it is cut short")
    header = _header(lines[0], source)
    revisions = tuple(_revision(line, source) for line in lines[1:-2])
    body_end = len(data) - len(lines[-2]) - 1
    leases, keys = _trailer(lines[-2], data[:body_end], len(revisions), source)
    delta = Delta(header, revisions, leases, keys)
    try:
        check(delta)
    except ValueError as exc:
        raise _damaged(source, str(exc)) from None
    return delta


# -- choices --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """The deltas to apply after a snapshot at revision `start`, in order: they cover start+1 .. `last` without a
    hole. `gap_after`: where the chain stops although later deltas exist (a revision none covers), else None."""

    start: int
    deltas: tuple[DeltaInfo, ...]
    last: int
    gap_after: int | None = None

    @property
    def last_at(self) -> datetime | None:
        return self.deltas[-1].last_at if self.deltas else None


def of_lineage(deltas: Iterable[DeltaInfo], lineage: str | None) -> tuple[DeltaInfo, ...]:
    return tuple(sorted((d for d in deltas if d.lineage == lineage), key=lambda d: (d.first, d.last, d.key)))


def chain(start: int, deltas: Iterable[DeltaInfo], lineage: str | None) -> Chain:
    """The deltas of `lineage` that carry a snapshot at revision `start` forward, as far as they reach without a
    hole: at each step the one covering the next revision that reaches furthest (overlaps, e.g. two leaders'
    deltas around a hand-over, hold the same history and are skipped, not applied twice)."""
    ordered = of_lineage(deltas, lineage)  # by first revision: one pass, whatever the number of deltas
    taken: list[DeltaInfo] = []
    reached = start
    seen = 0
    furthest: DeltaInfo | None = None  # of the deltas that begin at or before the next revision
    while True:
        while seen < len(ordered) and ordered[seen].first <= reached + 1:
            if furthest is None or (ordered[seen].last, ordered[seen].key) > (furthest.last, furthest.key):
                furthest = ordered[seen]
            seen += 1
        if furthest is None or furthest.last <= reached:
            break
        taken.append(furthest)
        reached = furthest.last
    later = [d for d in ordered if d.first > reached + 1]
    return Chain(start, tuple(taken), reached, reached if later else None)


def until(found: Chain, *, revision: int | None = None, at: datetime | None = None) -> Chain:
    """`found` cut for a point in time: the deltas that may hold revisions up to `revision` / up to time `at` (the
    last one may hold later revisions too: the replay stops at the point)."""
    kept: list[DeltaInfo] = []
    for delta in found.deltas:
        kept.append(delta)
        if (revision is not None and delta.last >= revision) or (at is not None and delta.last_at >= at):
            break
    last = kept[-1].last if kept else found.start
    if revision is not None:
        last = min(last, revision)
    return Chain(found.start, tuple(kept), last, None)


def wanted(revision: Revision, *, until_revision: int | None = None, until_at: datetime | None = None) -> bool:
    """Whether a replay cut at a point in time applies `revision`."""
    if until_revision is not None and revision.revision > until_revision:
        return False
    return until_at is None or revision.at <= until_at


def retention(
    snapshots: Iterable[SnapshotInfo], doomed: Iterable[SnapshotInfo], deltas: Iterable[DeltaInfo]
) -> tuple[DeltaInfo, ...]:
    """The deltas no kept snapshot needs: a kept snapshot needs the deltas from its revision up to the next
    snapshot of its lineage (kept or not; the newest, every delta after it). A lineage without a kept snapshot
    needs none of its deltas."""
    gone = {info.key for info in doomed}
    by_lineage: dict[str | None, list[SnapshotInfo]] = {}
    for info in snapshots:
        by_lineage.setdefault(info.lineage, []).append(info)
    needed: dict[str | None, list[tuple[int, int | None]]] = {}
    for lineage, infos in by_lineage.items():
        ordered = sorted(infos, key=lambda i: (i.revision, i.taken_at, i.key))
        for n, info in enumerate(ordered):
            if info.key in gone:
                continue
            following = next((later.revision for later in ordered[n + 1 :] if later.revision > info.revision), None)
            needed.setdefault(lineage, []).append((info.revision, following))

    def kept(delta: DeltaInfo) -> bool:
        return any(
            delta.last > start and (end is None or delta.first <= end) for start, end in needed.get(delta.lineage, [])
        )

    return tuple(d for d in sorted(deltas, key=lambda d: (str(d.lineage), d.first, d.key)) if not kept(d))


@dataclass(frozen=True)
class Restorable:
    """What one lineage can be restored to: from its oldest snapshot to the newest revision its newest snapshot's
    deltas reach, and how many deltas (and stored bytes) it holds."""

    lineage: str | None
    oldest_revision: int
    oldest_at: datetime
    newest_revision: int
    newest_at: datetime
    deltas: int
    delta_bytes: int
    gap_after: int | None


def restorable(snapshots: Iterable[SnapshotInfo], deltas: Iterable[DeltaInfo]) -> tuple[Restorable, ...]:
    """Per lineage with a snapshot (newest lineage first): its restorable range."""
    all_deltas = tuple(deltas)
    by_lineage: dict[str | None, list[SnapshotInfo]] = {}
    for info in snapshots:
        by_lineage.setdefault(info.lineage, []).append(info)
    found = []
    for lineage, infos in by_lineage.items():
        ordered = sorted(infos, key=lambda i: (i.revision, i.taken_at, i.key))
        oldest, newest = ordered[0], ordered[-1]
        reach = chain(newest.revision, all_deltas, lineage)
        own = of_lineage(all_deltas, lineage)
        found.append(
            Restorable(
                lineage,
                oldest.revision,
                oldest.taken_at,
                reach.last,
                reach.last_at or newest.taken_at,
                len(own),
                sum(d.size for d in own),
                reach.gap_after,
            )
        )
    return tuple(sorted(found, key=lambda r: (r.newest_at, r.newest_revision), reverse=True))
