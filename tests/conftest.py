from __future__ import annotations

import logging
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
