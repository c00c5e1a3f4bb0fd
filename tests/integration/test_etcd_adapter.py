"""The etcd adapter against real etcd: the v3 gateway on every release, v2 (--enable-v2) on those before 3.6."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from etcd_aws_cluster.adapters.etcd import MAX_ANSWER_BYTES, EtcdClient, EtcdFailure, EtcdRequestError, Tls
from etcd_aws_cluster.base.errors import UnsafeError
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
    assert caught.value.failure is EtcdFailure.TIMEOUT
    assert time.monotonic() - started < 1.5


def test_refused_port_is_recognised() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(EtcdRequestError) as caught:
        EtcdClient(requests.Session(), Tls(), "auto").list_members(f"http://127.0.0.1:{port}", 1)
    assert caught.value.failure is EtcdFailure.REFUSED


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"not json", EtcdRequestError, "malformed JSON"),
        (b'{"members": "x"}', EtcdRequestError, "malformed member list"),
        (b'{"members": [{"ID": "1", "name": "a\\nb", "peerURLs": []}]}', UnsafeError, "member name"),
        (b'{"members": [{"ID": "1", "name": "a", "peerURLs": ["http://x:1/$(id)"]}]}', UnsafeError, "URL"),
    ],
)
def read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), 0
    )
    while len(body) < length:
        body += conn.recv(65536)


def serve_once(raw: bytes) -> tuple[str, Callable[[], None]]:
    """A loopback server that answers one request with `raw` (status line, headers and body); returns its URL and
    the function that stops it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer() -> None:
        conn, _ = server.accept()
        read_request(conn)  # all of it: closing with unread bytes would reset the connection mid-answer
        with contextlib.suppress(OSError):  # the client may hang up once it has read enough
            conn.sendall(raw)
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()

    def stop() -> None:
        thread.join(2)
        server.close()

    return f"http://127.0.0.1:{server.getsockname()[1]}", stop


def json_answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def chunked_answer(size: int) -> bytes:
    """A 200 without Content-Length: its body ends only where the stream ends."""
    chunk = b"x" * 65536
    frames = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(size // len(chunk)))
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + frames + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        (json_answer(b"not json"), EtcdRequestError, "malformed JSON"),
        (json_answer(b'{"members": "x"}'), EtcdRequestError, "malformed member list"),
        (json_answer(b'{"members": [{"ID": "1", "name": "a\\nb", "peerURLs": []}]}'), UnsafeError, "member name"),
        (
            json_answer(b'{"members": [{"ID": "1", "name": "a", "peerURLs": ["http://x:1/$(id)"]}]}'),
            UnsafeError,
            "URL",
        ),
        (json_answer(b'{"members": [{"ID": "1", "isLearner": "yes"}]}'), EtcdRequestError, "not true or false"),
        (json_answer(b'{"members": [{"ID": "1", "isLearner": 1}]}'), EtcdRequestError, "not true or false"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n{}", EtcdRequestError, "declares 999999999"),
        (chunked_answer(MAX_ANSWER_BYTES + 65536), EtcdRequestError, "longer than the 4194304 bytes"),
    ],
    ids=["not-json", "members", "name", "url", "learner-yes", "learner-1", "huge-length", "endless-body"],
)
def test_malformed_hostile_or_huge_answers_are_refused(raw: bytes, error: type[Exception], message: str) -> None:
    url, stop = serve_once(raw)
    try:
        with pytest.raises(error, match=message):
            EtcdClient(requests.Session(), Tls(), "v3").list_members(url, 5)
    finally:
        stop()


@pytest.mark.parametrize(("flag", "expected"), [(b"true", True), (b'"true"', True), (b'"false"', False)])
def test_is_learner_as_bool_or_string(flag: bytes, expected: bool) -> None:
    url, stop = serve_once(json_answer(b'{"members": [{"ID": "1", "isLearner": %s}]}' % flag))
    try:
        (member,) = EtcdClient(requests.Session(), Tls(), "v3").list_members(url, 2).members
    finally:
        stop()
    assert member.is_learner is expected


def test_linearizable_member_list(sim: SimFactory, etcd_binary: Path) -> None:
    """3.5 answers a linearizable list only with a quorum; 3.4 ignores the field and answers its own view."""
    asg = sim(3, etcd_binary)
    asg.bootstrap_static()
    client = EtcdClient(requests.Session(), Tls(), "v3")
    url = asg.nodes[0].client_url
    listed = client.list_members(url, 2, linearizable=True)
    assert sorted(m.name for m in listed.members) == sorted(n.instance_id for n in asg.nodes)
    for node in asg.nodes[1:]:
        asg.stop_etcd(node)
    assert len(client.list_members(url, 2).members) == 3  # serializable: this member's own view
    if etcd_binaries.version_of(etcd_binary).startswith("3.4."):  # type: ignore[union-attr]
        assert len(client.list_members(url, 2, linearizable=True).members) == 3
    else:
        with pytest.raises(EtcdRequestError) as caught:
            client.list_members(url, 2, linearizable=True)
        assert caught.value.transient


@pytest.mark.etcd_also("3.6")
def test_status_reports_the_db_size_a_snapshot_streams(sim: SimFactory, etcd_binary: Path) -> None:
    asg = sim(1, etcd_binary)
    asg.bootstrap_static()
    client = EtcdClient(requests.Session(), Tls(), "v3")
    url = asg.nodes[0].client_url
    before = client.endpoint_status(url, 2)
    assert before is not None and before.db_size > 0
    for i in range(40):  # ~2.5 MB more in the backend
        asg.put(f"/big/{i}", "x" * 64 * 1024)
    # The backend commits in batches (every 100 ms, or 10,000 writes): on a fast host the 40 puts end before the
    # first commit, so the db grows a moment later
    waited = time.monotonic() + 5
    while (after := client.endpoint_status(url, 2)) is not None and after.db_size <= before.db_size + 1_000_000:
        assert time.monotonic() < waited, (before, after)
        time.sleep(0.05)
    assert after is not None
    streamed = sum(len(chunk) for chunk in client.snapshot(url, 5))
    assert streamed >= after.db_size  # the snapshot streams the db as it is by then
