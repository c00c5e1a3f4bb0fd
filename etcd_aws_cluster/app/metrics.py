"""The metrics of one run: the facts the commands note on the way (`ctx.metrics`), then, when the command has
ended, its result merged into the metrics file and, with `cloudwatch_namespace`, a few put to CloudWatch.

Never fails a run: the file and CloudWatch are written after the command's result is decided, and any failure is
a warning. Commands that run concurrently (the backup and the reconcile timers) share the file: each one reads it
under a lock of its own (never the run's lock), replaces its own series and renames the new file into place, so
neither loses the other's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from etcd_aws_cluster.adapters import atomic_file
from etcd_aws_cluster.adapters.hostfs import host_lock
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AgentError, ErrorKind
from etcd_aws_cluster.core import metrics
from etcd_aws_cluster.core.metrics import Sample, Update, sample

if TYPE_CHECKING:
    from collections.abc import Mapping

    from etcd_aws_cluster.app.settings import Settings
    from etcd_aws_cluster.core.model import AsgView
    from etcd_aws_cluster.core.records import SnapshotInfo, Verification
    from etcd_aws_cluster.core.view import ClusterView

log = logging.getLogger(__name__)
LOCK_WAIT = 2.0  # seconds to wait for another run's write of the metrics file
# CloudWatch gets the time left of the run's deadline, at most CLOUDWATCH_AT_MOST (etcd starts only once the boot
# agent has exited), but at least CLOUDWATCH_AT_LEAST: a boot refused at its deadline is the one an operator most
# needs to hear of (the units' TimeoutStartSec leaves 60 s beyond the deadline).
CLOUDWATCH_AT_LEAST = 2.0
CLOUDWATCH_AT_MOST = 5.0


@dataclass
class RunMetrics:
    """What the running command has learnt that is worth a metric; set at the call sites, read at the end."""

    update: Update = field(default_factory=Update)
    asg: str | None = None
    region: str | None = None
    boot_decision: str | None = None
    backup_age: float | None = None  # seconds; for CloudWatch

    def observed(self, asg: AsgView, cluster: ClusterView, region: str) -> None:
        """Members vs the ASG's InService/Pending instances, as this run saw them."""
        self.asg, self.region = asg.name, region
        instances = sum(1 for i in asg.instances if i.counts_as_member)
        self.update.replace_family("asg_instances", [sample("asg_instances", instances, asg=asg.name)])
        self.update.replace_family("cluster_members", [sample("cluster_members", len(cluster.members), asg=asg.name)])

    def decided(self, decision: str, members: int = 0) -> None:
        """The boot's decision (one of metrics.BOOT_DECISIONS) and, when it names them, the members of the cluster
        it starts or joins: those the look before the decision saw may not answer yet (a new cluster: none)."""
        self.boot_decision = decision
        if members and self.asg is not None:
            self.update.replace_family("cluster_members", [sample("cluster_members", members, asg=self.asg)])

    def ready(self, ready: bool) -> None:
        """Whether this host's member was found ready (`ready`: started, a voter, the cluster healthy with it)."""
        self.update.put(sample("ready", 1 if ready else 0))

    def backup_interval(self, asg: str, seconds: float) -> None:
        self.update.replace_family("backup_interval_seconds", [sample("backup_interval_seconds", seconds, asg=asg)])

    def backed_up(self, asg: str, info: SnapshotInfo, seconds: float) -> None:
        values = {
            "backup_last_success_timestamp_seconds": info.taken_at.timestamp(),
            "backup_last_size_bytes": info.size,
            "backup_last_duration_seconds": seconds,
            "backup_last_revision": info.revision,
            "backup_newest_snapshot_timestamp_seconds": info.taken_at.timestamp(),
        }
        for name, value in values.items():
            self.update.replace_family(name, [sample(name, value, asg=asg)])
        self.backup_age = 0.0

    def newest_snapshot(self, asg: str, taken_at: float, age: float) -> None:
        name = "backup_newest_snapshot_timestamp_seconds"
        self.update.replace_family(name, [sample(name, taken_at, asg=asg)])
        self.backup_age = age

    def verified(self, asg: str, result: Verification) -> None:
        """A restore drill's result: whether it passed, and the recovery point it proved (when it passed)."""
        self.update.replace_family(
            "backup_verification_success", [sample("backup_verification_success", 1 if result.ok else 0, asg=asg)]
        )
        if result.ok:
            at = result.recovered_at.timestamp()
            self.update.replace_family(
                "backup_verified_timestamp_seconds", [sample("backup_verified_timestamp_seconds", at, asg=asg)]
            )
            self.update.replace_family(
                "backup_verified_revision", [sample("backup_verified_revision", result.revision, asg=asg)]
            )

    def restored(self, revision: int, seconds: float, at: float) -> None:
        self.update.increment(sample("restores_total", 1))
        self.update.put(sample("restore_last_timestamp_seconds", at))
        self.update.put(sample("restore_last_duration_seconds", seconds))
        self.update.put(sample("restore_last_revision", revision))


def run_update(
    facts: RunMetrics, command: str, exit_code: int, error: BaseException | None, ended: float, seconds: float
) -> Update:
    """The command's own series: its last run, its result, a refusal's reason and, for a boot, its decision."""
    update = facts.update
    update.put(sample("last_run_timestamp_seconds", ended, command=command))
    update.put(sample("last_run_duration_seconds", seconds, command=command))
    update.put(sample("last_run_success", 1 if exit_code == 0 else 0, command=command))
    update.put(sample("last_run_exit_code", exit_code, command=command))
    update.increment(sample("runs_total", 1, command=command, result=metrics.result_of(exit_code)))
    if exit_code == ErrorKind.REFUSED.exit_code:
        reason = metrics.refusal_reason(str(error) if error is not None else "")
        update.increment(sample("refusals_total", 1, command=command, reason=reason))
    if command == "run":
        decision = facts.boot_decision
        if exit_code != 0:
            decision = "refused" if exit_code == ErrorKind.REFUSED.exit_code else "failed"
        if decision is not None:
            update.replace_family(
                "boot_decision",
                [sample("boot_decision", 1 if d == decision else 0, decision=d) for d in metrics.BOOT_DECISIONS],
            )
    return update


def write(path: Path, update: Update) -> None:
    """Merge `update` into the metrics file at `path`, under its lock; the file is replaced atomically."""
    with host_lock(path.with_name(path.name + ".lock"), Deadline(LOCK_WAIT)):
        samples = read(path)
        atomic_file.write(str(path), metrics.render(metrics.merge(samples, update)))


def delta_uploaded(asg: str, lag: float, revision: int, at: float) -> Update:
    """The series of a delta `backup --follow` uploaded: how long its oldest change waited, when (Unix time) and
    the revision its deltas reach."""
    update = Update()
    for name, value in (
        ("backup_delta_lag_seconds", lag),
        ("backup_delta_last_success_timestamp_seconds", at),
        ("backup_delta_last_revision", revision),
    ):
        update.replace_family(name, [sample(name, value, asg=asg)])
    return update


def write_now(settings: Settings, update: Update) -> None:
    """Merge `update` into the metrics file while the command runs (backup --follow, which runs until stopped).
    Logs, never raises."""
    path = metrics_path(settings)
    if path is None:
        return
    try:
        write(path, update)
    except (AgentError, OSError) as exc:
        log.warning("metrics file %s not updated: %s", path, exc)


def read(path: Path) -> list[Sample]:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return metrics.parse(handle.read(metrics.MAX_FILE_BYTES + 1))
    except FileNotFoundError:
        return []


def recorded(settings: Settings) -> dict[str, object]:
    """The metrics file's facts as JSON (`status --json`); empty without a file."""
    path = metrics_path(settings)
    try:
        return metrics.to_json(read(path)) if path is not None else {}
    except OSError as exc:
        log.warning("cannot read the metrics file %s: %s", path, exc)
        return {}


def metrics_path(settings: Settings) -> Path | None:
    """The metrics file, when it is set and its directory exists (node_exporter's, on a host that has it)."""
    path = settings.metrics_file
    if path is None:
        return None
    if not path.parent.is_dir():
        from etcd_aws_cluster.app.settings import DEFAULT_METRICS_FILE

        if path != DEFAULT_METRICS_FILE:
            log.warning("metrics_file %s: its directory does not exist; no metrics written", path)
        return None
    return path


@dataclass
class Finish:
    """How the run ended, for `finish`."""

    command: str
    exit_code: int
    error: BaseException | None
    started: float  # time.monotonic() at the start
    facts: RunMetrics
    settings: Settings
    environ: Mapping[str, str]
    time_left: float


def finish(end: Finish) -> None:
    """Record the run that just ended: the metrics file, then CloudWatch. Logs, never raises."""
    seconds = time.monotonic() - end.started
    update = run_update(end.facts, end.command, end.exit_code, end.error, time.time(), seconds)
    path = metrics_path(end.settings)
    if path is not None:
        try:
            write(path, update)
        except (AgentError, OSError) as exc:
            log.warning("metrics file %s not updated: %s", path, exc)
    namespace = end.settings.cloudwatch_namespace
    if namespace:
        _cloudwatch(end, namespace)


def _cloudwatch(end: Finish, namespace: str) -> None:
    from etcd_aws_cluster.adapters import cloudwatch

    facts = end.facts
    data: list[cloudwatch.Datum] = []
    if end.command == "run":
        data.append(cloudwatch.Datum("BootExitCode", float(end.exit_code), "None"))
    if facts.backup_age is not None:
        data.append(cloudwatch.Datum("BackupAgeSeconds", facts.backup_age, "Seconds"))
    if not data:
        return
    if facts.asg is None or facts.region is None:
        log.warning("CloudWatch metrics not sent: this run did not get as far as knowing its ASG")
        return
    seconds = min(CLOUDWATCH_AT_MOST, max(CLOUDWATCH_AT_LEAST, end.time_left))
    cloudwatch.put(namespace, facts.asg, data, region=facts.region, environ=end.environ, seconds=seconds)
