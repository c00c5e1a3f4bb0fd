"""Which pytest-xdist worker this process is, so that workers of one run share no address and no port.

Every worker is its own process with its own moto server (session-scoped per worker), so nothing but the
network is shared between them: each worker gets its own ``127.<second octet>.0.0/16`` for the simulated
instances and its own slice of the ports ``free_port`` picks from. Outside xdist (a serial run, the demo, the
benchmarks) this process is "worker 0 of 1" and keeps the addresses it always had (``127.0.K.L``).
"""

from __future__ import annotations

import os
import re


def index() -> int:
    """0 outside xdist; N + 1 on xdist's worker ``gwN`` (so a worker never uses a serial run's addresses)."""
    found = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    return int(found.group(1)) + 1 if found else 0


def count() -> int:
    """How many distinct :func:`index` values this run can have: 1 outside xdist, workers + 1 under it."""
    try:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    except ValueError:
        workers = 0
    return max(workers, index()) + 1 if index() else 1


def second_octet() -> int:
    """The second octet of this worker's loopback addresses (``127.<this>.K.L``)."""
    if index() > 254:
        raise RuntimeError(f"xdist worker {index() - 1}: at most 254 workers get a loopback /16 of their own")
    return index()


def port_slice(low: int, high: int) -> tuple[int, int]:
    """This worker's part ``[start, stop)`` of the port range ``[low, high)``: the slices of a run never overlap."""
    total = count()
    size = max(1, (high - low) // total)
    start = low + index() * size
    return start, min(high, start + size) if index() < total - 1 else high
