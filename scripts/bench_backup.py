"""Benchmark backups: stream a snapshot of a >= 200 MB etcd db to S3 (moto) and restore it, beside etcd's own tools.

Measured, each as one fresh process under bench.py's launcher (wall time fork to exit, peak RSS from os.wait4):
  1. backup: EtcdClient.snapshot -> BackupStore.upload (multipart, to moto S3), as the agent does it, and the
     snapshot stream alone (read and discarded: what the gateway and the parser cost without S3);
  2. `etcdctl snapshot save` alone, to a local file;
  3. restore: BackupStore.download (sha256 verified) -> restore_tool.restore into a fresh data dir;
  4. `etcdutl snapshot restore` (3.4: `etcdctl`) alone, from a local file.
The backup's peak RSS must stay under 100 MB whatever the db size: exit 1 when it does not (2 when the bench broke).

Run: `.venv/bin/python scripts/bench_backup.py [--etcd 3.4|3.5] [--db-mb 220]`. Loopback only; every process
started is stopped by PID.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from bench import LAUNCHER  # noqa: E402  (scripts/ is this script's own directory)

from tests.harness import etcd_binaries  # noqa: E402
from tests.harness.moto_server import FAKE_CREDENTIALS, MotoServer  # noqa: E402
from tests.harness.procs import ProcessRegistry  # noqa: E402
from tests.harness.sim import SimulatedAsg  # noqa: E402

RSS_LIMIT_MB = 100
VALUE_BYTES = 900 * 1024  # under etcd's 1.5 MiB request limit once base64'd
BUCKET = "bench-backups"
ASG = "bench"

BACKUP = """
import os, sys
from datetime import datetime, timezone
import requests
from etcd_aws_cluster.adapters.etcd import EtcdClient, Tls
from etcd_aws_cluster.core.records import SnapshotMeta
from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3

url, backup_url = sys.argv[1], sys.argv[2]
store = BackupStore(connect_s3("us-east-1", os.environ, 30, 3), backup_url, "bench", region="us-east-1")
meta = SnapshotMeta(datetime.now(timezone.utc), 1, 1, "3.5.0", (), "i-0123456789abcdef0")
info = store.upload(EtcdClient(requests.Session(), Tls()).snapshot(url, 30), meta)
print(info.size)
"""

STREAM = """
import sys
import requests
from etcd_aws_cluster.adapters.etcd import EtcdClient, Tls

print(sum(len(chunk) for chunk in EtcdClient(requests.Session(), Tls()).snapshot(sys.argv[1], 30)))
"""

RESTORE = """
import os, sys
from pathlib import Path
from etcd_aws_cluster.adapters.restore_tool import RestoreTarget, find_tool, restore
from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3

backup_url, tool_path, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
store = BackupStore(connect_s3("us-east-1", os.environ, 30, 3), backup_url, "bench", region="us-east-1")
info = store.list_snapshots()[0]
store.download(info, work / "download.db")
peer = "http://127.0.0.1:2380"
restore(find_tool(tool_path), work / "download.db", RestoreTarget(work / "restored", "n1", f"n1={peer}", "t", peer))
"""


def measured(registry: ProcessRegistry, argv: list[str], env: dict[str, str], stats: Path) -> tuple[float, float]:
    """Run `argv` under the launcher; (wall seconds, peak RSS in MB) of that one process."""
    proc = registry.start([sys.executable, "-I", "-S", "-c", LAUNCHER, str(stats), *argv], env=env, cwd=ROOT)
    try:
        _out, err = proc.communicate(timeout=900)
    finally:
        registry.forget(proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed (exit {proc.returncode}):\n{err[-2000:]}")
    wall, maxrss_kib, _cpu = stats.read_text().split()
    return float(wall), int(maxrss_kib) / 1024


def fill(url: str, megabytes: int) -> None:
    session = requests.Session()
    session.trust_env = False
    value = base64.b64encode(os.urandom(VALUE_BYTES)).decode()
    for i in range(megabytes * 1024 * 1024 // VALUE_BYTES + 1):
        key = base64.b64encode(f"/bench/{i:06}".encode()).decode()
        session.post(f"{url}/v3/kv/put", json={"key": key, "value": value}, timeout=30).raise_for_status()


def run(etcd: Path, db_mb: int, work: Path) -> int:
    tool = etcd_binaries.snapshot_tool(etcd)
    etcdctl = etcd.parent / "etcdctl"
    if tool is None or not etcdctl.is_file():
        raise RuntimeError(f"no etcdutl/etcdctl beside {etcd}")
    with MotoServer(log_dir=work) as moto, SimulatedAsg(moto.url, 1, etcd, work) as asg:
        asg.bootstrap_static()
        node = asg.nodes[0]
        fill(node.client_url, db_mb)
        env = {**os.environ, **FAKE_CREDENTIALS, "AWS_ENDPOINT_URL": moto.url, "ETCDCTL_API": "3"}
        env["PYTHONPATH"] = str(ROOT)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=moto.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=BUCKET)
        backup_url = f"s3://{BUCKET}/etcd"
        registry = asg.registry
        py = sys.executable
        rows = []
        backup = measured(registry, [py, "-c", BACKUP, node.client_url, backup_url], env, work / "s1")
        rows.append(("backup: snapshot stream -> S3 (agent)", *backup))
        stream = measured(registry, [py, "-c", STREAM, node.client_url], env, work / "s0")
        rows.append(("snapshot stream alone, discarded (agent)", *stream))
        saved = work / "saved.db"
        save_argv = [str(etcdctl), "--endpoints", node.client_url, "snapshot", "save", str(saved)]
        rows.append(("etcdctl snapshot save (local file)", *measured(registry, save_argv, env, work / "s2")))
        (work / "r").mkdir()
        rows.append(
            (
                "restore: S3 download + restore (agent)",
                *measured(registry, [py, "-c", RESTORE, backup_url, str(tool), str(work / "r")], env, work / "s3"),
            )
        )
        alone = [str(tool), "snapshot", "restore", str(saved), "--data-dir", str(work / "alone")]
        rows.append((f"{tool.name} snapshot restore (local file)", *measured(registry, alone, env, work / "s4")))
        size_mb = saved.stat().st_size / 1e6
    print(f"etcd {etcd_binaries.version_of(etcd)}, db {size_mb:.0f} MB")
    print(f"{'what':<44} {'wall s':>8} {'MB/s':>8} {'peak RSS MB':>12}")
    for what, wall, rss in rows:
        print(f"{what:<44} {wall:>8.2f} {size_mb / wall:>8.1f} {rss:>12.1f}")
    if backup[1] >= RSS_LIMIT_MB:
        print(f"FAIL: the backup's peak RSS {backup[1]:.1f} MB is not under {RSS_LIMIT_MB} MB", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd", choices=("3.4", "3.5"), help="etcd version (default: the newest available)")
    parser.add_argument("--db-mb", type=int, default=220, help="data to put into etcd, in MB (default 220)")
    args = parser.parse_args()
    etcd = etcd_binaries.available().get(args.etcd) if args.etcd else etcd_binaries.newest()
    if etcd is None:
        print("no etcd binary: make setup", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as work:
        try:
            return run(etcd, args.db_mb, Path(work))
        except (RuntimeError, OSError, requests.RequestException) as exc:
            print(f"bench_backup broke: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
