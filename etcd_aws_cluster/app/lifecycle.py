"""This instance's lifecycle action: the hook that holds it, its heartbeats and its completion, through AWS."""

from __future__ import annotations

import logging
from collections.abc import Callable

from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.core.lifecycle import Hook, choose_hook, heartbeat_due

log = logging.getLogger(__name__)


def find_hook(ctx: Context, group: str, transition: str, configured: str | None) -> Hook | None:
    """The group's hook of `transition` this instance completes (see core.lifecycle.choose_hook)."""
    hook = choose_hook(ctx.aws.lifecycle_hooks(group), transition, configured)
    if hook is not None:
        log.info(
            "lifecycle hook %s (%s): heartbeat timeout %.0fs, default result %s",
            hook.name,
            transition,
            hook.heartbeat_timeout,
            hook.default_result,
        )
    return hook


class LifecycleAction:
    """The lifecycle action that holds this instance in a wait state, until it completes or times out."""

    def __init__(self, ctx: Context, group: str, hook: Hook, clock: Callable[[], float] | None = None) -> None:
        self._ctx = ctx
        self.group = group
        self.hook = hook
        self._clock = clock or ctx.deadline.clock  # the run's clock, as every other wait
        self._last_heartbeat: float | None = None
        self.heartbeats = 0

    def heartbeat_if_due(self, why: str) -> None:
        """Restart the hook's heartbeat timeout when a third of it has passed since the last heartbeat."""
        now = self._clock()
        if not heartbeat_due(self._last_heartbeat, now, self.hook.heartbeat_timeout):
            return
        self._ctx.aws.record_lifecycle_heartbeat(self.group, self.hook.name, self._ctx.me.instance_id)
        self._last_heartbeat = now
        self.heartbeats += 1
        log.info("lifecycle action %s held with a heartbeat: %s", self.hook.name, why)

    def complete(self, result: str = "CONTINUE") -> None:
        self._ctx.aws.complete_lifecycle_action(self.group, self.hook.name, self._ctx.me.instance_id, result)
        log.info("completed lifecycle action %s of %s with %s", self.hook.name, self._ctx.me.instance_id, result)
