"""`promote`: make this instance's learner member a voting member once it has caught up with the leader.

Meant for an `ExecStartPost=` of etcd.service when `learner = true`; without a learner it does nothing.
"""

from __future__ import annotations

import argparse
import logging

from etcd_aws_cluster.errors import EtcdError
from etcd_aws_cluster.plan import is_me
from etcd_aws_cluster.runner import Runner
from etcd_aws_cluster.settings import Settings

log = logging.getLogger(__name__)


def run(settings: Settings, args: argparse.Namespace) -> int:
    runner = Runner(settings)
    me = runner.identity()
    asg = runner.find_asg(me)
    probes = runner.probe_all(asg)
    client_urls = [runner.endpoints.client_url(p.ip) for p in probes if p.answered]
    if not client_urls:
        raise EtcdError("no etcd member answers; cannot promote")
    timeout = settings.probe_timeout * 2
    members = runner.retry("listing members", lambda url: runner.etcd.list_members(url, timeout), client_urls)
    mine = [m for m in members.members if is_me(m, me, runner.endpoints)]
    if not mine:
        raise EtcdError(f"{me.instance_id} is not a member of the cluster; nothing to promote")
    member = mine[0]
    if not member.is_learner:
        log.info("member %s is already a voting member; nothing to do", member.hex_id)
        return 0

    def promote(url: str) -> None:
        runner.etcd.promote_member(url, member.id, timeout)

    runner.retry(f"promoting learner {member.hex_id}", promote, client_urls)
    log.info("promoted learner %s to a voting member after %.1fs", member.hex_id, runner.deadline.elapsed())
    return 0
