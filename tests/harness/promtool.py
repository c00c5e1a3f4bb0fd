"""Prometheus's promtool (from Debian's `prometheus` package, unpacked by `make setup` into the test cache): the judge
of the metrics file and the example alert rules. A test that needs it fails without it, never skips."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def promtool() -> str:
    cached = Path(os.environ.get("EAC_TEST_CACHE", "/var/cache/etcd-aws-cluster-tests")) / "promtool" / "promtool"
    found = str(cached) if os.access(cached, os.X_OK) else shutil.which("promtool")
    if found is None:
        pytest.fail(f"promtool is missing: `make setup` unpacks it to {cached} from Debian's prometheus package")
    return found


def check_metrics(text: str) -> None:
    """`promtool check metrics` accepts `text` with nothing to say (its lint warnings fail the test too)."""
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"promtool check metrics:\n{result.stdout}{result.stderr}\n--- the file:\n{text}"
    )


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )
