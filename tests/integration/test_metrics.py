"""The metrics file and CloudWatch against real etcd, moto and the fake IMDS: what a boot, a refused boot and a
backup record, as promtool reads it; a CloudWatch that hangs costs a boot nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3
import pytest

from etcd_aws_cluster.core.metrics import parse as parse_metrics
from etcd_aws_cluster.core.metrics import sample
from tests.harness.fixtures import SimFactory
from tests.harness.moto_server import FAKE_CREDENTIALS
from tests.harness.promtool import check_metrics
from tests.harness.silent_server import SilentServer
from tests.harness.sim import Node
from tests.integration.helpers import boot, run_ok
from tests.integration.test_backup_restore import backed_sim
from tests.integration.test_cli import failed

pytestmark = pytest.mark.integration
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def series(node: Node) -> Series:
    text = node.metrics_file.read_text()
    check_metrics(text)
    return {s.key: s.value for s in parse_metrics(text)}


def value(got: Series, name: str, **labels: str) -> float:
    return got[sample(name, 0, **labels).key]


def test_a_boot_then_a_refused_boot_record_their_decision(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    boot(asg, asg.nodes)
    asg.wait_healthy(3)
    got = series(asg.nodes[0])
    assert value(got, "boot_decision", decision="new") == 1
    assert value(got, "boot_decision", decision="refused") == 0
    assert value(got, "last_run_success", command="run") == 1
    assert value(got, "runs_total", command="run", result="success") == 1
    assert value(got, "asg_instances", asg=asg.name) == 3
    assert value(got, "cluster_members", asg=asg.name) == 3
    assert abs(value(got, "last_run_timestamp_seconds", command="run") - time.time()) < 120

    for victim in asg.nodes[1:]:
        asg.stop_etcd(victim, kill=True)
    replacement = next(n for victim in list(asg.nodes[1:]) for n in asg.terminate(victim))
    failed(asg, replacement, 6, {"ETCD_AWS_CLUSTER_TIMEOUT": "10"})
    got = series(replacement)
    assert value(got, "boot_decision", decision="refused") == 1
    assert value(got, "boot_decision", decision="join") == 0
    assert value(got, "last_run_success", command="run") == 0
    assert value(got, "last_run_exit_code", command="run") == 6
    assert value(got, "refusals_total", command="run", reason="no_quorum") == 1


def test_a_backup_records_its_snapshot_beside_the_boots_series(
    sim: SimFactory, etcd_binary: Path, moto_url: str
) -> None:
    backed = backed_sim(sim, etcd_binary, moto_url)
    asg = backed.asg
    boot(asg, asg.nodes, env=backed.env)
    asg.wait_healthy(3, timeout=60)
    node = asg.nodes[0]
    started = time.time()
    backed.backup(node)
    (info,) = backed.store.list_snapshots()
    got = series(node)
    assert value(got, "backup_last_revision", asg=asg.name) == info.revision
    assert value(got, "backup_last_size_bytes", asg=asg.name) == info.size
    assert value(got, "backup_last_success_timestamp_seconds", asg=asg.name) == pytest.approx(
        info.taken_at.timestamp(), abs=0.01
    )
    assert started - 5 < info.taken_at.timestamp() < time.time()
    assert 0 < value(got, "backup_last_duration_seconds", asg=asg.name) < 60
    assert value(got, "backup_interval_seconds", asg=asg.name) == 3600
    assert value(got, "last_run_success", command="backup") == 1
    assert value(got, "boot_decision", decision="new") == 1  # the boot's series are still there

    before = node.metrics_file.read_text()
    status = asg.run_agent(node, "status", "--json", env=backed.env, timeout=60)
    assert status.returncode == 0, status.stderr
    recorded = json.loads(status.stdout)["metrics"]
    assert {"command": "backup", "value": 1.0} in recorded["last_run_success"]
    assert recorded["backup_last_revision"] == [{"asg": asg.name, "value": float(info.revision)}]
    assert node.metrics_file.read_text() == before  # status is read only: it records nothing


def cloudwatch_metrics(moto_url: str, namespace: str, name: str, asg: str) -> list[float]:
    client = boto3.client(
        "cloudwatch",
        endpoint_url=moto_url,
        region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    now = time.time()
    answer = client.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": "AutoScalingGroupName", "Value": asg}],
        StartTime=now - 600,
        EndTime=now + 600,
        Period=60,
        Statistics=["Maximum"],
    )
    return [float(point["Maximum"]) for point in answer["Datapoints"]]


def test_cloudwatch_gets_the_boot_result_and_the_backup_age(sim: SimFactory, etcd_binary: Path, moto_url: str) -> None:
    backed = backed_sim(sim, etcd_binary, moto_url)
    asg = backed.asg
    cw_env = {**backed.env, "ETCD_AWS_CLUSTER_CLOUDWATCH_NAMESPACE": "Test/Etcd"}
    boot(asg, asg.nodes, env=cw_env)
    asg.wait_healthy(3, timeout=60)
    assert cloudwatch_metrics(moto_url, "Test/Etcd", "BootExitCode", asg.name) == [0.0]
    run_ok(asg, asg.nodes[0], "backup", env=cw_env)
    assert cloudwatch_metrics(moto_url, "Test/Etcd", "BackupAgeSeconds", asg.name) == [0.0]


def test_a_hanging_cloudwatch_costs_a_boot_its_bound_and_never_fails_it(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(1, etcd_binary)
    node = asg.nodes[0]
    with SilentServer() as silent:
        env = {
            "ETCD_AWS_CLUSTER_CLOUDWATCH_NAMESPACE": "Test/Etcd",
            "AWS_ENDPOINT_URL_CLOUDWATCH": silent.url,
            "ETCD_AWS_CLUSTER_TIMEOUT": "20",
        }
        started = time.monotonic()
        result = run_ok(asg, node, env=env, timeout=60)
        took = time.monotonic() - started
        assert silent.connections >= 1  # it did try
    assert took < 12, f"{took:.1f}s"  # the boot, then CloudWatch's bound (app/metrics.CLOUDWATCH_AT_MOST)
    assert "CloudWatch metrics not sent (the run goes on)" in result.stderr
    assert series(node)[sample("boot_decision", 0, decision="new").key] == 1
