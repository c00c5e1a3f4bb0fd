"""Helpers for tests/test_packaging.py: unit files, scratch roots, package builds and file-system snapshots."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
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
    "etcd-aws-cluster-ready.service",
    "etcd-aws-cluster-backup.service",
    "etcd-aws-cluster-backup.timer",
    "etcd-aws-cluster-backup-follow.service",
    "etcd-aws-cluster-verify.service",
    "etcd-aws-cluster-verify.timer",
    "etcd-aws-cluster-gateway.service",
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


def make(target: str, *variables: str, timeout: float = 900) -> str:
    """Run a packaging make target (with VAR=value `variables`) from the repository root; returns its output
    (fails the test on error)."""
    argv = ["make", "--no-print-directory", "-f", "packaging/packaging.mk", target, *variables]
    result = run(argv, timeout=timeout, cwd=REPO)
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


def snapshot(root: Path, tops: Iterable[str] = SNAPSHOT_ROOTS) -> set[str]:
    """Every path below `tops` inside `root` (a Debian root of ours: nothing else writes there), as seen inside
    it, not following symlinks."""
    found: set[str] = set()
    for top in tops:
        base = f"{root}{top}"
        if not os.path.lexists(base):
            continue
        found.add(top)
        for directory, dirs, files in os.walk(base):
            inside = directory[len(str(root)) :]
            found.update(f"{inside}/{name}" for name in dirs + files)
    return found


# --- Debian roots: the .deb is installed, upgraded, purged and booted in these, never on this machine ---------

TEST_CACHE = Path(os.environ.get("EAC_TEST_CACHE", "/var/cache/etcd-aws-cluster-tests"))
ROOT_CACHE = Path(os.environ.get("ETCD_AWS_CLUSTER_ROOT_CACHE", TEST_CACHE / "roots"))
DEBIAN_RELEASES = {"bookworm": "12", "trixie": "13"}
# What every root holds: a bootable systemd, Debian's etcd, man, and the Debian packages the suite's .deb
# depends on, so that `dpkg -i` works offline. trixie's .deb takes pydantic 2 from Debian too.
ROOT_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-boto3", "python3-requests", "python3-systemd")
ROOT_PACKAGES += ("python3-zstandard", "etcd-server", "man-db")
SUITE_ROOT_PACKAGES = {"bookworm": (), "trixie": ("python3-pydantic", "python3-pydantic-settings")}


def root_includes(suite: str) -> str:
    return ",".join((*ROOT_PACKAGES, *SUITE_ROOT_PACKAGES[suite]))


def base_root(suite: str) -> Path:
    """The cached tarball of a minimal Debian `suite` root (mmdebstrap), built when missing or when the package
    list changed; a lock file keeps concurrent runs from building it twice. Lives outside the clone so that
    every worktree and rerun shares it."""
    import fcntl

    ROOT_CACHE.mkdir(parents=True, exist_ok=True)
    tarball = ROOT_CACHE / f"{suite}.tar"
    stamp = ROOT_CACHE / f"{suite}.include"
    with (ROOT_CACHE / f"{suite}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file() and stamp.exists() and stamp.read_text() == root_includes(suite):
            return tarball
        partial = ROOT_CACHE / f"{suite}.partial.tar"  # mmdebstrap picks the format by the suffix
        argv = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={root_includes(suite)}", suite, partial]
        run(argv, timeout=1200, env=clean_env(), check=True)
        partial.replace(tarball)
        stamp.write_text(root_includes(suite))
    return tarball


def fresh_root(suite: str, directory: Path) -> Path:
    """A private, writable copy of the cached `suite` root in `directory` (copy on use: each caller starts clean)."""
    directory.mkdir(parents=True, exist_ok=True)
    run(["tar", "-C", directory, "-xf", base_root(suite)], timeout=300, check=True)
    return directory


def in_root(
    root: Path, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command inside `root` (systemd-nspawn, no boot: its own /proc, /sys, /dev and PID 1; this machine's
    network, so the harness's fakes on 127.0.0.0/8 answer)."""
    setenv = [f"--setenv={k}={v}" for k, v in (env or {}).items()]
    nspawn = ["systemd-nspawn", "-q", "-D", root, "--register=no", "--keep-unit", "--pipe", *setenv, "--", *argv]
    result = run(nspawn, timeout=timeout, env=clean_env())
    # nspawn's own complaint when it cleans up its mount propagation directory: not the command's output
    result.stderr = "".join(
        line for line in result.stderr.splitlines(keepends=True) if "/run/systemd/nspawn/propagate/" not in line
    )
    return result


def main(argv: Sequence[str]) -> int:
    """`python -m tests.packaging_helpers SUITE...`: build the cached roots ahead (`make test` does it at setup,
    while etcd builds); prints where each is, fails on the first that cannot be built."""
    for suite in argv or DEBIAN_RELEASES:
        if suite not in DEBIAN_RELEASES:
            raise SystemExit(f"unknown Debian suite {suite!r}: one of {', '.join(DEBIAN_RELEASES)}")
        started = time.monotonic()
        try:
            tarball = base_root(suite)
        except AssertionError as error:
            print(f"Debian {suite} root: FAILED: {error}", file=sys.stderr, flush=True)
            return 1
        print(f"Debian {suite} root: {tarball} [{time.monotonic() - started:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
