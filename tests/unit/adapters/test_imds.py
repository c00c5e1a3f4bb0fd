"""The IMDS adapter against the fake IMDS: token flow, fallback, faults, all bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from etcd_aws_cluster.adapters.imds import DEFAULT_ENDPOINT, MAX_ANSWER_BYTES, Imds, endpoint_from
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import MetadataError, UnsafeError
from tests.harness.fake_imds import DOCUMENT_PATH, TOKEN_PATH, FakeImds
from tests.harness.fixtures import ImdsFactory

ID, IP = "i-0123456789abcdef0", "127.0.3.9"


_sessions: list[requests.Session] = []


@pytest.fixture(autouse=True)
def _sessions_closed() -> Iterator[None]:
    """Each test's HTTP sessions are closed after it: an old urllib3 (Debian 12's) warns about a pooled socket
    left to the garbage collector, and warnings are errors here."""
    yield
    while _sessions:
        _sessions.pop().close()


def client(imds: FakeImds, *, allow_v1: bool = True, timeout: float = 0.5, deadline: float = 10) -> Imds:
    session = requests.Session()
    _sessions.append(session)
    return Imds(session, Deadline(deadline), endpoint=imds.url, timeout=timeout, allow_v1=allow_v1)


def test_identity_with_one_token_reused(fake_imds: ImdsFactory) -> None:
    imds = fake_imds(ID, IP, region="eu-central-1")
    agent = client(imds)
    me = agent.identity()
    agent.identity()
    assert (me.instance_id, me.private_ip, me.region) == (ID, IP, "eu-central-1")
    assert imds.count(TOKEN_PATH, "PUT") == 1
    assert all(r.token_present for r in imds.requests if r.path == DOCUMENT_PATH)


def test_expired_token_is_renewed_once(fake_imds: ImdsFactory) -> None:
    imds = fake_imds(ID, IP)
    agent = client(imds)
    agent.identity()
    imds.expire_tokens()
    assert agent.identity().instance_id == ID
    assert imds.count(TOKEN_PATH, "PUT") == 2


@pytest.mark.parametrize("status", [403, 404, 405])
def test_falls_back_to_v1_only_when_tokens_are_unsupported(fake_imds: ImdsFactory, status: int) -> None:
    imds = fake_imds(ID, IP)
    imds.set_mode("v1", status)
    assert client(imds).identity().instance_id == ID
    with pytest.raises(MetadataError, match="imds_v1_fallback is off"):
        client(imds, allow_v1=False).identity()


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_retried_then_reported(fake_imds: ImdsFactory, status: int) -> None:
    imds = fake_imds(ID, IP)
    imds.set_mode("status", status)
    with pytest.raises(MetadataError, match=f"HTTP {status}"):
        client(imds).identity()
    assert imds.count(TOKEN_PATH, "PUT") == 3


def test_hanging_imds_costs_bounded_time(fake_imds: ImdsFactory) -> None:
    imds = fake_imds(ID, IP)
    imds.set_mode("hang")
    started = time.monotonic()
    with pytest.raises(MetadataError, match="did not answer"):
        client(imds, timeout=0.3, deadline=5).identity()
    assert time.monotonic() - started < 3  # three attempts of 0.3 s plus short backoff


def test_deadline_caps_the_retries(fake_imds: ImdsFactory) -> None:
    imds = fake_imds(ID, IP)
    imds.set_mode("hang")
    started = time.monotonic()
    with pytest.raises(MetadataError):
        client(imds, timeout=5, deadline=0.5).identity()
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("key", "value"),
    [("instanceId", "i-123\nEVIL=1"), ("privateIp", "10.0.0.1; rm -rf /"), ("region", "us-east-1 $(id)")],
)
def test_hostile_identity_values_are_refused(fake_imds: ImdsFactory, key: str, value: str) -> None:
    imds = fake_imds(ID, IP)
    imds.document_overrides[key] = value
    with pytest.raises(UnsafeError, match="refusing"):
        client(imds).identity()


def test_malformed_document(fake_imds: ImdsFactory) -> None:
    imds = fake_imds(ID, IP)
    imds.path_overrides[DOCUMENT_PATH] = "not json"
    with pytest.raises(MetadataError, match="not JSON"):
        client(imds).identity()


def test_endpoint_from_environment() -> None:
    assert endpoint_from({}) == DEFAULT_ENDPOINT
    assert endpoint_from({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9"}) == "http://127.0.0.1:9/"
    with pytest.raises(MetadataError, match="AWS_EC2_METADATA_DISABLED"):
        endpoint_from({"AWS_EC2_METADATA_DISABLED": "true"})


def test_an_oversized_answer_is_refused_not_read_whole(fake_imds: ImdsFactory) -> None:
    imds = fake_imds(ID, IP)
    imds.path_overrides[DOCUMENT_PATH] = "x" * (MAX_ANSWER_BYTES + 1)
    with pytest.raises(MetadataError, match=r"instance-identity/document: its answer .* the 65536 (bytes )?allowed"):
        client(imds).identity()
