"""Helpers for tests/test_packaging.py: unit files, scratch roots, package builds and file-system snapshots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging"
SYSTEMD = PACKAGING / "systemd"
UNIT = SYSTEMD / "etcd-aws-cluster.service"
# Shipped disabled; the administrator enables them (see each unit's header).
OPTIONAL_UNITS = (
    "etcd-aws-cluster-reconcile.service",
    "etcd-aws-cluster-reconcile.timer",
    "etcd-aws-cluster-leave.service",
)
ALL_UNITS = (UNIT.name, *OPTIONAL_UNITS)
DROPINS = {
    "etcd.service": SYSTEMD / "etcd.service.d" / "10-etcd-aws-cluster.conf",
    "etcd2.service": SYSTEMD / "etcd2.service.d" / "10-etcd-aws-cluster.conf",
}
HOST_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.5

# A minimal etcd unit like Debian's etcd-server ships, for roots where no etcd package is installed.
STAND_IN_ETCD_UNIT = """\
[Unit]
Description=etcd stand-in for unit verification
After=network.target

[Service]
Type=notify
User=etcd
Environment=ETCD_DATA_DIR=/var/lib/etcd/default
EnvironmentFile=-/etc/default/%p
ExecStart=/usr/bin/etcd

[Install]
WantedBy=multi-user.target
"""

Unit = dict[str, list[tuple[str, str]]]


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = 300,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command with its output captured as text; stdin is /dev/null."""
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment, as systemd gives a unit: no AWS_*, ETCD_AWS_CLUSTER_*, PYTHON* or proxies."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    env.update(extra)
    return env


def parse_unit(text: str) -> Unit:
    """Sections of a unit file as lists of (key, value), in order; repeated keys stay separate."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every whitespace-separated word of every `key=` in `section`."""
    return [word for k, v in unit.get(section, []) if k == key for word in v.split()]


def entries(unit: Unit, section: str, key: str) -> list[str]:
    """The value of every `key=` line in `section`, in order."""
    return [v for k, v in unit.get(section, []) if k == key]


def keys(unit: Unit) -> set[str]:
    """Every key set in any section."""
    return {k for lines in unit.values() for k, _ in lines}


def single(unit: Unit, section: str, key: str) -> str:
    found = entries(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


def exposure(unit_file: Path) -> tuple[float, str]:
    """`systemd-analyze security --offline=yes` overall exposure of a unit file, and the full report."""
    result = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", unit_file], check=True)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1)), result.stdout


def unit_root(root: Path, units: Mapping[str, str | Path], executables: Iterable[str] = ()) -> Path:
    """A scratch root for `systemd-analyze --root=` and `systemctl --root=`.

    It holds the host's own units (targets, sockets: what our units refer to), then `units` (path below
    /usr/lib/systemd/system -> file or text), and a stub executable for each of `executables`.
    """
    unit_dir = root / "usr/lib/systemd/system"
    if HOST_UNITS.is_dir():
        shutil.copytree(HOST_UNITS, unit_dir, symlinks=True, dirs_exist_ok=True)
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name, source in units.items():
        target = unit_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        if isinstance(source, Path):
            shutil.copyfile(source, target)
        else:
            target.write_text(source)
    for path in executables:
        stub = root / path.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    return root


def verify(unit: str, root: Path | None = None, *, man: bool = False) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of a unit by name (in `root`, or on this machine); run from a neutral dir."""
    argv = ["systemd-analyze", f"--man={'yes' if man else 'no'}", "verify"]
    if root is not None:
        argv.insert(1, f"--root={root}")
        unit = f"/usr/lib/systemd/system/{unit}"
    return run([*argv, unit], cwd=Path("/"))


def make(target: str, timeout: float = 900) -> str:
    """Run a packaging make target from the repository root; returns its output (fails the test on error)."""
    result = run(["make", "--no-print-directory", "-f", "packaging/packaging.mk", target], timeout=timeout, cwd=REPO)
    assert result.returncode == 0, f"make {target} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def make_variable(name: str) -> str:
    """The value of a variable of packaging/packaging.mk."""
    result = run(
        [
            "make",
            "--no-print-directory",
            "-f",
            "packaging/packaging.mk",
            f"--eval=print-var: ; @echo $({name})",
            "print-var",
        ],
        cwd=REPO,
        check=True,
    )
    return result.stdout.strip()


SNAPSHOT_ROOTS = ("/etc", "/usr", "/run", "/var/lib/systemd", "/var/lib/dpkg/info", "/var/lib/etcd")


def snapshot(roots: Iterable[str] = SNAPSHOT_ROOTS) -> set[str]:
    """Every path below `roots`, not following symlinks. Skipped: /run/user, and byte-code caches other
    processes may write outside the package's own directory."""
    found: set[str] = set()
    for top in roots:
        if not os.path.lexists(top):
            continue
        found.add(top)
        for directory, dirs, files in os.walk(top):
            dirs[:] = [
                d
                for d in dirs
                if os.path.join(directory, d) != "/run/user"
                and (d != "__pycache__" or directory.startswith("/usr/lib/etcd-aws-cluster"))
            ]
            found.update(os.path.join(directory, name) for name in dirs + files)
    return found
