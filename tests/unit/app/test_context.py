"""The run's backups: at most one per run, made on first use, and none at all (nor their imports) without backup_url."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from etcd_aws_cluster.app import settings
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.core.model import Identity

# Credentials and an endpoint that nothing listens on: making the S3 client sends nothing.
ENVIRON = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
}


def context(tmp_path: Path, **overrides: object) -> Context:
    ctx = Context(settings.load(overrides, tmp_path / "none.toml", environ={}), environ=ENVIRON)
    ctx.me = Identity("i-0123456789abcdef0", "10.0.0.1", "eu-west-1")  # instead of asking IMDS
    return ctx


def test_a_run_has_one_backups_whoever_asks(tmp_path: Path) -> None:
    ctx = context(tmp_path, backup_url="s3://bucket/prefix", asg_name="etcd-prod")
    first = ctx.backups()
    assert first is not None and first.store.asg_name == "etcd-prod"
    assert ctx.backups() is first
    assert ctx.backups("etcd-prod") is first  # a command naming the ASG it looked at gets the same one


def test_the_backups_of_another_asg_in_the_same_run_are_refused(tmp_path: Path) -> None:
    ctx = context(tmp_path, backup_url="s3://bucket/prefix", asg_name="etcd-prod")
    assert ctx.backups("etcd-prod") is not None
    with pytest.raises(ValueError, match="etcd-other"):
        ctx.backups("etcd-other")


def test_no_backup_url_no_backups(tmp_path: Path) -> None:
    assert context(tmp_path, asg_name="etcd-prod").backups() is None


def test_a_boot_without_backup_url_does_not_import_the_backup_machinery(tmp_path: Path) -> None:
    # (The settings check a backup_url's syntax with adapters/s3.py's patterns: that module comes in, boto does not.)
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from etcd_aws_cluster.app import settings
        from etcd_aws_cluster.app.boot import Runner
        from etcd_aws_cluster.app.context import Context

        ctx = Context(settings.load({{"asg_name": "g"}}, Path({str(tmp_path / "none.toml")!r}), environ={{}}))
        assert Runner(ctx).backups is None
        machinery = {{"etcd_aws_cluster." + m for m in ("app.backups", "app.handoff", "adapters.restore_tool")}}
        print(",".join(m for m in sys.modules if m in machinery or m.startswith(("boto3", "botocore"))))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == ""
