"""`status`: the Auto Scaling group and the etcd cluster side by side, as rows and one verdict.

Pure: the cluster view and the members' own status in, a report out; no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from etcd_aws_cluster.core.lifecycle import Hook, holding_hooks
from etcd_aws_cluster.core.model import AsgInstance, EndpointStatus, Member
from etcd_aws_cluster.core.view import ClusterView, incomplete, quorum, url_host


class Verdict(str, enum.Enum):
    HEALTHY = "healthy"  # every member reachable, a leader, every ASG instance a member and nothing else
    DEGRADED = "degraded"  # quorum and a leader, but something needs a look (see the reasons)
    NO_QUORUM = "no quorum"  # the cluster cannot commit writes: too few voting members answer, or no leader


# Exit codes of `status`, apart from the agent's error codes 1-8 (which keep their meaning: 3 IMDS, 4 AWS, ...).
EXIT_CODES = {Verdict.HEALTHY: 0, Verdict.DEGRADED: 10, Verdict.NO_QUORUM: 11}


@dataclass(frozen=True)
class Row:
    """One line of the table: an ASG instance and its member, an instance without one, or a member without one."""

    instance_id: str | None
    ip: str | None
    lifecycle_state: str | None
    member: Member | None
    reachable: bool | None  # None: not asked (no IP, instance gone, member with no client URL)
    leader: bool | None  # None: unknown (no member answered the v3 status call) or no member in this row
    note: str = ""
    hook: str | None = None  # the lifecycle hook(s) holding the instance in its wait state (Pending:Wait, ...)


@dataclass(frozen=True)
class Report:
    asg: str
    desired_capacity: int
    rows: tuple[Row, ...]
    verdict: Verdict
    reasons: tuple[str, ...]
    voters: int
    reachable_voters: int
    leader: int | None  # the leader's member id; 0: members answer but know no leader; None: unknown
    cluster_ids: tuple[int, ...]
    backups: str = ""  # what protects the data (backup_url, the newest snapshot), one line
    recovery: tuple[str, ...] = ()  # the recovery point the deltas reach, and the last restore drill's result
    restores: str = ""  # what a restore on this host cannot do (bump revisions) or why it would refuse, one line

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def quorum(self) -> int:
        return quorum(self.voters)


def _label(member: Member) -> str:
    return f"{member.hex_id} ({member.name})" if member.name else f"{member.hex_id} (not started)"


def _reachable_row(
    view: ClusterView, member: Member, leader: int | None, instance: AsgInstance | None, note: str
) -> Row:
    return Row(
        instance.instance_id if instance else None,
        instance.private_ip if instance else None,
        instance.lifecycle_state if instance else None,
        member,
        view.reachable(member),
        None if leader is None else member.id == leader,
        note,
    )


def _rows(view: ClusterView, leader: int | None) -> list[Row]:
    """One row per ASG instance and member of it (or none), then one per member of no instance."""
    asg = view.asg
    probe_of = {p.instance_id: p for p in view.probes if p.instance_id}
    rows: list[Row] = []
    for instance in asg.instances:
        probe = probe_of.get(instance.instance_id)
        note = probe.failure if probe is not None else ""
        mine = view.members_of(instance.instance_id)
        if not mine:
            reach = None if probe is None else probe.answered
            if view.members and instance.counts_as_member:
                note = "; ".join(filter(None, ["no member", note]))
            rows.append(
                Row(instance.instance_id, instance.private_ip, instance.lifecycle_state, None, reach, None, note)
            )
        for member in mine:
            named = f"named {member.name}" if member.name and member.name != instance.instance_id else ""
            rows.append(_reachable_row(view, member, leader, instance, "; ".join(filter(None, [named, note]))))
    for member in view.orphans:
        hosts = sorted(h for h in (url_host(u) for u in member.peer_urls) if h)
        note = f"not in ASG {asg.name}" + (f"; named {member.name}" if member.name else "")
        row = _reachable_row(view, member, leader, None, note)
        rows.append(replace(row, ip=hosts[0] if hosts else None))
    return rows


def _member_problems(view: ClusterView) -> list[str]:
    """What needs a look about the members and the instances, while the cluster has a quorum."""
    asg, problems = view.asg, []
    if len(view.cluster_ids) > 1:
        problems.append("peers answer for different clusters: " + ", ".join(f"{c:x}" for c in view.cluster_ids))
    elif view.lists_differ:
        problems.append("peers answer different member lists (a membership change in progress?)")
    for member in view.members:
        found = view.owner(member)
        if not member.serving:
            problems.append(f"member {_label(member)} has not started")
        elif not view.reachable(member):
            problems.append(f"{'learner' if member.is_learner else 'member'} {_label(member)} is unreachable")
        if found is None:
            problems.append(f"member {_label(member)} belongs to no instance of ASG {asg.name}")
        elif found.is_gone:
            problems.append(f"member {_label(member)} belongs to {found.instance_id}, which is {found.lifecycle_state}")
    for instance in asg.instances:
        count = len(view.members_of(instance.instance_id))
        if count == 0 and instance.counts_as_member:
            problems.append(f"instance {instance.instance_id} ({instance.lifecycle_state}) has no member")
        elif count > 1:
            problems.append(f"{count} members belong to instance {instance.instance_id}")
    return problems


def _quorum_problems(view: ClusterView, leader: int | None) -> list[str]:
    if not view.members:
        return [f"no etcd member answers on the {len(view.probes)} instances asked"]
    count = view.count()
    problems = (
        [] if count.ok else [f"{count.up} of {count.voters} voting members reachable; quorum needs {count.needed}"]
    )
    if leader == 0:
        problems.append("no member knows a leader")
    return problems


def build(view: ClusterView, statuses: Iterable[EndpointStatus] = (), hooks: Iterable[Hook] = ()) -> Report:
    """Join the cluster view and the members' own status into a report.

    The view's probes are those of the ASG's instances, plus any of members outside the ASG (their `instance_id`
    empty). `statuses` are the answers to the v3 status call of the members that answered; `hooks` the group's
    lifecycle hooks, to name the one holding an instance in a wait state.
    """
    hooks = tuple(hooks)
    statuses = tuple(statuses)
    votes = Counter(s.leader for s in statuses if s.leader)
    leader: int | None = votes.most_common(1)[0][0] if votes else (0 if statuses else None)
    asg = view.asg
    no_quorum = _quorum_problems(view, leader)
    degraded = _member_problems(view) if view.members else []
    shortfall = incomplete(asg)
    if shortfall:
        degraded.append(shortfall)
    count = view.count()
    return Report(
        asg=asg.name,
        desired_capacity=asg.desired_capacity,
        rows=tuple(replace(r, hook=holding_hooks(r.lifecycle_state or "", hooks)) for r in _rows(view, leader)),
        verdict=Verdict.NO_QUORUM if no_quorum else Verdict.DEGRADED if degraded else Verdict.HEALTHY,
        reasons=tuple(no_quorum + degraded),
        voters=count.voters,
        reachable_voters=count.up,
        leader=leader,
        cluster_ids=view.cluster_ids,
    )


# --- presentation ------------------------------------------------------------------------------------------
HEADER = ("INSTANCE", "IP", "STATE", "MEMBER", "STARTED", "LEARNER", "REACHABLE", "LEADER", "NOTE")
GREEN, YELLOW, RED, BOLD, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[1m", "\033[0m"
VERDICT_COLOUR = {Verdict.HEALTHY: GREEN, Verdict.DEGRADED: YELLOW, Verdict.NO_QUORUM: RED}


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def _cells(row: Row) -> tuple[str, ...]:
    member = row.member
    return (
        row.instance_id or "-",
        row.ip or "-",
        (row.lifecycle_state or "-") + (f" ({row.hook})" if row.hook else ""),
        member.hex_id if member else "-",
        _yes_no(member.serving if member else None),
        _yes_no(member.is_learner if member else None),
        _yes_no(row.reachable),
        "?" if member is not None and row.leader is None else _yes_no(row.leader),
        row.note,
    )


def summary(report: Report) -> str:
    if report.leader is None:
        leader = "leader unknown (no v3 status answer)"
    elif report.leader == 0:
        leader = "no leader"
    else:
        instance = next(
            (r.instance_id for r in report.rows if r.member and r.member.id == report.leader and r.instance_id), None
        )
        leader = f"leader {report.leader:x}" + (f" ({instance})" if instance else "")
    return (
        f"{report.verdict.value}: {report.reachable_voters} of {report.voters} voting members reachable "
        f"(quorum {report.quorum}), {leader}; ASG {report.asg}, desired {report.desired_capacity}"
    )


def render_text(report: Report, *, colour: bool = False) -> str:
    """The table, the summary line and the reasons; ANSI colours only when `colour`."""
    table = [HEADER, *(_cells(r) for r in report.rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    lines = []
    for index, cells in enumerate(table):
        padded = [cell.ljust(width) for cell, width in zip(cells[:-1], widths)] + [cells[-1]]
        if colour and index == 0:
            padded = [BOLD + cell + RESET for cell in padded]
        elif colour and cells[6] == "no":
            padded[6] = RED + padded[6] + RESET
        lines.append("  ".join(padded).rstrip())
    verdict = summary(report)
    if colour:
        verdict = VERDICT_COLOUR[report.verdict] + verdict + RESET
    lines += ["", verdict]
    lines += [f"  - {reason}" for reason in report.reasons]
    lines += [line for line in (report.backups, *(f"  {r}" for r in report.recovery), report.restores) if line]
    return "\n".join(lines) + "\n"


def to_json(report: Report) -> dict[str, Any]:
    """The report for scripts: member ids in hex, as etcdctl shows them."""
    return {
        "asg": report.asg,
        "desired_capacity": report.desired_capacity,
        "verdict": report.verdict.value,
        "exit_code": report.exit_code,
        "reasons": list(report.reasons),
        "voters": report.voters,
        "reachable_voters": report.reachable_voters,
        "quorum": report.quorum,
        "leader": None if report.leader is None else f"{report.leader:x}",  # "0": no leader
        "cluster_ids": [f"{c:x}" for c in report.cluster_ids],
        "backups": report.backups,
        "recovery": list(report.recovery),
        "restores": report.restores,
        "rows": [
            {
                "instance_id": r.instance_id,
                "ip": r.ip,
                "lifecycle_state": r.lifecycle_state,
                "lifecycle_hook": r.hook,
                "member_id": r.member.hex_id if r.member else None,
                "name": r.member.name or None if r.member else None,
                "started": r.member.serving if r.member else None,
                "learner": r.member.is_learner if r.member else None,
                "reachable": r.reachable,
                "leader": r.leader,
                "note": r.note,
            }
            for r in report.rows
        ],
    }
