"""One run of the agent: facts -> plan -> membership changes -> env file, under one deadline."""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from etcd_aws_cluster import envfile, notify
from etcd_aws_cluster import plan as planner
from etcd_aws_cluster.deadline import Deadline, backoff
from etcd_aws_cluster.errors import AgentError, EtcdError, LockError, UnsafeError
from etcd_aws_cluster.etcd import EtcdClient, EtcdRequestError, Tls
from etcd_aws_cluster.imds import Imds, endpoint_from
from etcd_aws_cluster.model import AsgView, Decision, Endpoints, Facts, Identity, Member, Plan, Probe
from etcd_aws_cluster.waldata import read_ids

if TYPE_CHECKING:
    import requests

    from etcd_aws_cluster.aws import Aws
    from etcd_aws_cluster.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
PROGRESS_EVERY = 5.0
# See probe_all: when to ask a silent etcd's peer port, and how long to wait for its client port after that.
FORMING_CHECK_AFTER = 0.25
FORMING_GRACE = 0.5


@dataclass(frozen=True)
class Outcome:
    me: Identity
    plan: Plan
    values: dict[str, str]
    text: str


# Renaming the data dir itself fails when it is a mount point (EBUSY; a bind mount such as systemd's
# ReadWritePaths= or `docker -v`: EXDEV on some kernels) or its parent is read-only (EROFS under
# ProtectSystem=strict; EACCES/EPERM in other sandboxes). Its contents are then moved aside inside it.
IN_PLACE_ERRNOS = frozenset({errno.EBUSY, errno.EXDEV, errno.EROFS, errno.EACCES, errno.EPERM})
STALE_PREFIX = ".stale-"


def local_data_dir(candidates: tuple[Path, ...]) -> Path | None:
    """The data dir holding etcd member data (a WAL), if any.

    Fails closed: only a missing `member/wal` means "no data here"; a data dir that cannot be read (permissions,
    I/O error, a file where a directory should be) raises UnsafeError rather than reading as empty, which would
    turn a restart into a new cluster or a join.
    """
    for directory in candidates:
        wal = directory / "member" / "wal"
        try:
            with os.scandir(wal) as entries:
                if any(entry.name.endswith(".wal") for entry in entries):
                    return directory
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UnsafeError(
                f"cannot read etcd data dir {wal}: {exc.strerror or exc}; refusing to decide without knowing "
                "whether this node has member data (fix the data dir, or move it away by hand)"
            ) from None
    return None


def move_aside(directory: Path, now: datetime.datetime) -> Path:
    """Keep stale etcd data (never delete it) where etcd will not start from it; return where it went.

    First choice: rename the data dir to a timestamped sibling and leave an empty one in its place. When the dir
    itself cannot be renamed (a mount point, a read-only parent), its `member` subdir moves into a timestamped
    `.stale-<UTC>` subdir of the data dir instead: etcd 3.4 and 3.5 start from a data dir with an extra subdir
    (they warn "found invalid file ... under data dir" and go on; tests/integration/test_safety.py).
    """
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    target = directory.with_name(f"{directory.name}{STALE_PREFIX}{stamp}")
    try:
        info = directory.stat()
        try:
            os.rename(directory, target)
        except OSError as exc:
            if exc.errno not in IN_PLACE_ERRNOS:
                raise
            log.info("cannot rename %s (%s); moving its member data aside inside it", directory, exc.strerror)
            return _move_member_inside(directory, directory / f"{STALE_PREFIX}{stamp}", info)
        directory.mkdir(mode=0o700)
    except OSError as exc:
        raise UnsafeError(
            f"cannot move stale etcd data in {directory} aside: {exc.strerror or exc}; "
            f"move it away by hand (keep it) and rerun"
        ) from None
    _give_back(directory, info)
    return target


def _move_member_inside(directory: Path, stale: Path, info: os.stat_result) -> Path:
    stale.mkdir(mode=0o700)
    _give_back(stale, info)
    os.rename(directory / "member", stale / "member")
    return stale


def _give_back(path: Path, info: os.stat_result) -> None:
    """Give a directory the agent made to the data dir's owner, so that etcd (not root) can use it."""
    try:
        os.chown(path, info.st_uid, info.st_gid)
    except OSError as exc:
        log.warning("could not give %s to uid %d: %s; etcd may not be able to use it", path, info.st_uid, exc)


@contextlib.contextmanager
def host_lock(path: Path, deadline: Deadline) -> Iterator[None]:
    """Serialize runs on one host; wait for another run under the deadline. Never follows a symlink."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        reason = "it is a symlink" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise LockError(f"cannot open lock file {path}: {reason}") from None
    with os.fdopen(fd, "a") as handle:
        announced = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.info("another run holds %s; waiting for it", path)
                    announced = True
                if not deadline.pause(0.1):
                    raise LockError(f"another run held {path} until the deadline") from None
        yield


class Runner:
    def __init__(
        self,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        environ: Mapping[str, str] | None = None,
        connect_aws: Callable[[str], Aws] | None = None,
        deadline: Deadline | None = None,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
    ) -> None:
        import requests

        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self.deadline = deadline or Deadline(settings.timeout)
        self.session = session or requests.Session()
        self.endpoints = Endpoints(
            settings.client_scheme, settings.peer_scheme, settings.client_port, settings.peer_port
        )
        tls = Tls(settings.ca_file, settings.cert_file, settings.key_file)
        tls.check_files()
        self.etcd = EtcdClient(self.session, tls, settings.api)
        self.connect_aws = connect_aws or self._default_aws
        self._now = now
        self._imds: Imds | None = None

    def _default_aws(self, region: str) -> Aws:
        from etcd_aws_cluster.aws import Aws

        return Aws.connect(
            region,
            timeout=self.settings.aws_timeout,
            max_attempts=self.settings.aws_max_attempts,
            environ=self.environ,
        )

    # --- facts -----------------------------------------------------------------------------------------
    def metadata(self) -> Imds:
        """The IMDS client of this run (one token for every question)."""
        if self._imds is None:
            self._imds = Imds(
                self.session,
                self.deadline,
                endpoint=endpoint_from(self.environ),
                timeout=self.settings.imds_timeout,
                allow_v1=self.settings.imds_v1_fallback,
            )
        return self._imds

    def identity(self) -> Identity:
        me = self.metadata().identity()
        log.info("this instance: %s, private IP %s, region %s", me.instance_id, me.private_ip, me.region)
        return me

    def find_asg(self, me: Identity) -> AsgView:
        """This instance's ASG (or the one the settings name) with its instances."""
        aws = self.connect_aws(me.region)
        return aws.describe(self.group_name(aws, me))

    def group_name(self, aws: Aws, me: Identity) -> str:
        if self.settings.asg_name:
            return self.settings.asg_name
        if self.settings.asg_tag:
            key, value = self.settings.asg_tag.split("=", 1)
            return aws.group_by_tag(key, value)
        return aws.group_of(me.instance_id)

    def probe_all(self, asg: AsgView) -> tuple[Probe, ...]:
        """Ask every ASG instance's etcd for the member list at once; a hung peer costs one probe timeout.

        A client port still silent after FORMING_CHECK_AFTER seconds may belong to an etcd that is forming a
        cluster and waits for quorum (it serves its peer port only): its peer port says so at once, and then the
        client port gets FORMING_GRACE more seconds instead of the whole probe timeout.
        """
        targets = [(i.instance_id, ip) for i in asg.instances if (ip := i.private_ip) and not i.is_gone]
        if not targets:
            return ()
        timeout = self.deadline.cap(self.settings.probe_timeout)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=2 * len(targets))

        def ask(instance_id: str, ip: str) -> Probe:
            started = time.monotonic()
            call = pool.submit(self.etcd.list_members, self.endpoints.client_url(ip), timeout)
            forming: frozenset[str] | None = None
            try:
                try:
                    answer = call.result(timeout=min(FORMING_CHECK_AFTER, timeout))
                except concurrent.futures.TimeoutError:
                    forming = self._forming(ip, timeout - (time.monotonic() - started))
                    wait = FORMING_GRACE if forming is not None else timeout
                    answer = call.result(timeout=max(0.0, min(wait, timeout - (time.monotonic() - started))) + 0.05)
            except concurrent.futures.TimeoutError:
                detail = f"{self.endpoints.client_url(ip)} is silent; its peer port says it is forming a cluster"
                if forming is None:
                    detail = f"{self.endpoints.client_url(ip)} did not answer within {timeout:.1f}s"
                return Probe(instance_id, ip, error="timeout", detail=detail, bootstrapping=forming)
            except EtcdRequestError as exc:
                return Probe(instance_id, ip, error=exc.kind, detail=str(exc), bootstrapping=forming)
            except AgentError as exc:  # an invalid value in the answer
                return Probe(instance_id, ip, error="invalid answer", detail=str(exc))
            return Probe(instance_id, ip, answer=answer)

        try:
            # One pool for both: each ask runs in a worker and waits on its own client call in another.
            asks = [pool.submit(ask, instance_id, ip) for instance_id, ip in targets]
            probes = tuple(a.result() for a in asks)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        tls_failures = [p for p in probes if p.error == "tls"]
        if tls_failures and not any(p.answered for p in probes):
            # A TLS misconfiguration does not heal by waiting: say which file is wrong now.
            raise EtcdError(tls_failures[0].detail)
        for probe in probes:
            if probe.answer is not None:
                log.info("etcd on %s (%s) lists %d members", probe.instance_id, probe.ip, len(probe.answer.members))
            else:
                log.info("etcd on %s (%s): %s", probe.instance_id, probe.ip, probe.detail or probe.error)
        return probes

    def _forming(self, ip: str, timeout: float) -> frozenset[str] | None:
        """The peer URLs of the cluster the etcd on `ip` is still forming, or None (formed, or no answer)."""
        if timeout <= 0:
            return None
        try:
            return self.etcd.bootstrapping_peers(self.endpoints.peer_url(ip), timeout)
        except AgentError:
            return None

    def facts(self, me: Identity, asg: AsgView) -> Facts:
        data_dir = local_data_dir(self.settings.data_dirs())
        ids = read_ids(data_dir) if data_dir is not None else None
        return Facts(
            me=me,
            asg=asg,
            probes=self.probe_all(asg),
            endpoints=self.endpoints,
            has_local_data=data_dir is not None,
            local_ids=(ids.member_id, ids.cluster_id) if ids else None,
        )

    # --- decide ----------------------------------------------------------------------------------------
    def decide(self, aws: Aws, me: Identity, group: str) -> tuple[Plan, Facts]:
        """Gather facts and decide, looking again while the plan says WAIT, until the deadline."""
        attempt = 0
        last_progress = -PROGRESS_EVERY
        while True:
            asg = aws.describe(group)
            self._log_asg(asg)
            facts = self.facts(me, asg)
            try:
                plan = planner.decide(facts, stale_data=self.settings.stale_data, as_learner=self.settings.learner)
            except UnsafeError as exc:
                log.info("decision=refuse reason=%s", exc)
                raise
            if plan.decision is not Decision.WAIT:
                return plan, facts
            elapsed = self.deadline.elapsed()
            if elapsed - last_progress >= PROGRESS_EVERY:
                log.info("waiting (%.0fs of %.0fs): %s", elapsed, self.settings.timeout, plan.reason)
                notify.status(f"waiting {elapsed:.0f}s of {self.settings.timeout:.0f}s: {plan.reason}")
                last_progress = elapsed
            if not self.deadline.pause(backoff(attempt, base=0.5, cap=3.0)):
                raise UnsafeError(f"gave up after {elapsed:.0f}s: {plan.reason}")
            attempt += 1

    def _log_asg(self, asg: AsgView) -> None:
        listed = ", ".join(f"{i.instance_id} {i.lifecycle_state} {i.private_ip or '-'}" for i in asg.instances)
        log.info("ASG %s: desired %d; instances: %s", asg.name, asg.desired_capacity, listed or "none")

    # --- act -------------------------------------------------------------------------------------------
    def retry(self, what: str, call: Callable[[str], T], client_urls: list[str]) -> T:
        """Call etcd through any answering member; retry transient answers with backoff under the deadline."""
        attempt = 0
        while True:
            last: EtcdRequestError | None = None
            for url in client_urls:
                try:
                    return call(url)
                except EtcdRequestError as exc:
                    if not exc.transient:
                        raise EtcdError(f"{what} failed: {exc}") from None
                    last = exc
            log.info("%s: %s; retrying", what, last)
            notify.status(f"{what}: retrying ({last})")
            # etcd 3.4 says "unhealthy cluster" for ~5 s after any change: retry often, not in long sleeps.
            if not self.deadline.pause(backoff(attempt, base=0.25, cap=1.5)):
                raise EtcdError(f"{what} did not succeed before the deadline: {last}")
            attempt += 1

    def act(self, me: Identity, plan: Plan, facts: Facts) -> tuple[Plan, bool]:
        """Carry out the plan's membership changes. Returns the plan to write and False when a concurrent
        joiner was detected and this instance backed off (the caller decides again)."""
        if plan.move_data_aside:
            directory = local_data_dir(self.settings.data_dirs())
            if directory is not None:
                moved = move_aside(directory, self._now())
                log.warning("this node's etcd data belongs to no current member: moved %s to %s", directory, moved)
        client_urls = [self.endpoints.client_url(p.ip) for p in facts.probes if p.answered]
        timeout = self.settings.probe_timeout * 2
        for member in plan.remove:
            label = f"removing gone member {member.name or '(unstarted)'} {member.hex_id}"
            removed = self.retry(label, self._remover(member.id, timeout), client_urls)
            log.info("%s: %s", label, "done" if removed else "already gone")
        if not plan.add_self:
            return plan, True
        my_peer = self.endpoints.peer_url(me.private_ip)
        try:
            added = self.retry(
                f"adding this instance ({my_peer})",
                lambda url: self.etcd.add_member(url, [my_peer], timeout, learner=self.settings.learner),
                client_urls,
            )
        except EtcdError as exc:
            raise EtcdError(f"{exc}{self._unhealthy_hint(str(exc), plan, facts)}") from None
        log.info("added this instance as %s %s", "learner" if added.is_learner else "member", added.hex_id)
        members = self.retry("listing members", lambda url: self.etcd.list_members(url, timeout), client_urls).members
        rivals = self._concurrent_joiners(me, facts.asg, members)
        if rivals:
            log.info("another instance joined at the same time (%s); backing off and deciding again", rivals)
            self.retry("withdrawing this instance", self._remover(added.id, timeout), client_urls)
            return plan, False
        cluster = planner.initial_cluster(members, facts.asg, me, self.endpoints)
        return replace(plan, initial_cluster=cluster, members=members), True

    def _unhealthy_hint(self, error: str, plan: Plan, facts: Facts) -> str:
        if "unhealthy cluster" not in error:
            return ""
        answered = {p.ip for p in facts.probes if p.answered}
        silent = [
            m.name or m.hex_id
            for m in plan.members
            if m not in plan.remove and m.started and not any(planner.url_host(u) in answered for u in m.peer_urls)
        ]
        if not silent:
            return ""
        return (
            f". etcd adds a member only while every voting member is connected (etcd 3.4; 3.5 needs a quorum); "
            f"not answering: {', '.join(silent)}. Bring it back, or remove it with etcdctl member remove, and rerun"
        )

    def _remover(self, member_id: int, timeout: float) -> Callable[[str], bool]:
        return lambda url: self.etcd.remove_member(url, member_id, timeout)

    def _concurrent_joiners(self, me: Identity, asg: AsgView, members: tuple[Member, ...]) -> str:
        others = [m for m in members if not m.started and not planner.is_me(m, me, self.endpoints)]
        names = [owner.instance_id for m in others if (owner := planner.instance_of(m, asg)) is not None]
        return ", ".join(names)

    # --- the whole run ---------------------------------------------------------------------------------
    def run(self, *, dry_run: bool = False) -> Outcome:
        me = self.identity()
        aws = self.connect_aws(me.region)
        group = self.group_name(aws, me)
        if dry_run:
            plan, facts = self.decide(aws, me, group)
            self._log_plan(plan)
            return self._outcome(me, plan)
        with host_lock(self.settings.lock_file, self.deadline):
            attempt = 0
            while True:
                plan, facts = self.decide(aws, me, group)
                self._log_plan(plan)
                plan, settled = self.act(me, plan, facts)
                if settled:
                    break
                if not self.deadline.pause(backoff(attempt, base=1.0, cap=5.0)):
                    raise EtcdError("could not join: other instances kept joining at the same time until the deadline")
                attempt += 1
            outcome = self._outcome(me, plan)
            envfile.write(self.settings.output, outcome.text)
        if self.settings.output != "-":
            log.info("wrote %s: %s, state %s", self.settings.output, me.instance_id, plan.cluster_state)
        return outcome

    def _outcome(self, me: Identity, plan: Plan) -> Outcome:
        values = envfile.variables(me, plan, self.endpoints, listen_loopback=self.settings.listen_loopback)
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
