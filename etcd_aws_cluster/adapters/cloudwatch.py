"""CloudWatch metrics (setting `cloudwatch_namespace`), for operators without Prometheus: one PutMetricData call.

Best effort by design: a metric is never worth a failed boot or backup, so every failure (no answer, no
permission, no time left) is logged and swallowed, and the call never outlives the time it is given.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from etcd_aws_cluster.adapters.aws import bounded, make_client
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AgentError

log = logging.getLogger(__name__)
# CloudWatch's rule for a namespace; AWS/ is reserved for AWS's own (the settings refuse it).
NAMESPACE = re.compile(r"[A-Za-z0-9.\-_/#:]{1,255}")
DIMENSION = "AutoScalingGroupName"


@dataclass(frozen=True)
class Datum:
    name: str
    value: float
    unit: str  # Seconds, Count, None


def put(
    namespace: str,
    asg: str,
    data: list[Datum],
    *,
    region: str,
    environ: Mapping[str, str],
    seconds: float,
) -> bool:
    """Put `data` under `namespace`, dimension AutoScalingGroupName=`asg`, within `seconds`; False on any failure."""
    if not data:
        return True
    deadline = Deadline(seconds)
    try:
        client = make_client("cloudwatch", region, timeout=seconds, max_attempts=2, environ=environ, deadline=deadline)
        metric_data = [
            {
                "MetricName": datum.name,
                "Dimensions": [{"Name": DIMENSION, "Value": asg}],
                "Value": datum.value,
                "Unit": datum.unit,
            }
            for datum in data
        ]
        bounded(
            "putting CloudWatch metrics",
            lambda: client.put_metric_data(Namespace=namespace, MetricData=metric_data),
            deadline,
        )
    except AgentError as exc:
        log.warning("CloudWatch metrics not sent (the run goes on): %s", exc)
        return False
    log.info("CloudWatch %s: %s", namespace, ", ".join(f"{d.name}={d.value:g}" for d in data))
    return True
