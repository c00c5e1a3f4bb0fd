"""What the backups say: snapshot manifests and the cluster record, their strict JSON, and the pure choices.

Everything read back from S3 is untrusted: each field is checked against a strict pattern and an unknown format
version is refused, so a stray or tampered object can never steer a restore.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core.codec import Codec, Document, Field, refuse

SNAPSHOT_FORMAT = "etcd-aws-cluster/snapshot"
RECORD_FORMAT = "etcd-aws-cluster/cluster-record"
HANDOFF_FORMAT = "etcd-aws-cluster/handoff"
VERIFICATION_FORMAT = "etcd-aws-cluster/verification"
# What a drill says in words: printable ASCII, bounded (it reaches `status` and the logs).
VERDICT_TEXT = re.compile(r"[ -~]{0,1000}")

TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
CLUSTER_ID_HEX = re.compile(r"[0-9a-f]{1,16}")
ETCD_VERSION = validate.ETCD_VERSION
# The lineage of the data: `<UTC stamp>-<8 random hex>`, begun by a new cluster or a start-over, carried by every
# snapshot taken under it and continued by a restore. Documents written before lineages have none: `None`, the
# legacy lineage, is a lineage like any other.
LINEAGE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}")
# S3 keys we write: our own layout only, so nothing from a listing can smuggle in odd characters.
OBJECT_KEY = re.compile(r"[A-Za-z0-9!_.*'()/%-]{1,1024}")
MAX_REPLACED = 64  # clusters a restore's record names as replaced
# How a snapshot object may be stored besides as the plain db: zstd (python-zstandard), chosen by measurement on a
# real etcd db (docs/benchmarks-backup.md).
COMPRESSIONS = ("zstd",)
COMPRESSION = re.compile("|".join(COMPRESSIONS))


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        raise ValueError(f"{what} must be an aware UTC datetime, got {value!r}")
    return value.astimezone(timezone.utc)


@dataclass(frozen=True)
class Checksum:
    """The sha256 (hex) and size of a run of bytes: a stored object, or the db inside it."""

    sha256: str
    size: int


@dataclass(frozen=True)
class SnapshotMeta:
    """What is known about a snapshot before it is uploaded (its checksum and size come from the upload)."""

    taken_at: datetime
    revision: int
    cluster_id: int
    etcd_version: str
    members: tuple[tuple[str, str], ...]  # (member name, peer URL)
    source_instance: str
    # False for a member's raw `member/snap/db`: it has no sha256 trailer, so a restore must skip the hash check
    hash_trailer: bool = True
    # `snapshot status`'s hash of the db, read from the file uploaded: with it `revision` is the db's exact
    # revision; without it (a snapshot streamed straight to S3) `revision` is a lower bound
    db_hash: int | None = None
    lineage: str | None = None  # of the record it was taken under

    def __post_init__(self) -> None:
        object.__setattr__(self, "taken_at", _utc(self.taken_at, "taken_at"))


@dataclass(frozen=True)
class SnapshotInfo:
    """One complete snapshot in the store: its object key, metadata, and the checksum of the object."""

    key: str
    taken_at: datetime
    revision: int
    cluster_id: int
    etcd_version: str
    sha256: str
    size: int
    members: tuple[tuple[str, str], ...]  # (member name, peer URL)
    source_instance: str
    hash_trailer: bool = True  # etcd's sha256 trailer is appended (a Maintenance snapshot); see SnapshotMeta
    db_hash: int | None = None  # see SnapshotMeta
    lineage: str | None = None  # see SnapshotMeta
    # How the object is stored: None (the db as etcd sent it: `sha256` and `size` are the db's) or a codec of
    # COMPRESSIONS, with the db's own checksum and size beside those of the stored bytes.
    compression: str | None = None
    db_sha256: str | None = None
    db_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "taken_at", _utc(self.taken_at, "taken_at"))
        if (self.compression is None) != (self.db_sha256 is None) or (self.db_sha256 is None) != (self.db_size is None):
            raise ValueError(
                "a compressed snapshot names its codec, its db's sha256 and size; an uncompressed one none"
            )

    @property
    def db_bytes(self) -> int:
        """The size of the db once downloaded (and decompressed)."""
        return self.size if self.db_size is None else self.db_size

    @classmethod
    def of(
        cls, key: str, meta: SnapshotMeta, stored: Checksum, db: Checksum | None = None, compression: str | None = None
    ) -> SnapshotInfo:
        """What a manifest says of `key`, uploaded from `meta`: the checksum of the `stored` bytes, and with a
        `compression`, the `db`'s."""
        return cls(
            key=key,
            taken_at=meta.taken_at,
            revision=meta.revision,
            cluster_id=meta.cluster_id,
            etcd_version=meta.etcd_version,
            sha256=stored.sha256,
            size=stored.size,
            members=meta.members,
            source_instance=meta.source_instance,
            hash_trailer=meta.hash_trailer,
            db_hash=meta.db_hash,
            lineage=meta.lineage,
            compression=compression,
            db_sha256=None if db is None else db.sha256,
            db_size=None if db is None else db.size,
        )


@dataclass(frozen=True)
class ClusterRecord:
    """The object that says a cluster exists for this ASG: its id, members and newest snapshot."""

    asg_name: str
    cluster_id: int | None  # None until a member has reported it (a cluster just created or restored)
    members: tuple[tuple[str, str], ...]  # (instance id, peer URL)
    newest_snapshot: str | None
    updated_at: datetime
    lineage: str | None = None  # the data's lineage (see LINEAGE); None for a record written before lineages
    # A restore's record (no cluster id yet): the ids of the clusters whose data it replaced. Data of those never
    # restarts: a survivor that looks late takes part in the restore or joins the restored cluster (recovery.py).
    replaces: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "updated_at", _utc(self.updated_at, "updated_at"))
        object.__setattr__(self, "replaces", tuple(sorted(set(self.replaces))))


@dataclass(frozen=True)
class Handoff:
    """What a surviving recorded member's instance says about its data when the survivors cannot form a quorum.

    Keyed to one cluster record by the record's `updated_at`: a hand-off of an earlier incident is not one of this.
    Without local data, `revision`, `cluster_id` and `uploaded` are None."""

    instance_id: str
    record_updated_at: datetime
    revision: int | None  # of its `member/snap/db`
    cluster_id: int | None  # from its WAL
    uploaded: str | None  # the key of the snapshot of its db it uploaded before this, when that was the newest
    written_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "record_updated_at", _utc(self.record_updated_at, "record_updated_at"))
        object.__setattr__(self, "written_at", _utc(self.written_at, "written_at"))
        if (self.revision is None) != (self.cluster_id is None) or (self.revision is None and self.uploaded):
            raise ValueError("a hand-off has a revision and a cluster id together, and uploads only with data")

    @property
    def has_data(self) -> bool:
        return self.revision is not None


@dataclass(frozen=True)
class Verification:
    """What a restore drill (`backup --verify`) found: the snapshot it restored, the revision and time its deltas
    carried it to (the recovery point it proved), and whether every check held."""

    snapshot: str  # the key of the snapshot restored
    verified_at: datetime
    ok: bool
    revision: int  # the newest revision restored
    recovered_at: datetime  # the time of that revision (the snapshot's, or its newest delta revision's)
    deltas: int  # how many deltas were applied
    keys: int | None  # the live key count found at `revision`
    verdict: str  # the checks, or why the drill failed, in words

    def __post_init__(self) -> None:
        object.__setattr__(self, "verified_at", _utc(self.verified_at, "verified_at"))
        object.__setattr__(self, "recovered_at", _utc(self.recovered_at, "recovered_at"))
        if not VERDICT_TEXT.fullmatch(self.verdict):
            object.__setattr__(self, "verdict", validate.shown(self.verdict, 900).encode("ascii", "replace").decode())


# -- JSON -----------------------------------------------------------------------------------------------------


def new_lineage(now: datetime) -> str:
    """A lineage id no other start of a cluster shares: the UTC time and 32 random bits."""
    return f"{_utc(now, 'now').strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def format_time(value: datetime) -> str:
    return _utc(value, "time").strftime(TIMESTAMP_FORMAT)


def _matching(pattern: re.Pattern[str], what: str, value: object, source: str) -> str:
    if isinstance(value, str) and pattern.fullmatch(value):
        return value
    raise refuse(what, source, value)


def _count(value: object, what: str, source: str, upper: int = 2**63) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < upper:
        return value
    raise refuse(what, source, value)


def _time(value: object, source: str) -> datetime:
    text = _matching(TIMESTAMP, "time", value, source)
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise refuse("time", source, value) from None


def _cluster_id(value: object, source: str) -> int:
    number = int(_matching(CLUSTER_ID_HEX, "cluster id", value, source), 16)
    if number == 0:
        raise refuse("cluster id", source, value)
    return number


def _pairs(first: Callable[[object, str], str], value: object, source: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or len(value) > 1000:
        raise refuse("member list", source, value)
    pairs = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise refuse("member", source, item)
        pairs.append((first(item[0], source), validate.url(item[1], source)))
    return tuple(pairs)


def _member_name(value: object, source: str) -> str:
    return "" if value == "" else validate.member_name(value, source)  # an unstarted member has no name yet


def object_key(value: object, source: str) -> str:
    key = _matching(OBJECT_KEY, "object key", value, source)
    if key.startswith("/") or "//" in key or any(part in (".", "..") for part in key.split("/")):
        raise refuse("object key", source, value)
    return key


def _replaced(value: object, source: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_REPLACED:
        raise refuse("list of replaced cluster ids", source, value)
    return tuple(_cluster_id(item, source) for item in value)


def _text(pattern: re.Pattern[str], what: str) -> Codec[str]:
    return Codec(functools.partial(_matching, pattern, what))


def _number(what: str, upper: int = 2**63) -> Codec[int]:
    return Codec(lambda value, source: _count(value, what, source, upper))


def _flag(what: str) -> Codec[bool]:
    def decode(value: object, source: str) -> bool:
        if isinstance(value, bool):
            return value
        raise refuse(what, source, value)

    return Codec(decode)


def _members(first: Callable[[object, str], str]) -> Codec[tuple[tuple[str, str], ...]]:
    return Codec(functools.partial(_pairs, first), lambda pairs: [list(pair) for pair in pairs])


def _hex(number: int) -> str:
    return f"{number:x}"


TIME = Codec(_time, format_time)
CLUSTER_ID = Codec(_cluster_id, _hex)
OBJECT_KEY_TEXT = Codec(object_key)
LINEAGE_TEXT = _text(LINEAGE, "lineage")
REVISION = _number("revision")


def _stored_as(values: Mapping[str, Any], source: str) -> None:
    """A compressed snapshot's manifest names the db's checksum and size too; a plain one neither."""
    named = [values[name] is not None for name in ("compression", "db_sha256", "db_size")]
    if any(named) and not all(named):
        raise UnsafeError(f"refusing {source}: compression, db_sha256 and db_size go together")


# The fields of each document in the order they are written. The optional ones are written only when they differ
# from their default, so that a document without them stays what agents from before them read: a manifest's
# hash_trailer (written only when false), db_hash and lineage (only when known), compression with the db's own
# checksum and size (only for a compressed object: an agent from before them refuses such a manifest, as it must,
# and skips that snapshot); a record's lineage, and the clusters a restore replaced (only when it replaced some).
SNAPSHOT = Document(
    SNAPSHOT_FORMAT,
    (
        Field("key", OBJECT_KEY_TEXT),
        Field("taken_at", TIME),
        Field("revision", REVISION),
        Field("cluster_id", CLUSTER_ID),
        Field("etcd_version", _text(ETCD_VERSION, "etcd version")),
        Field("sha256", _text(SHA256_HEX, "sha256")),
        Field("size", _number("size", upper=2**44)),
        Field("members", _members(_member_name)),
        Field("source_instance", Codec(validate.instance_id)),
        Field("hash_trailer", _flag("hash_trailer flag"), optional=True, default=True),
        Field("db_hash", _number("db hash", upper=2**32), optional=True),
        Field("lineage", LINEAGE_TEXT, optional=True),
        Field("compression", _text(COMPRESSION, "compression"), optional=True),
        Field("db_sha256", _text(SHA256_HEX, "db sha256"), optional=True),
        Field("db_size", _number("db size", upper=2**44), optional=True),
    ),
    SnapshotInfo,
    _stored_as,
)
RECORD = Document(
    RECORD_FORMAT,
    (
        Field("asg_name", Codec(validate.asg_name)),
        Field("cluster_id", CLUSTER_ID, nullable=True),
        Field("members", _members(validate.instance_id)),
        Field("newest_snapshot", OBJECT_KEY_TEXT, nullable=True),
        Field("updated_at", TIME),
        Field("lineage", LINEAGE_TEXT, optional=True),
        Field("replaces", Codec(_replaced, lambda ids: [_hex(i) for i in ids]), optional=True, default=()),
    ),
    ClusterRecord,
)


def _handoff_data(values: Mapping[str, Any], source: str) -> None:
    """A hand-off with data names its revision and cluster id; one without names neither, nor an upload."""
    if not values["has_data"]:
        if (values["revision"], values["cluster_id"], values["uploaded"]) != (None, None, None):
            raise UnsafeError(f"refusing {source}: a hand-off without data names a revision, cluster id or upload")
    elif values["revision"] is None:
        raise refuse("revision", source, None)
    elif values["cluster_id"] is None:
        raise refuse("cluster id", source, None)


HANDOFF = Document(
    HANDOFF_FORMAT,
    (
        Field("instance_id", Codec(validate.instance_id)),
        Field("record_updated_at", TIME),
        Field("has_data", _flag("has_data flag"), derived=True),
        Field("revision", REVISION, nullable=True),
        Field("cluster_id", CLUSTER_ID, nullable=True),
        Field("uploaded", OBJECT_KEY_TEXT, nullable=True),
        Field("written_at", TIME),
    ),
    Handoff,
    _handoff_data,
)


VERIFICATION = Document(
    VERIFICATION_FORMAT,
    (
        Field("snapshot", OBJECT_KEY_TEXT),
        Field("verified_at", TIME),
        Field("ok", _flag("ok flag")),
        Field("revision", REVISION),
        Field("recovered_at", TIME),
        Field("deltas", _number("delta count", upper=2**32)),
        Field("keys", _number("key count"), nullable=True),
        Field("verdict", _text(VERDICT_TEXT, "verdict")),
    ),
    Verification,
)


def verification_to_json(verification: Verification) -> str:
    return VERIFICATION.write(verification)


def verification_from_json(text: str | bytes, source: str) -> Verification:
    return VERIFICATION.read(text, source)


def snapshot_to_json(info: SnapshotInfo) -> str:
    return SNAPSHOT.write(info)


def snapshot_from_json(text: str | bytes, source: str) -> SnapshotInfo:
    return SNAPSHOT.read(text, source)


def record_to_json(record: ClusterRecord) -> str:
    return RECORD.write(record)


def record_from_json(text: str | bytes, source: str) -> ClusterRecord:
    return RECORD.read(text, source)


def handoff_to_json(handoff: Handoff) -> str:
    return HANDOFF.write(handoff)


def handoff_from_json(text: str | bytes, source: str) -> Handoff:
    return HANDOFF.read(text, source)


# -- choices --------------------------------------------------------------------------------------------------


def _order(info: SnapshotInfo) -> tuple[int, datetime, str]:
    return (info.revision, info.taken_at, info.key)


def newest_first(snapshots: Iterable[SnapshotInfo]) -> tuple[SnapshotInfo, ...]:
    """Every snapshot, newest first by (revision, taken_at, key): the same order on every instance."""
    return tuple(sorted(snapshots, key=_order, reverse=True))


def newest_valid(snapshots: Iterable[SnapshotInfo], rejected: Iterable[str] = ()) -> SnapshotInfo | None:
    """The snapshot every instance picks from the same listing: the newest whose key was not rejected
    (e.g. found corrupt on download); None when there is none."""
    skip = frozenset(rejected)
    return next((info for info in newest_first(snapshots) if info.key not in skip), None)


def of_lineage(snapshots: Iterable[SnapshotInfo], lineage: str | None) -> tuple[SnapshotInfo, ...]:
    """The snapshots of one lineage, newest first: what an automatic restore, the survivors' comparison and a
    hand-off may choose from (another lineage's data is another cluster's, even when its revisions are higher)."""
    return newest_first(info for info in snapshots if info.lineage == lineage)


def lineage_name(lineage: str | None) -> str:
    return "legacy (written before lineages)" if lineage is None else lineage


def other_lineages_hint(snapshots: Iterable[SnapshotInfo], lineage: str | None) -> str:
    """When the record's lineage has no snapshot but others do: say so, and how to take one of them; else ""."""
    others = [info for info in newest_first(snapshots) if info.lineage != lineage]
    if not others or of_lineage(snapshots, lineage):
        return ""
    names = sorted({lineage_name(info.lineage) for info in others})
    return (
        f"; the record's lineage {lineage_name(lineage)} has no snapshot, but {len(others)} snapshots of other "
        f"lineages ({', '.join(names)}) exist: an automatic restore never takes another lineage's data. "
        "`etcd-aws-cluster restore --list` shows them; to restore one of them on purpose, stop etcd and run "
        "`etcd-aws-cluster restore --snapshot KEY` on every instance"
    )


def record_lineage(
    current: ClusterRecord | None,
    members: tuple[tuple[str, str], ...] | None,
    restored: SnapshotInfo | None,
    now: datetime,
) -> str | None:
    """The lineage of the record about to be written over `current`.

    A restore continues the lineage of the snapshot it restored; a boot decision without one (`members` given:
    a new cluster) and a write without any record (a start-over, or backups just turned on) begin a new one,
    except that an instance taking part in the new cluster a peer recorded keeps the peer's; every other write
    keeps the current record's."""
    if restored is not None:
        return restored.lineage
    if current is None:
        return new_lineage(now)
    if members is None or _same_new_cluster(current, members):
        return current.lineage
    return new_lineage(now)


def _same_new_cluster(current: ClusterRecord, members: tuple[tuple[str, str], ...]) -> bool:
    """`current` is the record of a new cluster of exactly these members (recovery.joining_restore follows it)."""
    fresh = current.cluster_id is None and current.newest_snapshot is None
    return fresh and tuple(sorted(current.members)) == tuple(sorted(members))


def same_decision(fresh: ClusterRecord, wanted: ClusterRecord) -> bool:
    """`fresh` records the boot decision `wanted` does (the same new cluster, or the same restore of the same
    lineage): a peer that decided the same wrote it first, and its record stands for both."""
    if fresh.cluster_id is not None or wanted.cluster_id is not None or fresh.newest_snapshot != wanted.newest_snapshot:
        return False
    if tuple(sorted(fresh.members)) != tuple(sorted(wanted.members)):
        return False
    return wanted.newest_snapshot is None or fresh.lineage == wanted.lineage


def _retention_of_one(
    ordered: tuple[SnapshotInfo, ...], first_day: date, keep_last: int, keep_daily_days: int
) -> set[str]:
    keep = {info.key for info in ordered[: max(1, keep_last)]}
    days_seen: set[date] = set()
    for info in ordered:
        day = info.taken_at.date()
        if keep_daily_days > 0 and day >= first_day and day not in days_seen:
            days_seen.add(day)
            keep.add(info.key)
    return keep


def retention(
    snapshots: Iterable[SnapshotInfo], now: datetime, keep_last: int, keep_daily_days: int
) -> tuple[SnapshotInfo, ...]:
    """What to delete, oldest first. Within each lineage on its own: everything but its newest `keep_last`, its
    newest of each UTC day of the last `keep_daily_days` days (today included), and always its newest one. So
    the current lineage keeps what it always kept, whatever another lineage holds (higher revisions of an
    abandoned cluster never push its snapshots out), and every other lineage stays restorable."""
    ordered = newest_first(snapshots)
    first_day: date = _utc(now, "now").date() - timedelta(days=keep_daily_days - 1)
    keep: set[str] = set()
    for lineage in {info.lineage for info in ordered}:
        keep |= _retention_of_one(of_lineage(ordered, lineage), first_day, keep_last, keep_daily_days)
    return tuple(reversed([info for info in ordered if info.key not in keep]))
