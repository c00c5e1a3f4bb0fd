"""BackupStore against moto's S3 server: streamed multipart uploads, manifests written last, verified downloads."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import pytest
from mypy_boto3_s3 import S3Client

from etcd_aws_cluster.adapters.compression import CorruptSnapshotError
from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3
from etcd_aws_cluster.app.backups import Backups
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AwsError, RecordRaceError, UnsafeError
from etcd_aws_cluster.core import records
from etcd_aws_cluster.core.deltas import DamagedDeltaError, Delta, DeltaHeader, DeltaInfo, Op, Revision
from etcd_aws_cluster.core.model import AsgView, Endpoints
from etcd_aws_cluster.core.records import ClusterRecord, Handoff, SnapshotMeta, handoff_to_json
from etcd_aws_cluster.core.view import ClusterView
from tests.harness.moto_server import FAKE_CREDENTIALS
from tests.harness.procs import ProcessRegistry

if TYPE_CHECKING:
    from etcd_aws_cluster.app.context import Context

pytestmark = pytest.mark.integration

BUCKET = "etcd-backups"
ASG = "etcd prod/eu"
REGION = "eu-west-1"
NOW = datetime(2024, 5, 10, 12, 0, 0, tzinfo=timezone.utc)
INSTANCE = "i-0123456789abcdef0"


def aws_env(moto_url: str) -> dict[str, str]:
    return {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": moto_url}


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> S3Client:
    for name, value in aws_env(moto_url).items():
        monkeypatch.setenv(name, value)
    client = connect_s3("us-east-1", aws_env(moto_url), timeout=10, max_attempts=2)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def store(s3: S3Client) -> BackupStore:
    return BackupStore(s3, f"s3://{BUCKET}/backups/", ASG, region=REGION)


def meta(revision: int, taken_at: datetime = NOW) -> SnapshotMeta:
    return SnapshotMeta(taken_at, revision, 0xABC, "3.5.17", (("n1", "http://10.0.0.1:2380"),), INSTANCE)


def chunks(total: int, size: int = 1024 * 1024, seed: int = 1) -> Iterator[bytes]:
    """`total` bytes that do not compress (random, the same for the same seed): an object of that many bytes."""
    noise = random.Random(seed)
    for offset in range(0, total, size):
        yield noise.randbytes(min(size, total - offset))


def etcd_db(body: bytes) -> bytes:
    """A db as etcd's snapshot stream ends it: with the sha256 of the bytes before (what manifests say by default)."""
    return body + hashlib.sha256(body).digest()


def test_upload_list_download_round_trip(s3: S3Client, store: BackupStore, tmp_path: Path) -> None:
    total = 12 * 1024 * 1024 + 123 + 32
    # every MiB comes twice in a row (within zstd's window): it compresses by about 2, to two multipart parts
    db = etcd_db(b"".join(block * 2 for block in chunks(6 * 1024 * 1024)) + b"".join(chunks(123, seed=4)))
    info = store.upload(iter([db[i : i + 1000_000] for i in range(0, total, 1000_000)]), meta(42))
    expected = hashlib.sha256(db).hexdigest()
    assert (info.db_size, info.db_sha256, info.revision, info.compression) == (total, expected, 42, "zstd")
    key = "backups/eu-west-1/etcd%20prod%2Feu/snapshots/20240510T120000000000Z-r42-i-0123456789abcdef0"
    assert info.key == key + ".db.zst"
    stored = s3.get_object(Bucket=BUCKET, Key=info.key)["Body"].read()
    assert (info.size, info.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    assert total * 0.4 < info.size < total * 0.6
    head = s3.head_object(Bucket=BUCKET, Key=info.key)
    assert head["ServerSideEncryption"] == "AES256"
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=key + ".json")["Body"].read())
    assert (manifest["sha256"], manifest["db_sha256"], manifest["compression"]) == (info.sha256, expected, "zstd")
    assert store.list_snapshots() == (info,)
    target = tmp_path / "snap.db"
    store.download(info, target)
    assert target.read_bytes() == db
    assert [p.name for p in tmp_path.iterdir()] == ["snap.db"]


def test_a_snapshot_of_an_agent_before_compression_is_listed_and_downloaded(
    s3: S3Client, store: BackupStore, tmp_path: Path
) -> None:
    db = etcd_db(b"".join(chunks(6 * 1024 * 1024, seed=2)))
    key = store.snapshot_key(meta(8), compression=None)
    assert key.endswith("-r8-i-0123456789abcdef0.db")
    old = records.SnapshotInfo.of(key, meta(8), records.Checksum(hashlib.sha256(db).hexdigest(), len(db)))
    s3.put_object(Bucket=BUCKET, Key=key, Body=db)
    text = records.snapshot_to_json(old)
    assert "compression" not in text and "db_sha256" not in text  # what agents before compression wrote
    s3.put_object(Bucket=BUCKET, Key=store.manifest_key(key), Body=text.encode())
    newer = store.upload(chunks(1000, seed=3), meta(9))
    assert store.list_snapshots() == (newer, old)
    store.download(old, tmp_path / "old.db")
    assert (tmp_path / "old.db").read_bytes() == db
    s3.put_object(Bucket=BUCKET, Key=key, Body=db[:-1] + b"!")
    with pytest.raises(CorruptSnapshotError, match="corrupt"):
        store.download(old, tmp_path / "bad.db")


def test_upload_from_a_file_and_a_small_stream(store: BackupStore, tmp_path: Path) -> None:
    source = tmp_path / "in.db"
    source.write_bytes(b"small db")
    with source.open("rb") as handle:
        first = store.upload(handle, meta(1))
    second = store.upload([b"a", b"", b"bc"], meta(2))
    assert (first.db_bytes, second.db_bytes) == (8, 3)
    assert [s.revision for s in store.list_snapshots()] == [2, 1]


def test_list_shows_only_complete_snapshots_of_this_group(s3: S3Client, store: BackupStore) -> None:
    good = store.upload([b"good"], meta(5))
    prefix = store.snapshot_prefix
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}orphan-r9.db", Body=b"no manifest")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}lonely.json", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}bad.db", Body=b"x")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}bad.json", Body=b"not json")
    liar = json.loads(s3.get_object(Bucket=BUCKET, Key=store.manifest_key(good.key))["Body"].read())
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}liar.db", Body=b"good")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}liar.json", Body=json.dumps(liar).encode())  # names another key
    other = BackupStore(s3, f"s3://{BUCKET}/backups", "etcd prod", region=REGION)
    other.upload([b"other group"], meta(99))
    assert store.list_snapshots() == (good,)
    assert [s.revision for s in other.list_snapshots()] == [99]


def test_corrupt_object_raises_and_leaves_no_file(s3: S3Client, store: BackupStore, tmp_path: Path) -> None:
    info = store.upload([b"original bytes" * 1000], meta(7))
    stored = bytearray(s3.get_object(Bucket=BUCKET, Key=info.key)["Body"].read())
    stored[-5] ^= 1  # one flipped bit: zstd or the stored bytes' sha256 refuses it
    s3.put_object(Bucket=BUCKET, Key=info.key, Body=bytes(stored))  # same size: still listed
    assert store.list_snapshots() == (info,)
    with pytest.raises(CorruptSnapshotError, match="corrupt"):
        store.download(info, tmp_path / "snap.db")
    assert list(tmp_path.iterdir()) == []


def test_a_compressed_object_whose_db_is_not_the_manifests_is_corrupt(
    s3: S3Client, store: BackupStore, tmp_path: Path
) -> None:
    info = store.upload([etcd_db(b"the db")], meta(7))
    forged = replace(info, db_sha256="0" * 64)  # the stored bytes match; the db inside them does not
    s3.put_object(Bucket=BUCKET, Key=store.manifest_key(info.key), Body=records.snapshot_to_json(forged).encode())
    with pytest.raises(CorruptSnapshotError, match="its db is 38 bytes with sha256"):
        store.download(forged, tmp_path / "snap.db")
    assert list(tmp_path.iterdir()) == []


def test_a_db_whose_manifest_promises_etcds_trailer_must_end_with_it(
    s3: S3Client, store: BackupStore, tmp_path: Path
) -> None:
    """The download makes the check `snapshot restore` would (the restore then skips it): a db that does not end
    with the sha256 of the bytes before it is corrupt; a member's raw db, whose manifest says it has no trailer,
    is not checked for one."""
    garbled = bytearray(etcd_db(b"a db with a trailer" * 100))
    garbled[5] ^= 1  # before the upload: the manifest's own checksums match it
    info = store.upload([bytes(garbled)], meta(7))
    with pytest.raises(CorruptSnapshotError, match="does not end with the sha256 of the bytes before it"):
        store.download(info, tmp_path / "snap.db")
    assert list(tmp_path.iterdir()) == []
    raw = store.upload([b"a member's raw db"], replace(meta(8), hash_trailer=False))
    store.download(raw, tmp_path / "raw.db")
    assert (tmp_path / "raw.db").read_bytes() == b"a member's raw db"


def test_a_failing_stream_leaves_no_object_and_no_upload(s3: S3Client, store: BackupStore) -> None:
    def broken() -> Iterator[bytes]:
        yield from chunks(12 * 1024 * 1024)
        raise OSError("etcd went away")

    with pytest.raises(OSError, match="etcd went away"):
        store.upload(broken(), meta(3))
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


KILLED_UPLOADER = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timezone
    from etcd_aws_cluster.core.records import SnapshotMeta
    from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3
    import os

    def slow():
        for _ in range(400):
            yield os.urandom(1024 * 1024)  # does not compress: parts go up while it runs
            time.sleep(0.02)

    store = BackupStore(connect_s3("us-east-1", os.environ, 10, 2), sys.argv[1], sys.argv[2], region="us-east-1")
    meta = SnapshotMeta(datetime.now(timezone.utc), 11, 1, "3.4.23", (), "i-0123456789abcdef0")
    store.upload(slow(), meta)
    """
)


def test_kill_9_during_an_upload_leaves_nothing_a_restore_would_take(
    s3: S3Client, store: BackupStore, moto_url: str
) -> None:
    env = {**os.environ, **aws_env(moto_url)}
    with ProcessRegistry() as registry:
        proc = registry.start([sys.executable, "-c", KILLED_UPLOADER, f"s3://{BUCKET}/backups", ASG], env=env)
        deadline = time.monotonic() + 60
        while not _uploaded_a_part(s3):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.1)
        registry.kill(proc.pid)
    assert store.list_snapshots() == ()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == []


def _uploaded_a_part(s3: S3Client) -> bool:
    uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return any(s3.list_parts(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"]).get("Parts") for u in uploads)


def test_delete_removes_snapshots_and_manifests_only(s3: S3Client, store: BackupStore) -> None:
    infos = [store.upload([b"%d" % i], meta(i, NOW + timedelta(minutes=i))) for i in range(1, 4)]
    s3.put_object(Bucket=BUCKET, Key="backups/unrelated.db", Body=b"keep me")
    store.delete(infos[:2])
    assert store.list_snapshots() == (infos[2],)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == sorted(["backups/unrelated.db", infos[2].key, store.manifest_key(infos[2].key)])


def test_deltas_round_trip_are_listed_from_their_names_and_a_damaged_one_is_refused(
    s3: S3Client, store: BackupStore
) -> None:
    lineage = "20240510T120000Z-0a1b2c3d"
    revisions = tuple(
        Revision(r, NOW + timedelta(seconds=r), (Op("put", f"/k/{r}".encode(), b"v" * 1000, 0),)) for r in (5, 6, 8)
    )
    delta = Delta(DeltaHeader(lineage, 0xABC, 5, 9, INSTANCE), revisions, keys=3)
    info = store.put_delta(delta)
    assert info.key.startswith(f"backups/eu-west-1/etcd%20prod%2Feu/deltas/{lineage}/r00000000000000000005-r")
    assert (info.first, info.last, info.last_at, info.lineage) == (5, 9, NOW + timedelta(seconds=8), lineage)
    stored = s3.get_object(Bucket=BUCKET, Key=info.key)["Body"].read()
    assert info.size == len(stored) < 1000  # compressed
    legacy = store.put_delta(
        Delta(DeltaHeader(None, 0xABC, 1, 1, INSTANCE), revisions[:0] + (replace(revisions[0], revision=1),))
    )
    s3.put_object(Bucket=BUCKET, Key=store.delta_prefix + f"{lineage}/stray.txt", Body=b"x")
    assert store.list_deltas() == (info, legacy)
    assert store.read_delta(info) == delta
    s3.put_object(Bucket=BUCKET, Key=info.key, Body=stored[:-1] + bytes([stored[-1] ^ 1]))
    with pytest.raises(DamagedDeltaError, match="sha256"):
        store.read_delta(info)
    store.delete_deltas([info, legacy])
    assert store.list_deltas() == ()
    with pytest.raises(UnsafeError, match="outside"):
        store.delete_deltas([replace(info, key=store.snapshot_prefix + "x.db.zst")])


def test_record_round_trip_and_foreign_record(s3: S3Client, store: BackupStore) -> None:
    assert store.read_record() is None
    record = ClusterRecord(ASG, 0xABC, ((INSTANCE, "http://10.0.0.1:2380"),), None, NOW)
    store.write_record(record, None)
    assert store.read_record() == record
    with pytest.raises(UnsafeError):
        store.write_record(ClusterRecord("other", 1, (), None, NOW), None)
    s3.put_object(Bucket=BUCKET, Key=store.record_key, Body=b'{"format": "etcd-aws-cluster/cluster-record"}')
    with pytest.raises(UnsafeError, match="version"):
        store.read_record()


def test_a_record_created_between_the_record_read_and_the_marker_read_is_seen(s3: S3Client, store: BackupStore) -> None:
    record = ClusterRecord(ASG, 0xABC, ((INSTANCE, "http://10.0.0.1:2380"),), None, NOW)
    writer = BackupStore(s3, store.url, ASG, region=REGION)
    written: list[str] = []

    def write_first(params: dict[str, object], **_: object) -> None:
        if params.get("Key") == store.layout_marker_key and not written:
            written.append("record")
            writer.write_record(record, None)  # the record, then the marker: both before this marker read

    s3.meta.events.register("before-parameter-build.s3.GetObject", write_first)
    try:
        found, etag = store.read_record_tagged()
    finally:
        s3.meta.events.unregister("before-parameter-build.s3.GetObject", write_first)
    assert written == ["record"]
    assert found == record and etag is not None


def test_handoffs_are_read_per_instance_and_a_bad_one_reads_as_missing(s3: S3Client, store: BackupStore) -> None:
    other = "i-0fedcba9876543210"
    mine = Handoff(INSTANCE, NOW, 42, 0xABC, None, NOW)
    store.write_handoff(mine)
    assert store.handoff_key(INSTANCE) == f"backups/eu-west-1/etcd%20prod%2Feu/handoff/{INSTANCE}.json"
    assert store.read_handoffs([INSTANCE, other]) == (mine,)
    s3.put_object(Bucket=BUCKET, Key=store.handoff_key(other), Body=b"{not json")  # skipped, loudly
    store.write_handoff(Handoff(INSTANCE, NOW, None, None, None, NOW))  # a rewrite replaces it
    assert store.read_handoffs([other, INSTANCE]) == (Handoff(INSTANCE, NOW, None, None, None, NOW),)
    s3.put_object(Bucket=BUCKET, Key=store.handoff_key(other), Body=handoff_to_json(mine).encode())  # someone else's
    assert [h.instance_id for h in store.read_handoffs([other])] == []


def test_missing_bucket_is_one_clear_aws_error(s3: S3Client) -> None:
    store = BackupStore(s3, "s3://no-such-bucket/p", ASG, region=REGION)
    with pytest.raises(AwsError, match="NoSuchBucket"):
        store.list_snapshots()
    with pytest.raises(AwsError, match="NoSuchBucket"):
        store.read_record()


def test_a_record_write_that_lost_the_race_is_refused_not_applied(s3: S3Client, store: BackupStore) -> None:
    first = ClusterRecord(ASG, 0xABC, ((INSTANCE, "http://10.0.0.1:2380"),), None, NOW)
    etag = store.write_record(first, None)  # If-None-Match: * creates it
    with pytest.raises(RecordRaceError):
        store.write_record(replace(first, cluster_id=0xDEF), None)  # a second creator loses
    seen, seen_etag = store.read_record_tagged()
    assert (seen, seen_etag) == (first, etag)
    # two writers read the same record; the first replaces it (If-Match), the second's If-Match no longer holds
    winner = replace(first, updated_at=NOW + timedelta(seconds=1), newest_snapshot=None, cluster_id=0x111)
    store.write_record(winner, seen_etag)
    with pytest.raises(RecordRaceError, match="another instance wrote it first"):
        store.write_record(replace(first, cluster_id=0x222), seen_etag)
    assert store.read_record() == winner


def test_the_record_write_carries_its_condition_headers(s3: S3Client, store: BackupStore) -> None:
    """The headers go out through the event handlers (botocore 1.29 has no IfMatch parameter): a write under a
    stale ETag is answered 412 by moto, so without the header the record would have been overwritten."""
    record = ClusterRecord(ASG, 0xABC, (), None, NOW)
    store.write_record(record, None)
    stale = '"00000000000000000000000000000000"'
    with pytest.raises(RecordRaceError):
        store.write_record(replace(record, cluster_id=0x1), stale)
    assert store.read_record() == record
    # plain writes (snapshots' manifests, hand-offs) carry no condition: rewriting one succeeds
    handoff = Handoff(INSTANCE, NOW, None, None, None, NOW)
    store.write_handoff(handoff)
    store.write_handoff(handoff)


def test_same_named_groups_of_two_regions_sharing_a_bucket_do_not_meet(s3: S3Client, store: BackupStore) -> None:
    other = BackupStore(s3, f"s3://{BUCKET}/backups/", ASG, region="us-east-2")
    mine = ClusterRecord(ASG, 0xABC, ((INSTANCE, "http://10.0.0.1:2380"),), None, NOW)
    store.write_record(mine, None)
    store.upload([b"eu data"], meta(5))
    assert other.read_record() is None
    assert other.list_snapshots() == ()
    theirs = ClusterRecord(ASG, 0xDEF, (("i-0fedcba9876543210", "http://10.1.0.1:2380"),), None, NOW)
    other.write_record(theirs, None)  # creates its own: the other region's record does not stand in the way
    assert (store.read_record(), other.read_record()) == (mine, theirs)
    other.write_handoff(Handoff("i-0fedcba9876543210", NOW, None, None, None, NOW))
    assert store.read_handoffs(["i-0fedcba9876543210"]) == ()


def test_the_layout_before_the_region_is_read_and_the_next_write_goes_to_the_new_key(
    s3: S3Client, store: BackupStore, tmp_path: Path
) -> None:
    old_record = ClusterRecord(ASG, 0xABC, ((INSTANCE, "http://10.0.0.1:2380"),), None, NOW)
    s3.put_object(Bucket=BUCKET, Key=store.legacy_record_key, Body=records.record_to_json(old_record).encode())
    old_key = f"{store.legacy_snapshot_prefix}20240510T110000000000Z-r7-{INSTANCE}.db"
    old_db = etcd_db(b"old db")
    s3.put_object(Bucket=BUCKET, Key=old_key, Body=old_db)
    info = records.SnapshotInfo.of(
        old_key, meta(7, NOW - timedelta(hours=1)), records.Checksum(hashlib.sha256(old_db).hexdigest(), len(old_db))
    )
    s3.put_object(Bucket=BUCKET, Key=store.manifest_key(old_key), Body=records.snapshot_to_json(info).encode())
    record, etag = store.read_record_tagged()
    assert (record, etag) == (old_record, None)  # found under the old key; the new one is to be created
    new = store.upload([b"new db"], meta(9))
    assert store.list_snapshots() == (new, info)
    store.download(info, tmp_path / "old.db")
    assert (tmp_path / "old.db").read_bytes() == old_db
    updated = replace(old_record, newest_snapshot=new.key, updated_at=NOW + timedelta(minutes=1))
    store.write_record(updated, etag)
    assert store.read_record() == updated
    legacy = s3.get_object(Bucket=BUCKET, Key=store.legacy_record_key)["Body"].read()
    assert records.record_from_json(legacy, "old key") == old_record  # left as it was, never deleted silently
    store.delete([info])  # retention may delete an old-layout snapshot of its lineage
    assert store.list_snapshots() == (new,)
    # Deleting the new record to start over is not undone by the old one: once the new layout's record was
    # created, the old key is not read any more
    s3.delete_object(Bucket=BUCKET, Key=store.record_key)
    assert store.read_record_tagged() == (None, None)


# -- Backups.write_record over a record another instance changes (moto's If-Match answers) ------------------------


class _Rivalled(BackupStore):
    """A store whose first record write comes just after a rival's: the interleaving two instances can produce."""

    def __init__(self, s3: S3Client, rival: ClusterRecord) -> None:
        super().__init__(s3, f"s3://{BUCKET}/backups/", ASG, region=REGION)
        self.rival: ClusterRecord | None = rival
        self.attempts = 0

    def write_record(self, record: ClusterRecord, expected_etag: str | None) -> str | None:
        self.attempts += 1
        if self.rival is not None:
            other = BackupStore(self._s3, f"s3://{BUCKET}/backups/", ASG, region=REGION)
            other.write_record(self.rival, other.read_record_tagged()[1])
            self.rival = None
        return super().write_record(record, expected_etag)


def _backups(store: BackupStore, cluster_id: int | None = None) -> tuple[Backups, ClusterView]:
    ctx = SimpleNamespace(now=lambda: datetime.now(timezone.utc), deadline=Deadline(30.0))
    view = ClusterView(AsgView(ASG, 0, ()), Endpoints(), (), (), (cluster_id,) if cluster_id else (), False)
    return Backups(cast("Context", ctx), store), view


MEMBERS = ((INSTANCE, "http://10.0.0.1:2380"), ("i-0fedcba9876543210", "http://10.0.0.2:2380"))
LINEAGE = "20240510T120000Z-0a1b2c3d"


def test_a_refresh_that_lost_the_race_is_applied_again_to_the_fresh_record(s3: S3Client) -> None:
    start = ClusterRecord(ASG, 0xABC, MEMBERS, "backups/old.db", NOW, LINEAGE)
    BackupStore(s3, f"s3://{BUCKET}/backups/", ASG, region=REGION).write_record(start, None)
    rival = replace(start, newest_snapshot="backups/rivals.db", updated_at=NOW + timedelta(seconds=1))
    store = _Rivalled(s3, rival)
    backups, view = _backups(store, cluster_id=0xABC)
    written = backups.write_record(view)  # a refresh: this run's members (none known here), the rest kept
    assert store.attempts == 2
    assert written.newest_snapshot == "backups/rivals.db"  # the rival's change survives ours
    assert written.lineage == LINEAGE and written.members == ()
    assert store.read_record() == written


def test_a_decision_that_lost_the_race_to_another_decision_is_decided_again(s3: S3Client) -> None:
    store = _Rivalled(s3, ClusterRecord(ASG, None, MEMBERS[:1], None, NOW, LINEAGE))
    backups, view = _backups(store)
    assert backups.read_record() is None  # the decision's basis: no record
    with pytest.raises(RecordRaceError, match="deciding again"):
        backups.write_record(view, members=MEMBERS)  # `new` of two members; a rival recorded another cluster
    assert store.read_record() == ClusterRecord(ASG, None, MEMBERS[:1], None, NOW, LINEAGE)


def test_a_decision_that_lost_the_race_to_the_same_decision_takes_the_winners_record(s3: S3Client) -> None:
    store = _Rivalled(s3, ClusterRecord(ASG, None, tuple(reversed(MEMBERS)), None, NOW, LINEAGE))
    backups, view = _backups(store)
    assert backups.read_record() is None
    taken = backups.write_record(view, members=MEMBERS)  # the same new cluster, recorded first by a peer
    assert store.attempts == 1 and taken == store.read_record()
    assert taken.lineage == LINEAGE  # one lineage for the one new cluster


def test_retention_deletes_the_snapshots_it_does_not_keep_and_the_deltas_no_kept_snapshot_needs(
    s3: S3Client, store: BackupStore
) -> None:
    def snapshot(revision: int, hours: int) -> records.SnapshotInfo:
        return store.upload(
            [etcd_db(b"db %d" % revision)], replace(meta(revision, NOW - timedelta(hours=hours)), lineage=LINEAGE)
        )

    def delta(first: int, last: int, lineage: str | None = LINEAGE) -> DeltaInfo:
        revisions = (Revision(last, NOW, (Op("put", b"/k/%d" % last, b"v"),)),)
        return store.put_delta(Delta(DeltaHeader(lineage, 0xABC, first, last, INSTANCE), revisions))

    oldest, middle, newest = snapshot(10, 3), snapshot(20, 2), snapshot(30, 1)
    before = [delta(5, 10), delta(11, 15), delta(16, 20)]  # only the oldest snapshot needs 11..20
    kept = [delta(21, 25), delta(26, 32), delta(33, 40)]  # the middle one's way to the newest, and after it
    stray = delta(1, 50, lineage=None)  # a lineage without any snapshot
    ctx = SimpleNamespace(
        now=lambda: NOW,
        deadline=Deadline(30.0),
        settings=SimpleNamespace(backup_keep_last=2, backup_keep_daily_days=0),
    )
    gone = Backups(cast("Context", ctx), store).prune()
    assert gone == (oldest,)
    assert store.list_snapshots() == (newest, middle)
    assert set(store.list_deltas()) == set(kept)
    assert {d.key for d in (*before, stray)}.isdisjoint(d.key for d in store.list_deltas())
