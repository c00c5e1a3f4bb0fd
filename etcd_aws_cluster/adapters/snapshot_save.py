"""`etcdctl snapshot save`: etcd's own client takes a member's snapshot over gRPC, into a file.

About 50-60 MB/s against 6-9 MB/s through the JSON gateway's base64 lines (docs/benchmarks-backup.md), so a backup
uses it wherever the host has an etcdctl (any v3 etcdctl can save from any etcd of 3.4 on: the Maintenance API
has not changed). The file is etcd's stream as sent, its sha256 trailer included, like the gateway's.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from etcd_aws_cluster.adapters import restore_tool
from etcd_aws_cluster.adapters.etcd import EtcdClient, Tls
from etcd_aws_cluster.adapters.restore_tool import RestoreTool
from etcd_aws_cluster.base.errors import ConfigError, EtcdError

log = logging.getLogger(__name__)
DIAL_TIMEOUT = 5  # seconds


def find_etcdctl(configured: Path | None, environ: Mapping[str, str] | None = None) -> RestoreTool | None:
    """The etcdctl to take snapshots with: the `etcdutl` setting when it is an etcdctl, the etcdctl beside it,
    then the one beside the local etcd, then the first on PATH; None when the host has none."""
    env = os.environ if environ is None else environ
    places = [configured, configured.parent / "etcdctl"] if configured is not None else []
    places += [path for path in restore_tool.candidates(env) if path.name == "etcdctl"]
    for path in dict.fromkeys(places):
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        try:
            tool = restore_tool.identify(path)
        except ConfigError as exc:
            log.info("backup: not taking snapshots with %s: %s", path, exc)
            continue
        if tool.kind == "etcdctl":
            return tool
    return None


def save(etcdctl: RestoreTool, client_url: str, tls: Tls, path: Path, timeout: float) -> None:
    """Save the snapshot of the member at `client_url` to `path` (etcdctl writes `<path>.part`, then renames it),
    within `timeout` seconds. EtcdError when etcdctl fails or does not finish in time."""
    seconds = max(1, math.ceil(timeout))
    args = ["--endpoints", client_url, "--dial-timeout", f"{DIAL_TIMEOUT}s", "--command-timeout", f"{seconds}s"]
    for flag, value in (("--cacert", tls.ca_file), ("--cert", tls.cert_file), ("--key", tls.key_file)):
        if value is not None:
            args += [flag, str(value)]
    args += ["snapshot", "save", str(path)]
    restore_tool.run_tool(etcdctl, args, f"saving the snapshot of {client_url} with etcdctl", timeout)


def save_or_stream(
    etcdctl: RestoreTool | None,
    client: EtcdClient,
    client_url: str,
    path: Path,
    timeout: float,
    call_timeout: float,
    what: str,
) -> bool:
    """Save the snapshot of the member at `client_url` to `path`: with `etcdctl` where there is one (True), else,
    or when it fails, through etcd's JSON gateway (False; slower). `what` names the caller in the warning."""
    if etcdctl is not None:
        try:
            save(etcdctl, client_url, client.tls, path, timeout)
            return True
        except EtcdError as exc:
            log.warning("%s: %s; taking the snapshot through etcd's JSON gateway instead", what, exc)
            path.unlink(missing_ok=True)
    with path.open("xb") as out:
        for chunk in client.snapshot(client_url, call_timeout):
            out.write(chunk)
    return False
