"""The context: its etcd call retry (through any member, transient answers again under the deadline, the rest at
once), and the run's backups (at most one per run, made on first use, none at all nor their imports without
backup_url)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from etcd_aws_cluster.adapters.etcd import EtcdFailure, EtcdRequestError
from etcd_aws_cluster.app import settings
from etcd_aws_cluster.app.context import Context
from etcd_aws_cluster.app.settings import Settings
from etcd_aws_cluster.base.errors import EtcdError
from etcd_aws_cluster.core.model import Identity
from tests.unit.base.clock import FakeClock

URLS = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]


def clocked_context(clock: FakeClock, seconds: float) -> Context:
    return Context(Settings.model_construct(), deadline=clock.deadline(seconds), environ={})


class Etcd:
    """A call that fails with the queued errors (one per call), then answers with the URL it was made to."""

    def __init__(self, *errors: EtcdRequestError) -> None:
        self.errors = list(errors)
        self.calls: list[str] = []

    def __call__(self, url: str) -> str:
        self.calls.append(url)
        if self.errors:
            raise self.errors.pop(0)
        return url


def unhealthy(url: str) -> EtcdRequestError:
    return EtcdRequestError(f"{url} answered HTTP 503: unhealthy cluster", failure=EtcdFailure.HTTP, transient=True)


def test_a_transient_answer_is_tried_on_the_next_member_then_again_after_a_pause() -> None:
    clock = FakeClock()
    call = Etcd(unhealthy(URLS[0]), unhealthy(URLS[1]), unhealthy(URLS[0]))
    assert clocked_context(clock, 10.0).retry("adding", call, URLS) == URLS[1]
    assert call.calls == [URLS[0], URLS[1], URLS[0], URLS[1]]
    assert len(clock.sleeps) == 1 and 0.125 <= clock.sleeps[0] <= 0.25  # ETCD_CALL's first pause


def test_an_answer_retries_cannot_fix_ends_at_once() -> None:
    clock = FakeClock()
    wrong = EtcdRequestError("http://10.0.0.1:2379 answered HTTP 400: bad peer URL", failure=EtcdFailure.HTTP)
    with pytest.raises(EtcdError, match="adding failed: .*bad peer URL"):
        clocked_context(clock, 10.0).retry("adding", Etcd(wrong), URLS)
    assert clock.sleeps == []


def test_transient_answers_until_the_deadline_end_with_the_last_one() -> None:
    clock = FakeClock()
    call = Etcd(*(unhealthy(URLS[n % 2]) for n in range(1000)))
    with pytest.raises(EtcdError, match=r"adding did not succeed before the deadline: http://10.0.0.2:2379 answered"):
        clocked_context(clock, 5.0).retry("adding", call, URLS)
    assert clock.elapsed == pytest.approx(5.0)
    assert max(clock.sleeps) <= 1.5  # ETCD_CALL's cap: etcd 3.4 is unhealthy for ~5 s after a change
    assert len(call.calls) == 2 * len(clock.sleeps)  # a round before each pause; none after the last


# Credentials and an endpoint that nothing listens on: making the S3 client sends nothing. botocore reads the
# credentials from the process's environment (the context's environ gives the endpoints), and without them it would
# ask the instance metadata service.
ENVIRON = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(autouse=True)
def _aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)


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
