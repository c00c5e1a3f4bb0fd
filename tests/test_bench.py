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


def follow_result(bench: ModuleType, lags: list[float]) -> object:
    return bench.FollowResult(
        interval=2.0,
        lags=lags,
        opened=[n % 2 == 0 for n in range(len(lags))],
        delta_sizes=[300, 310],
        revisions_per_delta=[2, 2],
        peak_rss_kib={"leader": 80 * 1024},
        exits=[0, 0, 0],
    )


def test_a_delta_lag_past_the_interval_plus_its_allowance_misses_its_target(bench: ModuleType) -> None:
    name = "backup --follow: a write in a listed delta, max over 4 writes (delta interval 2 s + 2 s)"
    res = results(bench, 0.3)
    res.follow = follow_result(bench, [2.3, 0.8, 3.9, 0.8])
    assert name in [t.name for t in bench.targets(res) if not t.missed]
    text = bench.report(res, Path("/usr/bin/etcd"), 1.0)
    assert "## g. Continuous backups" in text
    assert "| 3.100 / 3.900 s |" in text  # the opening writes' lags
    assert "| +1.100 / +1.900 s |" in text  # the same minus the interval
    res.follow = follow_result(bench, [2.3, 0.8, 4.1, 0.8])  # one write waited a second interval
    assert name in [t.name for t in bench.targets(res) if t.missed]


def test_a_write_counts_as_covered_once_a_listed_delta_holds_its_revision(bench: ModuleType) -> None:
    outstanding = {10: 100.0, 11: 101.0, 14: 102.0}
    assert bench.newly_covered(outstanding, [(5, 9), (8, 12)], now=103.0) == {10: 3.0, 11: 2.0}  # 14: no delta yet


def test_a_write_opened_its_delta_when_no_earlier_write_is_in_it(bench: ModuleType) -> None:
    # deltas 5-11 (from the snapshot on: 5-9 are no write of the bench's) and 12-15
    assert bench.opened_a_delta([10, 11, 13, 15], [(5, 11), (12, 15)]) == [True, False, True, False]
