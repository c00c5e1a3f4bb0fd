"""Issue 17 items 1-2 end to end on real etcd and moto S3: how a backup takes its snapshot (etcdctl where the host
has one, etcd's JSON gateway where it has none or etcdctl fails), stored zstd-compressed, restored by a full
replacement; and a snapshot stored by an agent before compression, restored as it is."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import pytest
import zstandard

from etcd_aws_cluster.core import records
from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory
from tests.integration.test_backup_restore import (
    BUCKET,
    Backed,
    booted,
    full_replacement_restores,
    put_keys,
)

pytestmark = pytest.mark.integration


def put_compressible(backed: Backed, count: int = 40) -> dict[str, str]:
    """Keys whose values repeat (as Kubernetes objects do): the db compresses well."""
    written = {f"/objects/{i}": ('{"kind": "ConfigMap", "data": "' + "spec " * 2000 + f'{i}"}}') for i in range(count)}
    for key, value in written.items():
        backed.asg.put(key, value)
    return written


def restores_every_key(backed: Backed, written: dict[str, str], key: str) -> None:
    _logs, chosen = full_replacement_restores(backed)
    assert chosen == key
    for name, value in written.items():
        assert backed.asg.get(name) == value, name


@pytest.mark.etcd_also("3.6")
def test_a_backup_takes_etcdctls_snapshot_stores_it_compressed_and_a_replacement_restores_it(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    written = put_compressible(backed)
    result = backed.backup(backed.asg.nodes[0])
    assert "backup: snapshot saved by " in result.stderr and "(etcdctl " in result.stderr, result.stderr
    assert "JSON gateway" not in result.stderr
    (info,) = backed.store.list_snapshots()
    assert info.key.endswith(".db.zst") and info.compression == "zstd"
    assert info.db_hash is not None  # spooled: the db's exact revision and hash were read
    assert info.db_size is not None and info.size * 3 < info.db_size, (info.size, info.db_size)
    assert f"{info.db_size} bytes, {info.size} stored" in result.stdout
    stored = backed.s3.get_object(Bucket=BUCKET, Key=info.key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == info.sha256
    db = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored)).read()
    assert hashlib.sha256(db).hexdigest() == info.db_sha256
    assert db[-32:] == hashlib.sha256(db[:-32]).digest()  # etcd's trailer, as etcdctl saved it
    restores_every_key(backed, written, info.key)


def without_working_etcdctl(tmp_path: Path, etcd_binary: Path) -> tuple[dict[str, str], str]:
    """Agent settings for a host where a backup cannot use etcdctl, and what the backup says then. Where the restore
    tool is etcdutl (3.5+) the host has no etcdctl at all (PATH holds only etcdutl); on 3.4 etcdctl is the restore
    tool itself, so there it is present but its `snapshot save` fails."""
    tool = etcd_binaries.snapshot_tool(etcd_binary)
    assert tool is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if tool.name == "etcdutl":
        (bin_dir / "etcdutl").symlink_to(tool)
        said = "no etcdctl on this host; taking the snapshot through etcd's JSON gateway"
    else:
        wrapper = bin_dir / "etcdctl"
        wrapper.write_text(
            '#!/bin/sh\ncase " $* " in *" snapshot save "*) echo "Error: no gRPC for you" >&2; exit 1;; esac\n'
            f'exec "{tool}" "$@"\n'
        )
        wrapper.chmod(0o755)
        said = "no gRPC for you'; taking the snapshot through etcd's JSON gateway instead"
    configured = bin_dir / tool.name
    return {"ETCD_AWS_CLUSTER_ETCDUTL": str(configured), "PATH": str(bin_dir)}, said


@pytest.mark.etcd_also("3.6")
def test_without_a_working_etcdctl_a_backup_takes_the_gateway_stream_and_it_restores(
    sim: SimFactory, etcd_binary: Path, moto_url: str, tmp_path: Path
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    extra, said = without_working_etcdctl(tmp_path, etcd_binary)
    written = put_compressible(backed)
    result = backed.backup(backed.asg.nodes[1], extra=extra)
    assert said in result.stderr, result.stderr
    assert "snapshot saved by" not in result.stderr
    (info,) = backed.store.list_snapshots()
    assert info.compression == "zstd" and info.db_hash is not None  # still spooled, compressed, exact
    assert info.db_size is not None and info.size * 3 < info.db_size
    assert not [p.name for p in backed.asg.nodes[1].data_dir.iterdir() if p.name.startswith(".spool-")]
    restores_every_key(backed, written, info.key)


@pytest.mark.etcd_also("3.6")
def test_a_snapshot_stored_before_compression_is_restored_as_it_is(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = booted(sim, etcd_binary, moto_url)
    written = put_keys(backed.asg, "/app", 20)
    backed.backup(backed.asg.nodes[0])
    (new,) = backed.store.list_snapshots()
    # Rewrite it as an agent before compression stored it: the db as a .db object, a manifest without the fields
    stored = backed.s3.get_object(Bucket=BUCKET, Key=new.key)["Body"].read()
    db = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored)).read()
    old_key = new.key.removesuffix(".zst")
    old = records.SnapshotInfo(
        key=old_key,
        taken_at=new.taken_at,
        revision=new.revision,
        cluster_id=new.cluster_id,
        etcd_version=new.etcd_version,
        sha256=hashlib.sha256(db).hexdigest(),
        size=len(db),
        members=new.members,
        source_instance=new.source_instance,
        db_hash=new.db_hash,
        lineage=new.lineage,
    )
    manifest = records.snapshot_to_json(old)
    assert "compression" not in manifest and "db_size" not in manifest
    backed.store.delete([new])
    backed.s3.put_object(Bucket=BUCKET, Key=old_key, Body=db)
    backed.s3.put_object(Bucket=BUCKET, Key=backed.store.manifest_key(old_key), Body=manifest.encode())
    record = backed.store.read_record_tagged()
    assert record[0] is not None
    backed.store.write_record(dataclasses.replace(record[0], newest_snapshot=old_key), record[1])
    (listed,) = backed.store.list_snapshots()
    assert listed == old and listed.compression is None

    restores_every_key(backed, written, old_key)
