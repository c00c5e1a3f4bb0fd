"""`etcd-aws-cluster leave`: remove this instance's own member from the cluster, for termination.

Idempotent (a member that is already gone is success), bounded by the run's deadline, and guarded like a join:
it refuses (exit 6) when removing this member would leave the remaining voting members without quorum, or when
the cluster has no quorum to begin with. Run it while this node's etcd still runs, then stop etcd: a removed
member's etcd shuts itself down, and cannot restart on its old data (the next boot's agent moves it aside).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from etcd_aws_cluster import plan as planner
from etcd_aws_cluster import status, validate
from etcd_aws_cluster.errors import AgentError, EtcdError, MetadataError, UnsafeError
from etcd_aws_cluster.etcd import EtcdRequestError
from etcd_aws_cluster.imds import Imds
from etcd_aws_cluster.model import Identity, Probe
from etcd_aws_cluster.runner import Runner
from etcd_aws_cluster.settings import Settings

log = logging.getLogger(__name__)

TARGET_LIFECYCLE_STATE = "latest/meta-data/autoscaling/target-lifecycle-state"
STATE = re.compile(r"[A-Za-z]+(:[A-Za-z]+)?")


def target_lifecycle_state(imds: Imds) -> str | None:
    """What the ASG is taking this instance to (`Terminated`, `InService`, ...); None when IMDS does not say
    (HTTP 404: not in an Auto Scaling group)."""
    try:
        value = imds.get(TARGET_LIFECYCLE_STATE).strip()
    except MetadataError as exc:
        if str(exc).endswith("HTTP 404"):
            return None
        raise
    if not STATE.fullmatch(value):
        raise MetadataError(f"refusing target lifecycle state {validate.shown(value)} from instance metadata")
    return value


def _probe_me(runner: Runner, me: Identity) -> Probe:
    """This node's own etcd: probe_all skips instances on their way out, which is what this one is."""
    url = runner.endpoints.client_url(me.private_ip)
    try:
        answer = runner.etcd.list_members(url, runner.deadline.cap(runner.settings.probe_timeout))
    except EtcdRequestError as exc:
        return Probe(me.instance_id, me.private_ip, error=exc.kind)
    except AgentError as exc:
        return Probe(me.instance_id, me.private_ip, error=f"invalid answer: {exc}")
    return Probe(me.instance_id, me.private_ip, answer=answer)


def run(settings: Settings, args: argparse.Namespace) -> int:
    dry_run = bool(getattr(args, "dry_run", False))
    runner = Runner(settings)
    me = runner.identity()
    if getattr(args, "if_terminating", False):
        state = target_lifecycle_state(runner.metadata())
        if state != "Terminated":
            log.info("target lifecycle state is %s, not Terminated: staying in the cluster", state or "not set")
            return 0
        log.info("target lifecycle state is Terminated: leaving the cluster")

    asg = runner.find_asg(me)
    probes = runner.probe_all(asg)
    if not any(p.instance_id == me.instance_id for p in probes):
        probes = (*probes, _probe_me(runner, me))
    members, cluster_ids, _ = status.cluster_view(probes)
    if len(cluster_ids) > 1:
        ids = ", ".join(f"{c:x}" for c in cluster_ids)
        raise UnsafeError(f"peers answer for different etcd clusters ({ids}); refusing to pick one")
    if not any(p.answered for p in probes):
        raise EtcdError(
            f"no etcd answers on the {len(probes)} instances of ASG {asg.name}; "
            "cannot tell whether this instance is still a member"
        )
    mine = [m for m in members if planner.is_me(m, me, runner.endpoints)]
    if not mine:
        log.info("this instance is not a member of the cluster (already left): nothing to do")
        return 0
    if len(mine) > 1:
        raise UnsafeError(f"{len(mine)} members claim this instance; remove the extra ones with etcdctl")
    member = mine[0]
    answered = {p.ip for p in probes if p.answered}
    healthy = {m.id for m in members if any(planner.url_host(u) in answered for u in m.peer_urls)}
    # as_learner: only removals are checked (quorum now, and after this member is gone), no add follows.
    planner.check_quorum(members, healthy, (member,), as_learner=True)

    label = f"this instance's member {member.hex_id} ({member.name or 'not started'})"
    if dry_run:
        sys.stdout.write(f"# would remove {label} from a cluster of {len(members)} members\n")
        return 0
    # Through the other members first: this node's etcd stops itself once it sees its own removal.
    urls = [runner.endpoints.client_url(p.ip) for p in probes if p.answered and p.ip != me.private_ip]
    urls += [runner.endpoints.client_url(me.private_ip)] if me.private_ip in answered else []
    timeout = settings.probe_timeout * 2
    removed = runner.retry(f"removing {label}", lambda url: runner.etcd.remove_member(url, member.id, timeout), urls)
    log.info("removed %s; stop etcd on this instance now" if removed else "%s was already gone", label)
    return 0
