from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.harness.fixtures"]


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
