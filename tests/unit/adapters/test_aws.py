"""Values from the AWS APIs are validated before use: hostile ones stop the run naming the value."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from etcd_aws_cluster.adapters.aws import Aws, endpoint_url
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import AwsError, UnsafeError

GOOD_ID = "i-0123456789abcdef0"


class Pages:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self._pages = pages

    def paginate(self, **_: Any) -> list[dict[str, Any]]:
        return self._pages


class FakeAutoScaling:
    def __init__(self, group: dict[str, Any], asg_name: str = "etcd") -> None:
        self.group = group
        self.asg_name = asg_name

    def describe_auto_scaling_instances(self, **_: Any) -> dict[str, Any]:
        return {"AutoScalingInstances": [{"AutoScalingGroupName": self.asg_name}]}

    def get_paginator(self, _: str) -> Pages:
        return Pages([{"AutoScalingGroups": [self.group]}])


class FakeEc2:
    def __init__(self, instance_id: str, ip: str) -> None:
        self.instance = {"InstanceId": instance_id, "PrivateIpAddress": ip, "State": {"Name": "running"}}

    def get_paginator(self, _: str) -> Pages:
        return Pages([{"Reservations": [{"Instances": [self.instance]}]}])


def aws(instance_id: str = GOOD_ID, state: str = "InService", ip: str = "10.0.0.1", asg_name: str = "etcd") -> Aws:
    group = {
        "AutoScalingGroupName": "etcd",
        "DesiredCapacity": 1,
        "Instances": [{"InstanceId": instance_id, "LifecycleState": state}],
    }
    return Aws(FakeAutoScaling(group, asg_name), FakeEc2(instance_id, ip))  # type: ignore[arg-type]


def test_valid_answers() -> None:
    view = aws().describe("etcd")
    assert [(i.instance_id, i.lifecycle_state, i.private_ip) for i in view.instances] == [
        (GOOD_ID, "InService", "10.0.0.1")
    ]
    assert aws().group_of(GOOD_ID) == "etcd"


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"instance_id": "i-0123\nEVIL=1"}, "instance id"),
        ({"state": "InService; rm -rf /"}, "lifecycle state"),
        ({"ip": "10.0.0.1 $(id)"}, "IPv4 address"),
    ],
)
def test_hostile_values_are_refused(kwargs: dict[str, str], what: str) -> None:
    with pytest.raises(UnsafeError, match=what):
        aws(**kwargs).describe("etcd")


@pytest.mark.parametrize("name", ["etcd\nETCD_NAME=x", "étcd", "etcd'$(id)'"])
def test_hostile_asg_name_is_refused(name: str) -> None:
    with pytest.raises(UnsafeError, match="Auto Scaling group name"):
        aws(asg_name=name).group_of(GOOD_ID)


def test_missing_group() -> None:
    empty = Aws(FakeAutoScaling({}), FakeEc2(GOOD_ID, "10.0.0.1"))  # type: ignore[arg-type]
    empty._autoscaling.get_paginator = lambda _: Pages([{"AutoScalingGroups": []}])  # type: ignore[method-assign]
    with pytest.raises(AwsError, match="not found"):
        empty.describe("etcd")


def test_endpoint_variables() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:2"}
    assert endpoint_url("ec2", env) == "http://127.0.0.1:2"
    assert endpoint_url("autoscaling", env) == "http://127.0.0.1:1"
    assert endpoint_url("autoscaling", {}) is None


def test_ec2_client_is_built_from_the_trimmed_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore < 1.3x resolves credentials when it creates a client: without these it asks the real IMDS.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = Aws.connect("us-east-1", timeout=1, max_attempts=1, environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    ec2 = client._ec2.meta.service_model
    assert ec2.operation_names == ["DescribeInstances"]
    instance = ec2.shape_for("Instance")
    assert {"InstanceId", "PrivateIpAddress", "State"} <= set(instance.members)
    assert client._ec2.can_paginate("describe_instances")
    assert "DescribeAutoScalingGroups" in client._autoscaling.meta.service_model.operation_names


class SlowAws:
    """A loopback HTTP server that answers every AWS request after `delay` seconds with a 503."""

    def __init__(self, delay: float) -> None:
        import http.server
        import threading

        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                outer.hits += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(delay)
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowAws]:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = SlowAws(delay=3.0)
    try:
        yield server
    finally:
        server.close()


def test_an_aws_call_ends_at_the_runs_deadline_not_after_its_retries(slow_aws: SlowAws) -> None:
    deadline = Deadline(1.0)
    client = Aws.connect(
        "us-east-1", timeout=10, max_attempts=5, environ={"AWS_ENDPOINT_URL": slow_aws.url}, deadline=deadline
    )
    started = time.monotonic()
    with pytest.raises(AwsError, match="no answer before the run's deadline"):
        client.describe("etcd")
    # Without the deadline: 5 attempts of up to 10 s each. The margin over the 1 s deadline is for a loaded machine
    # (compat runs two interpreters at once beside other work); anything near 10 s would be the bug.
    assert time.monotonic() - started < 3.0


def test_no_aws_request_starts_after_the_deadline(slow_aws: SlowAws) -> None:
    deadline = Deadline(0.0)
    client = Aws.connect("us-east-1", timeout=10, max_attempts=5, environ={"AWS_ENDPOINT_URL": slow_aws.url})
    with pytest.raises(AwsError, match="no time left"):
        Aws(client._autoscaling, client._ec2, deadline).describe("etcd")
    guarded = Aws.connect(
        "us-east-1", timeout=10, max_attempts=5, environ={"AWS_ENDPOINT_URL": slow_aws.url}, deadline=deadline
    )
    with pytest.raises(AwsError, match="no time left for another AWS request"):
        guarded._autoscaling.describe_auto_scaling_groups()  # botocore itself, below the adapter
    assert slow_aws.hits == 0


class FakeHooks(FakeAutoScaling):
    def __init__(self, hooks: list[dict[str, Any]]) -> None:
        super().__init__({})
        self.hooks = hooks

    def describe_lifecycle_hooks(self, **_: Any) -> dict[str, Any]:
        return {"LifecycleHooks": self.hooks}


def test_lifecycle_hooks_are_read_with_aws_defaults_for_what_they_leave_out() -> None:
    from etcd_aws_cluster.core.lifecycle import Hook

    hooks = [
        {
            "LifecycleHookName": "etcd-ready",
            "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
            "HeartbeatTimeout": 300,
            "DefaultResult": "ABANDON",
        },
        {"LifecycleHookName": "etcd-leave", "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING"},
    ]
    found = Aws(FakeHooks(hooks), FakeEc2(GOOD_ID, "10.0.0.1")).lifecycle_hooks("etcd")  # type: ignore[arg-type]
    assert found == (
        Hook("etcd-ready", "autoscaling:EC2_INSTANCE_LAUNCHING", 300.0, "ABANDON"),
        Hook("etcd-leave", "autoscaling:EC2_INSTANCE_TERMINATING", 3600.0, "ABANDON"),
    )


@pytest.mark.parametrize("name", ["etcd ready", "etcd\nX=1", "", "x" * 256])
def test_a_hostile_lifecycle_hook_name_is_refused(name: str) -> None:
    hooks = [{"LifecycleHookName": name, "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING"}]
    with pytest.raises(AwsError, match="refusing lifecycle hook name"):
        Aws(FakeHooks(hooks), FakeEc2(GOOD_ID, "10.0.0.1")).lifecycle_hooks("etcd")  # type: ignore[arg-type]
