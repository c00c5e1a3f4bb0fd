"""Lifecycle hooks for the moto server: what moto 5.2 stores but never acts on, done as AWS does it.

Run as the moto server itself (``python -m tests.harness.moto_lifecycle -H ... -p ...``): it patches moto's
Auto Scaling backend, then starts ``moto.server``. The patches matter only for a group that has lifecycle hooks;
every other group behaves exactly as in plain moto.

* A group with an ``autoscaling:EC2_INSTANCE_LAUNCHING`` hook launches its instances into ``Pending:Wait``
  (they count toward the desired capacity, as on AWS); with an ``autoscaling:EC2_INSTANCE_TERMINATING`` hook,
  ``TerminateInstanceInAutoScalingGroup`` puts the instance into ``Terminating:Wait`` instead of terminating it
  (the replacement, without ShouldDecrementDesiredCapacity, is launched at once, as moto always did).
* ``CompleteLifecycleAction`` ends the wait: a launch goes ``InService`` on CONTINUE, is terminated (and
  replaced) on ABANDON; a termination completes either way. ``RecordLifecycleActionHeartbeat`` restarts the
  hook's heartbeat timeout. Either fails with AWS's ValidationError when the instance has no action of that hook.
* ``PutWarmPool`` launches the pool's MinSize instances into it (moto launches none): ``Warmed:Pending:Wait``
  with a launching hook, then ``Warmed:Stopped``.
* A wait whose heartbeat timeout passes ends with the hook's default result (checked on every Auto Scaling call).
* Every step is appended as one JSON line, with its wall-clock time, to ``$MOTO_LIFECYCLE_RECORD``: the wait
  beginning (``wait``), each call (``complete``, ``heartbeat``, or ``refused`` for a call without an action) and
  each timeout (``timeout``). tests/harness/lifecycle_actions.py reads it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from moto.autoscaling import models, responses
from moto.autoscaling.exceptions import ValidationError
from moto.core.responses import ActionResult, EmptyResult

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
RECORD_VARIABLE = "MOTO_LIFECYCLE_RECORD"
# Held instances count toward the desired capacity (moto's own count is InService only).
COUNTED_STATES = frozenset({"InService", "Pending", "Pending:Wait", "Pending:Proceed"})
WARM_POOL_STATE = "Warmed:Stopped"

_lock = threading.RLock()


@dataclass
class Action:
    group: str
    instance_id: str
    hook: str
    transition: str
    default_result: str
    heartbeat_timeout: int
    expires: float  # time.monotonic()


# (group, instance id) -> the action that holds it; one wait at a time per instance, as on AWS
_actions: dict[tuple[str, str], Action] = {}


def record(event: str, **fields: Any) -> None:
    path = os.environ.get(RECORD_VARIABLE)
    if not path:
        return
    line = json.dumps({"time": time.time(), "event": event, **fields}, sort_keys=True)
    with _lock, open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def _hook(backend: Any, group: str, transition: str) -> Any | None:
    hooks = [h for h in backend.describe_lifecycle_hooks(group) if h.lifecycle_transition == transition]
    return hooks[0] if hooks else None


def _hold(backend: Any, state: Any, transition: str, wait_state: str) -> bool:
    hook = _hook(backend, state.auto_scaling_group_name, transition)
    if hook is None:
        return False
    state.lifecycle_state = wait_state
    timeout = int(hook.heartbeat_timeout)
    action = Action(
        state.auto_scaling_group_name,
        state.instance.id,
        hook.name,
        transition,
        hook.default_result,
        timeout,
        time.monotonic() + timeout,
    )
    _actions[(action.group, action.instance_id)] = action
    record("wait", group=action.group, instance=action.instance_id, hook=hook.name, state=wait_state)
    return True


def _state_of(backend: Any, group: str, instance_id: str) -> Any | None:
    found = backend.autoscaling_groups.get(group)
    if found is None:
        return None
    return next((s for s in found.instance_states if s.instance.id == instance_id), None)


def _finish(backend: Any, action: Action, result: str) -> None:
    """Move the instance out of its wait as AWS does once the action completes (or times out) with `result`."""
    _actions.pop((action.group, action.instance_id), None)
    state = _state_of(backend, action.group, action.instance_id)
    if state is None:
        return
    if action.transition == LAUNCHING and result == "CONTINUE":
        state.lifecycle_state = WARM_POOL_STATE if state.lifecycle_state.startswith("Warmed:") else "InService"
    else:  # a launch abandoned, or any termination: the instance goes (a launch's replacement comes)
        _original_terminate(backend, action.instance_id, False)


def _expire(backend: Any) -> None:
    now = time.monotonic()
    for action in [a for a in list(_actions.values()) if a.expires <= now]:
        record(
            "timeout",
            group=action.group,
            instance=action.instance_id,
            hook=action.hook,
            result=action.default_result,
        )
        _finish(backend, action, action.default_result)


# --- the patches ---------------------------------------------------------------------------------------------
_original_replace = models.FakeAutoScalingGroup.replace_autoscaling_group_instances
_original_terminate = models.AutoScalingBackend.terminate_instance
_original_call_action = responses.AutoScalingResponse.call_action
_original_put_warm_pool = models.AutoScalingBackend.put_warm_pool


def replace_autoscaling_group_instances(self: Any, count_needed: int, propagated_tags: dict[str, str]) -> None:
    before = {id(s) for s in self.instance_states}
    _original_replace(self, count_needed, propagated_tags)
    with _lock:
        for state in [s for s in self.instance_states if id(s) not in before]:
            _hold(self.autoscaling_backend, state, LAUNCHING, "Pending:Wait")


def active_instances(self: Any) -> list[Any]:
    return [s for s in self.instance_states if s.lifecycle_state in COUNTED_STATES]


def terminate_instance(self: Any, instance_id: str, should_decrement: bool) -> Any:
    with _lock:
        state = next(
            (s for g in self.autoscaling_groups.values() for s in g.instance_states if s.instance.id == instance_id),
            None,
        )
        if state is None or state.lifecycle_state.startswith("Terminating"):
            return _original_terminate(self, instance_id, should_decrement)
        group = self.autoscaling_groups[state.auto_scaling_group_name]
        original_size = group.desired_capacity
        if not _hold(self, state, TERMINATING, "Terminating:Wait"):
            _actions.pop((state.auto_scaling_group_name, instance_id), None)  # a launch wait ends with it
            return _original_terminate(self, instance_id, should_decrement)
        if should_decrement:
            group.desired_capacity = original_size - 1
        group.set_desired_capacity(group.desired_capacity)  # the replacement, as moto launches it
        return models.TerminateInstanceActivity(state.instance, original_size)


def put_warm_pool(self: Any, group_name: str, *args: Any, **kwargs: Any) -> None:
    """Configure the pool (moto), then launch its MinSize instances into it: each held in Warmed:Pending:Wait by a
    launching hook, else Warmed:Stopped at once. Listed among the group's instances; never counted toward its
    desired capacity."""
    _original_put_warm_pool(self, group_name, *args, **kwargs)
    group = self.autoscaling_groups[group_name]
    with _lock:
        before = {id(s) for s in group.instance_states}
        _original_replace(group, group.warm_pool.min_size or 0, group.get_propagated_tags())
        for state in [s for s in group.instance_states if id(s) not in before]:
            if not _hold(self, state, LAUNCHING, "Warmed:Pending:Wait"):
                state.lifecycle_state = WARM_POOL_STATE


def _action_for(self: Any) -> Action:
    group = self._get_param("AutoScalingGroupName")
    hook = self._get_param("LifecycleHookName")
    instance_id = self._get_param("InstanceId")
    action = _actions.get((group, instance_id))
    if action is None or action.hook != hook:
        record("refused", group=group, instance=instance_id, hook=hook, call=self._get_action())
        raise ValidationError(f"No active Lifecycle Action found with instance ID {instance_id}")
    return action


def complete_lifecycle_action(self: Any) -> ActionResult:
    with _lock:
        action = _action_for(self)
        result = self._get_param("LifecycleActionResult")
        if result not in ("CONTINUE", "ABANDON"):
            raise ValidationError(f"Invalid LifecycleActionResult {result}")
        record("complete", group=action.group, instance=action.instance_id, hook=action.hook, result=result)
        _finish(self.autoscaling_backend, action, result)
    return EmptyResult()


def record_lifecycle_action_heartbeat(self: Any) -> ActionResult:
    with _lock:
        action = _action_for(self)
        action.expires = time.monotonic() + action.heartbeat_timeout
        record("heartbeat", group=action.group, instance=action.instance_id, hook=action.hook)
    return EmptyResult()


def call_action(self: Any) -> Any:
    with _lock:
        _expire(self.autoscaling_backend)
    return _original_call_action(self)


def install() -> None:
    models.FakeAutoScalingGroup.replace_autoscaling_group_instances = replace_autoscaling_group_instances  # type: ignore[method-assign]
    models.FakeAutoScalingGroup.active_instances = active_instances  # type: ignore[method-assign]
    models.AutoScalingBackend.terminate_instance = terminate_instance  # type: ignore[method-assign]
    models.AutoScalingBackend.put_warm_pool = put_warm_pool  # type: ignore[method-assign]
    responses.AutoScalingResponse.call_action = call_action  # type: ignore[method-assign]
    responses.AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action  # type: ignore[attr-defined]
    responses.AutoScalingResponse.record_lifecycle_action_heartbeat = record_lifecycle_action_heartbeat  # type: ignore[attr-defined]


if __name__ == "__main__":
    install()
    from moto.server import main

    main(sys.argv[1:])
