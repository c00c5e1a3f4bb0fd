"""The ready unit runs `ready` after etcd without holding up the boot, and its time limit covers the agent's own
deadline."""

from __future__ import annotations

import re
import shlex

from tests.packaging_helpers import SYSTEMD, parse_unit, single, values
from tests.test_leave_unit import START_UP_MARGIN

READY_UNIT = SYSTEMD / "etcd-aws-cluster-ready.service"


def test_ready_runs_after_etcd_and_its_start_timeout_covers_its_deadline() -> None:
    unit = parse_unit(READY_UNIT.read_text())
    command = shlex.split(single(unit, "Service", "ExecStart"))
    assert command[:2] == ["/usr/bin/etcd-aws-cluster", "ready"]
    assert {"etcd.service", "etcd2.service", "etcd-aws-cluster.service"} <= set(values(unit, "Unit", "After"))
    # Never tied to etcd's start: a failed `ready` (the hook's default result) must not stop etcd.
    for key in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert not [u for u in values(unit, "Unit", key) if u.startswith("etcd")], key
    # The boot does not wait for it: active once started (a oneshot would hold multi-user.target for minutes).
    assert single(unit, "Service", "Type") == "exec" and single(unit, "Service", "RemainAfterExit") == "yes"
    deadline = float(command[command.index("--timeout") + 1])
    runtime = single(unit, "Service", "RuntimeMaxSec")
    assert re.fullmatch(r"\d+", runtime), f"RuntimeMaxSec={runtime}: want plain seconds, and finite"
    assert int(runtime) >= deadline + START_UP_MARGIN
