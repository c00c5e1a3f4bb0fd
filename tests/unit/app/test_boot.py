"""The boot run's own reasoning that needs no AWS or etcd: the hint added to etcd's "unhealthy cluster"."""

from __future__ import annotations

import pytest

from etcd_aws_cluster.app.boot import _unhealthy_hint
from etcd_aws_cluster.core import view
from etcd_aws_cluster.core.model import AsgInstance, AsgView, Decision, EtcdFailure, Member, MemberList, Plan, Probe
from tests.unit.builders import EP, IDS, IPS, member

ASG = AsgView("etcd", 4, tuple(AsgInstance(IDS[n], "InService", IPS[n]) for n in range(4)))


@pytest.mark.parametrize(
    ("members", "removed", "named"),
    [
        ((member(0), member(1), member(2)), (), [IDS[1], IDS[2]]),
        ((member(0), member(1), member(2)), (2,), [IDS[1]]),  # being removed: not what blocks the add
        ((member(0), member(1, learner=True)), (), []),  # etcd waits for voting members only
        ((member(0), member(1, started=False)), (), ["65"]),  # an added, unstarted voter blocks it too (by id)
    ],
)
def test_the_unhealthy_cluster_hint_names_the_silent_voters(
    members: tuple[Member, ...], removed: tuple[int, ...], named: list[str]
) -> None:
    probes = [Probe(IDS[0], IPS[0], answer=MemberList(members, 7))] + [
        Probe(IDS[n], IPS[n], error=EtcdFailure.TIMEOUT) for n in range(1, 3)
    ]
    cluster = view.build(ASG, probes, EP)
    plan = Plan(Decision.JOIN, "test", remove=tuple(m for m in members if m.id - 100 in removed), add_self=True)
    hint = _unhealthy_hint("etcd: unhealthy cluster (HTTP 503)", plan, cluster)
    if named:
        assert hint.endswith(
            f"not answering: {', '.join(named)}. Bring it back, or remove it with etcdctl member remove, and rerun"
        )
    else:
        assert hint == ""
    assert _unhealthy_hint("etcd: too many requests", plan, cluster) == ""
