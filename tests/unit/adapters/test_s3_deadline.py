"""Every S3 call of the BackupStore ends by its deadline: the one client factory's guard, and abandoned calls."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AwsError
from etcd_aws_cluster.core.records import Checksum, SnapshotInfo, SnapshotMeta
from tests.harness.silent_server import SilentServer

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
META = SnapshotMeta(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), 7, 0xABC, "3.5.30", (), "i-0123456789abcdef0")


@pytest.fixture
def silent(monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentServer]:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with SilentServer() as server:
        yield server


def hanging_store(silent: SilentServer, deadline: Deadline) -> BackupStore:
    env = {"AWS_ENDPOINT_URL_S3": silent.url, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    s3 = connect_s3("us-east-1", env, timeout=10, max_attempts=5, deadline=deadline)
    deadline.started = deadline.clock()  # the deadline counts from here: making a client is slow on a busy machine
    return BackupStore(s3, "s3://bkt/p", "etcd", region="us-east-1", deadline=deadline)


def test_the_s3_endpoint_comes_from_aws_endpoint_url_s3_first(silent: SilentServer) -> None:
    store = hanging_store(silent, Deadline(60))
    assert store._s3.meta.endpoint_url == silent.url
    assert store._s3.meta.config.s3 == {"addressing_style": "path"}


def test_no_s3_request_at_or_after_the_deadline(silent: SilentServer) -> None:
    store = hanging_store(silent, Deadline(0.0))
    with pytest.raises(AwsError, match="no time left before the run's deadline"):
        store.read_record()
    with pytest.raises(AwsError, match="no time left for another AWS request"):
        store._s3.list_buckets()  # botocore itself, below the store: the factory's guard
    assert silent.connections == 0


def test_a_hanging_s3_is_abandoned_at_the_deadline_and_not_asked_again(silent: SilentServer) -> None:
    store = hanging_store(silent, Deadline(1.0))
    started = time.monotonic()
    with pytest.raises(AwsError, match="no answer before the run's deadline"):
        store.list_snapshots()  # 5 attempts of 10 s each without the deadline
    assert time.monotonic() - started < 1.5
    assert silent.connections == 1
    started = time.monotonic()
    with pytest.raises(AwsError, match="not asked, S3 did not answer earlier in this run"):
        store.read_record()
    assert time.monotonic() - started < 0.1


def test_a_limited_step_ends_by_its_budget_and_by_the_first_answer_window(silent: SilentServer) -> None:
    store = hanging_store(silent, Deadline(60))
    started = time.monotonic()
    with store.limited(5.0, answer_within=0.5), pytest.raises(AwsError, match="no answer before S3's first answer"):
        store.read_record()
    assert time.monotonic() - started < 1.0
    other = hanging_store(silent, Deadline(60))
    started = time.monotonic()
    with other.limited(0.5), pytest.raises(AwsError, match="no answer before this step's budget"):
        other.list_snapshots()
    assert time.monotonic() - started < 1.0


def test_an_abandoned_download_leaves_no_file(silent: SilentServer, tmp_path: Path) -> None:
    store = hanging_store(silent, Deadline(0.5))
    info = SnapshotInfo.of(store.snapshot_key(META), META, Checksum("0" * 64, 10))
    target = tmp_path / "snapshot.db"
    with pytest.raises(AwsError, match="no answer before the run's deadline"):
        store.download(info, target)
    assert list(tmp_path.iterdir()) == []


def test_a_multipart_upload_to_a_hanging_s3_ends_by_the_deadline(silent: SilentServer) -> None:
    store = hanging_store(silent, Deadline(0.5))
    started = time.monotonic()
    with pytest.raises(AwsError, match="no answer before the run's deadline"):
        # 64 MiB that do not compress: a multipart upload
        store.upload((os.urandom(1024 * 1024) for _ in range(64)), META)
    assert time.monotonic() - started < 1.0


ABANDONED_UPLOAD = """
import os, sys
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AwsError
from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3
from tests.harness.silent_server import SilentServer
from tests.unit.adapters.test_s3_deadline import META

silent = SilentServer()
deadline = Deadline(60)
s3 = connect_s3("us-east-1", {"AWS_ENDPOINT_URL_S3": silent.url}, timeout=20, max_attempts=5, deadline=deadline)
store = BackupStore(s3, "s3://bkt/p", "etcd", region="us-east-1", deadline=deadline)
try:
    with store.limited(0.5):
        store.upload((os.urandom(1024 * 1024) for _ in range(64)), META)  # incompressible: a multipart upload
except AwsError as exc:
    print(exc, file=sys.stderr)
"""


def test_a_process_exits_at_once_after_abandoning_an_upload(silent: SilentServer) -> None:
    # No transfer thread of the abandoned upload may keep the interpreter alive for its 20 s request timeout.
    env = {**os.environ, **CREDENTIALS, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", ABANDONED_UPLOAD], env=env, capture_output=True, text=True, timeout=60)
    assert "no answer before this step's budget" in done.stderr, done.stderr
    assert time.monotonic() - started < 10.0
