"""The versions of etcd's programs on this host (`etcd --version`, `etcdutl version`): the package's one parser.

A version is (major, minor, patch); what a program prints (`etcd Version: 3.6.1`, `etcdutl version: 3.5.30`,
`etcdctl version: 3.4.23`) and what etcd reports (`3.5.0-alpha.0`) are read by the same pattern,
validate.ETCD_VERSION.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from etcd_aws_cluster.base import validate

Version = tuple[int, int, int]
VERSION_LINE = re.compile(
    rf"^(etcd|etcdutl|etcdctl) [Vv]ersion:[ \t]*(?P<version>{validate.ETCD_VERSION.pattern})",
    re.M,
)


def parse_version(text: str) -> Version | None:
    """(major, minor, patch) of a version string such as "3.6.1" or "3.5.0-alpha.0"."""
    match = validate.ETCD_VERSION.match(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def program_version(output: str, program: str) -> Version | None:
    """The version in `program`'s own version output (`<program> version: X.Y.Z`; etcd says `Version`)."""
    for match in VERSION_LINE.finditer(output):
        if match[1] == program:
            return parse_version(match["version"])
    return None


def shown(version: Version) -> str:
    return ".".join(map(str, version))


def minor(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def version_of(path: Path, timeout: float = 5.0) -> Version | None:
    """What the etcd binary at `path` reports, or None when it does not run or does not say."""
    try:
        done = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return program_version(done.stdout, "etcd")


def on_path(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    found = shutil.which(name, path=(os.environ if environ is None else environ).get("PATH", os.defpath))
    return Path(found) if found else None


def local_version(binary: str = "etcd", timeout: float = 5.0) -> Version | None:
    """The version the local etcd (on PATH) reports, or None when there is none or it does not say."""
    path = on_path(binary)
    return None if path is None else version_of(path, timeout)


def local_etcds(environ: Mapping[str, str] | None = None, beside: Path | None = None) -> dict[Path, Version]:
    """The etcd binaries this host may run and their versions: the one on PATH and the one beside `beside`
    (a restore tool: release tarballs ship etcd, etcdctl and etcdutl in one directory)."""
    paths = [on_path("etcd", environ)]
    if beside is not None:
        paths.append(beside.parent / "etcd")
    found: dict[Path, Version] = {}
    for path in paths:
        if path is not None and path not in found and path.is_file() and os.access(path, os.X_OK):
            version = version_of(path)
            if version is not None:
                found[path] = version
    return found


def stop(command: str, timeout: float) -> str | None:
    """Run the command that stops this host's etcd (`stop_etcd_command`); None when it succeeded, else why not."""
    import shlex

    argv = shlex.split(command)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{command!r} failed: {exc}"
    if done.returncode != 0:
        return f"{command!r} exited {done.returncode}: {validate.shown(done.stderr.strip(), 200)}"
    return None
