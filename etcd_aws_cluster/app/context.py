"""What every command works with: settings, one deadline, the clients, and the way to look at the cluster.

The command line builds one `Context` per run and hands it to the chosen command. It wires the adapters (IMDS,
AWS, etcd) and turns their answers into the pure values the core reasons about (`Identity`, `AsgView`,
`ClusterView`); commands never build clients themselves.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeVar

from etcd_aws_cluster.adapters import systemd_notify as notify
from etcd_aws_cluster.adapters.etcd import EtcdClient, EtcdFailure, EtcdRequestError, Tls
from etcd_aws_cluster.adapters.imds import Imds, endpoint_from
from etcd_aws_cluster.app.metrics import RunMetrics
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AgentError, EtcdError
from etcd_aws_cluster.base.retry import ETCD_CALL, attempts
from etcd_aws_cluster.core import view
from etcd_aws_cluster.core.model import AsgView, Endpoints, Identity, Probe

if TYPE_CHECKING:
    import requests

    from etcd_aws_cluster.adapters.aws import Aws
    from etcd_aws_cluster.app.backups import Backups
    from etcd_aws_cluster.app.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
# See probe_all: when to ask a silent etcd's peer port, and how long to wait for its client port after that.
FORMING_CHECK_AFTER = 0.25
FORMING_GRACE = 0.5
# A membership call may take longer than a member-list probe: etcd commits it through raft first.
CALL_TIMEOUT_FACTOR = 2.0


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Context:
    def __init__(
        self,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        environ: Mapping[str, str] | None = None,
        connect_aws: Callable[[str], Aws] | None = None,
        deadline: Deadline | None = None,
        now: Callable[[], datetime.datetime] = utc_now,
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
        self._connect_aws = connect_aws or self._default_aws
        self.now = now
        self.metrics = RunMetrics()  # what this run learns that is worth a metric (app/metrics.py)
        self._backups: Backups | None = None

    def _default_aws(self, region: str) -> Aws:
        from etcd_aws_cluster.adapters.aws import Aws

        return Aws.connect(
            region,
            timeout=self.settings.aws_timeout,
            max_attempts=self.settings.aws_max_attempts,
            environ=self.environ,
            deadline=self.deadline,
        )

    @property
    def call_timeout(self) -> float:
        """The timeout of one etcd call after the probes (a membership change, a status), within the deadline."""
        return self.deadline.cap(self.settings.probe_timeout * CALL_TIMEOUT_FACTOR)

    # --- who and where ---------------------------------------------------------------------------------
    @functools.cached_property
    def imds(self) -> Imds:
        """The IMDS client of this run (one token for every question)."""
        return Imds(
            self.session,
            self.deadline,
            endpoint=endpoint_from(self.environ),
            timeout=self.settings.imds_timeout,
            allow_v1=self.settings.imds_v1_fallback,
        )

    @functools.cached_property
    def me(self) -> Identity:
        me = self.imds.identity()
        log.info("this instance: %s, private IP %s, region %s", me.instance_id, me.private_ip, me.region)
        return me

    @functools.cached_property
    def aws(self) -> Aws:
        return self._connect_aws(self.me.region)

    @functools.cached_property
    def asg_name(self) -> str:
        """The name of this instance's ASG, or of the one the settings name (asg_name, or asg_tag to look up)."""
        if self.settings.asg_name:
            return self.settings.asg_name
        if self.settings.asg_tag:
            key, value = self.settings.asg_tag.split("=", 1)
            return self.aws.group_by_tag(key, value)
        return self.aws.group_of(self.me.instance_id)

    def backups(self, asg_name: str | None = None) -> Backups | None:
        """The backups of this run's ASG (of `asg_name` when a command looks at another: status of a proxy's cluster),
        or None when backup_url is not set. One per run, made on first use: every command shares its S3 client and
        what it measured, and a run without backup_url never imports the backup machinery (S3, etcd's restore
        tool), nor pays for it."""
        if not self.settings.backup_url:
            return None
        name = asg_name or self.asg_name
        if self._backups is None:
            from etcd_aws_cluster.app.backups import Backups

            self._backups = Backups.open(self, name)
        elif self._backups.store.asg_name != name:
            raise ValueError(f"this run's backups are ASG {self._backups.store.asg_name}'s, not {name}'s")
        return self._backups

    def find_asg(self, asg_name: str | None = None) -> AsgView:
        """The ASG (this instance's unless `asg_name` names another) with its instances, as AWS lists it now."""
        asg = self.aws.describe(asg_name or self.asg_name)
        listed = ", ".join(f"{i.instance_id} {i.lifecycle_state} {i.private_ip or '-'}" for i in asg.instances)
        log.info("ASG %s: desired %d; instances: %s", asg.name, asg.desired_capacity, listed or "none")
        return asg

    # --- the cluster -----------------------------------------------------------------------------------
    def observe(self, asg: AsgView, extra: tuple[Probe, ...] = ()) -> view.ClusterView:
        """Probe every instance's etcd and build the cluster view (with `extra` probes, e.g. this node's own)."""
        probes = self.probe_all(asg)
        known = {p.ip for p in probes}
        cluster = view.build(asg, (*probes, *(p for p in extra if p.ip not in known)), self.endpoints)
        self.metrics.observed(asg, cluster, self.me.region)
        return cluster

    def probe(self, instance_id: str, client_url: str, ip: str) -> Probe:
        """One member-list call, as a probe: its answer, or the kind of its failure."""
        try:
            timeout = self.deadline.cap(self.settings.probe_timeout)
            return Probe(instance_id, ip, answer=self.etcd.list_members(client_url, timeout))
        except EtcdRequestError as exc:
            return Probe(instance_id, ip, error=exc.failure, detail=str(exc))
        except AgentError as exc:  # an invalid value in the answer
            return Probe(instance_id, ip, error=EtcdFailure.INVALID_ANSWER, detail=str(exc))

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
        try:
            # One pool for both: each ask runs in a worker and waits on its own client call in another.
            asks = [pool.submit(self._ask, pool, instance_id, ip, timeout) for instance_id, ip in targets]
            probes = tuple(a.result() for a in asks)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        tls_failures = [p for p in probes if p.error is EtcdFailure.TLS]
        if tls_failures and not any(p.answered for p in probes):
            # A TLS misconfiguration does not heal by waiting: say which file is wrong now.
            raise EtcdError(tls_failures[0].detail)
        for probe in probes:
            if probe.answer is not None:
                log.info("etcd on %s (%s) lists %d members", probe.instance_id, probe.ip, len(probe.answer.members))
            else:
                log.info("etcd on %s (%s): %s", probe.instance_id, probe.ip, probe.detail or probe.failure)
        return probes

    def _ask(self, pool: concurrent.futures.Executor, instance_id: str, ip: str, timeout: float) -> Probe:
        started = time.monotonic()
        client_url = self.endpoints.client_url(ip)
        call = pool.submit(self.etcd.list_members, client_url, timeout)
        forming: frozenset[str] | None = None
        try:
            try:
                answer = call.result(timeout=min(FORMING_CHECK_AFTER, timeout))
            except concurrent.futures.TimeoutError:
                forming = self._forming(ip, timeout - (time.monotonic() - started))
                wait = FORMING_GRACE if forming is not None else timeout
                answer = call.result(timeout=max(0.0, min(wait, timeout - (time.monotonic() - started))) + 0.05)
        except concurrent.futures.TimeoutError:
            detail = f"{client_url} is silent; its peer port says it is forming a cluster"
            if forming is None:
                detail = f"{client_url} did not answer within {timeout:.1f}s"
            return Probe(instance_id, ip, error=EtcdFailure.TIMEOUT, detail=detail, bootstrapping=forming)
        except EtcdRequestError as exc:
            return Probe(instance_id, ip, error=exc.failure, detail=str(exc), bootstrapping=forming)
        except AgentError as exc:  # an invalid value in the answer
            return Probe(instance_id, ip, error=EtcdFailure.INVALID_ANSWER, detail=str(exc))
        return Probe(instance_id, ip, answer=answer)

    def _forming(self, ip: str, timeout: float) -> frozenset[str] | None:
        """The peer URLs of the cluster the etcd on `ip` is still forming, or None (formed, or no answer)."""
        if timeout <= 0:
            return None
        try:
            return self.etcd.bootstrapping_peers(self.endpoints.peer_url(ip), timeout)
        except AgentError:
            return None

    # --- changes ---------------------------------------------------------------------------------------
    def retry(self, what: str, call: Callable[[str], T], client_urls: list[str]) -> T:
        """Call etcd through any answering member; retry transient answers with backoff under the deadline."""
        last: EtcdRequestError | None = None
        for _ in attempts(self.deadline, ETCD_CALL):
            last = None
            for url in client_urls:
                try:
                    return call(url)
                except EtcdRequestError as exc:
                    if not exc.transient:
                        raise EtcdError(f"{what} failed: {exc}") from None
                    last = exc
            log.info("%s: %s; retrying", what, last)
            notify.status(f"{what}: retrying ({last})")
        raise EtcdError(f"{what} did not succeed before the deadline: {last}")

    def remove_member(self, what: str, member_id: int, client_urls: list[str]) -> bool:
        """Remove a member through any of `client_urls`; False when it was already gone."""
        return self.retry(what, lambda url: self.etcd.remove_member(url, member_id, self.call_timeout), client_urls)
