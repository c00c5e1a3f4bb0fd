"""Who are my peers: the Auto Scaling group, its instances and their private IPs (boto3)."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AwsError, UnsafeError
from etcd_aws_cluster.core.lifecycle import Hook
from etcd_aws_cluster.core.model import AsgInstance, AsgView

if TYPE_CHECKING:
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_ec2 import EC2Client

log = logging.getLogger(__name__)
# boto3 sessions are not thread-safe: one lock makes them and the clients made from them
_SESSION_LOCK = threading.Lock()
_SESSIONS: dict[str, Any] = {}
T = TypeVar("T")

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
# Up to four parts (today's longest: Warmed:Terminating:Retained). A well-formed state this code does not know
# (a future API) is neither member nor gone (model.OTHER_STATES): it never stops the boot of the others.
LIFECYCLE_STATE = re.compile(r"[A-Za-z]{1,40}(:[A-Za-z]{1,40}){0,3}")
# AWS's default heartbeat timeout, for a hook that does not say.
DEFAULT_HEARTBEAT_TIMEOUT = 3600.0
# Per-service variables first, then the global one: the same names recent botocore reads itself. Older botocore
# (Debian bookworm's 1.29) ignores them, so the agent passes endpoint_url= explicitly.
ENDPOINT_VARIABLES = {
    "autoscaling": ("AWS_ENDPOINT_URL_AUTO_SCALING", "AWS_ENDPOINT_URL"),
    "ec2": ("AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL"),
    "s3": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "cloudwatch": ("AWS_ENDPOINT_URL_CLOUDWATCH", "AWS_ENDPOINT_URL"),
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


class NoAnswerError(AwsError):
    """An AWS call was abandoned at its deadline: the service accepted it (or not) but did not answer in time."""


def _refuse_late_attempts(deadline: Deadline) -> Callable[..., None]:
    """A botocore before-send handler: no attempt (first or retry) starts once the run's deadline has passed."""

    def guard(**_: Any) -> None:
        if deadline.expired:
            raise AwsError(f"no time left for another AWS request before the run's deadline ({deadline.seconds:.3g}s)")

    return guard


def aws_session(region: str) -> Any:
    """A boto3 session whose data path puts our trimmed EC2 model (DescribeInstances only) first: see
    scripts/trim_ec2_model.py. One per region and process: clients made from one session share its loaded data
    (endpoints, partitions, retry rules), 7 MiB less for the S3 client of a boot with backups than a session of
    its own."""
    with _SESSION_LOCK:
        if region not in _SESSIONS:
            import boto3
            import botocore.session

            with aws_errors("creating the AWS session"):
                core = botocore.session.get_session()
                core.set_config_variable("data_path", str(DATA_DIR))
                _SESSIONS[region] = boto3.session.Session(botocore_session=core, region_name=region)
        return _SESSIONS[region]


def make_client(
    service: str,
    region: str,
    *,
    timeout: float,
    max_attempts: int,
    environ: Mapping[str, str] | None = None,
    deadline: Deadline | None = None,
    session: Any = None,
) -> Any:
    """The one way the agent makes an AWS client (autoscaling, ec2, s3): the endpoint from the environment, the
    region, bounded timeouts and retries, and with a deadline its guard (per-request timeouts never exceed the time
    left now, no attempt starts after it). S3 behind an endpoint uses path-style addressing, as S3-compatible
    servers and moto expect."""
    from botocore.config import Config

    env = os.environ if environ is None else environ
    endpoint = endpoint_url(service, env)
    per_request = deadline.cap(timeout) if deadline is not None else timeout
    config = Config(
        region_name=region,
        connect_timeout=per_request,
        read_timeout=per_request,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        s3={"addressing_style": "path" if endpoint else "auto"},
    )
    session = session or aws_session(region)
    with aws_errors(f"creating the {service} client"), _SESSION_LOCK:  # a session makes one client at a time
        client = session.client(service, config=config, endpoint_url=endpoint)
    if deadline is not None:
        client.meta.events.register("before-send", _refuse_late_attempts(deadline))
    return client


def bounded(
    action: str,
    call: Callable[[], T],
    deadline: Deadline | None,
    abandon: threading.Event | None = None,
    limit: str = "the run's deadline",
) -> T:
    """Run one AWS call (with its pages and retries) to its end or to `deadline`, whichever comes first.

    The call runs in a daemon thread, so that one still waiting at the deadline is abandoned (and the process can
    exit without waiting for it); `abandon` is set then, for a call that can stop itself (a transfer's reads and
    writes check it), and the client's before-send guard stops it from sending more.
    """

    def attempt() -> T:
        with aws_errors(action):
            return call()

    if deadline is None:
        return attempt()
    remaining = deadline.remaining()
    if remaining <= 0:
        raise AwsError(f"{action}: no time left before {limit} ({deadline.seconds:.3g}s)")
    result: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            result.append(attempt())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=work, name=f"aws: {action}"[:60], daemon=True)
    worker.start()
    worker.join(remaining)
    if worker.is_alive():
        if abandon is not None:
            abandon.set()
        raise NoAnswerError(f"{action}: no answer before {limit} ({deadline.seconds:.3g}s)")
    if failure:
        raise failure[0]
    return result[0]


class Aws:
    """Thin adapter over the two clients the agent needs.

    With a deadline, every call (botocore's retries and backoff included) ends by it: per-request timeouts never
    exceed the time left when the clients were made, no retry starts after it, and a call still running at the
    deadline is abandoned with an AwsError.
    """

    def __init__(self, autoscaling: AutoScalingClient, ec2: EC2Client, deadline: Deadline | None = None) -> None:
        self._autoscaling = autoscaling
        self._ec2 = ec2
        self._deadline = deadline

    @classmethod
    def connect(
        cls,
        region: str,
        *,
        timeout: float,
        max_attempts: int,
        environ: Mapping[str, str] | None = None,
        deadline: Deadline | None = None,
    ) -> Aws:
        session = aws_session(region)

        def client(service: str) -> Any:
            return make_client(
                service,
                region,
                timeout=timeout,
                max_attempts=max_attempts,
                environ=environ,
                deadline=deadline,
                session=session,
            )

        return cls(client("autoscaling"), client("ec2"), deadline)

    def _bounded(self, action: str, call: Callable[[], T]) -> T:
        return bounded(action, call, self._deadline)

    def group_of(self, instance_id: str) -> str:
        found = self._bounded(
            f"looking up the ASG of {instance_id}",
            lambda: self._autoscaling.describe_auto_scaling_instances(InstanceIds=[instance_id]),
        )
        groups = {i.get("AutoScalingGroupName") for i in found.get("AutoScalingInstances", [])}
        if not groups:
            raise AwsError(f"instance {instance_id} is not in any Auto Scaling group (set asg_name or asg_tag)")
        if len(groups) > 1:
            raise AwsError(f"instance {instance_id} is listed in several Auto Scaling groups")
        return self._asg_name(groups.pop())

    def group_by_tag(self, key: str, value: str) -> str:
        def names_tagged() -> set[str]:
            pages = self._autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
                Filters=[{"Name": f"tag:{key}", "Values": [value]}]
            )
            return {str(g.get("AutoScalingGroupName")) for page in pages for g in page.get("AutoScalingGroups", [])}

        names = self._bounded(f"looking up the ASG tagged {key}={value}", names_tagged)
        if len(names) != 1:
            found = ", ".join(validate.shown(n, 80) for n in sorted(names)) or "none"
            raise AwsError(f"expected exactly one ASG tagged {key}={value}, found {len(names)}: {found}")
        return self._asg_name(names.pop())

    def describe(self, name: str) -> AsgView:
        """The group's desired capacity and instances, each with its private IP (None while it has none)."""

        def groups_named() -> list[Any]:
            paginator = self._autoscaling.get_paginator("describe_auto_scaling_groups")
            pages = paginator.paginate(AutoScalingGroupNames=[name])
            return [group for page in pages for group in page.get("AutoScalingGroups", [])]

        groups = self._bounded(f"describing ASG {name}", groups_named)
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
        for unknown in (i for i in instances if not i.state_is_known):
            log.warning(
                "instance %s is in lifecycle state %s, unknown to this version: neither member nor gone",
                unknown.instance_id,
                unknown.lifecycle_state,
            )
        desired = group.get("DesiredCapacity")
        if not isinstance(desired, int) or desired < 0:
            raise AwsError(f"ASG {name} has no valid DesiredCapacity")
        return AsgView(name, desired, instances)

    def _private_ips(self, instance_ids: list[str]) -> dict[str, str]:
        if not instance_ids:
            return {}

        def described() -> list[Any]:
            pages = self._ec2.get_paginator("describe_instances").paginate(InstanceIds=instance_ids)
            return [i for page in pages for r in page.get("Reservations", []) for i in r.get("Instances", [])]

        ips: dict[str, str] = {}
        for instance in self._bounded("describing the ASG's instances", described):
            ip = instance.get("PrivateIpAddress")
            state = instance.get("State", {}).get("Name")
            if ip and state not in ("terminated", "shutting-down"):
                iid = validate.instance_id(instance.get("InstanceId"), "EC2")
                ips[iid] = validate.ipv4(ip, f"EC2 instance {iid}")
        return ips

    # --- lifecycle hooks -------------------------------------------------------------------------------
    def lifecycle_hooks(self, group: str) -> tuple[Hook, ...]:
        """The group's lifecycle hooks (name, transition, heartbeat timeout, default result)."""
        found = self._bounded(
            f"listing the lifecycle hooks of ASG {group}",
            lambda: self._autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=group),
        )
        hooks = []
        for hook in found.get("LifecycleHooks", []):
            name = hook.get("LifecycleHookName")
            if not isinstance(name, str) or not validate.HOOK_NAME.fullmatch(name):
                raise AwsError(f"refusing lifecycle hook name {validate.shown(name)} of ASG {group}")
            timeout = hook.get("HeartbeatTimeout")
            hooks.append(
                Hook(
                    name,
                    str(hook.get("LifecycleTransition", "")),
                    float(timeout) if isinstance(timeout, int) and timeout > 0 else DEFAULT_HEARTBEAT_TIMEOUT,
                    str(hook.get("DefaultResult", "ABANDON")),
                )
            )
        return tuple(hooks)

    def complete_lifecycle_action(self, group: str, hook: str, instance_id: str, result: str = "CONTINUE") -> None:
        self._bounded(
            f"completing lifecycle action {hook} of {instance_id} with {result}",
            lambda: self._autoscaling.complete_lifecycle_action(
                AutoScalingGroupName=group,
                LifecycleHookName=hook,
                InstanceId=instance_id,
                LifecycleActionResult=result,
            ),
        )

    def record_lifecycle_heartbeat(self, group: str, hook: str, instance_id: str) -> None:
        self._bounded(
            f"recording a heartbeat of lifecycle action {hook} of {instance_id}",
            lambda: self._autoscaling.record_lifecycle_action_heartbeat(
                AutoScalingGroupName=group, LifecycleHookName=hook, InstanceId=instance_id
            ),
        )

    @staticmethod
    def _asg_name(value: object) -> str:
        return validate.asg_name(value, "AWS")
