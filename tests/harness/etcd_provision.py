"""Fetch and build the etcd releases of the test matrix into a cache outside the clone.

* etcd 3.5.30: Debian's ``etcd-server`` and ``etcd-client`` packages from the unstable suite (sid), fetched with
  ``apt-get download`` through a private sources file, lists and cache (the system's apt setup is not touched) and
  unpacked with ``dpkg -x``; they carry ``etcd``, ``etcdutl`` and ``etcdctl``.
* etcd 3.6.x and 3.7.x: built with Go from the wrapper modules in ``tests/etcd_build/v3.6`` and ``v3.7``, which pin
  ``go.etcd.io/etcd/server/v3`` (``etcd``) and list ``etcdutl``/``etcdctl`` as tools of the same version.

Each release lands in ``<cache>/<version>/`` (``<cache>`` is ``$EAC_TEST_CACHE/etcd``, by default
``/var/cache/etcd-aws-cluster-tests/etcd``), built in a scratch directory and renamed into place when complete, so a
rerun finds it at once and an interrupted run leaves nothing half-made. ``python -m tests.harness.etcd_provision``
fetches from sid and downloads the Go modules while it builds (it needs only the standard library, so ``make
setup`` runs it beside the venv's install), says what it does and how long it took, and exits 1 if any release could
not be made.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
GO_BUILD_DIR = REPO_ROOT / "tests" / "etcd_build"
TOOLS = ("etcd", "etcdutl", "etcdctl")
# Debian unstable's etcd: the newest 3.5, the release a 3.5 cluster must run before it can move to 3.6.
SID_ETCD_VERSION = "3.5.30"
SID_PACKAGES = ("etcd-server", "etcd-client")
SYSTEM_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
_GO_CANDIDATES = (Path("/usr/local/go/bin/go"),)
_SERVER_REQUIRE_RE = re.compile(r"^\s*(?:require\s+)?go\.etcd\.io/etcd/server/v3\s+v(\S+)", re.MULTILINE)


class ProvisionError(RuntimeError):
    """A release of the matrix could not be fetched or built."""


@dataclass(frozen=True)
class GoBuild:
    """A wrapper module under ``tests/etcd_build`` and the etcd version its go.mod pins."""

    module_dir: Path
    version: str


def cache_root() -> Path:
    base = os.environ.get("EAC_TEST_CACHE", "/var/cache/etcd-aws-cluster-tests")
    return Path(base) / "etcd"


def release_dir(version: str) -> Path:
    """Where the binaries of ``version`` (``"3.6.16"``) live once provisioned."""
    return cache_root() / version


def go_builds() -> list[GoBuild]:
    """The wrapper modules, oldest first, each with the server version its go.mod requires."""
    builds = []
    for module_dir in sorted(GO_BUILD_DIR.glob("v*")):
        match = _SERVER_REQUIRE_RE.search((module_dir / "go.mod").read_text())
        if match is None:
            raise ProvisionError(f"{module_dir}/go.mod does not require go.etcd.io/etcd/server/v3")
        builds.append(GoBuild(module_dir, match.group(1)))
    return builds


def is_provisioned(version: str) -> bool:
    directory = release_dir(version)
    return all(os.access(directory / tool, os.X_OK) for tool in TOOLS)


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise ProvisionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def _reported_version(binary: Path) -> str:
    out = _run([str(binary), "--version"])
    match = re.search(r"etcd Version:\s*(\S+)", out)
    return match.group(1) if match else out.strip()


def _install_release(version: str, scratch_bin: Path) -> None:
    """Check the binaries in ``scratch_bin`` report ``version``, then move them into the cache in one rename."""
    reported = _reported_version(scratch_bin / "etcd")
    if reported != version:
        raise ProvisionError(f"expected etcd {version}, the binary reports {reported}")
    target = release_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.rename(scratch_bin, target)


def find_go() -> str:
    for candidate in (shutil.which("go"), *map(str, _GO_CANDIDATES)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ProvisionError("Go is needed to build etcd 3.6+ from its modules: none on PATH nor at /usr/local/go/bin/go")


def _go_env() -> dict[str, str]:
    # As etcd's release builds: static, no paths of this machine; the module's go.sum decides every version.
    return {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly -buildvcs=false", "GOTOOLCHAIN": "local"}


def download_modules(build: GoBuild) -> None:
    """``go mod download`` in the wrapper module: the network part of its build, done ahead."""
    _run([find_go(), "mod", "download"], cwd=build.module_dir, env=_go_env())


def build_with_go(build: GoBuild, scratch: Path) -> None:
    """Build etcd (the wrapper's main), etcdutl and etcdctl (its tools) of ``build`` into the cache."""
    out = scratch / "bin"
    out.mkdir()
    # One invocation for the three programs, without symbol tables or DWARF (a smaller, faster link): go compiles
    # what they share once and links them in parallel.
    programs = [".", "go.etcd.io/etcd/etcdutl/v3", "go.etcd.io/etcd/etcdctl/v3"]
    go_build = [find_go(), "build", "-trimpath", "-ldflags=-s -w", "-o", f"{out}/", *programs]
    _run(go_build, cwd=build.module_dir, env=_go_env())
    # go names the wrapper's program after its module path (etcd_build, as v36 is a version suffix): it is etcd
    (wrapper,) = [path for path in out.iterdir() if path.name not in TOOLS]
    wrapper.rename(out / "etcd")
    _install_release(build.version, out)


def _sid_sources(system_sources: str) -> str:
    """The system's deb822 sources with every suite replaced by sid; security and other suites dropped."""
    stanzas = []
    for stanza in system_sources.split("\n\n"):
        if "debian-security" in stanza or not re.search(r"^Suites:", stanza, re.MULTILINE):
            continue
        stanzas.append(re.sub(r"^Suites:.*$", "Suites: sid", stanza.strip(), flags=re.MULTILINE))
    if not stanzas:
        raise ProvisionError(f"no Debian archive stanza in {SYSTEM_SOURCES} to derive a sid source from")
    return "\n\n".join(stanzas[:1]) + "\n"


def _private_apt_options(scratch: Path) -> list[str]:
    sources = scratch / "sid.sources"
    sources.write_text(_sid_sources(SYSTEM_SOURCES.read_text()))
    for sub in ("lists/partial", "cache/archives/partial"):
        (scratch / sub).mkdir(parents=True)
    options = {
        "Dir::Etc::sourcelist": str(sources),
        "Dir::Etc::sourceparts": "-",
        "Dir::State::Lists": str(scratch / "lists"),
        "Dir::Cache": str(scratch / "cache"),
        "Dir::Cache::pkgcache": "",
        "Dir::Cache::srcpkgcache": "",
    }
    if os.geteuid() == 0:
        options["APT::Sandbox::User"] = "root"  # the private dirs are not readable by _apt
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]


def _sid_package_version(apt_options: list[str], package: str) -> str:
    """The Debian version (``3.5.30-2``) of ``package`` in sid that packages etcd SID_ETCD_VERSION."""
    madison = _run(["apt-cache", *apt_options, "madison", package])
    versions = [line.split("|")[1].strip() for line in madison.splitlines() if "|" in line]
    wanted = [v for v in versions if v.split(":")[-1].startswith(f"{SID_ETCD_VERSION}-")]
    if not wanted:
        raise ProvisionError(
            f"sid has {package} {versions or 'nowhere'}, not {SID_ETCD_VERSION}: update SID_ETCD_VERSION"
        )
    return wanted[0]


def fetch_from_sid(scratch: Path) -> None:
    """Download etcd-server/etcd-client SID_ETCD_VERSION from sid and unpack their binaries into the cache."""
    apt_options = _private_apt_options(scratch)
    _run(["apt-get", *apt_options, "-qq", "update"])
    pins = [f"{package}={_sid_package_version(apt_options, package)}" for package in SID_PACKAGES]
    downloads = scratch / "debs"
    downloads.mkdir()
    _run(["apt-get", *apt_options, "-qq", "download", *pins], cwd=downloads)
    unpacked = scratch / "root"
    for deb in sorted(downloads.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
    out = scratch / "bin"
    out.mkdir()
    for tool in TOOLS:
        shutil.copy2(unpacked / "usr" / "bin" / tool, out / tool)
    _install_release(SID_ETCD_VERSION, out)


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One provisioning at a time per cache: several worktrees on one machine share it."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _provision(version: str, how: str, make: Callable[[Path], None]) -> None:
    if is_provisioned(version):
        print(f"etcd {version}: cached in {release_dir(version)}", flush=True)
        return
    print(f"etcd {version}: {how} ...", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{version}-", dir=cache_root()) as scratch:
        make(Path(scratch))
    print(f"etcd {version}: done in {time.monotonic() - started:.0f}s -> {release_dir(version)}", flush=True)


def _provision_in_turn(jobs: Sequence[tuple[str, str, Callable[[Path], None]]]) -> list[str]:
    """Provision each release of ``jobs`` one after the other; the error of each one that failed."""
    errors = []
    for version, how, make in jobs:
        try:
            _provision(version, how, make)
        except (ProvisionError, OSError) as exc:
            errors.append(f"etcd {version}: FAILED: {exc}")
            print(errors[-1], file=sys.stderr, flush=True)
    return errors


def _download_ahead(build: GoBuild) -> None:
    with contextlib.suppress(ProvisionError, OSError):  # its build downloads again, and says what failed
        download_modules(build)


def provision_all() -> list[str]:
    """Provision every release of the matrix; the error of each one that failed (empty when all are there)."""
    sid = [(SID_ETCD_VERSION, "apt-get download etcd-server/etcd-client from Debian unstable, dpkg -x", fetch_from_sid)]
    builds = go_builds()
    go: list[tuple[str, str, Callable[[Path], None]]] = [
        (
            b.version,
            f"go build in {b.module_dir.relative_to(REPO_ROOT)} (etcd, etcdutl, etcdctl)",
            functools.partial(build_with_go, b),
        )
        for b in builds
    ]
    downloads = [b for b in builds if not is_provisioned(b.version)]
    # What waits on the network (sid, the Go modules) runs beside the Go builds, which keep the CPUs busy. The
    # builds go one after the other: at once, from a cold cache, each would compile Go's standard library and the
    # modules they share.
    with _cache_lock(), concurrent.futures.ThreadPoolExecutor(max_workers=2 + len(downloads)) as pool:
        for build in downloads:
            pool.submit(_download_ahead, build)
        outcomes = [pool.submit(_provision_in_turn, sid), pool.submit(_provision_in_turn, go)]
        return [error for outcome in outcomes for error in outcome.result()]


def main() -> int:
    return 1 if provision_all() else 0


if __name__ == "__main__":
    sys.exit(main())
