"""One run's metrics: what each command records, merged into the shared file under its lock, never failing a run."""

from __future__ import annotations

import datetime
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from etcd_aws_cluster.app import metrics
from etcd_aws_cluster.app.metrics import Finish, RunMetrics, finish, read, run_update
from etcd_aws_cluster.app.settings import DEFAULT_METRICS_FILE, Settings
from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core.metrics import Update, render, sample
from etcd_aws_cluster.core.model import AsgInstance, AsgView, Endpoints
from etcd_aws_cluster.core.records import SnapshotInfo
from etcd_aws_cluster.core.view import build
from tests.harness.promtool import check_metrics


def settings(**values: Any) -> Settings:
    return Settings.model_construct(**{**Settings().model_dump(), **values})


def values(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {s.key: s.value for s in read(path)}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample(name, 0, **labels).key


def end(path: Path | None, command: str, code: int, facts: RunMetrics | None = None, **more: Any) -> Finish:
    return Finish(
        command=command,
        exit_code=code,
        error=more.pop("error", None),
        started=time.monotonic() - 2.0,
        facts=facts or RunMetrics(),
        settings=settings(metrics_file=path, **more),
        environ={},
        time_left=100.0,
    )


def test_each_command_keeps_the_others_series(tmp_path: Path) -> None:
    path = tmp_path / "etcd-aws-cluster.prom"
    finish(end(path, "backup", 0))
    finish(end(path, "reconcile", 5))
    finish(end(path, "backup", 0))
    got = values(path)
    assert got[key("last_run_success", command="backup")] == 1
    assert got[key("last_run_success", command="reconcile")] == 0
    assert got[key("last_run_exit_code", command="reconcile")] == 5
    assert got[key("runs_total", command="backup", result="success")] == 2
    assert got[key("runs_total", command="reconcile", result="etcd")] == 1
    assert 1.5 < got[key("last_run_duration_seconds", command="backup")] < 10
    assert abs(got[key("last_run_timestamp_seconds", command="backup")] - time.time()) < 10
    check_metrics(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o644  # node_exporter runs as another user


def test_a_refused_boot_says_so_and_why(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    facts = RunMetrics()
    facts.decided("join")
    finish(end(path, "run", 0, facts))
    refusal = UnsafeError("the cluster has no quorum: 1 of 3 voting members answer; refusing to join")
    finish(end(path, "run", 6, RunMetrics(), error=refusal))
    got = values(path)
    assert got[key("boot_decision", decision="refused")] == 1
    assert got[key("boot_decision", decision="join")] == 0
    assert sum(v for (name, _), v in got.items() if name.endswith("boot_decision")) == 1
    assert got[key("refusals_total", command="run", reason="no_quorum")] == 1
    assert got[key("runs_total", command="run", result="refused")] == 1
    assert got[key("runs_total", command="run", result="success")] == 1
    check_metrics(path.read_text())


def test_a_failed_boot_is_not_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    finish(end(path, "run", 3))
    got = values(path)
    assert got[key("boot_decision", decision="failed")] == 1
    assert not any(name.endswith("refusals_total") for name, _ in got)


def test_membership_backup_and_restore_facts(tmp_path: Path) -> None:
    asg = AsgView(
        "etcd",
        3,
        (
            AsgInstance("i-00000001", "InService", "10.0.0.1"),
            AsgInstance("i-00000002", "Pending", "10.0.0.2"),
            AsgInstance("i-00000003", "Terminated", None),
        ),
    )
    facts = RunMetrics()
    facts.observed(asg, build(asg, (), Endpoints()), "us-east-1")
    facts.decided("new", members=2)
    taken = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    info = SnapshotInfo("k", taken, 42, 7, "3.5.30", "0" * 64, 123456, (), "i-00000001")
    facts.backup_interval("etcd", 3600)
    facts.backed_up("etcd", info, 1.25)
    facts.restored(41, 3.5, 1700000000.0)
    path = tmp_path / "m.prom"
    finish(end(path, "run", 0, facts))
    got = values(path)
    assert got[key("asg_instances", asg="etcd")] == 2
    assert got[key("cluster_members", asg="etcd")] == 2
    assert got[key("backup_last_success_timestamp_seconds", asg="etcd")] == taken.timestamp()
    assert got[key("backup_last_size_bytes", asg="etcd")] == 123456
    assert got[key("backup_last_revision", asg="etcd")] == 42
    assert got[key("backup_last_duration_seconds", asg="etcd")] == 1.25
    assert got[key("backup_interval_seconds", asg="etcd")] == 3600
    assert got[key("restores_total")] == 1
    assert got[key("restore_last_revision")] == 41
    assert got[key("boot_decision", decision="new")] == 1
    # families no command sets yet (backup --follow, verification, ready) are not written
    assert not any("verif" in name or "delta" in name or name.endswith("_ready") for name, _ in got)
    check_metrics(path.read_text())


def test_no_file_without_its_directory_and_none_when_unset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    finish(end(tmp_path / "missing" / "m.prom", "backup", 0))
    assert not (tmp_path / "missing").exists()
    assert "its directory does not exist" in caplog.text
    finish(end(None, "backup", 0))
    assert list(tmp_path.iterdir()) == []
    assert metrics.metrics_path(settings()) is None or DEFAULT_METRICS_FILE.parent.is_dir()


def test_a_metrics_file_that_cannot_be_written_never_fails_the_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.prom"
    path.mkdir()  # a directory where the file should be: the rename fails
    finish(end(path, "backup", 0))
    assert "not updated" in caplog.text


def test_a_garbled_file_is_rewritten_from_what_parses(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    path.write_text('garbage\netcd_aws_cluster_last_run_success{command="leave"} 1\n\x00\xff')
    finish(end(path, "backup", 0))
    got = values(path)
    assert got[key("last_run_success", command="leave")] == 1
    assert got[key("last_run_success", command="backup")] == 1
    check_metrics(path.read_text())


def _hammer(path: str, command: str, times: int) -> None:
    for _ in range(times):
        update = Update()
        update.increment(sample("runs_total", 1, command=command, result="success"))
        metrics.write(Path(path), update)


def test_concurrent_commands_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    context = multiprocessing.get_context("spawn")  # fork warns (an error here) once any thread runs
    workers = [context.Process(target=_hammer, args=(str(path), c, 40)) for c in ("backup", "reconcile", "leave")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    got = values(path)
    for command in ("backup", "reconcile", "leave"):
        assert got[key("runs_total", command=command, result="success")] == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.prom", "m.prom.lock"]


def test_run_update_names_the_command_and_its_result() -> None:
    update = run_update(RunMetrics(), "leave", 8, None, 1700000000.0, 0.5)
    text = render(update.sets.values())
    assert 'etcd_aws_cluster_last_run_exit_code{command="leave"} 8' in text
    assert 'etcd_aws_cluster_last_run_timestamp_seconds{command="leave"} 1700000000' in text
    assert update.adds[key("runs_total", command="leave", result="lock")].value == 1


def test_a_delta_upload_is_written_while_the_follower_runs_and_the_runs_end_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    metrics.write_now(settings(metrics_file=path), metrics.delta_uploaded("etcd", 1.5, 1234, 1700000000.0))
    got = values(path)
    assert got[key("backup_delta_lag_seconds", asg="etcd")] == 1.5
    assert got[key("backup_delta_last_revision", asg="etcd")] == 1234
    assert got[key("backup_delta_last_success_timestamp_seconds", asg="etcd")] == 1700000000.0
    finish(end(path, "backup", 0))  # the follower's run ends: its own series are added, the delta's stay
    after = values(path)
    assert after[key("backup_delta_last_revision", asg="etcd")] == 1234
    assert after[key("last_run_exit_code", command="backup")] == 0
    check_metrics(path.read_text())


def test_a_delta_metric_that_cannot_be_written_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.prom"
    path.mkdir()
    metrics.write_now(settings(metrics_file=path), metrics.delta_uploaded("etcd", 1.0, 1, 1.0))
    assert "not updated" in caplog.text
