"""The status report as a pure function: rows, verdict, exit code, and how it is shown."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterable, Sequence

import pytest

from etcd_aws_cluster.commands.status import use_colour
from etcd_aws_cluster.core import status, view
from etcd_aws_cluster.core.model import (
    AsgInstance,
    AsgView,
    Endpoints,
    EndpointStatus,
    EtcdFailure,
    Member,
    MemberList,
    Probe,
)
from etcd_aws_cluster.core.status import Verdict, render_text, to_json


def build(asg: AsgView, probes: Sequence[Probe], statuses: Iterable[EndpointStatus] = ()) -> status.Report:
    return status.build(view.build(asg, probes, Endpoints()), statuses)


EP = Endpoints()
IDS = ["i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c", "i-0000000000000000d"]
IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


def inst(n: int, state: str = "InService") -> AsgInstance:
    return AsgInstance(IDS[n], state, IPS[n])


def member(n: int, *, started: bool = True, learner: bool = False, ip: str | None = None) -> Member:
    address = ip or IPS[n]
    return Member(
        id=0x100 + n,
        name=IDS[n] if started and ip is None else ("outsider" if started else ""),
        peer_urls=(EP.peer_url(address),),
        client_urls=(EP.client_url(address),) if started else (),
        is_learner=learner,
    )


def asg(*instances: AsgInstance, desired: int | None = None) -> AsgView:
    return AsgView("etcd", len(instances) if desired is None else desired, tuple(instances))


def up(n: int, members: tuple[Member, ...], cluster_id: int = 7) -> Probe:
    return Probe(IDS[n], IPS[n], answer=MemberList(members, cluster_id))


def down(n: int, error: str = "refused") -> Probe:
    return Probe(IDS[n], IPS[n], error=EtcdFailure(error))


def leads(n: int, leader: int = 0x100) -> EndpointStatus:
    return EndpointStatus(0x100 + n, leader)


THREE = (member(0), member(1), member(2))


def test_healthy_cluster() -> None:
    report = build(
        asg(inst(0), inst(1), inst(2)),
        [up(0, THREE), up(1, THREE), up(2, THREE)],
        [leads(0), leads(1), leads(2)],
    )
    assert report.verdict is Verdict.HEALTHY and report.exit_code == 0
    assert report.reasons == ()
    assert [(r.instance_id, r.member.id if r.member else None) for r in report.rows] == [
        (IDS[0], 0x100),
        (IDS[1], 0x101),
        (IDS[2], 0x102),
    ]
    assert [r.leader for r in report.rows] == [True, False, False]
    assert all(r.reachable for r in report.rows)
    assert (report.voters, report.reachable_voters, report.quorum, report.leader) == (3, 3, 2, 0x100)


def test_one_unreachable_member_is_degraded() -> None:
    report = build(asg(inst(0), inst(1), inst(2)), [up(0, THREE), up(1, THREE), down(2, "timeout")], [leads(0)])
    assert report.verdict is Verdict.DEGRADED and report.exit_code == 10
    assert report.rows[2].reachable is False and report.rows[2].note == "timeout"
    assert any("102 (i-0000000000000000c) is unreachable" in r for r in report.reasons)


def test_two_of_three_unreachable_is_no_quorum() -> None:
    report = build(asg(inst(0), inst(1), inst(2)), [up(0, THREE), down(1), down(2)], [leads(0, leader=0)])
    assert report.verdict is Verdict.NO_QUORUM and report.exit_code == 11
    assert report.reasons[0] == "1 of 3 voting members reachable; quorum needs 2"
    assert "no member knows a leader" in report.reasons


def test_no_leader_is_no_quorum_even_when_all_answer() -> None:
    report = build(asg(inst(0), inst(1), inst(2)), [up(0, THREE), up(1, THREE), up(2, THREE)], [leads(0, 0)])
    assert report.verdict is Verdict.NO_QUORUM
    assert report.reasons == ("no member knows a leader",)


def test_nobody_answers_is_no_quorum() -> None:
    report = build(asg(inst(0), inst(1)), [down(0), down(1, "timeout")])
    assert report.verdict is Verdict.NO_QUORUM
    assert report.reasons == ("no etcd member answers on the 2 instances asked",)
    assert [(r.reachable, r.member, r.note) for r in report.rows] == [
        (False, None, "refused"),
        (False, None, "timeout"),
    ]


def test_leader_unknown_without_v3_status_is_still_healthy() -> None:
    report = build(asg(inst(0), inst(1), inst(2)), [up(0, THREE), up(1, THREE), up(2, THREE)], [])
    assert report.verdict is Verdict.HEALTHY
    assert report.leader is None and all(r.leader is None for r in report.rows)
    assert "leader unknown" in render_text(report)


def test_member_outside_the_asg_gets_its_own_row() -> None:
    outsider = member(3, ip="10.9.9.9")
    members = (*THREE, outsider)
    outside_probe = Probe("", "10.9.9.9", answer=MemberList(members, 7))
    report = build(
        asg(inst(0), inst(1), inst(2)),
        [up(0, members), up(1, members), up(2, members), outside_probe],
        [leads(0), leads(1), leads(2), leads(3)],
    )
    row = report.rows[-1]
    assert (row.instance_id, row.ip, row.lifecycle_state, row.reachable) == (None, "10.9.9.9", None, True)
    assert row.note == "not in ASG etcd; named outsider"
    assert report.verdict is Verdict.DEGRADED
    assert report.reasons == ("member 103 (outsider) belongs to no instance of ASG etcd",)
    assert report.reachable_voters == 4  # it counts toward quorum


def test_unstarted_member_and_instance_without_member() -> None:
    members = (member(0), member(1), member(2, started=False))
    report = build(
        asg(inst(0), inst(1), inst(2), inst(3), desired=4),
        [up(0, members), up(1, members), down(2), down(3)],
        [leads(0), leads(1)],
    )
    assert report.verdict is Verdict.DEGRADED
    assert "member 102 (not started) has not started" in report.reasons
    assert f"instance {IDS[3]} (InService) has no member" in report.reasons
    assert report.rows[2].member is not None and report.rows[2].member.started is False
    assert report.rows[3].note == "no member; refused"


def test_member_of_a_terminating_instance_is_degraded() -> None:
    report = build(
        asg(inst(0), inst(1), inst(2, "Terminating:Wait"), desired=2),
        [up(0, THREE), up(1, THREE)],
        [leads(0), leads(1)],
    )
    assert report.verdict is Verdict.DEGRADED
    assert f"member 102 ({IDS[2]}) belongs to {IDS[2]}, which is Terminating:Wait" in report.reasons
    assert report.rows[2].reachable is None  # not asked: the instance is on its way out


def test_learners_do_not_count_toward_quorum() -> None:
    members = (member(0), member(1), member(2, learner=True))
    report = build(asg(inst(0), inst(1), inst(2)), [up(0, members), up(1, members), down(2)], [leads(0), leads(1)])
    assert (report.voters, report.reachable_voters) == (2, 2)
    assert report.verdict is Verdict.DEGRADED
    assert any(r.startswith("learner 102") for r in report.reasons)


def test_two_clusters_and_disagreeing_lists_are_degraded() -> None:
    report = build(
        asg(inst(0), inst(1), inst(2)),
        [up(0, THREE), up(1, THREE), up(2, THREE, cluster_id=8)],
        [leads(0), leads(1), leads(2)],
    )
    assert "peers answer for different clusters: 7, 8" in report.reasons
    partial = build(
        asg(inst(0), inst(1), inst(2)), [up(0, THREE), up(1, THREE), up(2, THREE[:2])], [leads(0), leads(1)]
    )
    assert partial.verdict is Verdict.DEGRADED
    assert any("different member lists" in r for r in partial.reasons)
    assert [r.member is not None for r in partial.rows] == [True, True, True]  # the majority's list wins


def test_asg_below_desired_capacity_is_degraded() -> None:
    two = (member(0), member(1))
    report = build(asg(inst(0), inst(1), desired=3), [up(0, two), up(1, two)], [leads(0), leads(1)])
    assert report.reasons == (
        "ASG etcd view is incomplete: 2 of 3 desired instances are InService/Pending with a private IP",
    )


def test_text_has_no_colour_unless_asked() -> None:
    report = build(asg(inst(0), inst(1), inst(2)), [up(0, THREE), up(1, THREE), down(2)], [leads(0), leads(1)])
    plain = render_text(report)
    assert "\033[" not in plain
    lines = plain.splitlines()
    assert lines[0].split() == [
        "INSTANCE",
        "IP",
        "STATE",
        "MEMBER",
        "STARTED",
        "LEARNER",
        "REACHABLE",
        "LEADER",
        "NOTE",
    ]
    assert lines[1].split() == [IDS[0], IPS[0], "InService", "100", "yes", "no", "yes", "yes"]
    assert lines[3].split() == [IDS[2], IPS[2], "InService", "102", "yes", "no", "no", "no", "refused"]
    assert lines[5].startswith("degraded: 2 of 3 voting members reachable (quorum 2), leader 100 (i-0000000000000000a)")
    assert lines[6] == f"  - member 102 ({IDS[2]}) is unreachable"
    coloured = render_text(report, colour=True)
    assert "\033[33mdegraded:" in coloured and "\033[31mno" in coloured
    # the columns line up the same with and without colour
    strip = coloured.replace("\033[1m", "").replace("\033[0m", "").replace("\033[31m", "").replace("\033[33m", "")
    assert strip == plain


def test_json_for_scripts() -> None:
    report = build(asg(inst(0), inst(1), inst(2)), [up(0, THREE), up(1, THREE), up(2, THREE)], [leads(1, 0x101)])
    data = json.loads(json.dumps(to_json(report)))
    assert data["verdict"] == "healthy" and data["exit_code"] == 0 and data["leader"] == "101"
    assert data["quorum"] == 2 and data["cluster_ids"] == ["7"]
    assert data["rows"][1] == {
        "instance_id": IDS[1],
        "ip": IPS[1],
        "lifecycle_state": "InService",
        "lifecycle_hook": None,
        "member_id": "101",
        "name": IDS[1],
        "started": True,
        "learner": False,
        "reachable": True,
        "leader": True,
        "note": "",
    }


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "environ", "expected"),
    [
        (_Tty(), {}, True),
        (io.StringIO(), {}, False),
        (_Tty(), {"NO_COLOR": "1"}, False),
        (_Tty(), {"NO_COLOR": ""}, True),  # no-color.org: only a non-empty value disables colour
        (_Tty(), {"TERM": "dumb"}, False),
    ],
)
def test_colour_only_on_a_terminal(stream: io.StringIO, environ: dict[str, str], expected: bool) -> None:
    assert use_colour(stream, environ) is expected


def test_a_member_instance_without_an_ip_or_a_desired_capacity_of_zero_is_degraded() -> None:
    # The same rule as the one that lets a new cluster form (view.incomplete): each desired instance a member with
    # an IP, and at least one desired.
    two = (member(0), member(1))
    no_ip = AsgInstance(IDS[2], "Pending", None)
    report = build(asg(inst(0), inst(1), no_ip, desired=3), [up(0, two), up(1, two)], [leads(0), leads(1)])
    assert report.verdict is Verdict.DEGRADED
    assert "ASG etcd view is incomplete: 2 of 3 desired instances are InService/Pending with a private IP" in (
        report.reasons
    )
    scaled_to_zero = build(asg(inst(0), inst(1), desired=0), [up(0, two), up(1, two)], [leads(0), leads(1)])
    assert scaled_to_zero.reasons == ("ASG etcd has desired capacity 0",)


def test_an_instance_held_by_a_lifecycle_hook_shows_the_hook_beside_its_state() -> None:
    from etcd_aws_cluster.core.lifecycle import LAUNCHING, TERMINATING, Hook

    hooks = (Hook("etcd-ready", LAUNCHING, 300, "ABANDON"), Hook("etcd-leave", TERMINATING, 300, "CONTINUE"))
    members = (member(0), member(1), member(2, learner=True))
    group = asg(inst(0, "Terminating:Wait"), inst(1), inst(2, "Pending:Wait"))
    report = status.build(view.build(group, [up(0, members), up(1, members), up(2, members)], EP), (), hooks)
    assert [r.hook for r in report.rows] == ["etcd-leave", None, "etcd-ready"]
    text = render_text(report)
    assert "Terminating:Wait (etcd-leave)" in text and "Pending:Wait (etcd-ready)" in text
    assert [r["lifecycle_hook"] for r in to_json(report)["rows"]] == ["etcd-leave", None, "etcd-ready"]
    # Without the hooks (they could not be read) the state stands alone.
    plain = build(group, [up(0, members), up(1, members), up(2, members)])
    assert [r.hook for r in plain.rows] == [None, None, None] and "Pending:Wait " in render_text(plain)


def test_the_recovery_point_and_the_last_drill_follow_the_backups_line() -> None:
    report = build(
        asg(inst(0), inst(1), inst(2)),
        [up(0, THREE), up(1, THREE), up(2, THREE)],
        [leads(0), leads(1), leads(2)],
    )
    recovery = ("recovery point: revision 42 (9s ago) through 3 deltas", "restore drill: passed 1h ago")
    report = dataclasses.replace(report, backups="backups: newest s3://b/k, 5m old", recovery=recovery)
    text = render_text(report, colour=False)
    assert "backups: newest s3://b/k, 5m old\n  recovery point: revision 42 (9s ago)" in text
    assert "\n  restore drill: passed 1h ago\n" in text
    assert to_json(report)["recovery"] == list(recovery)
