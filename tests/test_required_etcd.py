"""A run that needs real etcd fails when a required version is missing, instead of dropping its tests."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from tests.harness import etcd_binaries, fixtures


def session_of(*fixture_names: tuple[str, ...]) -> pytest.Session:
    items = [types.SimpleNamespace(fixturenames=names) for names in fixture_names]
    return types.SimpleNamespace(items=items)  # type: ignore[return-value]


@pytest.fixture
def only_etcd_34(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd_binaries, "available", lambda: {"3.4": Path("/usr/bin/etcd")})


@pytest.mark.usefixtures("only_etcd_34")
def test_a_missing_required_version_fails_a_run_that_needs_etcd() -> None:
    with pytest.raises(pytest.UsageError, match=r"etcd 3\.5, 3\.5\.30, 3\.6, 3\.7 not found"):
        fixtures.pytest_collection_finish(session_of(("sim",), ("sim", "etcd_binary")))


@pytest.mark.usefixtures("only_etcd_34")
def test_a_run_without_etcd_tests_does_not_need_it() -> None:
    fixtures.pytest_collection_finish(session_of(("tmp_path",), ("sim",)))


def test_the_whole_matrix_is_required() -> None:
    assert set(etcd_binaries.REQUIRED) == set(etcd_binaries.MATRIX) >= {"3.4", "3.5", "3.6", "3.7"}
