"""The benchmark judges its targets from their data: a missed one fails, one needing more CPUs says so."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def results(bench: ModuleType, wall: float, s3_extra: float = 0.8) -> object:
    def runs(seconds: float, n: int = 3) -> list[object]:
        return [bench.Run("agent", seconds, 0, 60 * 1024, 0.3) for _ in range(n)]

    res = bench.Results()
    res.bootstrap = {"3 at once": runs(wall), "3 one at a time": runs(wall)}
    res.reps = {"3 at once": 1, "3 one at a time": 1}
    res.rerun = runs(wall)
    res.hung = [("member rerun", k, runs(wall + k * 0.5), "member") for k in (0, 1, 2)]
    res.startup = {"--help": runs(0.05)}
    res.s3_join = {"healthy": runs(wall + 0.2), "hanging": runs(wall + 0.2 + s3_extra)}
    return res


def test_every_target_met_passes(bench: ModuleType) -> None:
    found = bench.targets(results(bench, 0.3))
    assert not [t.name for t in found if t.missed]
    assert "| PASS |" in bench.report(results(bench, 0.3), Path("/usr/bin/etcd"), 1.0)


def test_a_slow_boot_misses_its_targets(bench: ModuleType) -> None:
    missed = [t.name for t in bench.targets(results(bench, 0.9)) if t.missed]
    assert "file written, member rerun on 3 nodes = steady-state boot (median)" in missed
    assert "2 hung peers cost one probe timeout, not 2 (member rerun, extra over 0 hung, paired median)" not in missed


def test_a_target_needing_more_cpus_is_shown_not_judged(bench: ModuleType) -> None:
    cpus = len(os.sched_getaffinity(0))
    target = bench.Target("agents at once", 9.0, 0.5, min_cpus=cpus + 1)
    assert not target.missed
    assert target.row()[3] == f"not a target here: needs {cpus + 1} CPUs, this machine has {cpus}"
    assert bench.Target("agents at once", 9.0, 0.5, min_cpus=cpus).row()[3] == "FAIL"


def test_a_join_that_waits_on_a_hanging_s3_misses_its_target(bench: ModuleType) -> None:
    name = "a join with S3 hanging, extra over the same join with S3 healthy (paired median)"
    assert name not in [t.name for t in bench.targets(results(bench, 0.3, s3_extra=0.8)) if t.missed]
    assert name in [t.name for t in bench.targets(results(bench, 0.3, s3_extra=1.2)) if t.missed]
