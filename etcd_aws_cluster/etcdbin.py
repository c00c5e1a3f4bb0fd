"""The local etcd binary's version (`etcd --version`), to pick what a client host runs in proxy mode."""

from __future__ import annotations

import re
import shutil
import subprocess

VERSION_LINE = re.compile(r"^etcd Version:\s*([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,4})", re.M)
VERSION = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,4})")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a version string such as "3.6.1" or "3.5.0-alpha.0"."""
    match = VERSION.match(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def local_version(binary: str = "etcd", timeout: float = 5.0) -> tuple[int, int, int] | None:
    """The version the local etcd reports, or None when there is none on PATH or it does not say."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = VERSION_LINE.search(done.stdout)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None
