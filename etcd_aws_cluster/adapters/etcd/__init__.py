"""etcd's client API as the agent uses it, split like etcd's own client: transport (HTTP, TLS, errors), cluster
(membership), maintenance (status, snapshots), watch (the changes, for `backup --follow`) and kv (transactions,
leases: a replay of deltas). `EtcdClient` is all of them over one session."""

from __future__ import annotations

from etcd_aws_cluster.adapters.etcd.cluster import ClusterApi
from etcd_aws_cluster.adapters.etcd.kv import KvApi
from etcd_aws_cluster.adapters.etcd.maintenance import MaintenanceApi
from etcd_aws_cluster.adapters.etcd.transport import MAX_ANSWER_BYTES, EtcdRequestError, Tls
from etcd_aws_cluster.adapters.etcd.watch import Watch, WatchApi, WatchCompacted, WatchMessage
from etcd_aws_cluster.core.model import EtcdFailure

__all__ = [
    "MAX_ANSWER_BYTES",
    "EtcdClient",
    "EtcdFailure",
    "EtcdRequestError",
    "Tls",
    "Watch",
    "WatchCompacted",
    "WatchMessage",
]


class EtcdClient(ClusterApi, MaintenanceApi, WatchApi, KvApi):
    """Talks to one cluster through any of its members' client URLs (membership, status, snapshots, watches, kv)."""
