"""Lifecycle hooks in the tests: create them in moto, and read what the moto server did with them.

The moto server the harness starts acts on lifecycle hooks (tests/harness/moto_lifecycle.py) and appends each
step to a JSON-lines file (``MotoServer.lifecycle_record``); :func:`events` reads that file back for one group.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_autoscaling import AutoScalingClient

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"


@dataclass(frozen=True)
class Event:
    """One step of a lifecycle action: ``wait`` (held), ``complete``, ``heartbeat``, ``timeout`` or ``refused``."""

    time: float  # time.time() in the moto server (same machine, same clock)
    event: str
    instance: str
    hook: str
    result: str | None = None
    state: str | None = None


def events(record: Path, group: str) -> list[Event]:
    """Every step recorded for `group`, oldest first."""
    if not record.exists():
        return []
    found: list[Event] = []
    for line in record.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item.get("group") != group:
            continue
        found.append(
            Event(
                float(item["time"]),
                str(item["event"]),
                str(item["instance"]),
                str(item["hook"]),
                item.get("result"),
                item.get("state"),
            )
        )
    return found


def of(record: Path, group: str, instance: str, event: str | None = None) -> list[Event]:
    return [e for e in events(record, group) if e.instance == instance and (event is None or e.event == event)]


def put_hook(
    autoscaling: AutoScalingClient,
    group: str,
    name: str,
    transition: str,
    *,
    heartbeat_timeout: int = 300,
    default_result: str = "ABANDON",
) -> None:
    autoscaling.put_lifecycle_hook(
        AutoScalingGroupName=group,
        LifecycleHookName=name,
        LifecycleTransition=transition,
        HeartbeatTimeout=heartbeat_timeout,
        DefaultResult=default_result,
    )


def wait_for(record: Path, group: str, instance: str, event: str, timeout: float = 60) -> Event:
    """The first `event` of `instance`, once the server has recorded it; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = of(record, group, instance, event)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {event} of {instance} within {timeout}s: {of(record, group, instance)}")
        time.sleep(0.1)


def target_state(asg_state: str) -> str:
    """What IMDS `autoscaling/target-lifecycle-state` says for an instance in this ASG lifecycle state: where the
    group is taking it (a held launch: InService; a held termination: Terminated)."""
    if asg_state.startswith("Warmed:Pending"):
        return "Warmed:Stopped"
    if asg_state.startswith("Pending"):
        return "InService"
    if asg_state.startswith(("Terminating", "Warmed:Terminating")):
        return "Terminated"
    return asg_state
