"""`etcd-aws-cluster status`: the Auto Scaling group and the etcd cluster side by side; the exit code is the verdict.

Read only: it asks IMDS (for the region and, unless asg_name is set, the instance's group), AWS and every
member's etcd, and changes nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from etcd_aws_cluster import status
from etcd_aws_cluster.errors import AgentError
from etcd_aws_cluster.etcd import EndpointStatus, EtcdRequestError
from etcd_aws_cluster.model import AsgView, Probe
from etcd_aws_cluster.plan import url_host
from etcd_aws_cluster.runner import Runner
from etcd_aws_cluster.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def use_colour(stream: object, environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org) or TERM=dumb."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not environ.get("NO_COLOR") and environ.get("TERM") != "dumb"


def _parallel(calls: Sequence[Callable[[], T]]) -> list[T]:
    if not calls:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def collect(runner: Runner, asg: AsgView) -> status.Report:
    """Ask every instance's etcd for the member list, members outside the ASG too, then each member's status."""
    timeout = runner.deadline.cap(runner.settings.probe_timeout)
    probes = runner.probe_all(asg)
    urls = {p.ip: runner.endpoints.client_url(p.ip) for p in probes}

    # Members that belong to no ASG instance are asked at their own client URL: they count for quorum too.
    members, _, _ = status.cluster_view(probes)
    outside = {
        url_host(m.client_urls[0]): m.client_urls[0]
        for m in members
        if status.owner(m, asg) is None and m.client_urls and url_host(m.client_urls[0]) not in urls
    }

    def ask_outside(host: str, url: str) -> Probe:
        try:
            return Probe("", host, answer=runner.etcd.list_members(url, timeout))
        except EtcdRequestError as exc:
            return Probe("", host, error=exc.kind)
        except AgentError as exc:  # an invalid value in the answer
            return Probe("", host, error=f"invalid answer: {exc}")

    probes = (*probes, *_parallel([functools.partial(ask_outside, h, u) for h, u in outside.items()]))
    urls.update(outside)

    def ask_status(url: str) -> EndpointStatus | None:
        try:
            return runner.etcd.endpoint_status(url, timeout)
        except AgentError as exc:
            log.debug("status of %s: %s", url, exc)
            return None

    answers = _parallel([functools.partial(ask_status, urls[p.ip]) for p in probes if p.answered])
    return status.build(asg, probes, [a for a in answers if a is not None])


def run(settings: Settings, args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", False):
        logging.getLogger("etcd_aws_cluster").setLevel(logging.WARNING)  # the table says it all
    runner = Runner(settings)
    me = runner.identity()
    aws = runner.connect_aws(me.region)
    if settings.asg_name:
        group = settings.asg_name
    elif getattr(settings, "proxy_asg", None):  # a client of the cluster: show the cluster it uses
        group = str(settings.proxy_asg)
    else:
        group = runner.group_name(aws, me)
    report = collect(runner, aws.describe(group))
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(status.to_json(report), indent=2) + "\n")
    else:
        sys.stdout.write(status.render_text(report, colour=use_colour(sys.stdout, os.environ)))
    sys.stdout.flush()
    return report.exit_code
