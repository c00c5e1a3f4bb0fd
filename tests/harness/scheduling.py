"""How ``pytest -n N`` (pytest-xdist's ``--dist load``) hands the tests to its workers, for this suite.

Each test goes to whichever worker is free, as with ``--dist load``, except the tests of :data:`ONE_WORKER_MODULES`:
those are one unit of work, run in order on a single worker. (xdist's ``--dist loadgroup`` would do it with
``xdist_group`` marks, but it tags node ids through an attribute pytest 9 no longer reads: its groups are ignored.)
The largest unit is handed out first, so the long packaging chain starts at once rather than last.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

# Modules whose tests must share one worker, and why.
ONE_WORKER_MODULES = {
    # session fixtures build the .debs and the .rpm with `make` in this clone: two workers would write the same files
    "tests/test_packaging.py": "builds the packages in the clone",
}


def unit_of_work(nodeid: str) -> str:
    """The unit of work a test belongs to: its module for :data:`ONE_WORKER_MODULES`, else the test alone."""
    module = nodeid.split("::", 1)[0]
    return module if module in ONE_WORKER_MODULES else nodeid


class LoadWithOneWorkerModules(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
        return unit_of_work(nodeid)
