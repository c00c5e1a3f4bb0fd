"""The leave unit's stop timeout covers the agent's own deadline, so a slow AWS never gets `leave` killed."""

from __future__ import annotations

import re
import shlex

from tests.packaging_helpers import SYSTEMD, parse_unit, single

LEAVE_UNIT = SYSTEMD / "etcd-aws-cluster-leave.service"
# Interpreter start-up, imports and the final log lines, on a slow instance at shutdown.
START_UP_MARGIN = 15


def test_leave_stop_timeout_covers_its_deadline() -> None:
    unit = parse_unit(LEAVE_UNIT.read_text())
    command = shlex.split(single(unit, "Service", "ExecStop"))
    assert command[:2] == ["/usr/bin/etcd-aws-cluster", "leave"]
    assert "--timeout" in command, "leave must pass its own deadline"
    deadline = float(command[command.index("--timeout") + 1])
    stop_timeout = single(unit, "Service", "TimeoutStopSec")
    assert re.fullmatch(r"\d+", stop_timeout), f"TimeoutStopSec={stop_timeout}: want plain seconds, and finite"
    assert int(stop_timeout) >= deadline + START_UP_MARGIN
