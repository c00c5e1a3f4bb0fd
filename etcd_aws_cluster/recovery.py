"""Boot decisions when the cluster record says a cluster existed: never an empty cluster where one with data existed.

Pure, like the plan it is part of. Every instance that sees no etcd answer reads the same record and the same
listing of snapshots, and nothing can write either while no etcd answers (backups go through a live member), so
every instance comes to the same decision without talking to the others:
- some recorded member's instance is still in the ASG: wait for it to come back with its data, and join the
  cluster it forms (a new instance never starts a cluster of its own);
- none is: restore the newest snapshot (by revision, then time, then key) whose checksum holds, with the current
  ASG instances as the initial cluster;
- no snapshot at all: refuse, and say what to do.
"""

from __future__ import annotations

from etcd_aws_cluster import validate
from etcd_aws_cluster.errors import UnsafeError
from etcd_aws_cluster.model import Decision, Plan
from etcd_aws_cluster.records import ClusterRecord, SnapshotInfo, format_time
from etcd_aws_cluster.view import Facts


def survivors(facts: Facts, record: ClusterRecord) -> tuple[str, ...]:
    """Recorded members' instances (other than this one) that are still InService/Pending in the ASG."""
    alive = []
    for instance_id, _ in record.members:
        found = facts.asg.find(instance_id)
        if found is not None and found.counts_as_member and instance_id != facts.me.instance_id:
            alive.append(instance_id)
    return tuple(sorted(alive))


def describe(info: SnapshotInfo) -> str:
    return f"{info.key} (revision {info.revision}, taken {format_time(info.taken_at)})"


def recovery_command(facts: Facts, snapshots: tuple[SnapshotInfo, ...]) -> str:
    if not snapshots:
        return "no snapshot exists under backup_url to restore from"
    return (
        f"to restore the newest snapshot {describe(snapshots[0])}, stop etcd and run "
        f"`etcd-aws-cluster restore --snapshot {snapshots[0].key}` on every instance of ASG "
        f"{validate.shown(facts.asg.name)} (it moves local data aside), then start etcd"
    )


def joining_restore(
    facts: Facts, record: ClusterRecord, snapshots: tuple[SnapshotInfo, ...], initial: tuple[tuple[str, str], ...]
) -> Plan | None:
    """Another instance of this same ASG restored (or created) the cluster first and recorded it: take part.

    The instance that restores first writes the record at once (members: the current ASG instances, the snapshot
    it restored, no cluster id yet, as only a restore writes it). The others, booting at the same time, read that
    record; its members are their own silent peers, so without this rule they would wait for survivors that hold
    no data yet (and, if etcd starts only after every agent, wait forever). Same instances, same snapshot: restore
    it too, so all of them start the one restored cluster."""
    if record.cluster_id is not None:
        return None
    if tuple(sorted(record.members)) != initial or facts.me.instance_id not in {name for name, _ in initial}:
        return None
    if record.newest_snapshot is None:
        # Only a `new` decision writes such a record: a peer created this cluster of these very instances.
        return Plan(
            Decision.NEW,
            f"the cluster record says the current {len(initial)} ASG instances, this one included, are creating "
            "a new cluster (no snapshot, no cluster id yet): taking part",
            "new",
            initial,
        )
    start = next((n for n, info in enumerate(snapshots) if info.key == record.newest_snapshot), None)
    if start is None:
        return None
    return Plan(
        Decision.RESTORE,
        f"the cluster record says the current {len(initial)} ASG instances, this one included, are restoring "
        f"snapshot {describe(snapshots[start])} as a new cluster: restoring the same one",
        "new",
        initial,
        restore=snapshots[start:],
    )


def wait_for_survivors(facts: Facts, record: ClusterRecord, snapshots: tuple[SnapshotInfo, ...]) -> Plan | None:
    alive = survivors(facts, record)
    if not alive:
        return None
    return Plan(
        Decision.WAIT,
        f"the cluster record names {len(record.members)} members and {', '.join(alive)} "
        f"{'is' if len(alive) == 1 else 'are'} still in the ASG: waiting for {'it' if len(alive) == 1 else 'them'} "
        "to come back with their data and form the cluster (a new cluster would lose it). If they cannot: "
        + recovery_command(facts, snapshots),
    )


def wait_for_quorum(facts: Facts) -> Plan | None:
    """A cluster answers without a quorum while silent voters' instances are still in the ASG (a whole-cluster
    outage, its members coming back one by one): wait for them rather than refuse at once."""
    cluster = facts.view
    count = cluster.count()
    if count.ok:
        return None
    silent = sorted(
        owner.instance_id
        for m in cluster.voters
        if not cluster.is_healthy(m) and (owner := cluster.owner(m)) is not None and owner.counts_as_member
    )
    if not silent:
        return None
    return Plan(
        Decision.WAIT,
        f"the cluster answers without a quorum ({count}); {', '.join(silent)} still in the ASG: waiting for "
        "them to come back with their data",
        members=cluster.members,
    )


def require_snapshot(facts: Facts, record: ClusterRecord, snapshots: tuple[SnapshotInfo, ...]) -> None:
    if snapshots:
        return
    members = ", ".join(instance_id for instance_id, _ in record.members) or "none"
    raise UnsafeError(
        f"the cluster record says a cluster existed on ASG {validate.shown(facts.asg.name)} (members {members}), "
        "none of its instances is left, and no snapshot is stored under backup_url: refusing to start an empty "
        "cluster. Upload a snapshot (`etcd-aws-cluster restore --list` shows what exists) or, to start empty on "
        "purpose, delete the record (cluster.json under backup_url) and rerun"
    )


def restore_plan(facts: Facts, snapshots: tuple[SnapshotInfo, ...], initial: tuple[tuple[str, str], ...]) -> Plan:
    return Plan(
        Decision.RESTORE,
        f"the cluster record says a cluster existed and none of its members' instances is left: restoring "
        f"the newest valid snapshot {describe(snapshots[0])} on all {len(initial)} ASG instances",
        "new",
        initial,
        restore=snapshots,
    )
