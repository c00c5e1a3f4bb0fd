"""The versions of etcd's programs on this host (`etcd --version`, `etcdutl version`): the package's one parser.

A version is (major, minor, patch); what a program prints (`etcd Version: 3.6.1`, `etcdutl version: 3.5.30`,
`etcdctl version: 3.4.23`) and what etcd reports (`3.5.0-alpha.0`) are read by the same pattern,
validate.ETCD_VERSION.

A program's answer is remembered for the run, per file (path, mtime and size): a restore, a backup and `status`
each ask which etcd the host runs, and every start of a Go program costs tens of milliseconds on a busy host.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Mapping
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


# (path, mtime_ns, size) -> the version that file reported; only answers are kept, so a program that did not
# answer in time (a loaded host) is asked again next time.
_reported: dict[tuple[Path, int, int], Version] = {}
_reported_lock = threading.Lock()


def version_of(path: Path, timeout: float = 5.0) -> Version | None:
    """What the etcd binary at `path` reports, or None when it does not run or does not say; asked once per file
    (path, mtime and size) in a run."""
    try:
        info = path.stat()
    except OSError:
        return None
    key = (path, info.st_mtime_ns, info.st_size)
    with _reported_lock:
        known = _reported.get(key)
    if known is not None:
        return known
    version = _ask_version(path, timeout)
    if version is not None:
        with _reported_lock:
            _reported[key] = version
    return version


def _ask_version(path: Path, timeout: float) -> Version | None:
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


def local_etcds(environ: Mapping[str, str] | None = None, beside: Iterable[Path] = ()) -> dict[Path, Version]:
    """The etcd binaries this host may run and their versions: the one on PATH and the one beside each of
    `beside` (restore tools: release tarballs ship etcd, etcdctl and etcdutl in one directory). Asked all at once:
    each is a program start."""
    candidates = [on_path("etcd", environ), *(tool.parent / "etcd" for tool in beside)]
    paths = [p for p in dict.fromkeys(candidates) if p is not None and p.is_file() and os.access(p, os.X_OK)]
    if len(paths) < 2:
        versions = [version_of(path) for path in paths]
    else:
        with concurrent.futures.ThreadPoolExecutor(len(paths), thread_name_prefix="etcd --version") as pool:
            versions = list(pool.map(version_of, paths))
    return {path: version for path, version in zip(paths, versions) if version is not None}


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
