"""Render, validate and atomically write the env file etcd reads.

The file is plain `KEY=VALUE` lines: systemd `EnvironmentFile=`, shell `.`/`eval` and `docker run --env-file`
all read it unchanged, because every value is checked against a charset that none of them treats specially.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from etcd_aws_cluster import validate
from etcd_aws_cluster.errors import OutputError
from etcd_aws_cluster.model import Endpoints, Identity, Plan
from etcd_aws_cluster.view import render_initial_cluster

KEYS = (
    "ETCD_NAME",
    "ETCD_INITIAL_CLUSTER_STATE",
    "ETCD_INITIAL_CLUSTER",
    "ETCD_INITIAL_ADVERTISE_PEER_URLS",
    "ETCD_ADVERTISE_CLIENT_URLS",
    "ETCD_LISTEN_PEER_URLS",
    "ETCD_LISTEN_CLIENT_URLS",
)
MODE = 0o644
# Not an ETCD_AWS_CLUSTER_* setting on purpose: only tests set it (see _test_pause).
TEST_PAUSE_VARIABLE = "_ETCD_AWS_CLUSTER_TEST_WRITE_PAUSE"


def variables(me: Identity, plan: Plan, endpoints: Endpoints, *, listen_loopback: bool) -> dict[str, str]:
    client_url = endpoints.client_url(me.private_ip)
    listen_clients = [client_url]
    if listen_loopback:
        listen_clients.append(endpoints.client_url("127.0.0.1"))
    return {
        "ETCD_NAME": me.instance_id,
        "ETCD_INITIAL_CLUSTER_STATE": plan.cluster_state,
        "ETCD_INITIAL_CLUSTER": render_initial_cluster(plan.initial_cluster),
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": endpoints.peer_url(me.private_ip),
        "ETCD_ADVERTISE_CLIENT_URLS": client_url,
        "ETCD_LISTEN_PEER_URLS": endpoints.peer_url(me.private_ip),
        "ETCD_LISTEN_CLIENT_URLS": ",".join(listen_clients),
    }


def render(values: Mapping[str, str]) -> str:
    """The file's text; raises UnsafeError naming the first value outside the allowed charset."""
    if set(values) != set(KEYS):
        raise ValueError(f"env file needs exactly {', '.join(KEYS)}")
    lines = [f"{key}={validate.env_value(key, values[key])}" for key in KEYS]
    return "# Written by etcd-aws-cluster at boot; changes are overwritten.\n" + "\n".join(lines) + "\n"


def write(path: str, text: str) -> None:
    """Write atomically: temp file in the target dir, fsync, rename, fsync the dir. '-' means stdout.

    On any failure the old file is left exactly as it was. Callers hold the host lock, so temp files left by a
    killed run can be removed here.
    """
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    target = Path(path)
    directory = target.parent
    tmp_name = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob(f".{target.name}.*.tmp"):  # from a run killed mid-write
            with contextlib.suppress(OSError):
                leftover.unlink()
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), MODE)
            os.fsync(handle.fileno())
        _test_pause()
        os.replace(tmp_name, target)
        tmp_name = None
        _test_pause()
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def _test_pause() -> None:
    """Tests only: with TEST_PAUSE_VARIABLE set, pause just before and just after the rename, so that a test's
    kill -9 lands exactly there (tests/integration/test_safety.py)."""
    seconds = os.environ.get(TEST_PAUSE_VARIABLE)
    if seconds:
        time.sleep(float(seconds))


def parse(text: str) -> dict[str, str]:
    """Read a file written by `render` (used by `status`, tests and the demo)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values
