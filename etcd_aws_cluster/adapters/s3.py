"""Snapshots and the cluster record in S3 (boto3): streamed up and down, checksummed, our own objects only.

Layout under `s3://bucket/prefix`, with the ASG name percent-encoded into one path segment and the region in the
path, so that same-named ASGs of two regions sharing a bucket never meet:

    <prefix>/<region>/<asg>/cluster.json                                  the cluster record
    <prefix>/<region>/<asg>/snapshots/<UTC stamp>-r<revision>-<instance>.db.zst  a snapshot, zstd-compressed
    <prefix>/<region>/<asg>/snapshots/<same name>.json                   its manifest, written last
    <prefix>/<region>/<asg>/snapshots/<same name>.verification           what a restore drill of it found
    <prefix>/<region>/<asg>/last-verification.json                       the newest drill's, for `status`
    <prefix>/<region>/<asg>/handoff/<instance id>.json                   a survivor's hand-off (recovery.py)
    <prefix>/<region>/<asg>/deltas/<lineage>/r<first>-r<last>-<UTC stamp>-<instance>-<sha256>.jsonl.zst
                                                                          revisions after a snapshot (deltas.py)
    <prefix>/<region>/<asg>/layout-v2                                    written when the record is created

The layout of agents before the region (`<prefix>/<asg>/...`) is still read: its record while neither the new key
nor `layout-v2` exists (the next write creates both; the old object is left as it is, and once `layout-v2` exists
it is never read again, so deleting the new cluster.json to start over is not undone by the old one), and its
snapshots, listed beside the new ones (restorable, and subject to the retention of their lineage). Hand-offs are
only in the new layout.

Snapshots are stored zstd-compressed (`.db.zst`, compression.py); those of agents before compression (`.db`, the
db as etcd streamed it) are listed and restored beside them. The manifest names the codec, and the sha256 and size
of both the stored object and the db: a download checks both as it streams.

A snapshot is listed only with its manifest, and the manifest is written only after the snapshot object is
complete (a multipart upload is invisible until completed), so a crash at any point of an upload leaves nothing
a restore would take. The instance id in the name keeps two members' uploads of one revision apart.

The record is written conditionally: `If-None-Match: *` when there was none, `If-Match: <ETag read>` to replace
it, so two writers that read the same record cannot both replace it (the loser gets RecordRaceError). Debian 12's
botocore 1.29 has no PutObject parameters for these headers: they are added by event handlers on the client
(`conditional_writes`), one code path for every botocore.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import quote

from etcd_aws_cluster.adapters import multipart
from etcd_aws_cluster.adapters.aws import NoAnswerError, bounded, make_client
from etcd_aws_cluster.adapters.compression import (
    ZSTD,
    CorruptSnapshotError,
    SnapshotReader,
    Stream,
    compress,
    copy_out,
    decompress,
)
from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AwsError, ConfigError, RecordRaceError, UnsafeError
from etcd_aws_cluster.core import deltas, records
from etcd_aws_cluster.core.codec import MAX_DOCUMENT_BYTES
from etcd_aws_cluster.core.deltas import DamagedDeltaError, Delta, DeltaInfo
from etcd_aws_cluster.core.records import ClusterRecord, Handoff, SnapshotInfo, SnapshotMeta, Verification

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)
T = TypeVar("T")

BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
PREFIX_PART = re.compile(r"[A-Za-z0-9!_.*'()-]{1,200}")
# An ETag as S3 and S3-compatible servers give it: quoted, hex (a multipart one ends in -<parts>).
ETAG = re.compile(r'"?[A-Za-z0-9_.:-]{1,128}"?')
# S3's answers to a conditional write that lost: 412, or 409 when another conditional write is in flight.
LOST_RACE_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})
CONDITIONS_PARAM = "EtcdAwsClusterConditions"  # ours, taken out of PutObject's parameters before validation
LAYOUT_MARKER = (
    '{{"format": "etcd-aws-cluster/layout", "version": 1, "note": "this group uses the region layout; {old} '
    'is not read any more"}}\n'
)
KMS_KEY_ID = re.compile(r"[A-Za-z0-9:/_-]{1,2048}")
SSE_MODES = ("AES256", "aws:kms")
# How new snapshots are stored (compression.py); the suffix of each way a snapshot object may be stored.
COMPRESSION = ZSTD
SUFFIXES = {None: ".db", ZSTD: ".db.zst"}
# The most a delta may hold once decompressed (backup_delta_max_bytes is at most a quarter of it).
MAX_DELTA_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class BackupUrl:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_backup_url(value: str) -> BackupUrl:
    """`s3://bucket[/prefix]`, strictly: a DNS-style bucket name and a prefix of plain path segments."""
    if not value.startswith("s3://"):
        raise ConfigError(f"backup_url {validate.shown(value)} must look like s3://bucket/prefix")
    bucket, _, prefix = value[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if not BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(f"backup_url {validate.shown(value)}: {validate.shown(bucket)} is not an S3 bucket name")
    if any(not PREFIX_PART.fullmatch(part) or part in (".", "..") for part in parts):
        raise ConfigError(
            f"backup_url {validate.shown(value)}: the prefix must be path segments of [A-Za-z0-9!_.*'()-]"
        )
    return BackupUrl(bucket, prefix)


def connect_s3(
    region: str, environ: Mapping[str, str], timeout: float, max_attempts: int, deadline: Deadline | None = None
) -> S3Client:
    """The S3 client, made like the ASG and EC2 clients (aws.make_client): the endpoint from the environment
    (AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL), bounded timeouts and retries, the deadline's guard."""
    client: S3Client = make_client(
        "s3", region, timeout=timeout, max_attempts=max_attempts, environ=environ, deadline=deadline
    )
    return client


def _take_conditions(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """before-parameter-build: move our conditions out of the parameters (botocore 1.29 would refuse them)."""
    conditions = params.pop(CONDITIONS_PARAM, None)
    if conditions:
        context[CONDITIONS_PARAM] = conditions


def _add_conditions(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """before-call (before signing): send them as the request's If-Match / If-None-Match headers."""
    conditions = context.get(CONDITIONS_PARAM)
    if conditions:
        params["headers"].update(conditions)


def conditional_writes(s3: S3Client) -> None:
    """Let PutObject carry If-Match / If-None-Match on any botocore (once per client)."""
    events = s3.meta.events
    events.register("before-parameter-build.s3.PutObject", _take_conditions, unique_id="eac-take-conditions")
    events.register("before-call.s3.PutObject", _add_conditions, unique_id="eac-add-conditions")


def _stem(snapshot_key: str) -> str:
    """A snapshot object's key without the suffix of how it is stored."""
    for suffix in sorted(SUFFIXES.values(), key=len, reverse=True):
        if snapshot_key.endswith(suffix):
            return snapshot_key[: -len(suffix)]
    raise UnsafeError(f"{snapshot_key} is not the key of a snapshot object")


class BackupStore:
    """The snapshots and the record of one ASG under one backup URL.

    Every S3 call ends by the run's `deadline` (and by the budget of a `limited` block): a call still waiting then
    is abandoned, and S3 counts as silent for the rest of the run, so no later step waits on it again.
    """

    def __init__(
        self,
        s3: S3Client,
        url: BackupUrl | str,
        asg_name: str,
        sse: str = "AES256",
        kms_key_id: str | None = None,
        *,
        region: str,
        deadline: Deadline | None = None,
    ) -> None:
        if sse not in SSE_MODES:
            raise ConfigError(f"backup_sse must be one of {', '.join(SSE_MODES)}, not {validate.shown(sse)}")
        if kms_key_id is not None and (sse != "aws:kms" or not KMS_KEY_ID.fullmatch(kms_key_id)):
            raise ConfigError("backup_kms_key_id needs backup_sse = aws:kms and must be a KMS key id, ARN or alias")
        self._s3 = s3
        self._deadline = deadline
        self._budget: Deadline | None = None
        self._answer_within: float | None = None
        self._answered = False
        self.silent: str | None = None  # why S3 counts as silent in this run (a call was abandoned), or None
        if s3 is not None:
            conditional_writes(s3)
            s3.meta.events.register("before-send", self._refuse_when_silent)
        self.url = parse_backup_url(url) if isinstance(url, str) else url
        self.asg_name = validate.asg_name(asg_name, "settings")
        self.region = validate.region(region, "the instance metadata")
        top = f"{self.url.prefix}/" if self.url.prefix else ""
        group = quote(self.asg_name, safe="-_.")
        self.base = f"{top}{self.region}/{group}"
        self.snapshot_prefix = f"{self.base}/snapshots/"
        self.record_key = f"{self.base}/cluster.json"
        self.handoff_prefix = f"{self.base}/handoff/"
        self.delta_prefix = f"{self.base}/deltas/"
        self.last_verification_key = f"{self.base}/last-verification.json"
        # The layout before the region: read, never written
        self.legacy_snapshot_prefix = f"{top}{group}/snapshots/"
        self.legacy_record_key = f"{top}{group}/cluster.json"
        # Written once the new layout's record exists: from then on the old record is never read again, so deleting
        # cluster.json to start over is not undone by the old layout's record
        self.layout_marker_key = f"{self.base}/layout-v2"
        self._encryption: dict[str, str] = {"ServerSideEncryption": sse}
        if kms_key_id:
            self._encryption["SSEKMSKeyId"] = kms_key_id

    # -- how calls are made: bounded, and never again after S3 was silent ----------------------------------

    @contextlib.contextmanager
    def limited(self, seconds: float, *, answer_within: float | None = None) -> Iterator[None]:
        """S3 calls in this block end within `seconds` (and by the run's deadline). With `answer_within`, an S3
        that has not answered yet in this run must answer the first call within that many seconds."""
        outer = (self._budget, self._answer_within)
        self._budget, self._answer_within = Deadline(seconds), answer_within
        try:
            yield
        finally:
            self._budget, self._answer_within = outer

    def _limit(self) -> tuple[Deadline | None, str]:
        """The nearest of the limits on the next call, and its name for the error message."""
        limits = [(self._deadline, "the run's deadline"), (self._budget, "this step's budget")]
        if self._answer_within is not None and not self._answered:
            limits.append((Deadline(self._answer_within), "S3's first answer"))
        found = [(limit, label) for limit, label in limits if limit is not None]
        return min(found, key=lambda item: item[0].remaining()) if found else (None, "")

    def _call(self, action: str, call: Callable[[], T], abandon: threading.Event | None = None) -> T:
        if self.silent is not None:
            raise AwsError(f"{action}: not asked, S3 did not answer earlier in this run ({self.silent})")
        limit, label = self._limit()
        try:
            result = bounded(action, call, limit, abandon, label)
        except NoAnswerError as exc:
            self.silent = str(exc)
            raise
        self._answered = True
        return result

    def _refuse_when_silent(self, **_: Any) -> None:
        """A before-send handler: an abandoned call (a retry, a transfer's next part) sends nothing more."""
        if self.silent is not None:
            raise AwsError(f"S3 did not answer earlier in this run ({self.silent})")

    @property
    def bucket(self) -> str:
        return self.url.bucket

    def where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def snapshot_key(self, meta: SnapshotMeta, compression: str | None = COMPRESSION) -> str:
        stamp = meta.taken_at.strftime("%Y%m%dT%H%M%S%fZ")
        instance = validate.instance_id(meta.source_instance, "snapshot metadata")
        return f"{self.snapshot_prefix}{stamp}-r{meta.revision}-{instance}{SUFFIXES[compression]}"

    @staticmethod
    def manifest_key(snapshot_key: str) -> str:
        return _stem(snapshot_key) + ".json"

    @staticmethod
    def verification_key(snapshot_key: str) -> str:
        return _stem(snapshot_key) + ".verification"

    # -- snapshots ------------------------------------------------------------------------------------------

    def upload(self, stream: Stream, meta: SnapshotMeta, *, check_trailer: bool = False) -> SnapshotInfo:
        """Upload a snapshot stream compressed, in parallel parts with bounded memory, then its manifest; returns
        what the manifest says. With `check_trailer`, the stream must end with etcd's sha256 of the db (a file
        etcdctl saved; the gateway's stream is checked as it is read).

        Any error (from the stream too) aborts the multipart upload and writes no manifest.
        """
        key = self.snapshot_key(meta, COMPRESSION)
        stop = threading.Event()
        reader = SnapshotReader(stream, COMPRESSION, stop=stop, check_trailer=check_trailer, what=f"the db for {key}")
        extra: dict[str, Any] = {**self._encryption, "ContentType": "application/octet-stream"}

        def send() -> int:
            multipart.upload(self._s3, self.bucket, key, cast("IO[bytes]", reader), extra)
            return int(self._s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

        stored = self._call(f"uploading {self.where(key)}", send, stop)
        if stored != reader.stored.size:
            raise AwsError(f"{self.where(key)} holds {stored} bytes after uploading {reader.stored.size}")
        info = SnapshotInfo.of(key, meta, reader.stored.result(), reader.db.result(), COMPRESSION)
        self._put(self.manifest_key(key), records.snapshot_to_json(info))
        log.info(
            "uploaded snapshot %s (%d bytes, %d stored, revision %d)",
            self.where(key),
            info.db_bytes,
            info.size,
            info.revision,
        )
        return info

    def _objects(self) -> dict[str, int]:
        """Key -> size of every object right under the snapshot prefixes (the new layout's and the old one's)."""

        def listed(prefix: str) -> dict[str, int]:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            items = [item for page in pages for item in page.get("Contents", [])]
            # Deeper keys are another group's (an ASG named "snapshots").
            return {
                key: int(item.get("Size", -1))
                for item in items
                if "/" not in (key := str(item.get("Key")))[len(prefix) :]
            }

        sizes: dict[str, int] = {}
        for prefix in (self.snapshot_prefix, self.legacy_snapshot_prefix):
            sizes.update(self._call(f"listing {self.where(prefix)}", functools.partial(listed, prefix)))
        return sizes

    def list_snapshots(self) -> tuple[SnapshotInfo, ...]:
        """Every complete snapshot (object and valid manifest agree), newest first; others are skipped, loudly."""
        objects = self._objects()
        found = []
        for key in sorted(k for k in objects if k.endswith(".json")):
            stem = key[: -len(".json")]
            snapshot_key = next((stem + s for s in SUFFIXES.values() if stem + s in objects), stem + ".db")
            if snapshot_key not in objects:
                log.warning("skipping manifest %s: its snapshot object is missing", self.where(key))
                continue
            text = self._get(key)
            if text is None:
                continue  # deleted since the listing
            try:
                info = records.snapshot_from_json(text, self.where(key))
            except UnsafeError as exc:
                log.warning("skipping snapshot %s: %s", self.where(snapshot_key), exc)
                continue
            if info.key != snapshot_key or info.size != objects[snapshot_key]:
                log.warning("skipping snapshot %s: its manifest describes another object", self.where(snapshot_key))
                continue
            found.append(info)
        return records.newest_first(found)

    def download(self, info: SnapshotInfo, path: Path) -> None:
        """Download a snapshot's db to `path` (decompressed as it streams), the stored bytes and the db checked
        against its manifest; on a mismatch, an error or the deadline leave no file and raise (an abandoned
        download's next write fails: it stops by itself)."""
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        temp = Path(temp_name)
        where = self.where(info.key)
        stop = threading.Event()
        try:
            with os.fdopen(fd, "wb") as handle:

                def fetch() -> tuple[records.Checksum, records.Checksum]:
                    body = self._s3.get_object(Bucket=self.bucket, Key=info.key)["Body"]
                    try:
                        return copy_out(
                            cast("IO[bytes]", body),
                            handle,
                            info.compression,
                            stored_size=info.size,
                            db_size=info.db_bytes,
                            what=f"snapshot {where}",
                            stop=stop,
                        )
                    finally:
                        body.close()

                stored, db = self._call(f"downloading {where}", fetch, stop)
            wanted = (info.sha256, info.size)
            if (stored.sha256, stored.size) != wanted:
                raise CorruptSnapshotError(
                    f"snapshot {where} is corrupt: {stored.size} bytes with sha256 {stored.sha256}, "
                    f"its manifest says {info.size} bytes with sha256 {info.sha256}"
                )
            if info.db_sha256 is not None and (db.sha256, db.size) != (info.db_sha256, info.db_size):
                raise CorruptSnapshotError(
                    f"snapshot {where} is corrupt: its db is {db.size} bytes with sha256 {db.sha256}, "
                    f"its manifest says {info.db_size} bytes with sha256 {info.db_sha256}"
                )
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def delete(self, infos: Iterable[SnapshotInfo]) -> None:
        """Delete snapshots: manifests first, so a half-done delete leaves nothing listed that is gone; then their
        objects and drills' results."""
        keys = [info.key for info in infos]
        for batch in (
            [self.manifest_key(k) for k in keys],
            keys,
            [self.verification_key(k) for k in keys],  # deleting a key that does not exist is no error
        ):
            self._delete_keys(batch, (self.snapshot_prefix, self.legacy_snapshot_prefix))

    def _delete_keys(self, keys: list[str], allowed: tuple[str, ...]) -> None:
        if any(not k.startswith(allowed) for k in keys):
            raise UnsafeError(f"refusing to delete objects outside {self.where(allowed[0])}")
        for start in range(0, len(keys), 1000):
            self._delete_batch(keys[start : start + 1000], allowed[0])

    def _delete_batch(self, keys: list[str], under: str) -> None:
        if not keys:
            return
        answer = self._call(
            f"deleting {len(keys)} objects under {self.where(under)}",
            lambda: self._s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            ),
        )
        errors = answer.get("Errors", [])
        if errors:
            first = errors[0]
            raise AwsError(
                f"deleting {self.where(str(first.get('Key')))}: {first.get('Code')}: "
                f"{validate.shown(first.get('Message', ''), 200)} ({len(errors)} failed)"
            )

    # -- deltas ---------------------------------------------------------------------------------------------

    def put_delta(self, delta: Delta) -> DeltaInfo:
        """Upload a delta (one PutObject: it is whole or absent); returns what its listing will say."""
        stored = compress(deltas.encode(delta))
        digest = hashlib.sha256(stored).hexdigest()
        name = deltas.delta_name(delta.header, delta.last_at, digest)
        key = f"{self.delta_prefix}{deltas.lineage_dir(delta.header.lineage)}/{name}"
        self._put(key, stored, content_type="application/zstd")
        info = deltas.parse_delta_key(key, key[len(self.delta_prefix) :], len(stored), self.where(key))
        if info is None:
            raise UnsafeError(f"{self.where(key)} is not a delta key this agent reads back")
        return info

    def list_deltas(self) -> tuple[DeltaInfo, ...]:
        """Every delta of every lineage, by (lineage, first, last); an object under the deltas prefix that is not
        one of ours is skipped, loudly."""
        prefix = self.delta_prefix

        def listed() -> list[tuple[str, int]]:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [
                (str(item.get("Key")), int(item.get("Size", -1))) for page in pages for item in page.get("Contents", [])
            ]

        found = []
        for key, size in self._call(f"listing {self.where(prefix)}", listed):
            info = deltas.parse_delta_key(key, key[len(prefix) :], size, self.where(prefix))
            if info is None:
                log.warning("skipping %s: not a delta of this agent", self.where(validate.shown(key, 300)))
                continue
            found.append(info)
        return tuple(sorted(found, key=lambda d: (str(d.lineage), d.first, d.last, d.key)))

    def read_delta(self, info: DeltaInfo) -> Delta:
        """A delta, its stored bytes checked against the sha256 and size its key and listing name; DamagedDeltaError
        when anything does not hold."""
        from botocore.exceptions import ClientError

        where = self.where(info.key)

        def read() -> bytes | None:
            try:
                body = self._s3.get_object(Bucket=self.bucket, Key=info.key)["Body"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            try:
                data: bytes = body.read(info.size + 1)
            finally:
                body.close()
            return data

        stored = self._call(f"reading {where}", read)
        if stored is None:
            raise DamagedDeltaError(f"delta {where} is gone (deleted since it was listed?)")
        if len(stored) != info.size or hashlib.sha256(stored).hexdigest() != info.sha256:
            raise DamagedDeltaError(f"delta {where} is damaged: its bytes do not match the sha256 in its name")
        try:
            delta = deltas.decode(decompress(stored, MAX_DELTA_BYTES, f"delta {where}"), where)
        except CorruptSnapshotError as exc:
            raise DamagedDeltaError(str(exc)) from None
        header = delta.header
        if (header.lineage, header.first, header.last, header.instance) != (
            info.lineage,
            info.first,
            info.last,
            info.instance,
        ):
            raise DamagedDeltaError(f"delta {where} is damaged: its header is not the one its name says")
        return delta

    def delete_deltas(self, infos: Iterable[DeltaInfo]) -> None:
        self._delete_keys([info.key for info in infos], (self.delta_prefix,))

    # -- restore drills -------------------------------------------------------------------------------------

    def write_verification(self, verification: Verification) -> None:
        """A drill's result, beside its snapshot and as the group's last one (what `status` reads)."""
        text = records.verification_to_json(verification)
        self._put(self.verification_key(verification.snapshot), text)
        self._put(self.last_verification_key, text)

    def read_last_verification(self) -> Verification | None:
        """The newest drill's result; None when no drill ran (or its result is not one, loudly)."""
        text = self._get(self.last_verification_key)
        if text is None:
            return None
        try:
            return records.verification_from_json(text, self.where(self.last_verification_key))
        except UnsafeError as exc:
            log.warning("ignoring the last drill's result: %s", exc)
            return None

    # -- the cluster record ---------------------------------------------------------------------------------

    def read_record(self) -> ClusterRecord | None:
        """The cluster record, or None when there is none."""
        return self.read_record_tagged()[0]

    def read_record_tagged(self) -> tuple[ClusterRecord | None, str | None]:
        """The cluster record and the ETag to replace it with (`write_record`); (None, None) when there is none.

        The ETag is of the new layout's key: a record found only under the old layout is created anew there."""
        found = self._get_tagged(self.record_key)
        key = self.record_key
        if found is None:
            if self._get(self.layout_marker_key) is None:
                key, found = self.legacy_record_key, self._get_tagged(self.legacy_record_key)
                if found is not None:
                    log.info("cluster record: reading %s (the layout before the region)", self.where(key))
            else:  # the marker is written after the record: a writer came between the two reads
                found = self._get_tagged(self.record_key)
        etag = None if found is None or key != self.record_key else self._etag(found[1])
        if found is None:
            return None, None
        record = records.record_from_json(found[0], self.where(key))
        if record.asg_name != self.asg_name:
            raise UnsafeError(f"{self.where(key)} belongs to ASG {validate.shown(record.asg_name)}")
        return record, etag

    def _etag(self, value: object) -> str:
        if not isinstance(value, str) or not ETAG.fullmatch(value):
            raise UnsafeError(f"refusing {self.where(self.record_key)}: its ETag {validate.shown(value)} is not one")
        return value

    def write_record(self, record: ClusterRecord, expected_etag: str | None) -> str | None:
        """Write the record only if it is still the one read: `expected_etag` from `read_record_tagged` (None: only
        if there is none). RecordRaceError when another writer came first. Returns the new ETag (None if the
        answer had no usable one)."""
        if record.asg_name != self.asg_name:
            raise UnsafeError(f"refusing to write the record of ASG {record.asg_name} for ASG {self.asg_name}")
        condition = {"If-None-Match": "*"} if expected_etag is None else {"If-Match": expected_etag}
        etag = self._put(self.record_key, records.record_to_json(record), condition)
        if expected_etag is None:  # created: the old layout's record (if any) is superseded for good
            self._put(self.layout_marker_key, LAYOUT_MARKER.format(old=self.where(self.legacy_record_key)))
        return etag if isinstance(etag, str) and ETAG.fullmatch(etag) else None

    # -- hand-offs of survivors ----------------------------------------------------------------------------

    def handoff_key(self, instance_id: str) -> str:
        return f"{self.handoff_prefix}{validate.instance_id(instance_id, 'a hand-off')}.json"

    def write_handoff(self, handoff: Handoff) -> None:
        self._put(self.handoff_key(handoff.instance_id), records.handoff_to_json(handoff))

    def read_handoffs(self, instance_ids: Iterable[str]) -> tuple[Handoff, ...]:
        """The hand-offs of these instances that exist and are valid (an invalid one is skipped, loudly)."""
        found = []
        for instance_id in sorted(set(instance_ids)):
            key = self.handoff_key(instance_id)
            text = self._get(key)
            if text is None:
                continue
            try:
                handoff = records.handoff_from_json(text, self.where(key))
            except UnsafeError as exc:
                log.warning("skipping hand-off %s: %s", self.where(key), exc)
                continue
            if handoff.instance_id != instance_id:
                log.warning("skipping hand-off %s: it is of instance %s", self.where(key), handoff.instance_id)
                continue
            found.append(handoff)
        return tuple(found)

    # -- small objects --------------------------------------------------------------------------------------

    def _put(
        self,
        key: str,
        body: str | bytes,
        condition: dict[str, str] | None = None,
        *,
        content_type: str = "application/json",
    ) -> object:
        """Write a small object (under `condition`: If-Match / If-None-Match headers); returns its ETag."""
        from botocore.exceptions import ClientError

        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body.encode() if isinstance(body, str) else body,
            "ContentType": content_type,
            **self._encryption,
        }
        if condition:
            params[CONDITIONS_PARAM] = condition

        def put() -> object:
            try:
                etag: object = self._s3.put_object(**params).get("ETag")
            except ClientError as exc:
                if condition and exc.response.get("Error", {}).get("Code") in LOST_RACE_CODES:
                    raise RecordRaceError(
                        f"{self.where(key)} changed since this run read it (another instance wrote it first)"
                    ) from None
                raise
            return etag

        return self._call(f"writing {self.where(key)}", put)

    def _get(self, key: str) -> bytes | None:
        """A small object's body; None when it does not exist."""
        found = self._get_tagged(key)
        return None if found is None else found[0]

    def _get_tagged(self, key: str) -> tuple[bytes, object] | None:
        """A small object's body and ETag; None when it does not exist."""
        from botocore.exceptions import ClientError

        def read() -> tuple[bytes, object] | None:
            try:
                answer = self._s3.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            if int(answer.get("ContentLength", 0)) > MAX_DOCUMENT_BYTES:
                raise UnsafeError(f"refusing {self.where(key)}: too large for a manifest or record")
            etag: object = answer.get("ETag")
            body: bytes = answer["Body"].read(MAX_DOCUMENT_BYTES + 1)
            return body, etag

        return self._call(f"reading {self.where(key)}", read)
