"""Who are my peers: the Auto Scaling group, its instances and their private IPs (boto3)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etcd_aws_cluster import validate
from etcd_aws_cluster.errors import AwsError, UnsafeError
from etcd_aws_cluster.model import AsgInstance, AsgView

if TYPE_CHECKING:
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
LIFECYCLE_STATE = re.compile(r"[A-Za-z]+(:[A-Za-z]+)?")
# Per-service variables first, then the global one: the same names recent botocore reads itself. Older botocore
# (Debian bookworm's 1.29) ignores them, so the agent passes endpoint_url= explicitly.
ENDPOINT_VARIABLES = {
    "autoscaling": ("AWS_ENDPOINT_URL_AUTO_SCALING", "AWS_ENDPOINT_URL"),
    "ec2": ("AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"),
}


def endpoint_url(service: str, environ: Mapping[str, str]) -> str | None:
    return next((environ[name] for name in ENDPOINT_VARIABLES[service] if environ.get(name)), None)


@contextmanager
def aws_errors(action: str) -> Iterator[None]:
    """Turn botocore's exceptions into one clear AwsError line."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = validate.shown(error.get("Code", "?"), 60)
        message = validate.shown(error.get("Message", ""), 200)
        raise AwsError(f"{action}: {code}: {message}") from None
    except BotoCoreError as exc:
        raise AwsError(f"{action}: {validate.shown(exc, 200)}") from None


class Aws:
    """Thin adapter over the two clients the agent needs."""

    def __init__(self, autoscaling: AutoScalingClient, ec2: EC2Client) -> None:
        self._autoscaling = autoscaling
        self._ec2 = ec2

    @classmethod
    def connect(
        cls, region: str, *, timeout: float, max_attempts: int, environ: Mapping[str, str] | None = None
    ) -> Aws:
        import boto3
        import botocore.session
        from botocore.config import Config

        env = os.environ if environ is None else environ
        config = Config(
            region_name=region,
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
        )
        with aws_errors("creating AWS clients"):
            core = botocore.session.get_session()
            # Our trimmed EC2 model (DescribeInstances only) comes first on the data path: see scripts/trim_ec2_model.py
            core.set_config_variable("data_path", str(DATA_DIR))
            session = boto3.session.Session(botocore_session=core, region_name=region)
            autoscaling = session.client("autoscaling", config=config, endpoint_url=endpoint_url("autoscaling", env))
            ec2 = session.client("ec2", config=config, endpoint_url=endpoint_url("ec2", env))
        return cls(autoscaling, ec2)

    def group_of(self, instance_id: str) -> str:
        with aws_errors(f"looking up the ASG of {instance_id}"):
            found = self._autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id])
        groups = {i.get("AutoScalingGroupName") for i in found.get("AutoScalingInstances", [])}
        if not groups:
            raise AwsError(f"instance {instance_id} is not in any Auto Scaling group (set asg_name or asg_tag)")
        if len(groups) > 1:
            raise AwsError(f"instance {instance_id} is listed in several Auto Scaling groups")
        return self._asg_name(groups.pop())

    def group_by_tag(self, key: str, value: str) -> str:
        names: set[str] = set()
        with aws_errors(f"looking up the ASG tagged {key}={value}"):
            pages = self._autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
                Filters=[{"Name": f"tag:{key}", "Values": [value]}]
            )
            for page in pages:
                names.update(str(g.get("AutoScalingGroupName")) for g in page.get("AutoScalingGroups", []))
        if len(names) != 1:
            found = ", ".join(sorted(names)) or "none"
            raise AwsError(f"expected exactly one ASG tagged {key}={value}, found {len(names)}: {found}")
        return self._asg_name(names.pop())

    def describe(self, name: str) -> AsgView:
        """The group's desired capacity and instances, each with its private IP (None while it has none)."""
        groups: list[Any] = []
        with aws_errors(f"describing ASG {name}"):
            paginator = self._autoscaling.get_paginator("describe_auto_scaling_groups")
            for page in paginator.paginate(AutoScalingGroupNames=[name]):
                groups.extend(page.get("AutoScalingGroups", []))
        if not groups:
            raise AwsError(f"Auto Scaling group {name} was not found")
        group = groups[0]
        source = f"ASG {name}"
        states: dict[str, str] = {}
        for instance in group.get("Instances", []):
            instance_id = validate.instance_id(instance.get("InstanceId"), source)
            state = instance.get("LifecycleState")
            if not isinstance(state, str) or not LIFECYCLE_STATE.fullmatch(state):
                raise UnsafeError(f"refusing lifecycle state {validate.shown(state)} of {instance_id} from {source}")
            states[instance_id] = state
        ips = self._private_ips(sorted(states))
        instances = tuple(AsgInstance(i, states[i], ips.get(i)) for i in sorted(states))
        desired = group.get("DesiredCapacity")
        if not isinstance(desired, int) or desired < 0:
            raise AwsError(f"ASG {name} has no valid DesiredCapacity")
        return AsgView(name, desired, instances)

    def _private_ips(self, instance_ids: list[str]) -> dict[str, str]:
        if not instance_ids:
            return {}
        ips: dict[str, str] = {}
        with aws_errors("describing the ASG's instances"):
            paginator = self._ec2.get_paginator("describe_instances")
            for page in paginator.paginate(InstanceIds=instance_ids):
                for reservation in page.get("Reservations", []):
                    for instance in reservation.get("Instances", []):
                        ip = instance.get("PrivateIpAddress")
                        state = instance.get("State", {}).get("Name")
                        if ip and state not in ("terminated", "shutting-down"):
                            iid = validate.instance_id(instance.get("InstanceId"), "EC2")
                            ips[iid] = validate.ipv4(ip, f"EC2 instance {iid}")
        return ips

    @staticmethod
    def _asg_name(value: object) -> str:
        return validate.asg_name(value, "AWS")
