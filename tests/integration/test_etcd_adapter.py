"""The etcd adapter against real etcd: the v3 gateway on every release, v2 (--enable-v2) on those before 3.6."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from etcd_aws_cluster.errors import UnsafeError
from etcd_aws_cluster.etcd import EtcdClient, EtcdRequestError, Tls
from tests.harness import etcd_binaries
from tests.harness.fixtures import SimFactory
from tests.harness.sim import SimulatedAsg

pytestmark = pytest.mark.integration


def wait_add(client: EtcdClient, url: str, peer: str, deadline: float = 20) -> int:
    """Add a member, retrying while etcd 3.4's strict reconfig check says "not now"."""
    end = time.monotonic() + deadline
    while True:
        try:
            return client.add_member(url, [peer], 2).id
        except EtcdRequestError as exc:
            if not exc.transient or time.monotonic() > end:
                raise
            time.sleep(0.5)


@pytest.mark.etcd_matrix
@pytest.mark.parametrize("api", ["auto", "v3"])
def test_list_add_remove(sim: SimFactory, etcd_binary: Path, api: str) -> None:
    check_list_add_remove(sim(3, etcd_binary), api)


@pytest.mark.etcd_v2
def test_list_add_remove_over_v2(sim: SimFactory, etcd_binary: Path) -> None:
    check_list_add_remove(sim(3, etcd_binary, etcd_env={"ETCD_ENABLE_V2": "true"}), "v2")


def check_list_add_remove(asg: SimulatedAsg, api: str) -> None:
    raw = asg.bootstrap_static()
    client = EtcdClient(requests.Session(), Tls(), api)
    url = asg.nodes[0].client_url
    listing = client.list_members(url, 2)
    assert sorted(m.name for m in listing.members) == sorted(n.instance_id for n in asg.nodes)
    assert {m.id for m in listing.members} == {int(m["ID"]) for m in raw}
    assert listing.cluster_id == int(asg.member_list()["header"]["cluster_id"])
    assert all(m.started and not m.is_learner for m in listing.members)

    new_peer = "http://127.0.99.1:2380"
    added = wait_add(client, url, new_peer)
    after = {m.id: m for m in client.list_members(url, 2).members}
    assert after[added].peer_urls == (new_peer,)
    assert not after[added].started
    assert client.remove_member(url, added, 5) is True
    assert client.remove_member(url, added, 5) is False  # idempotent: already gone
    assert added not in {m.id for m in client.list_members(url, 2).members}


def test_v2_without_enable_v2_is_a_404_not_no_cluster(sim: SimFactory) -> None:
    binary = etcd_binaries.etcd34()
    if binary is None:
        pytest.skip("etcd 3.4 (Debian etcd-server) not installed")
    asg = sim(1, binary)
    asg.bootstrap_static()
    with pytest.raises(EtcdRequestError) as caught:
        EtcdClient(requests.Session(), Tls(), "v2").list_members(asg.nodes[0].client_url, 2)
    assert caught.value.status == 404


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers, like a SIGSTOPped etcd."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


def test_hung_peer_costs_one_timeout(silent_server: str) -> None:
    started = time.monotonic()
    with pytest.raises(EtcdRequestError) as caught:
        EtcdClient(requests.Session(), Tls(), "auto").list_members(silent_server, 0.5)
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 1.5


def test_refused_port_is_recognised() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(EtcdRequestError) as caught:
        EtcdClient(requests.Session(), Tls(), "auto").list_members(f"http://127.0.0.1:{port}", 1)
    assert caught.value.kind == "refused"


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"not json", EtcdRequestError, "malformed JSON"),
        (b'{"members": "x"}', EtcdRequestError, "malformed member list"),
        (b'{"members": [{"ID": "1", "name": "a\\nb", "peerURLs": []}]}', UnsafeError, "member name"),
        (b'{"members": [{"ID": "1", "name": "a", "peerURLs": ["http://x:1/$(id)"]}]}', UnsafeError, "URL"),
    ],
)
def test_malformed_or_hostile_answers_are_refused(body: bytes, error: type[Exception], message: str) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        with pytest.raises(error, match=message):
            EtcdClient(requests.Session(), Tls(), "v3").list_members(url, 2)
    finally:
        thread.join(2)
        server.close()
