"""Table tests of the survivors' case: a cluster record, no etcd answers, and the recorded members' instances
left are fewer than a quorum. Every instance waits for every survivor's hand-off, then restores the same newest
snapshot; where that cannot be chosen safely it refuses; with a quorum left nothing changes."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from etcd_aws_cluster.base.errors import UnsafeError
from etcd_aws_cluster.core import recovery
from etcd_aws_cluster.core.model import AsgInstance, Decision, Plan, Probe
from etcd_aws_cluster.core.plan import decide
from etcd_aws_cluster.core.records import ClusterRecord, Handoff, SnapshotInfo
from etcd_aws_cluster.core.view import Facts
from tests.unit.builders import IDS, member
from tests.unit.core.test_plan import answered, facts, failed, inst, record_of, snap, with_record

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


@pytest.mark.parametrize(
    ("instances", "alive"),
    [
        ([inst(0), inst(1), inst(2)], (0, 1, 2)),
        ([inst(2), inst(0), inst(3)], (0, 2)),  # sorted; an instance the record does not name is not left of it
        ([inst(0, "Pending"), inst(1, "Pending:Wait"), inst(2, "ReplacingRootVolume")], (0, 1, 2)),
        ([inst(0, ip=False), inst(1)], (0, 1)),  # no IP yet: still its instance
        ([inst(0), inst(1, "Terminating"), inst(2, "Standby")], (0,)),  # leaving, or not taking part now
        ([inst(0, "Warmed:Running"), inst(1, "Terminated")], ()),
        ([inst(3), inst(4)], ()),
    ],
)
def test_recorded_instances_alive_are_the_recorded_ones_that_still_count_as_members(
    instances: list[AsgInstance], alive: tuple[int, ...]
) -> None:
    f = case(3, (), instances=instances)
    assert recovery.alive_recorded(f.asg, RECORDED) == tuple(IDS[n] for n in alive)
    twice = replace(RECORDED, members=RECORDED.members + RECORDED.members[:1])
    assert recovery.alive_recorded(f.asg, twice) == tuple(IDS[n] for n in alive)  # each once
    for me in alive:  # the survivors one waits for: all of them but itself
        others = recovery.survivors(replace(f, me=replace(f.me, instance_id=IDS[me])), RECORDED)
        assert others == tuple(IDS[n] for n in alive if n != me)


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


# -- after the restore was recorded: a survivor's old data never restarts -----------------------------------------
RESTORED_ID = 0x55  # the restored cluster's id (a restore gives a new one)
CURRENT = tuple(sorted((i.instance_id, f"http://{i.private_ip}:2380") for i in ASG))


def restore_record(
    cluster_id: int | None = None, replaces: tuple[int, ...] = (7,), members: tuple[tuple[str, str], ...] = CURRENT
) -> ClusterRecord:
    """What the first restorer writes (members: the current instances, the snapshot, no cluster id yet, the
    clusters it replaced), or, with `cluster_id`, what a member of the restored cluster completes it to."""
    return ClusterRecord("etcd", cluster_id, members, snap(9).key, WHEN + timedelta(minutes=1), replaces=replaces)


def late(
    me: int, record: ClusterRecord, probes: list[Probe] | None = None, seconds: float = 20, local_cluster: int = 7
) -> Facts:
    """Instance `me` looks `seconds` after `record` was written; a recorded survivor has data of `local_cluster`."""
    local = me in (0, 1, 2)
    f = facts(me, ASG, probes or [failed(int(i.instance_id[-2:])) for i in ASG], local=local)
    return replace(
        f,
        record=record,
        snapshots=(snap(9),),
        local_ids=(100 + me, local_cluster) if local else None,
        now=record.updated_at + timedelta(seconds=seconds),
    )


def test_without_the_replaced_cluster_in_the_record_a_late_survivor_would_restart_on_its_old_data() -> None:
    assert decide(late(0, restore_record(replaces=()))).decision is Decision.RESTART  # the hole this closes


def test_a_survivor_that_looks_after_the_restore_was_recorded_restores_the_same_snapshot() -> None:
    plan = decide(late(0, restore_record()))
    assert plan.decision is Decision.RESTORE and plan.move_data_aside  # its old data kept aside, never restarted
    assert plan.restore[0].key == snap(9).key and plan.initial_cluster == CURRENT


def test_the_restored_clusters_own_data_restarts_at_once_before_the_record_is_completed() -> None:
    # a whole-cluster reboot of the restored cluster: its data is not of a cluster the restore replaced
    assert decide(late(0, restore_record(), local_cluster=RESTORED_ID)).decision is Decision.RESTART


def test_a_late_survivor_never_restarts_under_the_completed_record_of_the_restored_cluster() -> None:
    plan = decide(late(0, restore_record(cluster_id=RESTORED_ID), seconds=3600))
    assert plan.decision is Decision.WAIT
    assert "belongs to cluster 7, not to the recorded cluster 55: it never restarts on it" in plan.reason
    assert f"Waiting for {IDS[3]}, {IDS[4]}" in plan.reason and "joins it as a new member" in plan.reason


def test_data_of_the_recorded_cluster_still_restarts_at_once() -> None:
    assert decide(late(0, restore_record(cluster_id=7), seconds=3600)).decision is Decision.RESTART


def test_a_late_survivor_waits_under_an_old_restore_record_and_says_why_it_is_not_followed() -> None:
    plan = decide(late(0, restore_record(), seconds=3600))
    assert plan.decision is Decision.WAIT and "it never restarts on it" in plan.reason
    assert "which the restore of p/etcd/snapshots/2026-r9.db recorded at" in plan.reason
    assert "(written 2026-11-01T00:01:00.000000Z, 3600s ago) has no cluster id yet" in plan.reason
    assert "not taking part in that decision" in plan.reason


def test_a_late_survivor_alone_in_the_record_refuses_rather_than_restart_or_restore_over_its_data() -> None:
    alone = restore_record(cluster_id=RESTORED_ID, members=CURRENT[:1])
    assert alone.members[0][0] == IDS[0]
    with pytest.raises(UnsafeError, match="no other recorded member's instance is left.*refusing to restart"):
        decide(late(0, alone))


def test_a_late_survivor_joins_the_restored_cluster_as_a_new_member_once_it_answers() -> None:
    # The restored cluster runs on 3 and 4; the survivor's member of it is named (a restore names every member)
    # but has never run; the survivor's data is of the replaced cluster 7.
    members = (member(0, started=True), member(3), member(4))
    members = (replace(members[0], client_urls=()), *members[1:])
    probes = [failed(0), answered(3, members, RESTORED_ID), answered(4, members, RESTORED_ID)]
    plan = decide(late(0, restore_record(cluster_id=RESTORED_ID), probes))
    assert plan.decision is Decision.JOIN and plan.move_data_aside and plan.add_self
    assert [m.id for m in plan.remove] == [100]  # its never-run member is replaced by a new one
    assert "belongs to cluster 7, not 55" in plan.reason


def test_data_of_another_cluster_never_starts_as_an_unstarted_member_either() -> None:
    members = (member(0, started=False), member(3), member(4))
    probes = [failed(0), answered(3, members, RESTORED_ID), answered(4, members, RESTORED_ID)]
    plan = decide(late(0, restore_record(cluster_id=RESTORED_ID), probes))
    assert plan.decision is Decision.JOIN and plan.move_data_aside  # not MEMBER on the old data


@pytest.mark.parametrize("me", [0, 3, 4])
def test_an_instance_that_looks_again_after_the_restore_was_recorded_comes_to_the_same_restore(me: int) -> None:
    """What the settle pause used to guarantee, without a pause: whoever decided from the hand-offs' record and
    whoever looks again after the first restorer replaced that record restore the same snapshot, the same way."""
    handoffs = (handoff(0, 5),)
    restorer = case(3, handoffs)
    first = decide(restorer)
    assert first.decision is Decision.RESTORE
    written = ClusterRecord(
        "etcd",
        None,
        first.initial_cluster,
        first.restore[0].key,
        WHEN + timedelta(seconds=40),
        replaces=recovery.replaced_clusters(restorer.record, restorer.handoffs, restorer.local_ids),
    )
    before = decide(case(me, handoffs))
    after = decide(replace(case(me, ()), record=written, now=written.updated_at + timedelta(seconds=3)))
    assert after.decision is before.decision is Decision.RESTORE
    assert after.restore[0] == before.restore[0] and after.initial_cluster == before.initial_cluster
    assert after.move_data_aside == before.move_data_aside == (me == 0)


def test_a_restore_record_names_every_cluster_whose_data_it_replaced() -> None:
    earlier = replace(handoff(1, when=WHEN - timedelta(days=1)), cluster_id=12)  # an earlier incident's: not this
    handoffs = (replace(handoff(0), cluster_id=9), earlier)
    assert recovery.replaced_clusters(RECORDED, handoffs, (100, 11)) == (7, 9, 11)  # recorded, hand-offs', its own
    assert recovery.replaced_clusters(restore_record(replaces=(7, 8))) == (7, 8)  # a restore of a restore: kept on
    assert recovery.replaced_clusters(None) == ()


def test_a_restore_applies_deltas_unless_it_follows_a_recorded_restore_of_that_very_snapshot() -> None:
    first = snap(7)
    restoring = ClusterRecord("etcd", None, (), first.key, first.taken_at)
    assert recovery.applies_deltas(None, first)
    assert not recovery.applies_deltas(restoring, first)  # the restorer applied what it could reach: its bytes
    assert recovery.applies_deltas(replace(restoring, cluster_id=0xABC), first)  # a running cluster's record
    assert recovery.applies_deltas(replace(restoring, newest_snapshot="s/0"), first)
