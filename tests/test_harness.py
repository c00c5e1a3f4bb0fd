"""Tests of the test harness itself: fake IMDS, moto server, SimulatedAsg, real etcd from static env files."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from botocore.utils import InstanceMetadataRegionFetcher

from tests.harness import etcd_binaries, etcd_provision, workers
from tests.harness.fake_imds import DOCUMENT_PATH, LIFECYCLE_PATH, TOKEN_PATH, FakeImds
from tests.harness.fixtures import ImdsFactory, SimFactory
from tests.harness.moto_server import MotoServer
from tests.harness.procs import ProcessRegistry, free_port
from tests.harness.scheduling import unit_of_work
from tests.harness.sim import parse_env_file, write_env_file

pytestmark = pytest.mark.integration

TTL = {"X-aws-ec2-metadata-token-ttl-seconds": "60"}


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def _token(http: requests.Session, imds: FakeImds) -> str:
    resp = http.put(imds.url + TOKEN_PATH[1:], headers=TTL, timeout=2)
    assert resp.status_code == 200
    return resp.text


# -- fake IMDS ---------------------------------------------------------------------------------------------
def test_imds_v2_enforces_token(fake_imds: ImdsFactory, http: requests.Session) -> None:
    imds = fake_imds("i-0abc", "127.0.3.7")
    url = imds.url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")

    assert http.get(url + DOCUMENT_PATH[1:], timeout=2).status_code == 401
    assert http.put(url + TOKEN_PATH[1:], timeout=2).status_code == 400
    for bad in ("0", "21601", "abc"):
        headers = {"X-aws-ec2-metadata-token-ttl-seconds": bad}
        assert http.put(url + TOKEN_PATH[1:], headers=headers, timeout=2).status_code == 400
    assert http.get(url + TOKEN_PATH[1:], timeout=2).status_code == 405
    forged = {"X-aws-ec2-metadata-token": "forged"}
    assert http.get(url + DOCUMENT_PATH[1:], headers=forged, timeout=2).status_code == 401

    token = _token(http, imds)
    auth = {"X-aws-ec2-metadata-token": token}
    doc = http.get(url + DOCUMENT_PATH[1:], headers=auth, timeout=2).json()
    assert doc["instanceId"] == "i-0abc"
    assert doc["privateIp"] == "127.0.3.7"
    assert doc["region"] == "us-east-1"
    assert doc["availabilityZone"] == "us-east-1a"
    assert {"accountId", "imageId", "instanceType"} <= doc.keys()
    assert http.get(url + "latest/meta-data/instance-id", headers=auth, timeout=2).text == "i-0abc"
    assert http.get(url + "latest/meta-data/local-ipv4", headers=auth, timeout=2).text == "127.0.3.7"
    assert http.get(url + "latest/meta-data/placement/region", headers=auth, timeout=2).text == "us-east-1"
    assert http.get(url + LIFECYCLE_PATH[1:], headers=auth, timeout=2).text == "InService"
    imds.lifecycle_state = "Terminated"
    assert http.get(url + LIFECYCLE_PATH[1:], headers=auth, timeout=2).text == "Terminated"
    assert "instance-id" in http.get(url + "latest/meta-data/", headers=auth, timeout=2).text.split("\n")
    assert http.get(url + "latest/meta-data/nope", headers=auth, timeout=2).status_code == 404

    imds.document_overrides["instanceId"] = "i-evil\nX=1"
    assert http.get(url + DOCUMENT_PATH[1:], headers=auth, timeout=2).json()["instanceId"] == "i-evil\nX=1"
    imds.expire_tokens()
    assert http.get(url + DOCUMENT_PATH[1:], headers=auth, timeout=2).status_code == 401

    assert imds.count(TOKEN_PATH, "PUT") == 5
    assert imds.tokens_issued == [token]
    assert imds.tokens_used() == {token, "forged"}
    assert imds.count(DOCUMENT_PATH) == 5
    without = [r for r in imds.requests if r.path == DOCUMENT_PATH and not r.token_present]
    assert len(without) == 1 and without[0].status == 401
    assert imds.counts()[f"GET {DOCUMENT_PATH}"] == 5


def test_imds_works_with_botocore_fetcher(fake_imds: ImdsFactory) -> None:
    imds = fake_imds("i-0abc", "127.0.3.7", region="eu-west-3")
    fetcher = InstanceMetadataRegionFetcher(env={}, config={"ec2_metadata_service_endpoint": imds.url})
    assert fetcher.retrieve_region() == "eu-west-3"
    assert imds.count(TOKEN_PATH, "PUT") == 1
    assert all(r.token_present for r in imds.requests if r.method == "GET")


@pytest.mark.parametrize("token_status", [404, 403, 405])
def test_imds_v1(fake_imds: ImdsFactory, http: requests.Session, token_status: int) -> None:
    imds = fake_imds("i-0v1", "127.0.3.8")
    imds.set_mode("v1", token_status)
    assert http.put(imds.url + TOKEN_PATH[1:], headers=TTL, timeout=2).status_code == token_status
    resp = http.get(imds.url + DOCUMENT_PATH[1:], timeout=2)
    assert resp.status_code == 200
    assert resp.json()["instanceId"] == "i-0v1"
    assert imds.requests[-1].token_present is False


@pytest.mark.parametrize("status", [500, 401, 503])
def test_imds_status_mode(fake_imds: ImdsFactory, http: requests.Session, status: int) -> None:
    imds = fake_imds()
    imds.set_mode("status", status)
    assert http.put(imds.url + TOKEN_PATH[1:], headers=TTL, timeout=2).status_code == status
    assert http.get(imds.url + DOCUMENT_PATH[1:], timeout=2).status_code == status
    imds.mode = "v2"
    assert http.get(imds.url + DOCUMENT_PATH[1:], timeout=2).status_code == 401


def test_imds_hang_mode_answers_nothing_and_stops_fast(fake_imds: ImdsFactory) -> None:
    imds = fake_imds()
    imds.mode = "hang"
    with socket.create_connection(("127.0.0.1", imds.port), timeout=5) as sock:
        sock.sendall(b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n")
        sock.settimeout(1.0)
        started = time.monotonic()
        with pytest.raises(socket.timeout):
            sock.recv(1)
        assert time.monotonic() - started >= 0.9
        assert imds.count(TOKEN_PATH) == 1 and imds.requests[0].status is None
        started = time.monotonic()
        imds.stop()
        assert time.monotonic() - started < 3
        sock.settimeout(3)
        assert sock.recv(1) == b""  # closed without an answer
    assert not imds.running


def test_imds_hang_released_by_mode_change(fake_imds: ImdsFactory, http: requests.Session) -> None:
    imds = fake_imds()
    imds.mode = "hang"
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(imds.url + DOCUMENT_PATH[1:], timeout=(1, 0.5))
    imds.mode = "v2"
    assert http.put(imds.url + TOKEN_PATH[1:], headers=TTL, timeout=2).status_code == 200


# -- processes ---------------------------------------------------------------------------------------------
def test_process_registry(tmp_path: Path) -> None:
    with ProcessRegistry() as registry:
        sleeper = registry.start(
            [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
            log_path=tmp_path / "sleep.log",
        )
        assert registry.is_running(sleeper.pid)
        deadline = time.monotonic() + 10
        while "up" not in (tmp_path / "sleep.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        registry.pause(sleeper.pid)
        registry.resume(sleeper.pid)
        registry.pause(sleeper.pid)
        started = time.monotonic()
        assert registry.stop(sleeper.pid) == -15  # SIGTERM reaches a stopped process too
        assert time.monotonic() - started < 5
        assert sleeper.pid not in registry.pids()

        done = registry.run(
            [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"], timeout=30
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")
        with pytest.raises(subprocess.TimeoutExpired):
            registry.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
        assert registry.pids() == []
        left = registry.start([sys.executable, "-c", "import time; time.sleep(60)"])
    assert left.poll() is not None  # stopped on exit of the with block
    port = free_port("127.0.0.1", also_free_on=["127.0.9.9"])
    assert 1024 < port < 65536


_BUSY_THREADS = """
import threading
def spin():
    while True:
        pass
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
print("up", flush=True)
threading.Event().wait()
"""


def _thread_states(pid: int) -> list[str]:
    return [(task / "stat").read_text().rpartition(")")[2].split()[0] for task in Path(f"/proc/{pid}/task").iterdir()]


def test_pause_returns_once_every_thread_is_stopped(tmp_path: Path) -> None:
    # SIGSTOP is only queued when kill() returns: a thread busy on another CPU runs on for a moment, as an etcd
    # "paused" by a test once answered a health check.
    with ProcessRegistry() as registry:
        busy = registry.start([sys.executable, "-c", _BUSY_THREADS], log_path=tmp_path / "busy.log")
        deadline = time.monotonic() + 10
        while "up" not in (tmp_path / "busy.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(20):
            registry.pause(busy.pid)
            states = _thread_states(busy.pid)
            assert len(states) == 5 and set(states) == {"T"}, states
            registry.resume(busy.pid)


@pytest.mark.parametrize("count", [1, 2, 4, 7])
def test_xdist_workers_get_their_own_addresses_and_ports(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    serial = (workers.second_octet(), workers.port_slice(20000, 32768))
    assert serial == (0, (20000, 32768))
    octets, slices = [], []
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    for worker in range(count):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
        octets.append(workers.second_octet())
        slices.append(workers.port_slice(20000, 32768))
    assert octets == list(range(1, count + 1))  # a worker never uses a serial run's 127.0.K.L either
    ports = [set(range(*piece)) for piece in slices]
    assert all(len(piece) >= (32768 - 20000) // (count + 1) for piece in ports)  # a slice is left for serial runs
    for i, piece in enumerate(ports):
        assert piece and min(piece) >= 20000 and max(piece) < 32768
        assert all(not piece & other for other in ports[i + 1 :])


# -- moto + SimulatedAsg -----------------------------------------------------------------------------------
def test_moto_server_starts_and_resets(tmp_path: Path) -> None:
    with MotoServer(log_dir=tmp_path) as moto:
        assert moto.url.startswith("http://127.0.0.1:")
        ec2 = boto3.client(
            "ec2",
            endpoint_url=moto.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        try:
            ec2.create_vpc(CidrBlock="127.0.0.0/16")
            assert len(ec2.describe_vpcs()["Vpcs"]) == 2  # + the default VPC
            moto.reset()
            assert len(ec2.describe_vpcs()["Vpcs"]) == 1
        finally:
            ec2.close()
        pid = moto.pid
        assert pid is not None
    assert moto.pid is None


def test_sim_instances_have_distinct_loopback_ips(sim: SimFactory) -> None:
    asg = sim(4)
    nodes = asg.nodes
    assert len(nodes) == 4
    ips = [n.ip for n in nodes]
    assert len(set(ips)) == 4
    assert all(ipaddress.ip_address(ip).is_loopback for ip in ips)
    # this xdist worker's own /16 (127.0.0.0/16 in a serial run): the workers' sims never meet
    assert all(ipaddress.ip_address(ip) in ipaddress.ip_network(f"127.{workers.second_octet()}.0.0/16") for ip in ips)
    assert len({n.instance_id for n in nodes}) == 4
    assert all(n.lifecycle_state == "InService" for n in nodes)
    assert asg.client_port != asg.peer_port
    group = asg.describe()
    assert group["DesiredCapacity"] == 4
    assert sorted(i["InstanceId"] for i in group["Instances"]) == sorted(n.instance_id for n in nodes)

    with requests.Session() as http:
        http.trust_env = False
        for node in nodes:
            token = _token(http, node.imds)
            doc = http.get(
                node.imds.url + DOCUMENT_PATH[1:], headers={"X-aws-ec2-metadata-token": token}, timeout=2
            ).json()
            assert (doc["instanceId"], doc["privateIp"], doc["region"]) == (node.instance_id, node.ip, "us-east-1")

    env = asg.agent_env(nodes[0], {"ETCD_AWS_CLUSTER_EXTRA": "1"})
    assert env["AWS_ENDPOINT_URL"] == asg.moto_url
    assert env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] == nodes[0].imds.url
    assert "AWS_EC2_METADATA_DISABLED" not in env and "AWS_CA_BUNDLE" not in env
    assert env["ETCD_AWS_CLUSTER_DATA_DIR"] == str(nodes[0].data_dir)
    assert env["ETCD_AWS_CLUSTER_OUTPUT"] == str(nodes[0].env_file)
    assert env["ETCD_AWS_CLUSTER_LOCK_FILE"] == str(nodes[0].lock_file)
    assert env["ETCD_AWS_CLUSTER_CLIENT_PORT"] == str(asg.client_port)
    assert env["ETCD_AWS_CLUSTER_PEER_PORT"] == str(asg.peer_port)
    assert env["ETCD_AWS_CLUSTER_LISTEN_LOOPBACK"] == "false"
    assert env["ETCD_AWS_CLUSTER_CONFIG"] == "/nonexistent/config.toml"
    assert env["ETCD_AWS_CLUSTER_EXTRA"] == "1"


# What an agent does first, with nothing but the environment agent_env() gives it.
_WHO_AM_I = r"""
import json, os, boto3, requests
imds = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"].rstrip("/")
s = requests.Session(); s.trust_env = False
tok = s.put(imds + "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}, timeout=2).text
doc = s.get(imds + "/latest/dynamic/instance-identity/document",
            headers={"X-aws-ec2-metadata-token": tok}, timeout=2).json()
asg = boto3.client("autoscaling", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
me = asg.describe_auto_scaling_instances(InstanceIds=[doc["instanceId"]])["AutoScalingInstances"][0]
print(json.dumps({"id": doc["instanceId"], "ip": doc["privateIp"], "group": me["AutoScalingGroupName"]}))
"""


def test_agent_env_is_enough_to_find_the_asg(sim: SimFactory) -> None:
    asg = sim(2)
    node = asg.nodes[1]
    done = asg.registry.run([sys.executable, "-c", _WHO_AM_I], timeout=30, env=asg.agent_env(node))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": node.instance_id, "ip": node.ip, "group": asg.name}
    assert node.imds.count(TOKEN_PATH, "PUT") == 1


def test_sim_terminate_scale_standby_and_tag_filters(sim: SimFactory) -> None:
    asg = sim(3)
    first, second, third = asg.nodes
    ips_before = {n.ip for n in asg.nodes}

    new = asg.terminate(first)  # replace=True: moto launches the replacement synchronously
    assert len(new) == 1 and new[0].ip not in ips_before
    assert first.terminated and not first.imds.running and first in asg.retired
    assert [n.instance_id for n in asg.nodes] == [second.instance_id, third.instance_id, new[0].instance_id]
    assert asg.desired_capacity == 3

    assert asg.terminate(second, replace=False) == []
    assert len(asg.nodes) == 2 and asg.desired_capacity == 2

    added = asg.scale_to(5)
    assert len(added) == 3 and len(asg.nodes) == 5
    asg.scale_to(3)
    assert len(asg.nodes) == 3 and len(asg.retired) == 4

    node = asg.nodes[0]
    replacement = asg.enter_standby(node)
    assert node.lifecycle_state == "Standby" and node not in asg.nodes and node in asg.all_nodes
    assert len(replacement) == 1 and len(asg.nodes) == 3
    assert node.imds.lifecycle_state == "Standby"

    groups = asg.autoscaling.describe_auto_scaling_groups(
        Filters=[{"Name": "tag:etcd-aws-cluster", "Values": [asg.name]}]
    )["AutoScalingGroups"]
    assert [g["AutoScalingGroupName"] for g in groups] == [asg.name]
    groups = asg.autoscaling.describe_auto_scaling_groups(
        Filters=[{"Name": "tag:etcd-aws-cluster", "Values": ["other"]}]
    )["AutoScalingGroups"]
    assert groups == []


def test_env_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "env"
    write_env_file(path, {"ETCD_NAME": "i-1", "ETCD_INITIAL_CLUSTER": "a=http://127.0.0.1:2380,b=http://x:1"})
    assert parse_env_file(path) == {"ETCD_NAME": "i-1", "ETCD_INITIAL_CLUSTER": "a=http://127.0.0.1:2380,b=http://x:1"}
    path.write_text("# comment\n\n; other\nA = b \n")
    assert parse_env_file(path) == {"A": "b"}
    path.write_text("no equals sign\n")
    with pytest.raises(ValueError):
        parse_env_file(path)


# -- real etcd ---------------------------------------------------------------------------------------------
def test_every_etcd_of_the_matrix_is_there_with_its_tools() -> None:
    assert etcd_binaries.missing() == [], "run `make setup`"
    for label, release in etcd_binaries.releases().items():
        assert release.version == label or release.version.startswith(label + "."), release
        assert release.etcdctl is not None, release
        ctl = subprocess.run([release.etcdctl, "version"], capture_output=True, text=True, timeout=20, check=False)
        assert f"etcdctl version: {release.version}" in ctl.stdout, ctl.stdout + ctl.stderr
        if label == "3.4":  # etcdutl came with 3.5; 3.4 restores with `etcdctl snapshot restore`
            assert release.etcdutl is None
            continue
        assert release.etcdutl is not None, release
        utl = subprocess.run([release.etcdutl, "version"], capture_output=True, text=True, timeout=20, check=False)
        assert f"etcdutl version: {release.version}" in utl.stdout, utl.stdout + utl.stderr


def test_newest_etcd_is_the_newest_release() -> None:
    newest = etcd_binaries.newest()
    assert newest is not None and newest == etcd_binaries.release("3.7").etcd
    assert etcd_binaries.has_v2_api(etcd_binaries.release("3.5.30").etcd)
    assert not etcd_binaries.has_v2_api(newest)


@pytest.mark.etcd_matrix
def test_static_three_node_cluster(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(3, etcd_binary)
    nodes = asg.nodes
    asg.write_static_env()
    env = parse_env_file(nodes[0].env_file)
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    assert env["ETCD_INITIAL_CLUSTER"] == ",".join(
        f"{n.instance_id}=http://{n.ip}:{asg.peer_port}" for n in sorted(nodes, key=lambda n: n.instance_id)
    )
    for node in nodes:
        asg.start_etcd(node)
    members = asg.wait_healthy(3, timeout=20)
    assert sorted(m["name"] for m in members) == sorted(n.instance_id for n in nodes)
    assert asg.member_names() == sorted(n.instance_id for n in nodes)
    assert {u for m in members for u in m["clientURLs"]} == {n.client_url for n in nodes}

    asg.put("k", "v")
    assert asg.get("k", nodes[2]) == "v"
    assert asg.get("missing") is None

    # a hung etcd: the port is open but nothing answers
    asg.pause_etcd(nodes[0])
    assert not asg.health(nodes[0], timeout=0.5)
    assert nodes[0] not in asg.running_nodes()
    assert len(asg.members(nodes[1])) == 3
    asg.resume_etcd(nodes[0])
    asg.wait_healthy(3, timeout=10)

    # terminating an instance stops its etcd; moto replaces the instance (no etcd there yet)
    pid = nodes[2].etcd_pid
    assert pid is not None
    (replacement,) = asg.terminate(nodes[2], crash=True)
    assert not asg.registry.is_running(pid) and nodes[2].etcd_pid is None
    assert replacement.etcd_pid is None and not replacement.env_file.exists()
    assert len(asg.members(nodes[0])) == 3  # etcd still lists the dead member: the agent's job to fix

    # closing keeps the logs for post-mortems but frees the etcd data (64 MB of preallocated WAL each)
    stale = nodes[0].workdir / "data.stale-20260101T000000Z"
    stale.mkdir()
    asg.close()
    assert nodes[0].etcd_log.stat().st_size > 0
    assert not nodes[0].data_dir.exists() and not stale.exists() and not nodes[2].data_dir.exists()


def test_sid_sources_come_from_the_system_sources_with_only_the_suite_changed() -> None:
    system = (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n"
    )
    assert etcd_provision._sid_sources(system) == (
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: sid\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    with pytest.raises(etcd_provision.ProvisionError):
        etcd_provision._sid_sources("Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n")


def test_provisioning_fetches_from_sid_while_go_builds_and_reports_each_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EAC_TEST_CACHE", str(tmp_path))
    builds = [etcd_provision.GoBuild(etcd_provision.GO_BUILD_DIR / d, f"{d[1:]}.99") for d in ("v3.6", "v3.7")]
    monkeypatch.setattr(etcd_provision, "go_builds", lambda: builds)
    monkeypatch.setattr(etcd_provision, "download_modules", lambda build: None)
    # the fetch from sid and the first build wait for each other: one after the other, they would break the barrier
    together = threading.Barrier(2, timeout=10)
    building: list[str] = []

    def fake_build(build: etcd_provision.GoBuild, scratch: Path) -> None:
        building.append(build.version)
        assert building == ["3.6.99"] or etcd_provision.is_provisioned("3.6.99"), "the builds go one at a time"
        if build.version == "3.6.99":
            together.wait()
        out = scratch / "bin"
        out.mkdir()
        for tool in etcd_provision.TOOLS:
            (out / tool).write_text(f"#!/bin/sh\necho 'etcd Version: {build.version}'\n")
            (out / tool).chmod(0o755)
        etcd_provision._install_release(build.version, out)

    def failing_fetch(scratch: Path) -> None:
        together.wait()
        raise etcd_provision.ProvisionError("sid is unreachable")

    monkeypatch.setattr(etcd_provision, "build_with_go", fake_build)
    monkeypatch.setattr(etcd_provision, "fetch_from_sid", failing_fetch)

    errors = etcd_provision.provision_all()

    assert errors == [f"etcd {etcd_provision.SID_ETCD_VERSION}: FAILED: sid is unreachable"]
    assert building == ["3.6.99", "3.7.99"]
    assert etcd_provision.is_provisioned("3.6.99") and etcd_provision.is_provisioned("3.7.99")
    assert sorted(p.name for p in etcd_provision.cache_root().iterdir()) == [".lock", "3.6.99", "3.7.99"]


def test_xdist_schedule_keeps_packaging_on_one_worker_and_spreads_the_rest() -> None:
    packaging = {unit_of_work(f"tests/test_packaging.py::{name}") for name in ("test_a", "test_b[trixie]")}
    others = {unit_of_work(f"tests/integration/test_agent.py::{name}") for name in ("test_a", "test_b[etcd3.4]")}
    assert packaging == {"tests/test_packaging.py"}
    assert len(others) == 2
