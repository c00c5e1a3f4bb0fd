"""`promote`: make this instance's learner member a voting member once it has caught up with the leader.

Meant for an `ExecStartPost=` of etcd.service when `learner = true`; without a learner it does nothing.
"""

from __future__ import annotations

import argparse
import logging

from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.base.errors import EtcdError

log = logging.getLogger(__name__)


def run(ctx: Context, args: argparse.Namespace) -> int:
    cluster = ctx.observe(ctx.find_asg())
    client_urls = cluster.client_urls()
    if not client_urls:
        raise EtcdError("no etcd member answers; cannot promote")
    mine = cluster.claiming(ctx.me)
    if not mine:
        raise EtcdError(f"{ctx.me.instance_id} is not a member of the cluster; nothing to promote")
    member = mine[0]
    if not member.is_learner:
        log.info("member %s is already a voting member; nothing to do", member.hex_id)
        return 0

    def promote(url: str) -> None:
        ctx.etcd.promote_member(url, member.id, ctx.call_timeout)

    ctx.retry(f"promoting learner {member.hex_id}", promote, client_urls)
    log.info("promoted learner %s to a voting member after %.1fs", member.hex_id, ctx.deadline.elapsed())
    return 0
