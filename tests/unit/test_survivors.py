"""Table tests of the survivors' case: a cluster record, no etcd answers, and the recorded members' instances
left are fewer than a quorum. Every instance waits for every survivor's hand-off, then restores the same newest
snapshot; where that cannot be chosen safely it refuses; with a quorum left nothing changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from etcd_aws_cluster import recovery
from etcd_aws_cluster.errors import UnsafeError
from etcd_aws_cluster.model import AsgInstance, Decision, Plan
from etcd_aws_cluster.plan import decide
from etcd_aws_cluster.records import Handoff, SnapshotInfo
from etcd_aws_cluster.view import Facts
from tests.unit.builders import IDS
from tests.unit.test_plan import facts, failed, inst, record_of, snap, with_record

RECORDED = record_of(0, 1, 2)
WHEN = RECORDED.updated_at
# 0 survives with its data; 1 and 2 were replaced by 3 and 4
ASG = [inst(0), inst(3), inst(4)]
PROBES = [failed(0), failed(3), failed(4)]


def handoff(n: int, revision: int | None = 20, uploaded: str | None = None, when: datetime = WHEN) -> Handoff:
    return Handoff(IDS[n], when, revision, None if revision is None else 7, uploaded, when + timedelta(seconds=5))


def case(
    me: int,
    handoffs: tuple[Handoff, ...],
    snapshots: tuple[SnapshotInfo, ...] = (snap(9),),
    instances: list[AsgInstance] | None = None,
    local_cluster: int = 7,
) -> Facts:
    asg = ASG if instances is None else instances
    local = me in (0, 1, 2)
    f = with_record(facts(me, asg, [failed(int(i.instance_id[-2:])) for i in asg], local=local), RECORDED, snapshots)
    return replace(f, handoffs=handoffs, local_ids=(100 + me, local_cluster) if local else None)


def uploaded(revision: int) -> SnapshotInfo:
    return snap(revision, key=f"p/etcd/snapshots/2026-r{revision}-{IDS[0]}.db")


@pytest.mark.parametrize(
    ("instances", "lacking"),
    [
        ([inst(0), inst(3), inst(4)], True),  # 1 of 3 left
        ([inst(0), inst(1, "Pending"), inst(4)], False),  # 2 of 3: a quorum, today's wait
        ([inst(0), inst(1), inst(2)], False),  # a whole-cluster reboot
        ([inst(3), inst(4), inst(5)], False),  # none left: today's restore
        ([inst(0), inst(1, "Terminating"), inst(2, "Standby")], True),  # only InService/Pending count
    ],
)
def test_the_case_is_fewer_than_a_quorum_of_the_recorded_members(instances: list[AsgInstance], lacking: bool) -> None:
    f = case(3 if inst(3) in instances else 0, (), instances=instances)
    assert recovery.survivors_lack_quorum(f) is lacking


def test_a_whole_cluster_reboot_still_restarts_at_once() -> None:
    f = case(0, (), instances=[inst(0), inst(1), inst(2)])
    assert decide(f).decision is Decision.RESTART


def test_with_a_quorum_left_a_replacement_waits_as_before() -> None:
    f = case(3, (), instances=[inst(0), inst(1), inst(3)])
    plan = decide(f)
    assert plan.decision is Decision.WAIT and "come back with their data" in plan.reason


@pytest.mark.parametrize("me", [0, 3, 4])
def test_every_instance_waits_for_the_missing_handoffs(me: int) -> None:
    plan = decide(case(me, ()))
    assert plan.decision is Decision.WAIT
    assert f"waiting for the hand-off of {IDS[0]}" in plan.reason and "fewer than a quorum (2)" in plan.reason


def test_a_handoff_of_an_earlier_record_does_not_count() -> None:
    old = handoff(0, when=WHEN - timedelta(days=3))
    assert recovery.missing_handoffs((IDS[0],), RECORDED, (old,)) == (IDS[0],)
    assert decide(case(3, (old,))).decision is Decision.WAIT


def test_waiting_names_who_handed_off_and_who_is_missing() -> None:
    five = record_of(0, 1, 2, 5, 6)
    instances = [inst(0), inst(1), inst(3), inst(4), inst(7)]  # 2 of 5 left
    f = replace(case(3, (handoff(1),), instances=instances), record=five)
    plan = decide(f)
    assert plan.decision is Decision.WAIT
    assert f"hand-off of {IDS[0]} " in plan.reason and f"handed off: {IDS[1]} (revision 20)" in plan.reason


def _all(handoffs: tuple[Handoff, ...], snapshots: tuple[SnapshotInfo, ...]) -> set[Plan]:
    return {decide(case(me, handoffs, snapshots)) for me in (0, 3, 4)}


def test_the_survivors_upload_is_restored_on_every_instance() -> None:
    snapshots = (snap(9), uploaded(20))
    plans = _all((handoff(0, 20, uploaded(20).key),), snapshots)
    restores = {p.restore[0].key for p in plans}
    assert restores == {uploaded(20).key}  # the same newest data everywhere
    assert {p.decision for p in plans} == {Decision.RESTORE}
    assert {p.initial_cluster for p in plans} == {
        tuple(sorted((i.instance_id, f"http://{i.private_ip}:2380") for i in ASG))
    }
    assert {p.move_data_aside for p in plans} == {True, False}  # the survivor's data only
    survivor = decide(case(0, (handoff(0, 20, uploaded(20).key),), snapshots))
    assert survivor.move_data_aside and "moves its own data aside" in survivor.reason
    assert "every one has handed off" in survivor.reason


def test_an_older_survivor_restores_the_newest_snapshot() -> None:
    plans = _all((handoff(0, 5),), (snap(9), snap(4)))
    assert {p.restore[0].revision for p in plans} == {9}
    assert {p.decision for p in plans} == {Decision.RESTORE}


def test_a_survivor_without_data_hands_off_and_the_snapshot_is_restored() -> None:
    plans = {decide(case(me, (handoff(1, None),), instances=[inst(1), inst(3), inst(4)])) for me in (1, 3, 4)}
    assert {p.decision for p in plans} == {Decision.RESTORE}


@pytest.mark.parametrize(
    ("handoffs", "snapshots", "problem"),
    [
        ((handoff(0, 20),), (snap(9),), "newer than the newest snapshot and was not uploaded"),
        ((handoff(0, 20, uploaded(20).key),), (snap(9),), "is not listed"),
        ((handoff(0, None),), (), "no survivor has data and no snapshot"),
        ((replace(handoff(0), cluster_id=8),), (snap(30),), "data of cluster 8, not 7"),
    ],
)
def test_refuses_where_the_newest_data_cannot_be_chosen_safely(
    handoffs: tuple[Handoff, ...], snapshots: tuple[SnapshotInfo, ...], problem: str
) -> None:
    with pytest.raises(UnsafeError, match=problem) as refused:
        decide(case(3, handoffs, snapshots))
    message = str(refused.value)
    assert f"Survivors: {IDS[0]}" in message  # names the survivors,
    assert "newest snapshot: " in message  # the newest snapshot,
    if snapshots:  # and the one command that recovers
        assert f"etcd-aws-cluster restore --snapshot {snapshots[0].key}" in message


def test_a_survivor_with_another_clusters_data_refuses() -> None:
    with pytest.raises(UnsafeError, match="belongs to cluster 9, not to the recorded cluster 7"):
        decide(case(0, (), local_cluster=9))


def test_never_a_new_cluster_in_the_survivors_case() -> None:
    for me in (0, 3, 4):
        for handoffs in ((), (handoff(0, 5),)):
            try:
                plan = decide(case(me, handoffs))
            except UnsafeError:
                continue
            assert plan.decision in (Decision.WAIT, Decision.RESTORE)


def test_waits_for_a_complete_asg_before_restoring() -> None:
    f = case(3, (handoff(0, 5),), instances=[inst(0), inst(3)])
    f = replace(f, view=replace(f.view, asg=replace(f.asg, desired_capacity=3)))
    plan = decide(f)
    assert plan.decision is Decision.WAIT and "incomplete" in plan.reason
