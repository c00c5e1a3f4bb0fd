"""etcd's maintenance API: a member's own status, and its snapshot streamed chunk by chunk."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator

from etcd_aws_cluster.adapters.etcd.transport import EtcdRequestError, Transport, _uint64, stream_result
from etcd_aws_cluster.base import validate
from etcd_aws_cluster.core.model import EndpointStatus, EtcdFailure


class MaintenanceApi(Transport):
    """Status and snapshots (v3 only)."""

    def endpoint_status(self, client_url: str, timeout: float) -> EndpointStatus | None:
        """What this member says about itself (POST /v3/maintenance/status): its id and its leader's.

        None when the endpoint has no v3 gateway (v2 only): the leader is then unknown.
        """
        for prefix in [p for p in self._prefixes if p != "/v2"]:
            url = f"{client_url}{prefix}/maintenance/status"
            response = self._call("POST", url, timeout, {})
            if response.status_code == 404:
                continue
            if response.status_code != 200:
                raise self._error(response, url)
            body = self._json(response, url)
            header = body.get("header") if isinstance(body, dict) else None
            if not isinstance(body, dict) or not isinstance(header, dict):
                raise EtcdRequestError(f"{url} answered a malformed status", failure=EtcdFailure.ANSWER)
            member_id, leader = _uint64(header.get("member_id")), _uint64(body.get("leader", "0"))
            if member_id is None or leader is None:
                raise EtcdRequestError(f"{url} answered a malformed status", failure=EtcdFailure.ANSWER)
            revision = _uint64(header.get("revision", "0")) or 0
            version = body.get("version", "")
            if not isinstance(version, str) or not validate.ETCD_VERSION.fullmatch(version):
                version = ""
            db_size = _uint64(body.get("dbSize", "0")) or 0
            return EndpointStatus(member_id, leader, body.get("isLearner") is True, revision, version, db_size)
        return None

    def snapshot(self, client_url: str, timeout: float) -> Iterator[bytes]:
        """Stream this member's snapshot (POST /v3/maintenance/snapshot): the db bytes, chunk by chunk.

        The last chunk is the db's sha256 as etcd appends it (`snapshot restore` checks it); it is verified here
        first, so a cut or garbled stream raises EtcdRequestError instead of ending quietly. `timeout` bounds
        each read, not the whole stream.
        """
        import requests

        for prefix in [p for p in self._prefixes if p != "/v2"]:
            url = f"{client_url}{prefix}/maintenance/snapshot"
            with self._call("POST", url, timeout, {}, stream=True) as response:
                if response.status_code == 404:
                    continue
                if response.status_code != 200:
                    raise self._error(response, url)
                try:
                    yield from _snapshot_chunks(response.iter_lines(chunk_size=64 * 1024), url)
                except requests.RequestException as exc:
                    raise EtcdRequestError(
                        f"snapshot stream from {url} broke: {type(exc).__name__}",
                        failure=EtcdFailure.UNREACHABLE,
                        transient=True,
                    ) from None
                return
        raise EtcdRequestError(f"{client_url} serves no v3 gateway for snapshots", failure=EtcdFailure.HTTP, status=404)


# One gateway line carries one of etcd's 32 KiB chunks, base64'd; far longer lines are not etcd's.
SNAPSHOT_LINE_LIMIT = 1024 * 1024


def _snapshot_chunks(lines: Iterable[bytes], url: str) -> Iterator[bytes]:
    digest = hashlib.sha256()
    db_done = False
    for line in lines:
        if not line:
            continue
        blob, remaining = _snapshot_message(line, url)
        if db_done:
            if blob != digest.digest():
                raise EtcdRequestError(f"snapshot from {url} does not match its own sha256", failure=EtcdFailure.ANSWER)
            yield blob
            return
        digest.update(blob)
        yield blob
        db_done = remaining == 0
    raise EtcdRequestError(f"snapshot stream from {url} ended early", failure=EtcdFailure.ANSWER, transient=True)


def _snapshot_message(line: bytes, url: str) -> tuple[bytes, int]:
    if len(line) > SNAPSHOT_LINE_LIMIT:
        raise EtcdRequestError(f"snapshot stream from {url} sent an oversized message", failure=EtcdFailure.ANSWER)
    result = stream_result(line, f"snapshot stream from {url}")
    remaining = _uint64(result.get("remaining_bytes", "0"))
    try:
        blob = base64.b64decode(result.get("blob", ""), validate=True)
    except (ValueError, TypeError):
        blob, remaining = b"", None
    if remaining is None:
        raise EtcdRequestError(f"snapshot stream from {url} sent a malformed chunk", failure=EtcdFailure.ANSWER)
    return blob, remaining
