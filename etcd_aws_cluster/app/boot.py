"""The boot run: facts -> plan -> membership changes -> env file, under the context's one deadline."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from etcd_aws_cluster.adapters import atomic_file, scratch
from etcd_aws_cluster.adapters import systemd_notify as notify
from etcd_aws_cluster.adapters.hostfs import host_lock, local_data_dir, move_aside
from etcd_aws_cluster.adapters.wal import read_ids
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.base.errors import AwsError, EtcdError, RecordRaceError, UnsafeError
from etcd_aws_cluster.base.retry import LOOK_AGAIN, MEMBER_CHANGE, attempts
from etcd_aws_cluster.core import envfile, recovery
from etcd_aws_cluster.core import plan as planner
from etcd_aws_cluster.core.lifecycle import warm_pool_boot
from etcd_aws_cluster.core.model import AsgView, Decision, Identity, Plan
from etcd_aws_cluster.core.view import ClusterView, Facts, is_me

if TYPE_CHECKING:
    from etcd_aws_cluster.app.backups import Backups
    from etcd_aws_cluster.app.handoff import RecoveryFacts

log = logging.getLogger(__name__)
PROGRESS_EVERY = 5.0


@dataclass(frozen=True)
class Outcome:
    me: Identity
    plan: Plan
    values: dict[str, str]
    text: str


# A cluster record update still to be made once the env file is written (best effort: Backups.record_after).
RecordUpdate = Callable[[], None]


class Runner:
    """The boot run of one instance, over the context of this run."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.publish = True  # hand this node's data off to S3 when survivors lack quorum (not on a dry run)
        self.lineage_hint = ""  # added to a refusal: the record's lineage has no snapshot, others have

    @property
    def backups(self) -> Backups | None:
        """The run's backups (Context.backups: the machinery is imported only when backup_url is set)."""
        return self.ctx.backups()

    def facts(self, asg: AsgView) -> Facts:
        data_dir = local_data_dir(self.settings.data_dirs())
        ids = read_ids(data_dir) if data_dir is not None else None
        cluster = self.ctx.observe(asg)
        local_ids = (ids.member_id, ids.cluster_id) if ids else None
        facts = Facts(
            me=self.ctx.me,
            view=cluster,
            has_local_data=data_dir is not None,
            local_ids=local_ids,
            now=self.ctx.now(),
            follow_window=recovery.follow_window(self.settings.timeout),
        )
        found = self._recovery_facts(cluster, asg, data_dir, local_ids)
        self.lineage_hint = found.lineage_hint if found is not None else ""
        if found is None:
            return facts
        return replace(facts, record=found.record, snapshots=found.snapshots, handoffs=found.handoffs)

    def _recovery_facts(
        self, cluster: ClusterView, asg: AsgView, data_dir: Path | None, local_ids: tuple[int, int] | None
    ) -> RecoveryFacts | None:
        """What the backups say, when this run needs it: the record, the snapshots, the survivors' hand-offs."""
        backups = self.backups
        if backups is None:
            return None
        from etcd_aws_cluster.app import handoff

        if not cluster.answered:
            # Only a node that sees no cluster needs to know whether one existed, and who survives of it.
            return handoff.gather(backups, asg, data_dir, local_ids, publish=self.publish)
        if data_dir is None and not cluster.count().ok:
            # A cluster without a quorum: with a record, a new node waits for the silent members to come back.
            try:
                return handoff.RecoveryFacts(backups.read_record())
            except AwsError as exc:
                raise UnsafeError(
                    f"a cluster answers without a quorum, and the cluster record that says whether to wait for it "
                    f"cannot be read: {exc}. Refusing to decide; rerun when S3 answers"
                ) from None
        return None

    # --- decide ----------------------------------------------------------------------------------------
    def decide(self, asg: AsgView | None = None) -> tuple[Plan, Facts]:
        """Gather facts (from `asg`, else a fresh look at the ASG) and decide, looking again while the plan says
        WAIT, until the deadline."""
        deadline = self.ctx.deadline
        last_progress = -PROGRESS_EVERY
        for _ in attempts(deadline, LOOK_AGAIN):
            facts = self.facts(asg or self.ctx.find_asg())
            asg = None
            try:
                plan = planner.decide(facts, stale_data=self.settings.stale_data, as_learner=self.settings.learner)
            except UnsafeError as exc:
                refusal = UnsafeError(f"{exc}{self.lineage_hint}") if self.lineage_hint else exc
                log.info("decision=refuse reason=%s", refusal)
                raise refusal from None
            if plan.decision is not Decision.WAIT:
                return plan, facts
            elapsed = deadline.elapsed()
            if elapsed - last_progress >= PROGRESS_EVERY:
                log.info("waiting (%.0fs of %.0fs): %s", elapsed, self.settings.timeout, plan.reason)
                notify.status(f"waiting {elapsed:.0f}s of {self.settings.timeout:.0f}s: {plan.reason}")
                last_progress = elapsed
        raise UnsafeError(f"gave up after {elapsed:.0f}s: {plan.reason}")

    # --- act -------------------------------------------------------------------------------------------
    def act(self, plan: Plan, facts: Facts) -> tuple[Plan, bool, RecordUpdate | None]:
        """Carry out the plan: membership changes, a restore, the cluster record. Returns the plan to write, False
        when a concurrent joiner was detected and this instance backed off (the caller decides again), and the
        record update still to be made after the env file. Only NEW and RESTORE write the record before the file:
        the other instances agree through it. Every other decision heals without S3, so S3 comes after."""
        backups = self.backups
        if plan.decision is Decision.RESTORE and backups is not None:
            return self._restore(plan, facts, backups), True, None
        if plan.decision is Decision.NEW and backups is not None:
            backups.write_record(facts.view, members=plan.initial_cluster)
        later: RecordUpdate | None = None
        if plan.decision is Decision.MEMBER and backups is not None:
            complete = functools.partial(backups.complete_record, facts.view)
            later = functools.partial(backups.record_after, "this member's boot", complete)
        if not plan.remove and not plan.add_self:
            return plan, True, later
        change = backups.guard_change(facts.view, "this membership change") if backups is not None else None
        plan, settled = self._change_membership(plan, facts)
        if settled and change is not None:
            later = functools.partial(change.record, replace(facts.view, members=plan.members))
        return plan, settled, later

    def _restore(self, plan: Plan, facts: Facts, backups: Backups) -> Plan:
        """Restore the plan's snapshot, a survivor's own data moved aside first; then the new record, which names
        the clusters the restore replaced. It is written at once: an instance still waiting for the hand-offs, that
        looks again and finds it, takes part in this restore (recovery.joining_restore), a survivor included, whose
        data the record says was replaced."""
        from etcd_aws_cluster.app.backups import restore_data_dir

        if plan.move_data_aside:
            backups.tool_for(plan.restore)  # the right tool or none: checked before data moves
            restore_data_dir(self.ctx)
            directory = local_data_dir(self.settings.data_dirs())
            if directory is not None:
                moved = move_aside(directory, self.ctx.now())
                log.warning("restoring the newest data: moved this node's etcd data %s to %s", directory, moved)
        started = self.ctx.deadline.elapsed()
        deltas = recovery.applies_deltas(facts.record, plan.restore[0])
        restored = backups.restore(plan.restore, plan.initial_cluster, apply_deltas=deltas)
        info = restored.info
        self.ctx.metrics.restored(info.revision, self.ctx.deadline.elapsed() - started, self.ctx.now().timestamp())
        replaced = recovery.replaced_clusters(facts.record, facts.handoffs, facts.local_ids)
        try:
            backups.write_restore_record(facts.view, info, plan.initial_cluster, replaced)
        except RecordRaceError:
            # Another decision was recorded first: deciding again must not see this restore as "local data"
            moved = move_aside(restore_data_dir(self.ctx), self.ctx.now())
            log.warning("the record names another decision: moved the data just restored aside to %s", moved)
            backups.discard(restored)
            raise
        return replace(plan, reason=f"{plan.reason}; restored {restored.summary()}")

    def _change_membership(self, plan: Plan, facts: Facts) -> tuple[Plan, bool]:
        ctx, me = self.ctx, self.ctx.me
        if plan.move_data_aside:
            directory = local_data_dir(self.settings.data_dirs())
            if directory is not None:
                moved = move_aside(directory, ctx.now())
                log.warning("this node's etcd data belongs to no current member: moved %s to %s", directory, moved)
        client_urls = facts.view.client_urls()
        for member in plan.remove:
            label = f"removing gone member {member.name or '(unstarted)'} {member.hex_id}"
            removed = ctx.remove_member(label, member.id, client_urls)
            log.info("%s: %s", label, "done" if removed else "already gone")
        if not plan.add_self:
            return plan, True
        my_peer = ctx.endpoints.peer_url(me.private_ip)
        try:
            added = ctx.retry(
                f"adding this instance ({my_peer})",
                lambda url: ctx.etcd.add_member(url, [my_peer], ctx.call_timeout, learner=self.settings.learner),
                client_urls,
            )
        except EtcdError as exc:
            raise EtcdError(f"{exc}{_unhealthy_hint(str(exc), plan, facts.view)}") from None
        log.info("added this instance as %s %s", "learner" if added.is_learner else "member", added.hex_id)
        listing = ctx.retry(
            "listing members",
            lambda url: ctx.etcd.list_members(url, ctx.call_timeout, linearizable=True),
            client_urls,
        )
        after = ClusterView(facts.asg, ctx.endpoints, facts.view.probes, listing.members, facts.view.cluster_ids, False)
        rivals = _concurrent_joiners(me, after)
        if rivals:
            log.info("another instance joined at the same time (%s); backing off and deciding again", rivals)
            ctx.remove_member("withdrawing this instance", added.id, client_urls)
            return plan, False
        if not any(m.id == added.id for m in listing.members):
            raise EtcdError(f"the member list does not show this instance's new member {added.hex_id}; rerun")
        return replace(plan, initial_cluster=after.initial_cluster(listing.members, me), members=listing.members), True

    # --- the whole run ---------------------------------------------------------------------------------
    def run(self, *, dry_run: bool = False) -> Outcome | None:
        """The boot run; None when this boot must change nothing (a warm-pool boot)."""
        asg: AsgView | None = self.ctx.find_asg()
        skip = warm_pool_boot(asg, self.ctx.me) if asg is not None else None
        if skip is not None:
            log.info("decision=skip reason=%s", skip)
            self.ctx.metrics.decided("skip")
            return None
        if dry_run:
            self.publish = False
            plan, facts = self.decide(asg)
            self._log_plan(plan)
            return self.outcome(plan)
        with host_lock(self.settings.lock_file, self.ctx.deadline):
            scratch.sweep(self.settings.data_dirs())
            for _ in attempts(self.ctx.deadline, MEMBER_CHANGE):
                plan, facts = self.decide(asg)
                asg = None
                self._log_plan(plan)
                try:
                    plan, settled, later = self.act(plan, facts)
                except RecordRaceError as exc:  # another instance recorded another decision first
                    log.info("%s", exc)
                    settled, later = False, None
                if settled:
                    self.ctx.metrics.decided(plan.decision.value, len(plan.initial_cluster))
                    break
            else:
                raise EtcdError("could not join: other instances kept joining at the same time until the deadline")
            outcome = self.outcome(plan)
            atomic_file.write(self.settings.output, outcome.text)
            if self.settings.output != "-":
                log.info("wrote %s: %s, state %s", self.settings.output, self.ctx.me.instance_id, plan.cluster_state)
            if later is not None:
                later()
        return outcome

    def outcome(self, plan: Plan) -> Outcome:
        me = self.ctx.me
        values = envfile.variables(me, plan, self.ctx.endpoints, listen_loopback=self.settings.listen_loopback)
        return Outcome(me, plan, values, envfile.render(values))

    def _log_plan(self, plan: Plan) -> None:
        log.info(
            "decision=%s state=%s remove=%s add_self=%s reason=%s",
            plan.decision.value,
            plan.cluster_state,
            ",".join(m.name or m.hex_id for m in plan.remove) or "-",
            "yes" if plan.add_self else "no",
            plan.reason,
        )


def _unhealthy_hint(error: str, plan: Plan, view: ClusterView) -> str:
    if "unhealthy cluster" not in error:
        return ""
    silent = [m.name or m.hex_id for m in view.silent_voters if m not in plan.remove]
    if not silent:
        return ""
    return (
        f". etcd adds a member only while every voting member is connected (etcd 3.4; 3.5 needs a quorum); "
        f"not answering: {', '.join(silent)}. Bring it back, or remove it with etcdctl member remove, and rerun"
    )


def _concurrent_joiners(me: Identity, view: ClusterView) -> str:
    """Instances other than this one whose member was added but has not started: they joined at the same time."""
    others = [m for m in view.members if not m.started and not is_me(m, me, view.endpoints)]
    return ", ".join(owner.instance_id for m in others if (owner := view.owner(m)) is not None)
