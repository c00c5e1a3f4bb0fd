from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import traceback
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.harness.fixtures"]


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which compat's venvs do without
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``-n N`` (``--dist load``): each test to a free worker, but tests/test_packaging.py whole on one."""
    if config.getvalue("dist") != "load":
        return None  # another --dist asked for by hand: xdist's own
    from tests.harness.scheduling import LoadWithOneWorkerModules

    return LoadWithOneWorkerModules(config, log)


@pytest.fixture(autouse=True)
def _package_logger_restored() -> Iterator[None]:
    """A test that runs the CLI in-process configures the package logger (no propagation, its own handler):
    undo that, so that later tests' caplog still sees the package's lines whatever the order."""
    logger = logging.getLogger("etcd_aws_cluster")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


# Nothing in the tests may reach the real instance metadata service (or any link-local address): a connection
# there is refused at once and fails the test that made it, wherever in the stack (botocore's credential chain,
# requests) it was attempted.
_LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
_link_local_attempts: list[str] = []
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_link_local(address: object) -> bool:
    if not isinstance(address, tuple) or not address or not isinstance(address[0], str):
        return False
    try:
        return ipaddress.ip_address(address[0]) in _LINK_LOCAL
    except ValueError:
        return False


def _refuse_link_local(address: object) -> None:
    if _is_link_local(address):
        _link_local_attempts.append(f"{address}\n{''.join(traceback.format_stack(limit=25))}")
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"tests never connect to {address} (link-local)")


def _guarded_connect(self: socket.socket, address: object) -> None:
    _refuse_link_local(address)
    _real_connect(self, address)  # type: ignore[arg-type]


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    _refuse_link_local(address)
    return _real_connect_ex(self, address)  # type: ignore[arg-type]


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _no_link_local_connection() -> Iterator[None]:
    del _link_local_attempts[:]
    yield
    assert not _link_local_attempts, "a connection to a link-local address was attempted:\n" + _link_local_attempts[0]
