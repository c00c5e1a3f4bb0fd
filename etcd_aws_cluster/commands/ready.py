"""`etcd-aws-cluster ready`: complete this instance's launching lifecycle action once its member is ready.

Meant for etcd-aws-cluster-ready.service, after etcd starts. The group holds a new instance in Pending:Wait while
its launching hook waits; without this the group counts the instance healthy as soon as it is InService, before
its member has caught up and been promoted, and an Instance Refresh then terminates the next old voter. `ready`
completes the action with CONTINUE once this member has started, is a voter and the cluster is healthy with it
(core.lifecycle.readiness); until then it records heartbeats. At its deadline it completes nothing, so the hook's
default result applies, and says why. An instance going into the warm pool (Warmed:Pending:Wait) completes at
once: that boot joins nothing. Without a launching hook, or outside a wait, it does nothing.
"""

from __future__ import annotations

import argparse
import logging

from etcd_aws_cluster.adapters import systemd_notify as notify
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.app.lifecycle import LifecycleAction, find_hook
from etcd_aws_cluster.base.errors import EtcdError
from etcd_aws_cluster.core.lifecycle import LAUNCH_WAIT, LAUNCHING, WARM_POOL_WAIT, readiness
from etcd_aws_cluster.core.model import WARM_POOL_PREFIX

log = logging.getLogger(__name__)

# Seconds between two looks at the cluster while the member catches up.
POLL_INTERVAL = 2.0


def run(ctx: Context, args: argparse.Namespace) -> int:
    me = ctx.me
    asg = ctx.find_asg()
    mine = asg.find(me.instance_id)
    state = mine.lifecycle_state if mine is not None else "not in the group"
    if mine is None and (ctx.imds.target_lifecycle_state() or "").startswith(WARM_POOL_PREFIX):
        state = WARM_POOL_WAIT  # a warm-pool instance the group does not list among its own: IMDS says where it goes
    hook = find_hook(ctx, asg.name, LAUNCHING, ctx.settings.launch_hook)
    if hook is None:
        log.info("ASG %s has no launching lifecycle hook: nothing to complete", asg.name)
        return 0
    if state not in (LAUNCH_WAIT, WARM_POOL_WAIT):
        log.info("instance %s is %s, not held by a launching hook: nothing to complete", me.instance_id, state)
        return 0
    action = LifecycleAction(ctx, asg.name, hook)
    if state == WARM_POOL_WAIT:
        action.complete("CONTINUE")
        log.info("instance %s goes into the warm pool: launch completed at once, nothing joined", me.instance_id)
        return 0

    while True:
        why = readiness(ctx.observe(asg), me)
        if why is None:
            ctx.metrics.ready(True)
            action.complete("CONTINUE")
            log.info("this instance's member is ready after %.1fs", ctx.deadline.elapsed())
            return 0
        ctx.metrics.ready(False)
        if ctx.deadline.remaining() < POLL_INTERVAL + ctx.settings.probe_timeout:
            raise EtcdError(
                f"not ready before the deadline ({ctx.deadline.seconds:.0f}s): {why}; the launching lifecycle action "
                f"{hook.name} is left to the hook's default result ({hook.default_result}) "
                f"within {hook.heartbeat_timeout:.0f}s"
            )
        action.heartbeat_if_due(why)
        notify.status(f"waiting to complete lifecycle action {hook.name}: {why}")
        ctx.deadline.pause(POLL_INTERVAL)
        asg = ctx.find_asg()  # the group changes while a refresh goes on
