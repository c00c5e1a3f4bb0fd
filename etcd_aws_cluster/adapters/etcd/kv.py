"""etcd's KV and lease API as a replay of deltas uses it: one transaction per revision, leases granted with the ids
they had, the store's revision (JSON gateway, v3 only). The key count at a revision is watch.py's `key_count`."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from etcd_aws_cluster.adapters.etcd.transport import EtcdRequestError, Transport, _uint64
from etcd_aws_cluster.core.deltas import Op
from etcd_aws_cluster.core.model import EtcdFailure

LEASE_EXISTS = "lease already exists"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _request(op: Op) -> dict[str, Any]:
    if op.kind == "delete":
        return {"request_delete_range": {"key": _b64(op.key)}}
    put: dict[str, Any] = {"key": _b64(op.key), "value": _b64(op.value)}
    if op.lease:
        put["lease"] = str(op.lease)
    return {"request_put": put}


class KvApi(Transport):
    """Writes in transactions, leases and key counts (v3 only)."""

    def _revision(self, url: str, answer: dict[str, Any]) -> int:
        header = answer.get("header")
        revision = _uint64(header.get("revision")) if isinstance(header, dict) else None
        if revision is None:
            raise EtcdRequestError(f"{url} answered without a header revision", failure=EtcdFailure.ANSWER)
        return revision

    def txn(self, client_url: str, ops: Sequence[Op], timeout: float) -> int:
        """Apply `ops` (puts with their leases, deletes of single keys) as ONE unconditional transaction; returns the
        revision etcd's answer names (the new one when the transaction changed anything)."""
        body = {"success": [_request(op) for op in ops]}
        url, answer = self._post_v3(client_url, ("kv/txn",), body, timeout)
        if answer.get("succeeded") is not True:
            raise EtcdRequestError(f"{url}: an unconditional transaction did not succeed", failure=EtcdFailure.ANSWER)
        return self._revision(url, answer)

    def grant_lease(self, client_url: str, lease_id: int, ttl: int, timeout: float) -> bool:
        """Grant lease `lease_id` with `ttl` seconds; False when a lease of that id exists already."""
        try:
            self._post_v3(client_url, ("lease/grant",), {"ID": str(lease_id), "TTL": str(ttl)}, timeout)
        except EtcdRequestError as exc:
            if LEASE_EXISTS in str(exc):
                return False
            raise
        return True

    def leases(self, client_url: str, timeout: float) -> list[int]:
        """The ids of every lease etcd holds (3.3+)."""
        url, answer = self._post_v3(client_url, ("lease/leases",), {}, timeout)
        raw = answer.get("leases") or []
        ids = (
            [_uint64(item.get("ID")) if isinstance(item, dict) else None for item in raw]
            if isinstance(raw, list)
            else [None]
        )
        if any(lease is None for lease in ids):
            raise EtcdRequestError(f"{url} answered a malformed lease list", failure=EtcdFailure.ANSWER)
        return [lease for lease in ids if lease is not None]

    def keep_alive(self, client_url: str, lease_id: int, timeout: float) -> int | None:
        """Refresh lease `lease_id` once (the gateway's keep-alive stream, one message); its TTL, None when it is
        gone."""
        url, answer = self._post_v3(client_url, ("lease/keepalive",), {"ID": str(lease_id)}, timeout)
        result = answer.get("result")
        if not isinstance(result, dict):
            raise EtcdRequestError(f"{url} answered a malformed keep-alive", failure=EtcdFailure.ANSWER)
        ttl = _uint64(result.get("TTL", "0"))
        return ttl or None

    def revision(self, client_url: str, timeout: float) -> int:
        """The store's current revision (the header of a count of nothing)."""
        body = {"key": _b64(b"\0"), "count_only": True}  # counts nothing; its header has the revision
        url, answer = self._post_v3(client_url, ("kv/range",), body, timeout)
        return self._revision(url, answer)
