"""Prometheus's promtool (Debian's `prometheus` package; `make setup` installs it as root): the judge of the metrics
file and the example alert rules. A test that needs it fails without it, never skips."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (make setup does, as root)")
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
