"""Table tests of the cluster view: the one place where who is who, the agreed list and quorum are worked out."""

from __future__ import annotations

import itertools

import pytest

from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core import view
from etcd_aws_cluster.core.model import AsgInstance, AsgView, EtcdFailure, Identity, Member, MemberList, Probe
from tests.unit.builders import EP, IDS, IPS, member


def inst(n: int, state: str = "InService", ip: str | None = None) -> AsgInstance:
    return AsgInstance(IDS[n], state, ip or IPS[n])


def asg(*instances: AsgInstance) -> AsgView:
    return AsgView("etcd", len(instances), instances)


def up(n: int, members: tuple[Member, ...], cluster_id: int = 7) -> Probe:
    return Probe(IDS[n], IPS[n], answer=MemberList(members, cluster_id))


def down(n: int) -> Probe:
    return Probe(IDS[n], IPS[n], error=EtcdFailure.REFUSED)


THREE = (member(0), member(1), member(2))


def test_quorum() -> None:
    assert [view.quorum(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_a_started_member_named_after_an_instance_belongs_to_that_instance_only() -> None:
    reused = asg(inst(1, ip=IPS[0]))  # i-1 got i-0's old IP
    cluster = view.ClusterView(reused, EP, (), (member(0),), (), False)
    assert cluster.owner(member(0)) is None
    assert cluster.owner(member(0, started=False)) == reused.instances[0]  # unstarted: by its peer IP


def test_owner_by_ip_prefers_an_instance_that_counts_as_a_member_but_takes_any() -> None:
    standby = asg(inst(1, "Standby", ip=IPS[0]), inst(2, ip=IPS[0]))
    cluster = view.ClusterView(standby, EP, (), (), (), False)
    assert cluster.owner(member(0, started=False)) == standby.instances[1]
    only_standby = view.ClusterView(asg(inst(1, "Standby", ip=IPS[0])), EP, (), (), (), False)
    assert only_standby.owner(member(0, started=False)) == only_standby.asg.instances[0]


def test_the_list_most_answers_give_wins_and_ties_do_not_depend_on_probe_order() -> None:
    two = (member(0), member(1))
    other = (member(0), member(2))
    assert view.agree([up(0, THREE), up(1, THREE), up(2, two)])[0] == THREE
    assert view.agree([up(0, THREE), up(1, two)])[0] == THREE  # a tie goes to the longer list
    picks = {view.agree(order)[0] for order in itertools.permutations([up(0, two), up(1, other)])}
    assert len(picks) == 1
    members, cluster_ids, differ = view.agree([up(0, THREE), up(1, two)])
    assert cluster_ids == (7,) and differ


def test_answers_from_two_clusters_are_refused_by_name() -> None:
    cluster = view.build(asg(inst(0), inst(1)), [up(0, THREE, 7), up(1, THREE, 8)], EP)
    assert cluster.cluster_id is None
    with pytest.raises(UnsafeError, match=r"different etcd clusters \(7, 8\)"):
        cluster.require_one_cluster()


def test_healthy_and_reachable() -> None:
    cluster = view.build(asg(inst(0), inst(1)), [up(0, THREE), down(1)], EP)
    assert cluster.healthy == {100}
    assert [cluster.reachable(m) for m in THREE] == [True, False, None]  # 2 was not asked
    assert cluster.client_urls() == [EP.client_url(IPS[0])]


@pytest.mark.parametrize(
    ("answering", "remove", "add_voter", "refusal"),
    [
        ("012", [2], True, None),
        ("01", [2], True, None),  # 2 of 2 after the removal, 2 of 3 after the add
        ("01", [], True, "adding this instance would need 3 healthy voting members, only 2"),
        ("01", [1], False, "removing member i-0000000000000001 would leave 1 of 2 voting members healthy"),
        ("0", [], False, "no quorum: 1 of 3"),
    ],
)
def test_check_change(answering: str, remove: list[int], add_voter: bool, refusal: str | None) -> None:
    instances = asg(inst(0), inst(1), inst(2))
    cluster = view.build(instances, [up(int(n), THREE) if n in answering else down(int(n)) for n in "012"], EP)
    removing = [m for m in THREE if m.id - 100 in remove]
    if refusal is None:
        cluster.check_change(removing, add_voter=add_voter)
    else:
        with pytest.raises(UnsafeError, match=refusal):
            cluster.check_change(removing, add_voter=add_voter)


def test_learners_never_count_and_a_second_member_may_join_a_single_one() -> None:
    members = (member(0), member(1, learner=True))
    cluster = view.build(asg(inst(0), inst(1)), [up(0, members), down(1)], EP)
    assert cluster.count() == view.Count(up=1, voters=1)
    cluster.check_change([], add_voter=True)  # etcd allows 1 started of 2


def test_names_in_the_initial_cluster() -> None:
    me = Identity(IDS[3], IPS[3], "us-east-1")
    members = (member(0), member(1, started=False), member(2, started=False), member(3, name="old"))
    instances = asg(inst(0), inst(1), inst(2, "Terminated"), inst(3))
    cluster = view.build(instances, [up(0, members)], EP)
    assert [name for name, _ in cluster.initial_cluster(members, me)] == [
        IDS[0],  # started: its own name
        IDS[1],  # unstarted: the live instance holding its peer URL
        IDS[3],  # this instance, whatever its member is called
        "member-66",  # unstarted, its instance gone: by id
    ]


def test_client_urls_this_instance_first_the_one_being_removed_last() -> None:
    cluster = view.build(asg(inst(0), inst(1), inst(2)), [up(n, THREE) for n in range(3)], EP)
    urls = cluster.client_urls(first=IPS[2], last=[IPS[0]])
    assert urls == [EP.client_url(IPS[2]), EP.client_url(IPS[1]), EP.client_url(IPS[0])]


def no_ip(n: int, state: str = "InService") -> AsgInstance:
    return AsgInstance(IDS[n], state, None)


@pytest.mark.parametrize(
    ("desired", "instances", "shortfall"),
    [
        (3, [inst(0), inst(1), inst(2)], ""),
        (3, [inst(0, "Pending"), inst(1, "Pending:Wait"), inst(2, "ReplacingRootVolume")], ""),
        (3, [inst(0), inst(1), inst(2), inst(3, "Standby"), inst(4, "Terminating")], ""),  # neither is a member
        (1, [inst(0)], ""),
        (3, [inst(0), inst(1)], "view is incomplete: 2 of 3 desired instances"),
        (3, [inst(0), inst(1), no_ip(2)], "view is incomplete: 2 of 3 desired instances"),
        (3, [inst(0), inst(1), no_ip(2, "Pending"), no_ip(3)], "view is incomplete: 2 of 3 desired instances"),
        (3, [inst(0), inst(1), inst(2, "Terminating")], "view is incomplete: 2 of 3 desired instances"),
        (3, [inst(0), inst(1), inst(2, "Warmed:Running")], "view is incomplete: 2 of 3 desired instances"),
        (2, [inst(0), inst(1), inst(2)], "view is incomplete: 3 of 2 desired instances"),  # scale-in under way
        (0, [], "has desired capacity 0"),
        (0, [inst(0), inst(1)], "has desired capacity 0"),
    ],
)
def test_the_asg_is_complete_when_exactly_the_desired_instances_are_members_with_an_ip(
    desired: int, instances: list[AsgInstance], shortfall: str
) -> None:
    group = AsgView("etcd", desired, tuple(instances))
    got = view.incomplete(group)
    if shortfall:
        assert got.startswith(f"ASG etcd {shortfall}"), got
    else:
        assert got == ""


def test_initial_peers_are_the_member_instances_with_an_ip_sorted_by_id() -> None:
    group = AsgView("etcd", 3, (inst(2, "Pending"), inst(0), no_ip(1), inst(3, "Standby"), inst(4, "Terminated")))
    assert view.initial_peers(group, EP) == ((IDS[0], EP.peer_url(IPS[0])), (IDS[2], EP.peer_url(IPS[2])))
    assert view.ready_instances(group) == (inst(0), inst(2, "Pending"))


@pytest.mark.parametrize(
    ("members", "answering", "silent"),
    [
        (THREE, "012", []),
        (THREE, "01", [2]),  # asked, did not answer
        (THREE, "0", [1, 2]),
        ((member(0), member(1)), "0", [1]),
        ((member(0), member(1), member(2, learner=True)), "0", [1]),  # a silent learner is no silent voter
        ((member(0), member(1), member(2, started=False)), "01", [2]),  # nor does an unstarted voter answer
        ((member(0), member(1), member(3)), "01", [3]),  # 3 was not asked (no instance of the ASG): silent too
    ],
)
def test_silent_voters_are_the_voting_members_whose_etcd_did_not_answer(
    members: tuple[Member, ...], answering: str, silent: list[int]
) -> None:
    probes = [up(n, members) if str(n) in answering else down(n) for n in range(3)]
    cluster = view.build(asg(inst(0), inst(1), inst(2)), probes, EP)
    assert [m.id - 100 for m in cluster.silent_voters] == silent
    assert cluster.count().up == len(cluster.voters) - len(silent)
