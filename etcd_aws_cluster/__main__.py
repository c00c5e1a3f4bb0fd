from __future__ import annotations

from etcd_aws_cluster.cli import entry

entry()
