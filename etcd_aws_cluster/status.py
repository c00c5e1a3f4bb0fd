"""`status`: the Auto Scaling group and the etcd cluster side by side, as rows and one verdict.

Pure: what was found (ASG view, member-list probes, members' own status) in, a report out; no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from etcd_aws_cluster.etcd import EndpointStatus
from etcd_aws_cluster.model import AsgInstance, AsgView, Member, Probe
from etcd_aws_cluster.plan import quorum, url_host


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

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def quorum(self) -> int:
        return quorum(self.voters)


def cluster_view(probes: Iterable[Probe]) -> tuple[tuple[Member, ...], tuple[int, ...], bool]:
    """The member list most peers agree on (sorted by id), every cluster id seen, and whether the lists differ."""
    answers = [p.answer for p in probes if p.answer is not None]
    if not answers:
        return (), (), False
    counts = Counter(frozenset(a.members) for a in answers)
    best = max(counts, key=lambda members: (counts[members], len(members), sorted(m.id for m in members)))
    cluster_ids = tuple(sorted({a.cluster_id for a in answers if a.cluster_id is not None}))
    return tuple(sorted(best, key=lambda m: m.id)), cluster_ids, len(counts) > 1


def member_hosts(member: Member) -> set[str]:
    return {url_host(u) for u in (*member.peer_urls, *member.client_urls)}


def owner(member: Member, asg: AsgView) -> AsgInstance | None:
    """The ASG instance a member belongs to, in any lifecycle state: by name (instance id), else by IP."""
    by_name = asg.find(member.name) if member.name else None
    if by_name is not None:
        return by_name
    hosts = member_hosts(member)
    return next((i for i in asg.instances if i.private_ip and i.private_ip in hosts), None)


def _label(member: Member) -> str:
    return f"{member.hex_id} ({member.name})" if member.name else f"{member.hex_id} (not started)"


def build(asg: AsgView, probes: Sequence[Probe], statuses: Iterable[EndpointStatus] = ()) -> Report:
    """Join the ASG view, the member lists the peers answered and the members' own status into a report.

    `probes` are the member-list probes of the ASG's instances, plus any of members outside the ASG (their
    `instance_id` empty). `statuses` are the answers to the v3 status call of the members that answered.
    """
    statuses = tuple(statuses)
    members, cluster_ids, disagree = cluster_view(probes)
    answered = {p.ip for p in probes if p.answered}
    failed = {p.ip for p in probes if not p.answered}
    status_ids = {s.member_id for s in statuses}
    probe_of = {p.instance_id: p for p in probes if p.instance_id}

    def reachable(member: Member) -> bool | None:
        hosts = member_hosts(member)
        if member.id in status_ids or hosts & answered:
            return True
        return False if hosts & failed else None

    votes = Counter(s.leader for s in statuses if s.leader)
    leader: int | None = votes.most_common(1)[0][0] if votes else (0 if statuses else None)

    rows: list[Row] = []
    by_instance: dict[str, list[Member]] = {}
    orphans: list[Member] = []
    for member in members:
        found = owner(member, asg)
        if found is None:
            orphans.append(member)
        else:
            by_instance.setdefault(found.instance_id, []).append(member)
    for instance in asg.instances:
        probe = probe_of.get(instance.instance_id)
        note = (probe.error or "") if probe is not None else ""
        mine = by_instance.get(instance.instance_id, [])
        if not mine:
            reach = None if probe is None else probe.answered
            if members and instance.counts_as_member:
                note = "; ".join(filter(None, ["no member", note]))
            rows.append(
                Row(instance.instance_id, instance.private_ip, instance.lifecycle_state, None, reach, None, note)
            )
        for member in mine:
            named = f"named {member.name}" if member.name and member.name != instance.instance_id else ""
            rows.append(
                Row(
                    instance.instance_id,
                    instance.private_ip,
                    instance.lifecycle_state,
                    member,
                    reachable(member),
                    None if leader is None else member.id == leader,
                    "; ".join(filter(None, [named, note])),
                )
            )
    for member in orphans:
        hosts = sorted(h for h in (url_host(u) for u in member.peer_urls) if h)
        rows.append(
            Row(
                None,
                hosts[0] if hosts else None,
                None,
                member,
                reachable(member),
                None if leader is None else member.id == leader,
                f"not in ASG {asg.name}" + (f"; named {member.name}" if member.name else ""),
            )
        )

    voters = [m for m in members if not m.is_learner]
    up = sum(1 for m in voters if reachable(m))
    no_quorum: list[str] = []
    degraded: list[str] = []
    if not members:
        no_quorum.append(f"no etcd member answers on the {len(probes)} instances asked")
    else:
        if up < quorum(len(voters)):
            no_quorum.append(f"{up} of {len(voters)} voting members reachable; quorum needs {quorum(len(voters))}")
        if leader == 0:
            no_quorum.append("no member knows a leader")
        if len(cluster_ids) > 1:
            degraded.append("peers answer for different clusters: " + ", ".join(f"{c:x}" for c in cluster_ids))
        elif disagree:
            degraded.append("peers answer different member lists (a membership change in progress?)")
        for member in members:
            found = owner(member, asg)
            if not member.serving:
                degraded.append(f"member {_label(member)} has not started")
            elif not reachable(member):
                degraded.append(f"{'learner' if member.is_learner else 'member'} {_label(member)} is unreachable")
            if found is None:
                degraded.append(f"member {_label(member)} belongs to no instance of ASG {asg.name}")
            elif found.is_gone:
                degraded.append(
                    f"member {_label(member)} belongs to {found.instance_id}, which is {found.lifecycle_state}"
                )
        for instance in asg.instances:
            count = len(by_instance.get(instance.instance_id, []))
            if count == 0 and instance.counts_as_member:
                degraded.append(f"instance {instance.instance_id} ({instance.lifecycle_state}) has no member")
            elif count > 1:
                degraded.append(f"{count} members belong to instance {instance.instance_id}")
    in_service = len(asg.members())
    if in_service != asg.desired_capacity:
        degraded.append(
            f"ASG {asg.name} has {in_service} InService/Pending instances of {asg.desired_capacity} desired"
        )

    verdict = Verdict.NO_QUORUM if no_quorum else Verdict.DEGRADED if degraded else Verdict.HEALTHY
    return Report(
        asg=asg.name,
        desired_capacity=asg.desired_capacity,
        rows=tuple(rows),
        verdict=verdict,
        reasons=tuple(no_quorum + degraded),
        voters=len(voters),
        reachable_voters=up,
        leader=leader,
        cluster_ids=cluster_ids,
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
        row.lifecycle_state or "-",
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
        "rows": [
            {
                "instance_id": r.instance_id,
                "ip": r.ip,
                "lifecycle_state": r.lifecycle_state,
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
