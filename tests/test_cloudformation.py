"""The example CloudFormation stack (docs/cloudformation/etcd-cluster.yaml) grants what the packaged IAM policy
grants, names hooks the agent completes, and configures only settings that exist. `make lint` runs cfn-lint on it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

from etcd_aws_cluster.app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "docs" / "cloudformation" / "etcd-cluster.yaml"


def template() -> Any:
    return cfn_yaml.load(str(TEMPLATE))


def test_the_stacks_role_allows_the_packaged_policys_actions_but_metrics() -> None:
    resources = template()["Resources"]
    (policy,) = resources["InstanceRole"]["Properties"]["Policies"]
    statements = policy["PolicyDocument"]["Statement"]
    granted = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    packaged = json.loads((REPO / "packaging" / "iam-policy.json").read_text())["Statement"]
    wanted = {a for s in packaged for a in s["Action"] if not a.startswith("cloudwatch:")}
    assert granted == wanted
    lifecycle = next(s for s in statements if "autoscaling:CompleteLifecycleAction" in s["Action"])
    assert "autoScalingGroupName/${AWS::StackName}-etcd" in str(lifecycle["Resource"]), "scoped to the group"


def test_the_hooks_and_the_user_datas_settings_fit_the_agent() -> None:
    resources = template()["Resources"]
    group = resources["Group"]["Properties"]
    hooks = {h["LifecycleHookName"]: h for h in group["LifecycleHookSpecificationList"]}
    assert hooks["etcd-ready"]["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
    assert hooks["etcd-leave"]["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
    user_data = str(resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"])
    for name in re.findall(r"^\s+(\w+) = ", user_data, re.M):
        assert name in Settings.model_fields, name
    assert 'launch_hook = "etcd-ready"' in user_data and 'termination_hook = "etcd-leave"' in user_data
    assert "etcd-aws-cluster-leave.service" in user_data and "etcd-aws-cluster-ready.service" in user_data
