"""Table tests of the pure decision: every outcome and every refusal."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core import recovery, view
from etcd_aws_cluster.core.model import (
    AsgInstance,
    AsgView,
    Decision,
    EtcdFailure,
    Identity,
    Member,
    MemberList,
    Probe,
)
from etcd_aws_cluster.core.plan import decide
from etcd_aws_cluster.core.records import ClusterRecord, SnapshotInfo
from etcd_aws_cluster.core.view import Facts, quorum, render_initial_cluster
from tests.unit.builders import EP, IDS, IPS, member


def inst(n: int, state: str = "InService", ip: bool = True) -> AsgInstance:
    return AsgInstance(IDS[n], state, IPS[n] if ip else None)


def answered(n: int, members: tuple[Member, ...], cluster_id: int = 7) -> Probe:
    return Probe(IDS[n], IPS[n], answer=MemberList(members, cluster_id))


def failed(n: int, error: str = "refused") -> Probe:
    return Probe(IDS[n], IPS[n], error=EtcdFailure(error))


def facts(
    me: int,
    instances: list[AsgInstance],
    probes: list[Probe],
    desired: int | None = None,
    local: bool = False,
) -> Facts:
    asg = AsgView("etcd", len(instances) if desired is None else desired, tuple(instances))
    return Facts(me=Identity(IDS[me], IPS[me], "us-east-1"), view=view.build(asg, probes, EP), has_local_data=local)


def test_quorum() -> None:
    assert [quorum(n) for n in range(1, 8)] == [1, 2, 2, 3, 3, 4, 4]


def test_new_cluster_when_nobody_answers_and_asg_is_complete() -> None:
    plan = decide(facts(1, [inst(2), inst(0), inst(1)], [failed(0), failed(1), failed(2)]))
    assert plan.decision is Decision.NEW
    assert plan.cluster_state == "new"
    # sorted by name, the same on every node
    assert render_initial_cluster(plan.initial_cluster) == ",".join(f"{IDS[n]}=http://{IPS[n]}:2380" for n in range(3))
    assert not plan.remove and not plan.add_self


def test_every_node_computes_the_same_new_cluster() -> None:
    instances = [inst(0), inst(1), inst(2)]
    probes = [failed(0), failed(1), failed(2)]
    plans = {decide(facts(n, instances, probes)).initial_cluster for n in range(3)}
    assert len(plans) == 1


@pytest.mark.parametrize(
    ("instances", "desired", "why"),
    [
        ([inst(0), inst(1)], 3, "2 of 3"),
        ([inst(0), inst(1), inst(2, ip=False)], 3, "2 of 3"),
        ([inst(0), inst(1), inst(2, "Terminating")], 3, "2 of 3"),
        ([inst(0), inst(1), inst(2)], 0, "desired capacity 0"),
    ],
)
def test_wait_while_the_asg_view_is_incomplete(instances: list[AsgInstance], desired: int, why: str) -> None:
    plan = decide(facts(0, instances, [failed(i) for i in range(len(instances))], desired=desired))
    assert plan.decision is Decision.WAIT
    assert why in plan.reason


def test_pending_instances_count_while_bootstrapping() -> None:
    plan = decide(facts(0, [inst(0, "Pending"), inst(1, "Pending:Wait"), inst(2)], [failed(0), failed(1), failed(2)]))
    assert plan.decision is Decision.NEW


@pytest.mark.parametrize("error", ["timeout", "unreachable", "http", "tls"])
def test_never_new_while_a_peer_might_be_running(error: str) -> None:
    plan = decide(facts(0, [inst(0), inst(1), inst(2)], [failed(0), failed(1, error), failed(2)]))
    assert plan.decision is Decision.WAIT
    assert IDS[1] in plan.reason


def test_new_when_the_silent_peer_bootstraps_the_same_cluster() -> None:
    urls = frozenset(EP.peer_url(ip) for ip in IPS[:3])
    silent = Probe(IDS[1], IPS[1], error=EtcdFailure.TIMEOUT, bootstrapping=urls)
    plan = decide(facts(0, [inst(0), inst(1), inst(2)], [failed(0), silent, failed(2)]))
    assert plan.decision is Decision.NEW


def test_wait_when_the_silent_peer_bootstraps_another_cluster() -> None:
    urls = frozenset(EP.peer_url(ip) for ip in IPS[1:4])
    silent = Probe(IDS[1], IPS[1], error=EtcdFailure.TIMEOUT, bootstrapping=urls)
    plan = decide(facts(0, [inst(0), inst(1), inst(2)], [failed(0), silent, failed(2)]))
    assert plan.decision is Decision.WAIT


def test_restart_from_local_data_when_nobody_answers() -> None:
    plan = decide(facts(0, [inst(0), inst(1), inst(2)], [failed(0), failed(1), failed(2, "timeout")], local=True))
    assert plan.decision is Decision.RESTART
    assert plan.cluster_state == "existing"


def test_local_data_never_gives_new_even_with_incomplete_asg() -> None:
    plan = decide(facts(0, [inst(0), inst(1)], [failed(0), failed(1)], desired=3, local=True))
    assert plan.decision is Decision.RESTART
    assert plan.cluster_state == "existing"


def test_already_a_started_member() -> None:
    members = (member(0), member(1), member(2))
    plan = decide(facts(1, [inst(0), inst(1), inst(2)], [answered(n, members) for n in range(3)], local=True))
    assert plan.decision is Decision.MEMBER
    assert plan.cluster_state == "existing"
    assert not plan.remove and not plan.add_self


def test_added_but_unstarted_member_is_me() -> None:
    members = (member(0), member(1), member(2, started=False))
    plan = decide(facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members), failed(2)]))
    assert plan.decision is Decision.MEMBER
    assert (IDS[2], EP.peer_url(IPS[2])) in plan.initial_cluster


def test_join_removes_the_gone_member_and_adds_self() -> None:
    members = (member(0), member(1), member(2))
    instances = [inst(0), inst(1), inst(3)]  # instance 2 was terminated and replaced by 3
    plan = decide(facts(3, instances, [answered(0, members), answered(1, members), failed(3)]))
    assert plan.decision is Decision.JOIN
    assert [m.id for m in plan.remove] == [102]
    assert plan.add_self
    assert plan.cluster_state == "existing"
    assert [name for name, _ in plan.initial_cluster] == [IDS[0], IDS[1], IDS[3]]


def test_join_removes_member_of_terminating_instance() -> None:
    members = (member(0), member(1), member(2))
    instances = [inst(0), inst(1), inst(2, "Terminating:Wait"), inst(3)]
    plan = decide(facts(3, instances, [answered(0, members), answered(1, members), failed(3)]))
    assert [m.id for m in plan.remove] == [102]


def test_join_keeps_members_of_standby_instances() -> None:
    members = (member(0), member(1), member(2))
    instances = [inst(0), inst(1), inst(2, "Standby"), inst(3)]
    probes = [answered(0, members), answered(1, members), answered(2, members), failed(3)]
    plan = decide(facts(3, instances, probes))
    assert plan.decision is Decision.JOIN
    assert plan.remove == ()


def test_join_removes_unstarted_members_first() -> None:
    gone = Member(104, IDS[4], (EP.peer_url(IPS[4]),), (EP.client_url(IPS[4]),))
    members = (member(0), member(1), member(2), gone, Member(999, "", ("http://10.9.9.9:2380",)))
    instances = [inst(0), inst(1), inst(2), inst(3)]
    probes = [answered(n, members) for n in range(3)] + [failed(3)]
    plan = decide(facts(3, instances, probes))
    assert [m.id for m in plan.remove] == [999, 104]


def test_unstarted_gone_voter_counts_against_quorum() -> None:
    # etcd counts an added-but-unstarted voter: 2 healthy of 4 voters is no quorum
    members = (member(0), member(1), member(2), Member(999, "", ("http://10.9.9.9:2380",)))
    instances = [inst(0), inst(1), inst(3)]
    with pytest.raises(UnsafeError, match="no quorum: 2 of 4"):
        decide(facts(3, instances, [answered(0, members), answered(1, members), failed(3)]))


def test_rerun_after_partial_join_finds_own_unstarted_member() -> None:
    members = (member(0), member(1), member(2), member(3, started=False))
    instances = [inst(0), inst(1), inst(2), inst(3)]
    probes = [answered(n, members) for n in range(3)]
    plan = decide(facts(3, instances, probes))
    assert plan.decision is Decision.MEMBER  # 3 is me: my own unstarted member


def test_second_joiner_waits_for_the_first() -> None:
    members = (member(0), member(1), member(2), member(3, started=False))
    instances = [inst(0), inst(1), inst(2), inst(3), AsgInstance(IDS[4], "InService", IPS[4])]
    probes = [answered(n, members) for n in range(3)]
    f = Facts(Identity(IDS[4], IPS[4], "us-east-1"), view.build(AsgView("etcd", 5, tuple(instances)), probes, EP))
    plan = decide(f)
    assert plan.decision is Decision.WAIT
    assert IDS[3] in plan.reason


def test_refuse_without_quorum() -> None:
    members = (member(0), member(1), member(2))
    instances = [inst(0), inst(3)]  # 1 and 2 are gone: only 1 of 3 voters answers
    with pytest.raises(UnsafeError, match="no quorum: 1 of 3"):
        decide(facts(3, instances, [answered(0, members), failed(3)], desired=3))


def test_refuse_removal_that_breaks_quorum() -> None:
    # 3 voters, 2 healthy, but one healthy member's instance left the ASG: removing it leaves 1 of 2.
    members = (member(0), member(1), member(2))
    instances = [inst(0), inst(2, ip=True), inst(3)]
    probes = [answered(0, members), answered(1, members), failed(2, "timeout"), failed(3)]
    with pytest.raises(UnsafeError, match="removing member"):
        decide(facts(3, instances, probes))


def test_refuse_add_that_needs_more_healthy_members() -> None:
    # quorum holds now (2 of 3), but with this instance there are 4 voters and 3 must answer: 2 do
    members = (member(0), member(1), member(2))
    instances = [inst(0), inst(1), inst(2), inst(3)]
    probes = [answered(0, members), answered(1, members), failed(2, "timeout"), failed(3)]
    with pytest.raises(UnsafeError, match="adding this instance would need 3 healthy voting members, only 2"):
        decide(facts(3, instances, probes))
    # as a learner it does not count toward quorum: allowed
    assert decide(facts(3, instances, probes), as_learner=True).decision is Decision.JOIN


def test_refuse_when_two_members_claim_this_instance() -> None:
    by_name = Member(555, IDS[2], (EP.peer_url(IPS[2]),))
    members = (member(0), member(1), member(2), by_name)
    with pytest.raises(UnsafeError, match="2 members claim this instance"):
        decide(facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members)]))


def test_refuse_when_a_live_instance_s_member_has_my_peer_url() -> None:
    theirs = Member(555, IDS[1], (EP.peer_url(IPS[2]),), (EP.client_url(IPS[2]),))
    members = (member(0), theirs)
    with pytest.raises(UnsafeError, match=f"member '{IDS[1]}' of live instance {IDS[1]} has this instance's peer URL"):
        decide(facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), failed(1), failed(2)]))


def test_lost_data_dir_of_a_member_that_ran_replaces_its_entry() -> None:
    # same instance, same IP, an empty data dir (instance store after stop/start): etcd would panic on "existing"
    members = (member(0), member(1), member(2))
    plan = decide(facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members), failed(2)]))
    assert plan.decision is Decision.JOIN
    assert [m.id for m in plan.remove] == [102] and plan.add_self
    assert not plan.move_data_aside  # nothing to move
    assert "data dir lost" in plan.reason


def test_lost_data_dir_replacement_is_quorum_guarded() -> None:
    members = (member(0), member(1), member(2))
    with pytest.raises(UnsafeError, match="no quorum: 1 of 3"):
        decide(facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), failed(1, "timeout"), failed(2)]))


def test_a_member_that_never_ran_needs_no_data() -> None:
    # a late member of a new cluster's initial list: named, no client URLs, no data yet
    late = Member(102, IDS[2], (EP.peer_url(IPS[2]),))
    members = (member(0), member(1), late)
    plan = decide(facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members), failed(2)]))
    assert plan.decision is Decision.MEMBER


def test_refuse_answers_from_two_clusters() -> None:
    members = (member(0), member(1))
    probes = [answered(0, members, cluster_id=1), answered(1, members, cluster_id=2), failed(2)]
    with pytest.raises(UnsafeError, match="different etcd clusters"):
        decide(facts(2, [inst(0), inst(1), inst(2)], probes))


def test_stale_local_data_is_moved_aside_on_join() -> None:
    members = (member(0), member(1))
    plan = decide(facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members)], local=True))
    assert plan.decision is Decision.JOIN
    assert plan.move_data_aside


def test_stale_local_data_refused_when_configured() -> None:
    members = (member(0), member(1))
    f = facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members)], local=True)
    with pytest.raises(UnsafeError, match="stale_data=refuse"):
        decide(f, stale_data="refuse")


def test_member_with_my_ip_from_a_gone_instance_is_replaced() -> None:
    old = Member(555, "i-00000000000000fff", (EP.peer_url(IPS[2]),), (EP.client_url(IPS[2]),))
    members = (member(0), member(1), old)
    plan = decide(facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members)]))
    assert plan.decision is Decision.JOIN
    assert [m.id for m in plan.remove] == [555]


def test_refuse_member_named_me_with_other_peer_url() -> None:
    wrong = Member(555, IDS[2], ("http://10.9.9.9:2380",))
    members = (member(0), member(1), wrong)
    with pytest.raises(UnsafeError, match="member update"):
        decide(facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members)]))


@pytest.mark.parametrize("state", ["Standby", "Terminating", "Detached"])
def test_refuse_when_this_instance_does_not_count(state: str) -> None:
    with pytest.raises(UnsafeError, match=state):
        decide(facts(0, [inst(0, state), inst(1)], [failed(1)]))


def test_refuse_when_this_instance_is_not_in_the_asg() -> None:
    with pytest.raises(UnsafeError, match="not in ASG"):
        decide(facts(3, [inst(0), inst(1)], [failed(0)]))


def test_learner_members_do_not_count_toward_quorum() -> None:
    # 2 voters healthy + 1 learner whose instance is gone: removing the learner is always safe
    members = (member(0), member(1), member(2, learner=True))
    plan = decide(facts(3, [inst(0), inst(1), inst(3)], [answered(0, members), answered(1, members), failed(3)]))
    assert [m.id for m in plan.remove] == [102]


def test_local_data_of_another_cluster_replaces_my_entry() -> None:
    members = (member(0), member(1), member(2))
    f = facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members)], local=True)
    f = replace(f, has_local_data=True, local_ids=(102, 99))  # cluster 99, not 7
    plan = decide(f)
    assert plan.decision is Decision.JOIN
    assert plan.move_data_aside
    assert [m.id for m in plan.remove] == [102]
    assert "belongs to cluster 63, not 7" in plan.reason


def test_local_data_of_an_earlier_membership_replaces_my_entry() -> None:
    members = (member(0), member(1), member(2))
    f = facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members)], local=True)
    f = replace(f, has_local_data=True, local_ids=(555, 7))
    plan = decide(f)
    assert plan.decision is Decision.JOIN and plan.move_data_aside
    with pytest.raises(UnsafeError, match="of member 22b"):
        decide(f, stale_data="refuse")


def test_matching_local_data_is_a_plain_member() -> None:
    members = (member(0), member(1), member(2))
    f = facts(2, [inst(0), inst(1), inst(2)], [answered(0, members), answered(1, members)], local=True)
    plan = decide(replace(f, has_local_data=True, local_ids=(102, 7)))
    assert plan.decision is Decision.MEMBER and not plan.move_data_aside


def test_unstarted_members_start_one_at_a_time_lowest_id_first() -> None:
    members = (member(0), member(1), member(2, started=False), member(3, started=False))
    instances = [inst(0), inst(1), inst(2), inst(3)]
    probes = [answered(0, members), answered(1, members)]
    first = decide(facts(2, instances, probes))
    assert first.decision is Decision.MEMBER
    second = decide(facts(3, instances, probes))
    assert second.decision is Decision.WAIT
    assert IDS[2] in second.reason


def booting(n: int) -> Member:
    """A member of a new cluster's initial list whose etcd has not come up: named, no client URLs."""
    return Member(id=100 + n, name=IDS[n], peer_urls=(EP.peer_url(IPS[n]),))


def test_late_members_of_a_new_cluster_start_one_at_a_time_too() -> None:
    # Seen with 5 nodes: 3 formed the cluster, the last 2 both wrote "existing" and their etcds waited on each other.
    members = (member(0), member(1), booting(2), booting(3))
    instances = [inst(0), inst(1), inst(2), inst(3)]
    probes = [answered(0, members), answered(1, members)]
    first = decide(facts(2, instances, probes))
    assert first.decision is Decision.MEMBER and first.cluster_state == "existing"
    assert "not started yet" in first.reason
    second = decide(facts(3, instances, probes))
    assert second.decision is Decision.WAIT
    assert IDS[2] in second.reason


def test_joiner_waits_for_a_late_member_of_a_new_cluster() -> None:
    members = (member(0), member(1), booting(2))
    instances = [inst(0), inst(1), inst(2), inst(3)]
    plan = decide(facts(3, instances, [answered(0, members), answered(1, members)]))
    assert plan.decision is Decision.WAIT
    assert f"instance {IDS[2]} is joining" in plan.reason


def test_unstarted_member_of_a_gone_instance_is_named_by_id_not_waited_for() -> None:
    # etcd needs every member in ETCD_INITIAL_CLUSTER (it matches them by peer URL); no instance gives this one a name
    members = (member(0), member(1), member(2, started=False), member(3, started=False))
    instances = [inst(0), inst(1), inst(2, "Terminated"), inst(3)]
    plan = decide(facts(3, instances, [answered(0, members), answered(1, members)]))
    assert plan.decision is Decision.MEMBER and plan.cluster_state == "existing"
    assert (f"member-{102:x}", EP.peer_url(IPS[2])) in plan.initial_cluster
    assert (IDS[3], EP.peer_url(IPS[3])) in plan.initial_cluster


# --- with a cluster record (backup_url): never an empty cluster where one with data existed ----------------------
def snap(revision: int, key: str = "") -> SnapshotInfo:
    return SnapshotInfo(
        key=key or f"p/etcd/snapshots/2026-r{revision}.db",
        taken_at=datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(hours=revision),
        revision=revision,
        cluster_id=7,
        etcd_version="3.5.1",
        sha256="0" * 64,
        size=100,
        members=(),
        source_instance=IDS[0],
    )


def record_of(*members: int) -> ClusterRecord:
    return ClusterRecord(
        "etcd",
        7,
        tuple((IDS[n], EP.peer_url(IPS[n])) for n in members),
        None,
        datetime(2026, 11, 1, tzinfo=timezone.utc),
    )


def with_record(f: Facts, record: ClusterRecord | None, snapshots: tuple[SnapshotInfo, ...]) -> Facts:
    return replace(f, record=record, snapshots=tuple(sorted(snapshots, key=lambda s: -s.revision)))


def test_every_instance_replaced_restores_the_newest_snapshot_on_every_node() -> None:
    instances = [inst(3), inst(4), inst(5)]
    snaps = (snap(5), snap(9))
    plans = {
        decide(with_record(facts(n, instances, [failed(3), failed(4), failed(5)]), record_of(0, 1, 2), snaps))
        for n in (3, 4, 5)
    }
    assert len(plans) == 1  # all three agree without talking to each other
    plan = plans.pop()
    assert plan.decision is Decision.RESTORE and plan.cluster_state == "new"
    assert [s.revision for s in plan.restore] == [9, 5]  # the newest first, the one before if it is corrupt
    assert [name for name, _ in plan.initial_cluster] == [IDS[3], IDS[4], IDS[5]]


def test_a_recorded_member_still_in_the_asg_is_waited_for_never_new() -> None:
    instances = [inst(0), inst(1), inst(3)]  # 2 was replaced by 3; 0 and 1 replay their WAL
    f = with_record(facts(3, instances, [failed(0), failed(1), failed(3)]), record_of(0, 1, 2), (snap(9),))
    plan = decide(f)
    assert plan.decision is Decision.WAIT
    assert IDS[0] in plan.reason and IDS[1] in plan.reason
    assert "etcd-aws-cluster restore --snapshot p/etcd/snapshots/2026-r9.db" in plan.reason


def test_a_survivor_restarts_from_its_own_data() -> None:
    f = with_record(facts(0, [inst(0), inst(1), inst(3)], [failed(1), failed(3)], local=True), record_of(0, 1, 2), ())
    assert decide(f).decision is Decision.RESTART


def test_a_record_without_a_snapshot_is_refused() -> None:
    f = with_record(facts(3, [inst(3), inst(4), inst(5)], [failed(3), failed(4), failed(5)]), record_of(0, 1, 2), ())
    with pytest.raises(UnsafeError, match="refusing to start an empty cluster"):
        decide(f)


def test_a_restore_waits_for_a_complete_asg_like_a_new_cluster() -> None:
    f = with_record(facts(3, [inst(3), inst(4)], [failed(3), failed(4)], desired=3), record_of(0, 1, 2), (snap(9),))
    plan = decide(f)
    assert plan.decision is Decision.WAIT and "incomplete" in plan.reason


def test_no_record_keeps_today_s_rules() -> None:
    plan = decide(with_record(facts(0, [inst(0), inst(1), inst(2)], [failed(0), failed(1), failed(2)]), None, ()))
    assert plan.decision is Decision.NEW


# -- with a cluster record (backup_url set) ---------------------------------------------------------------------


def _snapshot(revision: int) -> SnapshotInfo:
    taken = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return SnapshotInfo(f"p/asg/snapshots/s{revision}.db", taken, revision, 7, "3.5.1", "0" * 64, 10, (), IDS[0])


def _record(members: tuple[int, ...], newest: str | None, cluster_id: int | None = None) -> ClusterRecord:
    pairs = tuple((IDS[n], f"http://{IPS[n]}:2380") for n in members)
    return ClusterRecord("etcd", cluster_id, pairs, newest, datetime(2026, 1, 1, tzinfo=timezone.utc))


def looked_soon_after(f: Facts, record: ClusterRecord, seconds: float = 30) -> Facts:
    """`f` with `record`, looked at `seconds` after it was written."""
    return replace(f, record=record, now=record.updated_at + timedelta(seconds=seconds))


def test_a_restore_recorded_by_a_faster_peer_is_joined_with_the_same_snapshot() -> None:
    """Three replacements boot together; the first restores and records it before the others decide: they restore
    the snapshot it recorded (not a corrupt newer one it skipped), rather than wait for it as a survivor."""
    snapshots = (_snapshot(9), _snapshot(5), _snapshot(3))  # 9 was found corrupt by the first restorer
    base = facts(1, [inst(0), inst(1), inst(2)], [failed(0), failed(1), failed(2)])
    plan = decide(replace(looked_soon_after(base, _record((2, 0, 1), snapshots[1].key)), snapshots=snapshots))
    assert plan.decision is Decision.RESTORE and plan.cluster_state == "new"
    assert plan.restore == snapshots[1:]
    assert plan.initial_cluster == tuple((IDS[n], f"http://{IPS[n]}:2380") for n in range(3))


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (_record((0, 1, 2), "p/asg/snapshots/s5.db", cluster_id=7), "still in the ASG"),  # a running cluster's
        (_record((0, 2), "p/asg/snapshots/s5.db"), "still in the ASG"),  # not this instance set
        (_record((0, 1, 2), "p/asg/snapshots/gone.db"), "still in the ASG"),  # not a listed snapshot
    ],
)
def test_a_record_of_survivors_is_waited_for(record: ClusterRecord, why: str) -> None:
    base = facts(1, [inst(0), inst(1), inst(2)], [failed(0), failed(1), failed(2)])
    plan = decide(replace(looked_soon_after(base, record), snapshots=(_snapshot(5),)))
    assert plan.decision is Decision.WAIT
    assert why in plan.reason


def test_a_new_cluster_recorded_by_a_faster_peer_is_joined() -> None:
    """The first of three booting instances decided `new` and wrote the record before the others looked: they
    take part in that cluster (waiting for it as a survivor would deadlock: it needs them for a quorum)."""
    base = facts(1, [inst(0), inst(1), inst(2)], [failed(0), failed(1), failed(2)])
    plan = decide(looked_soon_after(base, _record((0, 1, 2), None)))
    assert plan.decision is Decision.NEW and plan.cluster_state == "new"
    assert plan.initial_cluster == tuple((IDS[n], f"http://{IPS[n]}:2380") for n in range(3))


def test_a_cluster_without_quorum_whose_silent_members_are_in_the_asg_is_waited_for_with_a_record() -> None:
    # a whole-cluster outage, one survivor back (etcd 3.5 lists members without a quorum), the others replaying
    members = (member(0), member(1), member(2))
    instances = [inst(0), inst(1), inst(3)]
    probes = [answered(0, members), failed(1), failed(3)]
    with pytest.raises(UnsafeError, match="no quorum: 1 of 3"):  # without a record: refused at once, as before
        decide(facts(3, instances, probes))
    plan = decide(with_record(facts(3, instances, probes), record_of(0, 1, 2), (snap(9),)))
    assert plan.decision is Decision.WAIT
    assert IDS[1] in plan.reason and IDS[2] not in plan.reason  # 2 is gone: nothing to wait for there


# -- a record without a cluster id is followed only while it is recent ---------------------------------------------
def test_the_follow_window_is_twice_the_timeout() -> None:
    assert recovery.follow_window(180) == timedelta(minutes=6)
    assert recovery.follow_window(60) == timedelta(minutes=2)


@pytest.mark.parametrize(
    ("seconds", "followed"),
    [
        (0, True),
        (359, True),
        (360, True),  # the window's edge: still followed
        (361, False),
        (-30, True),  # the writer's clock a little ahead of this one's
        (-361, False),
        (86400 * 3, False),  # days old: nothing came of it
    ],
)
def test_a_new_clusters_record_is_followed_only_while_it_is_recent(seconds: float, followed: bool) -> None:
    base = facts(1, [inst(0), inst(1), inst(2)], [failed(0), failed(1), failed(2)])
    plan = decide(looked_soon_after(base, _record((0, 1, 2), None), seconds))
    assert plan.decision is (Decision.NEW if followed else Decision.WAIT)
    if not followed:
        assert "not taking part in that decision" in plan.reason and "older than 360s" in plan.reason
        assert "come back with their data and form the cluster" in plan.reason  # a cluster that may exist


def test_an_old_restore_record_is_not_followed_and_its_members_are_waited_for() -> None:
    snapshots = (_snapshot(9), _snapshot(5))
    base = facts(1, [inst(0), inst(1), inst(2)], [failed(0), failed(1), failed(2)])
    plan = decide(replace(looked_soon_after(base, _record((0, 1, 2), snapshots[1].key), 3600), snapshots=snapshots))
    assert plan.decision is Decision.WAIT
    assert "record of a restore of p/asg/snapshots/s5.db" in plan.reason and "3600s ago" in plan.reason


def test_without_a_time_a_record_without_a_cluster_id_is_not_followed() -> None:
    base = facts(1, [inst(0), inst(1), inst(2)], [failed(0), failed(1), failed(2)])
    plan = decide(replace(base, record=_record((0, 1, 2), None)))
    assert plan.decision is Decision.WAIT and "age unknown) has no cluster id yet" in plan.reason


def test_an_old_record_is_followed_while_an_etcd_is_seen_forming_its_cluster() -> None:
    """Live evidence instead of a clock: the writer's etcd is up and forming exactly the recorded cluster."""
    record = _record((0, 1, 2), None)
    forming = frozenset(url for _, url in record.members)
    probes = [Probe(IDS[0], IPS[0], error=EtcdFailure.TIMEOUT, bootstrapping=forming), failed(1), failed(2)]
    base = facts(1, [inst(0), inst(1), inst(2)], probes)
    assert decide(looked_soon_after(base, record, 3600)).decision is Decision.NEW
    other = frozenset({*forming, "http://10.0.0.9:2380"})
    probes[0] = Probe(IDS[0], IPS[0], error=EtcdFailure.TIMEOUT, bootstrapping=other)
    assert decide(looked_soon_after(facts(1, [inst(0), inst(1), inst(2)], probes), record, 3600)).decision is (
        Decision.WAIT
    )


def test_a_record_with_a_cluster_id_is_never_followed_as_a_decision_whatever_its_age() -> None:
    base = facts(1, [inst(0), inst(1), inst(2)], [failed(0), failed(1), failed(2)])
    plan = decide(looked_soon_after(base, _record((0, 1, 2), None, cluster_id=7), 5))
    assert plan.decision is Decision.WAIT and "not taking part" not in plan.reason


def test_a_recorded_restore_is_joined_while_its_restored_etcd_is_silent() -> None:
    """The restorers started etcd before this instance looked again: their restored members are silent until a
    quorum runs, and a restored etcd 3.6 does not say it is forming. A recorded restore is joined regardless; a
    recorded `new` still waits for a silent etcd that does not say it forms that cluster."""
    snapshots = (_snapshot(9), _snapshot(5))
    probes = [failed(0, "timeout"), failed(1), failed(2, "timeout")]
    base = replace(facts(1, [inst(0), inst(1), inst(2)], probes), snapshots=snapshots)
    plan = decide(looked_soon_after(base, _record((0, 1, 2), snapshots[1].key)))
    assert plan.decision is Decision.RESTORE and plan.restore == snapshots[1:]
    plan = decide(looked_soon_after(base, _record((0, 1, 2), None)))
    assert plan.decision is Decision.WAIT and "etcd may be running on" in plan.reason
    plan = decide(looked_soon_after(base, _record((0, 1, 2), snapshots[1].key), 3600))  # not followed when old
    assert plan.decision is Decision.WAIT and "etcd may be running on" in plan.reason
