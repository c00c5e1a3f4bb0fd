"""Deltas built from a real etcd's history, for tests of the restore side before (and beside) `backup --follow`.

`history` reads every event from a revision on through the JSON gateway's watch (one streamed POST, closed once the
wanted revision is seen); `make_delta` groups them into a core.deltas.Delta as the follower would write it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import requests

from etcd_aws_cluster.core.deltas import Delta, DeltaHeader, Op, Revision

ALL = base64.b64encode(b"\0").decode()


def current_revision(client_url: str) -> int:
    answer = requests.post(f"{client_url}/v3/kv/range", json={"key": ALL, "count_only": True}, timeout=5).json()
    return int(answer["header"]["revision"])


def history(
    client_url: str, start: int, end: int | None = None, at: datetime | None = None, step: timedelta | None = None
) -> list[Revision]:
    """Every revision from `start` to `end` (default: the current one) with its events, as etcd's watch gives them;
    revision n is stamped `at + (n - start) * step` (default: now, 10 ms apart)."""
    end = current_revision(client_url) if end is None else end
    at = at or datetime.now(timezone.utc)
    step = timedelta(milliseconds=10) if step is None else step
    ops: dict[int, list[Op]] = {}
    if end >= start:
        body = {"create_request": {"key": ALL, "range_end": ALL, "start_revision": str(start)}}
        with requests.post(f"{client_url}/v3/watch", json=body, stream=True, timeout=10) as response:
            for line in response.iter_lines():
                result = json.loads(line).get("result", {})
                for event in result.get("events", []):
                    kv = event["kv"]
                    revision = int(kv["mod_revision"])
                    key = base64.b64decode(kv["key"])
                    if event.get("type") == "DELETE":
                        op = Op("delete", key)
                    else:
                        op = Op("put", key, base64.b64decode(kv.get("value", "")), int(kv.get("lease", "0")))
                    ops.setdefault(revision, []).append(op)
                if ops and max(ops) >= end:
                    break
    return [Revision(r, at + (r - start) * step, tuple(ops[r])) for r in sorted(ops) if start <= r <= end]


def make_delta(
    revisions: Sequence[Revision],
    *,
    lineage: str | None,
    cluster_id: int,
    instance: str = "i-0123456789abcdef0",
    first: int | None = None,
    last: int | None = None,
    leases: Sequence[tuple[int, int]] = (),
    keys: int | None = None,
) -> Delta:
    """A delta of `revisions` covering `first`..`last` (default: exactly their range)."""
    first = revisions[0].revision if first is None else first
    last = revisions[-1].revision if last is None else last
    return Delta(DeltaHeader(lineage, cluster_id, first, last, instance), tuple(revisions), tuple(leases), keys)


def split(revisions: Sequence[Revision], size: int) -> list[list[Revision]]:
    """`revisions` in runs of `size` (one delta each)."""
    return [list(revisions[i : i + size]) for i in range(0, len(revisions), size)]
