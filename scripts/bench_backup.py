"""Benchmark backups against etcd's own tools: a >= 200 MB etcd db of real text, backed up to S3 (moto) and restored.

For each etcd release (default 3.4 and 3.5.30), side by side in one run, each step one fresh process under
bench.py's launcher (wall time fork to exit, peak RSS from os.wait4):
  backup, the agent's own code (Backups._upload): `etcdctl snapshot save` into a spool in the data dir,
     `snapshot status`, zstd-compressed upload in parallel parts; and the same through etcd's JSON gateway (the
     path of a host without etcdctl: no target, for the README's comparison);
  baseline: `etcdctl snapshot save` to a local file + an upload of that file (boto3's upload_file, parallel);
  restore, the agent's own code (Backups.restore): streamed download with both checksums and decompression,
     `snapshot status` against the manifest, `snapshot restore`;
  baseline: a download of the uncompressed file (get_object streamed to a file: moto's fastest) + etcd's restore
     tool alone doing the same restore (`etcdutl snapshot restore`, 3.4: `etcdctl`, with the agent's flags).
The db is made of real text (the Python standard library's sources and the host's docs, as Kubernetes-like
objects, each written several times: revisions), so the compression ratio is one a real cluster would see.

Targets (issue 17): backup <= 1.3x its baseline, restore <= 1.2x its baseline, the backup's peak RSS under
100 MB. Exit 1 on a missed target, 2 when the bench broke.

Run: `.venv/bin/python scripts/bench_backup.py [--etcd 3.4 --etcd 3.5.30] [--db-mb 220]`. Loopback only; every
process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from bench import LAUNCHER  # noqa: E402  (scripts/ is this script's own directory)

from etcd_aws_cluster.adapters import restore_tool  # noqa: E402
from tests.harness import etcd_binaries  # noqa: E402
from tests.harness.moto_server import FAKE_CREDENTIALS, MotoServer, s3_client  # noqa: E402
from tests.harness.procs import ProcessRegistry  # noqa: E402
from tests.harness.sim import SimulatedAsg  # noqa: E402

RSS_LIMIT_MB = 100
BACKUP_TARGET = 1.3
RESTORE_TARGET = 1.2
VALUE_LIMIT = 1000 * 1024  # base64 bytes of one request's values: under etcd's 1.5 MiB request limit
BUCKET = "bench-backups"
INSTANCE = "i-0123456789abcdef0"
DEFAULT_ETCD = ("3.4", etcd_binaries.etcd_provision.SID_ETCD_VERSION)

# The agent's own code with the context it reads: the data dir (spool), the restore tool, the client URL.
CONTEXT = """
import os, sys, time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
import requests
from etcd_aws_cluster.adapters.etcd import EtcdClient, Tls
from etcd_aws_cluster.adapters.s3 import BackupStore, connect_s3
from etcd_aws_cluster.app.backups import Backups
from etcd_aws_cluster.base.deadline import Deadline
# What the agent imports on first use (boto3 and zstandard): before the measure, like the baselines' `import boto3`
import boto3, botocore.session, zstandard

INSTANCE = "i-0123456789abcdef0"

def own_peak_rss():
    # the agent's own, without the etcd tools it ran (their RSS is mostly the db's pages, mapped from the file)
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def backups(data_dir, tool):
    settings = SimpleNamespace(etcdutl=Path(tool), data_dir=Path(data_dir), data_dirs=lambda: (Path(data_dir),))
    ctx = SimpleNamespace(
        settings=settings, etcd=EtcdClient(requests.Session(), Tls()), call_timeout=30.0, deadline=Deadline(900),
        now=lambda: datetime.now(timezone.utc), me=SimpleNamespace(instance_id=INSTANCE, private_ip="127.0.0.1"),
        endpoints=SimpleNamespace(peer_url=lambda ip: f"http://{ip}:2380"),
    )
    store = BackupStore(connect_s3("us-east-1", os.environ, 30, 3), sys.argv[1], "bench", region="us-east-1")
    return Backups(ctx, store)
"""

BACKUP = (
    CONTEXT
    + """
from etcd_aws_cluster.core.records import SnapshotMeta
backup_url, client_url, data_dir, tool = sys.argv[1:5]
meta = SnapshotMeta(datetime.now(timezone.utc), 1, 1, "3.4.0", (), INSTANCE)
started = time.perf_counter()
info = backups(data_dir, tool)._upload(client_url, meta)
print(info.key, info.db_bytes, info.size, time.perf_counter() - started)
print(own_peak_rss())
"""
)

RESTORE = (
    CONTEXT
    + """
backup_url, key, data_dir, tool = sys.argv[1:5]
started = time.perf_counter()
b = backups(data_dir, tool)
(info,) = [i for i in b.store.list_snapshots() if i.key == key]
b.restore((info,), ((INSTANCE, "http://127.0.0.1:2380"),))
print(time.perf_counter() - started)
print(own_peak_rss())
"""
)

UPLOAD = """
import sys, time, boto3
started = time.perf_counter()
boto3.client("s3", region_name="us-east-1").upload_file(sys.argv[1], sys.argv[2], sys.argv[3])
print(time.perf_counter() - started)
"""

DOWNLOAD = """
import sys, time, boto3
started = time.perf_counter()
body = boto3.client("s3", region_name="us-east-1").get_object(Bucket=sys.argv[1], Key=sys.argv[2])["Body"]
with open(sys.argv[3], "wb") as out:
    for chunk in iter(lambda: body.read(1024 * 1024), b""):
        out.write(chunk)
print(time.perf_counter() - started)
"""


@dataclass(frozen=True)
class Step:
    what: str
    wall: float
    rss_mb: float  # of the process and every process it ran
    stdout: str
    python: bool = False  # a Python script that prints the seconds of its work (after its imports) on its first line

    @property
    def work(self) -> float:
        """The seconds of the step's work: a Python script's own measure, without the interpreter's start and
        imports (which the agent pays once per boot whatever it does); a tool's whole run."""
        return float(self.stdout.splitlines()[0].split()[-1]) if self.python else self.wall

    @property
    def own_rss_mb(self) -> float:
        """The agent's own peak RSS, which its script prints last (else the whole run's)."""
        last = self.stdout.split()[-1:] if self.stdout.strip() else []
        return int(last[0]) / 1024 if last and last[0].isdigit() else self.rss_mb


def measured(
    registry: ProcessRegistry, what: str, argv: list[str], env: dict[str, str], stats: Path, python: bool
) -> Step:
    """Run `argv` under the launcher: its wall seconds and peak RSS, as one fresh process."""
    proc = registry.start([sys.executable, "-I", "-S", "-c", LAUNCHER, str(stats), *argv], env=env, cwd=ROOT)
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        registry.forget(proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{err[-3000:]}")
    wall, maxrss_kib, _cpu = stats.read_text().split()
    return Step(what, float(wall), int(maxrss_kib) / 1024, out, python)


def texts() -> Iterator[tuple[str, bytes]]:
    """Real text from this host: the standard library's sources and the docs, (path, content)."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path("/usr/share/doc"), Path("/usr/share/perl5")]
    for root in roots:
        for path in sorted(root.rglob("*")):
            try:
                if path.is_file() and not path.is_symlink() and 200 < path.stat().st_size < VALUE_LIMIT // 3:
                    yield str(path), path.read_bytes()
            except OSError:
                continue


def fill(url: str, megabytes: int) -> None:
    """Kubernetes-like objects (a JSON envelope around a real file), each written again on every pass over the
    files: the db holds revisions, as a real cluster's does between compactions. Sent in transactions of up to
    ~1 MB (etcd's request limit is 1.5 MiB, its ops limit 128), so filling takes seconds, not minutes."""
    session = requests.Session()
    session.trust_env = False
    files = list(texts())
    if not files:
        raise RuntimeError("no text files on this host to fill etcd with")
    written, generation, batch, batch_bytes = 0, 0, [], 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        if batch:
            session.post(f"{url}/v3/kv/txn", json={"success": batch}, timeout=60).raise_for_status()
        batch, batch_bytes = [], 0

    while written < megabytes * 1_000_000:
        for path, content in files:
            name = path.strip("/").replace("/", ".")
            item = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name[-200:], "namespace": "bench", "generation": generation},
                "data": {"content": content.decode("latin-1")},
            }
            value = base64.b64encode(json.dumps(item).encode()).decode()
            if batch_bytes + len(value) > VALUE_LIMIT or len(batch) >= 100:
                flush()
            key = base64.b64encode(f"/registry/configmaps/bench/{name}".encode()).decode()
            batch.append({"requestPut": {"key": key, "value": value}})
            batch_bytes += len(value)
            written += len(value) * 3 // 4
            if written >= megabytes * 1_000_000:
                break
        generation += 1
    flush()


def without_etcdctl(work: Path, tool: Path) -> tuple[Path, str]:
    """A restore tool and PATH for a host without etcdctl (the gateway path); on 3.4 etcdctl is the restore tool,
    so there its `snapshot save` is made to fail instead."""
    bin_dir = work / "no-etcdctl"
    bin_dir.mkdir(exist_ok=True)
    if tool.name == "etcdutl":
        link = bin_dir / "etcdutl"
        if not link.exists():
            link.symlink_to(tool)
        return link, str(bin_dir)
    wrapper = bin_dir / "etcdctl"
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" snapshot save "*) exit 1;; esac\nexec "{tool}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, str(bin_dir)


def run(label: str, etcd: Path, db_mb: int, work: Path, repeat: int) -> tuple[list[str], list[str]]:
    """Bench one etcd release: the report's lines and the targets it missed."""
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

        s3 = s3_client(moto.url)
        s3.create_bucket(Bucket=BUCKET)
        backup_url = f"s3://{BUCKET}/etcd"
        registry, py, n = asg.registry, sys.executable, iter(range(100))

        def step(what: str, argv: list[str], step_env: dict[str, str] = env) -> Step:
            return measured(registry, what, argv, step_env, work / f"stats-{next(n)}", argv[0] == py)

        data_dir = str(node.data_dir)
        saved, plain = work / "saved.db", work / "plain.db"
        fallback_tool, fallback_path = without_etcdctl(work, tool)
        # etcd's tool doing the same restore as the agent's (the same member flags, and where the tool can, the
        # same revision bump): what is compared is the agent's download, decompression and checks around it
        same = ["--name", INSTANCE, "--initial-cluster", f"{INSTANCE}=http://127.0.0.1:2380"]
        same += ["--initial-cluster-token", "t", "--initial-advertise-peer-urls", "http://127.0.0.1:2380"]
        if restore_tool.identify(tool).can_bump:
            same += ["--bump-revision", str(restore_tool.BUMP_REVISION), "--mark-compacted"]
        runs: dict[str, list[Step]] = {}
        # Each step `repeat` times, the agent's and etcd's interleaved so both see the same load on a shared
        # machine; the best of each is compared.
        for i in range(repeat):
            saved.unlink(missing_ok=True)
            plain.unlink(missing_ok=True)
            for name, what, argv, step_env in (
                (
                    "backup",
                    "backup (agent: etcdctl, zstd, parallel parts)",
                    [py, "-c", BACKUP, backup_url, node.client_url, data_dir, str(tool)],
                    env,
                ),
                (
                    "save",
                    "  etcdctl snapshot save",
                    [str(etcdctl), "--endpoints", node.client_url, "snapshot", "save", str(saved)],
                    env,
                ),
                (
                    "upload",
                    "  + upload of that file (boto3)",
                    [py, "-c", UPLOAD, str(saved), BUCKET, f"raw/saved-{i}.db"],
                    env,
                ),
                (
                    "gateway",
                    "backup (agent: JSON gateway, no etcdctl)",
                    [py, "-c", BACKUP, backup_url, node.client_url, data_dir, str(fallback_tool)],
                    {**env, "PATH": fallback_path},
                ),
            ):
                runs.setdefault(name, []).append(step(what, argv, step_env))
            key = runs["backup"][0].stdout.split()[0]
            # Writing 225 MB into memory freed moments before costs a fraction of writing it into fresh memory on
            # a VM that hands freed memory back to its host (measured here: a download 0.2 s against 0.65 s), so
            # the side that runs right after the other's delete gains. Each side deletes its download after its
            # restore (the agent does), and which side goes first alternates.
            restores = [
                (
                    "restore",
                    "restore (agent: download, zstd, check, restore)",
                    [py, "-c", RESTORE, backup_url, key, str(work / f"r-{i}"), str(tool)],
                ),
                (
                    "download",
                    "  download of the plain file",
                    [py, "-c", DOWNLOAD, BUCKET, f"raw/saved-{i}.db", str(plain)],
                ),
                (
                    "alone",
                    f"  + {tool.name} snapshot restore (same flags)",
                    [str(tool), "snapshot", "restore", str(plain), "--data-dir", str(work / f"alone-{i}"), *same],
                ),
            ]
            for name, what, argv in restores if i % 2 == 0 else restores[1:] + restores[:1]:
                runs.setdefault(name, []).append(step(what, argv))
                if name == "alone":
                    plain.unlink()
        best = {name: min(steps, key=lambda s: s.work) for name, steps in runs.items()}
        peak = {name: max(steps, key=lambda s: s.own_rss_mb) for name, steps in runs.items()}
        backup, save, upload, gateway = best["backup"], best["save"], best["upload"], best["gateway"]
        restore, download, alone = best["restore"], best["download"], best["alone"]
        _key, db_bytes, stored, _took, _rss = runs["backup"][0].stdout.split()
    size_mb = int(db_bytes) / 1e6
    backup_base = save.work + upload.work
    restore_base = download.work + alone.work
    ratios = {"backup": backup.work / backup_base, "restore": restore.work / restore_base}
    lines = [
        f"etcd {etcd_binaries.version_of(etcd)} ({label}): db {size_mb:.0f} MB, stored {int(stored) / 1e6:.1f} MB "
        f"(zstd, ratio {int(db_bytes) / int(stored):.2f}); best of {repeat} runs each"
    ]
    lines.append(
        "work s: a Python step's own measure after its imports (the agent pays those once per boot), a tool's "
        "whole run; process s: fork to exit. Peak RSS: the agent's own, and with the etcd tools it ran."
    )
    header = (
        f"| {'what':<50} | {'work s':>6} | {'MB/s':>6} | {'process s':>9} | {'peak RSS MB':>11} | {'with tools':>10} |"
    )
    lines += [header, "|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|"]
    for s in (backup, save, upload, gateway, restore, download, alone):
        name = next(n for n, b in best.items() if b is s)
        rss, tools = peak[name].own_rss_mb, max(r.rss_mb for r in runs[name])
        lines.append(
            f"| {s.what:<50} | {s.work:>6.2f} | {size_mb / s.work:>6.1f} | {s.wall:>9.2f} | {rss:>11.1f} | "
            f"{tools:>10.1f} |"
        )
    lines.append(
        f"backup {backup.work:.2f}s = {ratios['backup']:.2f}x of save + upload {backup_base:.2f}s "
        f"(target {BACKUP_TARGET}x); "
        f"restore {restore.work:.2f}s = {ratios['restore']:.2f}x of download + restore {restore_base:.2f}s "
        f"(target {RESTORE_TARGET}x); the gateway's backup takes {gateway.work / backup.work:.1f}x etcdctl's"
    )
    missed = []
    if ratios["backup"] > BACKUP_TARGET:
        missed.append(f"{label}: backup {ratios['backup']:.2f}x of etcdctl save + upload, target {BACKUP_TARGET}x")
    if ratios["restore"] > RESTORE_TARGET:
        missed.append(f"{label}: restore {ratios['restore']:.2f}x of download + restore, target {RESTORE_TARGET}x")
    for s in (peak["backup"], peak["gateway"], peak["restore"]):
        if s.own_rss_mb >= RSS_LIMIT_MB:
            missed.append(f"{label}: {s.what}: the agent's peak RSS {s.own_rss_mb:.1f} MB, not under {RSS_LIMIT_MB} MB")
    return lines, missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--etcd", action="append", help=f"etcd release label, repeatable (default: {' and '.join(DEFAULT_ETCD)})"
    )
    parser.add_argument("--db-mb", type=int, default=220, help="data to put into etcd, in MB (default 220)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step; the best is compared (default 3)")
    args = parser.parse_args()
    found = etcd_binaries.available()
    labels = args.etcd or list(DEFAULT_ETCD)
    missing = [label for label in labels if label not in found]
    if missing:
        print(f"no etcd {', '.join(missing)}: make setup", file=sys.stderr)
        return 2
    report, missed = [], []
    for label in labels:
        with tempfile.TemporaryDirectory(prefix="bench-backup-") as work:
            try:
                lines, misses = run(label, found[label], args.db_mb, Path(work), args.repeat)
            except (RuntimeError, OSError, requests.RequestException) as exc:
                print(f"bench_backup broke on etcd {label}: {exc}", file=sys.stderr)
                return 2
        print("\n".join(lines) + "\n", flush=True)
        report += lines
        missed += misses
    for miss in missed:
        print(f"FAIL: {miss}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
