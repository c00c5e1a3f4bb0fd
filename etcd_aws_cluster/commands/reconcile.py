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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from etcd_aws_cluster.adapters import atomic_file
from etcd_aws_cluster.adapters.hostfs import host_lock
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core import reconcile as reconciler
from etcd_aws_cluster.core.model import AsgView
from etcd_aws_cluster.core.view import Facts, url_host

if TYPE_CHECKING:
    from etcd_aws_cluster.app.backups import GuardedChange

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
    atomic_file.write(str(path), json.dumps(record, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def _state_lock(ctx: Context, path: Path, dry_run: bool) -> Iterator[None]:
    if dry_run:  # reads only: no lock, no directory needed
        yield
        return
    with host_lock(path.with_name(path.name + ".lock"), ctx.deadline):
        yield


def describe(result: reconciler.Reconciliation, asg: AsgView) -> str:
    lines = [f"# reconcile: ASG {asg.name}: {result.summary()}"]
    lines += [f"would remove {r.describe()}" for r in result.remove]
    lines += [f"would not remove {r.describe()}" for r in result.blocked]
    lines += [f"# {u.describe()}" for u in result.waiting]
    if not result.remove and not result.blocked:
        lines.append("# nothing to remove")
    return "\n".join(lines) + "\n"


def run(ctx: Context, args: argparse.Namespace) -> int:
    dry_run = bool(getattr(args, "dry_run", False))
    settings = ctx.settings
    policy = reconciler.Policy(reconciler.parse_states(settings.reconcile_remove_states), settings.reconcile_grace)
    asg = ctx.find_asg()
    state_file = settings.reconcile_state_file
    with _state_lock(ctx, state_file, dry_run):
        seen = load_state(state_file)
        if dry_run:
            sys.stdout.write(describe(_decide(ctx, asg, policy, seen)[1], asg))
            return 0
        result, change = _reconcile(ctx, asg, policy, seen)
        save_state(state_file, result.unstarted_since)
        if change is not None:
            change.record(lambda: ctx.observe(asg), what="reconcile's removals")
    for pending in result.waiting:
        log.info("%s", pending.describe())
    if result.blocked:
        refused = "; ".join(r.describe() for r in result.blocked)
        raise UnsafeError(f"refusing to remove, quorum would be lost: {refused}")
    return 0


def _decide(
    ctx: Context, asg: AsgView, policy: reconciler.Policy, seen: dict[int, float]
) -> tuple[Facts, reconciler.Reconciliation]:
    facts = Facts(me=ctx.me, view=ctx.observe(asg))
    return facts, reconciler.decide(facts, policy, seen, ctx.now().timestamp())


def _reconcile(
    ctx: Context, asg: AsgView, policy: reconciler.Policy, seen: dict[int, float]
) -> tuple[reconciler.Reconciliation, GuardedChange | None]:
    """Remove one member at a time, deciding again from a fresh probe before each removal. Returns the last
    decision (after the removals, it has none left) and, when anything was removed with backups on, the change the
    backups guarded: the record is brought up to date after it."""
    done: set[int] = set()
    change = None
    first = True
    while True:
        facts, result = _decide(ctx, asg, policy, seen)
        seen = dict(result.unstarted_since)
        if first:
            log.info("reconcile: %s", result.summary())
            first = False
        todo = [r for r in result.remove if r.member.id not in done]
        if not todo:
            if not done:
                log.info("reconcile: nothing to remove")
            return result, change
        removal = todo[0]
        if not done and (backups := ctx.backups(asg.name)) is not None:
            change = backups.guard_change(facts.view, f"removing member {removal.member.hex_id}")
        remover = _Remover(ctx, removal.member.id)
        hosts = [url_host(u) for u in removal.member.peer_urls]
        client_urls = facts.view.client_urls(first=ctx.me.private_ip, last=hosts)
        removed = ctx.retry(f"removing member {removal.member.hex_id}", remover, client_urls)
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

    def __init__(self, ctx: Context, member_id: int) -> None:
        self.ctx, self.member_id = ctx, member_id
        self.calls = 0

    def __call__(self, url: str) -> bool:
        self.calls += 1
        return self.ctx.etcd.remove_member(url, self.member_id, self.ctx.call_timeout)
