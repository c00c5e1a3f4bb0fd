"""`reconcile`: remove members whose instance left the ASG, and failed joins, one at a time under the quorum guard.

Runs on a member after boot (etcd-aws-cluster-reconcile.timer). Never touches the env file; its only file is the
small state file recording since when each member has been seen added-but-unstarted (`reconcile_state_file`).
Several instances may run it at once: each removal is re-decided from a fresh probe, and a member that another
run removed first counts as removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from etcd_aws_cluster import envfile
from etcd_aws_cluster import reconcile as reconciler
from etcd_aws_cluster.errors import UnsafeError
from etcd_aws_cluster.model import AsgView, Facts, Identity, Member
from etcd_aws_cluster.plan import url_host
from etcd_aws_cluster.runner import Runner, host_lock
from etcd_aws_cluster.settings import Settings

log = logging.getLogger(__name__)
STATE_VERSION = 1


def load_state(path: Path) -> dict[int, float]:
    """Member id -> first time seen unstarted. A missing or unreadable file is an empty record (grace restarts)."""
    try:
        data = json.loads(path.read_text(encoding="ascii"))
        raw = data["unstarted_since"]
        since = {int(key, 16): float(value) for key, value in raw.items()}
        if not all(math.isfinite(at) for at in since.values()):
            raise ValueError("a time is not a finite number")
        return since
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring unreadable reconcile state %s (%s); grace periods start again", path, exc)
        return {}


def save_state(path: Path, since: tuple[tuple[int, float], ...]) -> None:
    record = {"version": STATE_VERSION, "unstarted_since": {f"{member_id:x}": at for member_id, at in since}}
    envfile.write(str(path), json.dumps(record, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def _state_lock(runner: Runner, path: Path, dry_run: bool) -> Iterator[None]:
    if dry_run:  # reads only: no lock, no directory needed
        yield
        return
    with host_lock(path.with_name(path.name + ".lock"), runner.deadline):
        yield


def describe(result: reconciler.Reconciliation, asg: AsgView) -> str:
    lines = [f"# reconcile: ASG {asg.name}: {result.summary()}"]
    lines += [f"would remove {r.describe()}" for r in result.remove]
    lines += [f"would not remove {r.describe()}" for r in result.blocked]
    lines += [f"# {u.describe()}" for u in result.waiting]
    if not result.remove and not result.blocked:
        lines.append("# nothing to remove")
    return "\n".join(lines) + "\n"


def run(settings: Settings, args: argparse.Namespace) -> int:
    dry_run = bool(getattr(args, "dry_run", False))
    policy = reconciler.Policy(reconciler.parse_states(settings.reconcile_remove_states), settings.reconcile_grace)
    runner = Runner(settings)
    me = runner.identity()
    asg = runner.find_asg(me)
    listed = ", ".join(f"{i.instance_id} {i.lifecycle_state}" for i in asg.instances)
    log.info("ASG %s: desired %d; instances: %s", asg.name, asg.desired_capacity, listed or "none")
    state_file = settings.reconcile_state_file
    with _state_lock(runner, state_file, dry_run):
        seen = load_state(state_file)
        if dry_run:
            sys.stdout.write(describe(_decide(runner, me, asg, policy, seen)[1], asg))
            return 0
        result = _reconcile(runner, me, asg, policy, seen)
        save_state(state_file, result.unstarted_since)
    for pending in result.waiting:
        log.info("%s", pending.describe())
    if result.blocked:
        refused = "; ".join(r.describe() for r in result.blocked)
        raise UnsafeError(f"refusing to remove, quorum would be lost: {refused}")
    return 0


def _decide(
    runner: Runner, me: Identity, asg: AsgView, policy: reconciler.Policy, seen: dict[int, float]
) -> tuple[Facts, reconciler.Reconciliation]:
    facts = Facts(me=me, asg=asg, probes=runner.probe_all(asg), endpoints=runner.endpoints)
    return facts, reconciler.decide(facts, policy, seen, time.time())


def _reconcile(
    runner: Runner, me: Identity, asg: AsgView, policy: reconciler.Policy, seen: dict[int, float]
) -> reconciler.Reconciliation:
    """Remove one member at a time, deciding again from a fresh probe before each removal."""
    done: set[int] = set()
    timeout = runner.settings.probe_timeout * 2
    first = True
    while True:
        facts, result = _decide(runner, me, asg, policy, seen)
        seen = dict(result.unstarted_since)
        if first:
            log.info("reconcile: %s", result.summary())
            first = False
        todo = [r for r in result.remove if r.member.id not in done]
        if not todo:
            if not done:
                log.info("reconcile: nothing to remove")
            return result
        removal = todo[0]
        remover = _Remover(runner, removal.member.id, timeout)
        removed = runner.retry(
            f"removing member {removal.member.hex_id}", remover, _client_urls(runner, facts, removal.member)
        )
        done.add(removal.member.id)
        if removed:
            outcome = "removed"
        elif remover.calls > 1:  # an earlier attempt may have gone through (e.g. the leader removing itself)
            outcome = "removed (confirmed on retry)"
        else:
            outcome = "already removed (by another run)"
        log.info("%s %s", outcome, removal.describe())


class _Remover:
    """One member's removal through any client URL; counts its calls."""

    def __init__(self, runner: Runner, member_id: int, timeout: float) -> None:
        self.runner, self.member_id, self.timeout = runner, member_id, timeout
        self.calls = 0

    def __call__(self, url: str) -> bool:
        self.calls += 1
        return self.runner.etcd.remove_member(url, self.member_id, self.timeout)


def _client_urls(runner: Runner, facts: Facts, removing: Member) -> list[str]:
    """Client URLs of the etcds that answered, this instance's first, the one being removed last."""
    hosts = {url_host(u) for u in removing.peer_urls}
    ips = sorted(
        (p.ip for p in facts.probes if p.answered),
        key=lambda ip: (ip in hosts, ip != facts.me.private_ip, ip),
    )
    return [runner.endpoints.client_url(ip) for ip in ips]
