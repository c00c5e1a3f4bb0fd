"""Print packaging/config.toml: every setting of etcd_aws_cluster.app.settings.Settings, commented out, with its
default.

Run by `make packaging-config` (uses the project's venv); tests/test_packaging.py checks the file is current.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etcd_aws_cluster.app.settings import Settings  # noqa: E402

HEADER = """\
# etcd-aws-cluster configuration. Every setting is listed below, commented out, with its default.
#
# Sources, highest priority first: command-line options, environment variables ETCD_AWS_CLUSTER_<NAME>
# (e.g. ETCD_AWS_CLUSTER_PEER_SCHEME=https; for the service, put them in /etc/default/etcd-aws-cluster on
# Debian or /etc/sysconfig/etcd-aws-cluster on RPM systems), drop-ins /etc/etcd-aws-cluster/config.d/*.toml
# (sorted, later wins), this file, then the defaults. Unknown keys are an error. See etcd-aws-cluster(8).
#
# etcd-aws-cluster.service runs sandboxed: it can write only to /etc/sysconfig, /var/lib/etcd and /run.
# If you move `output`, `data_dir` or `lock_file` elsewhere, or raise `timeout` above 200 seconds, add a
# unit drop-in (`systemctl edit etcd-aws-cluster.service`) with ReadWritePaths= and TimeoutStartSec=.
# `touch /etc/etcd-aws-cluster/disabled` skips the agent at boot; etcd then starts from the last file written.
#
# This file is generated from the agent's settings model by `make packaging-config`.
"""


def toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render() -> str:
    parts = [HEADER]
    for name, field in Settings.model_fields.items():
        description = (field.description or name).strip()
        if field.default is None and "empty" not in description:
            description += " (empty: unset)"
        comment = textwrap.fill(description, width=110, initial_indent="# ", subsequent_indent="# ")
        parts.append(f"\n{comment}\n#{name} = {toml_value(field.default)}\n")
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
