"""`make compat`: the unit tests under every Python and library version the project declares.

Each combination is a plain venv of one of pyenv's CPythons with pinned versions from PyPI: the oldest that each
package pulls in (Debian 12's python3-boto3, Debian 13's python3-pydantic, the .rpm's Python 3.9 and its lock),
the oldest that pyproject.toml allows, and the newest. The venvs are made by uv (the project venv's, which `make
setup` installs: minutes of pip become seconds) and cached outside the clone (ROOT below), keyed by their pins, so
a rerun only runs the tests. The project itself is not installed: the tests import it from the tree. The venvs are
made all at once (they wait on the network), the tests run two combinations at a time. Exit status: non-zero if any
combination fails or cannot be set up.

Usage: python packaging/compat.py [--prepare] [NAME ...]   (default: every combination; --prepare: only the venvs,
as `make test` does at setup, beside the etcd builds)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("EAC_TEST_CACHE", "/var/cache/etcd-aws-cluster-tests"))
ROOT = Path(os.environ.get("EAC_COMPAT_CACHE", TEST_CACHE / "compat"))
# uv beside the Python running this (the project's venv); pip would do the same, several times slower.
UV = Path(sys.executable).parent / "uv"
# Unit tests of two combinations at a time: one per CPU of the machines `make test` is sized for.
PARALLEL_TESTS = 2
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
TEST_TOOLS = ("pytest>=7", "pytest-timeout>=2.1")

# name: (Python minor version, pins). A pin list starting with "-r" is a lock file of the repository.
COMBINATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    # Debian 12: python3 3.11, python3-boto3 1.26.27, python3-botocore 1.29.27, python3-requests 2.28.1,
    # python3-zstandard 0.20.0, python3-systemd 235 (not on PyPI at that version; it is optional), plus the
    # .deb's bundled pydantic stack.
    "debian12": (
        "3.11",
        (
            "boto3==1.26.27",
            "botocore==1.29.27",
            "requests==2.28.1",
            "urllib3==1.26.12",
            "zstandard==0.20.0",
            "-r packaging/debian/requirements.lock",
        ),
    ),
    # Debian 13: python3 3.13, python3-boto3 1.37.9, pydantic 2.10.6, pydantic-settings 2.8.1, requests 2.32.3,
    # python3-zstandard 0.23.0.
    "debian13": (
        "3.13",
        (
            "boto3==1.37.9",
            "botocore==1.37.9",
            "pydantic==2.10.6",
            "pydantic-settings==2.8.1",
            "requests==2.32.3",
            "zstandard==0.23.0",
        ),
    ),
    # The .rpm (Amazon Linux 2023, RHEL 9): Python 3.9 and exactly what the package bundles.
    "rpm-py39": ("3.9", ("-r packaging/rpm/requirements.lock",)),
    # The floor of pyproject.toml's ranges, on the oldest Python it allows.
    "oldest-py39": (
        "3.9",
        (
            "boto3==1.26.0",
            "botocore==1.29.0",
            "requests==2.28.0",
            "pydantic==2.10.0",
            "pydantic-settings==2.8.0",
            "urllib3<1.27",
            "tomli==1.1.0",
            "zstandard==0.20.0",
        ),
    ),
    # The newest of everything, on the newest Python here.
    "newest-py313": ("3.13", ("--upgrade", "boto3", "requests", "pydantic", "pydantic-settings", "zstandard")),
}


def log(message: str) -> None:
    print(f"compat: {message}\n", end="", flush=True)  # one write: the threads' lines do not run into each other


def interpreter(minor: str) -> Path:
    found = sorted(PYENV.glob(f"{minor}.*/bin/python{minor}"))
    if not found:
        raise SystemExit(f"compat: no CPython {minor} in {PYENV} (pyenv install {minor})")
    return found[-1]


def pip_steps(pins: tuple[str, ...]) -> list[list[str]]:
    """`uv pip install` arguments, one list per step: the plain pins, then each lock file (pinned by hash,
    complete)."""
    plain = [pin for pin in pins if not pin.startswith("-r ")]
    locks = [["--no-deps", "--require-hashes", "-r", str(REPO / pin[3:])] for pin in pins if pin.startswith("-r ")]
    return ([plain] if plain else []) + locks + [list(TEST_TOOLS)]


def venv_for(name: str, minor: str, pins: tuple[str, ...]) -> Path:
    """The cached venv of a combination, made when missing or when its pins (or a lock file) changed."""
    python = interpreter(minor)
    key = "\n".join([str(python), *TEST_TOOLS, *pins])
    key += "".join((REPO / p[3:]).read_text() for p in pins if p.startswith("-r "))
    venv = ROOT / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    with (ROOT / f"{name}.lock").open("w") as lock:  # worktrees share the cache: one of them makes the venv
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".ready").exists():
            _make_venv(venv, python, pins, key)
    return venv


def _make_venv(venv: Path, python: Path, pins: tuple[str, ...], key: str) -> None:
    if not os.access(UV, os.X_OK):
        raise SystemExit(f"compat: no uv at {UV}: run `make setup`")
    shutil.rmtree(venv, ignore_errors=True)
    # no configuration of this machine (uv.toml, pip's), only pyenv's interpreter (uv downloads none)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
    }
    if "PIP_CERT" in os.environ:
        env["SSL_CERT_FILE"] = os.environ["PIP_CERT"]
    for var in ("UV_CACHE_DIR", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if var in os.environ:
            env[var] = os.environ[var]
    subprocess.run([str(UV), "venv", "-q", "--python", str(python), str(venv)], check=True, env=env)
    install = [str(UV), "pip", "install", "-q", "--python", str(venv / "bin/python")]
    for step in pip_steps(pins):
        subprocess.run([*install, *step], check=True, env=env)
    (venv / ".ready").write_text(key)


def prepare(name: str) -> bool:
    minor, pins = COMBINATIONS[name]
    started = time.monotonic()
    try:
        venv_for(name, minor, pins)
    except subprocess.CalledProcessError as error:
        log(f"{name}: FAILED to set up: {error}")
        return False
    log(f"{name}: venv ready [{time.monotonic() - started:.0f} s]")
    return True


def versions(venv: Path) -> str:
    code = (
        "import sys, boto3, botocore, pydantic, pydantic_settings, requests;"
        "print(f'python {sys.version.split()[0]}, boto3 {boto3.__version__}, botocore {botocore.__version__}, '"
        "f'pydantic {pydantic.VERSION}, pydantic-settings {pydantic_settings.__version__}, '"
        "f'requests {requests.__version__}')"
    )
    return subprocess.run(
        [str(venv / "bin/python"), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def run_unit_tests(name: str) -> bool:
    """The unit tests in the combination's venv (made by prepare); its outcome logged, the output of a failure
    printed whole, so that parallel runs do not interleave."""
    minor, pins = COMBINATIONS[name]
    started = time.monotonic()
    venv = venv_for(name, minor, pins)
    env = {
        "PATH": f"{venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    env["PYTHONPATH"] = str(REPO)
    argv = [
        str(venv / "bin/python"),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not integration",
        "tests/unit",
    ]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    outcome = "ok" if result.returncode == 0 else "FAILED"
    log(f"{name} ({versions(venv)}): {outcome}: {summary} [{time.monotonic() - started:.0f} s]")
    if result.returncode != 0:
        print(result.stdout[-6000:], result.stderr[-2000:], sep="\n", file=sys.stderr)
    return result.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[], *COMBINATIONS], help="combinations (default: all)")
    parser.add_argument("--prepare", action="store_true", help="only make the venvs (network), run no tests")
    args = parser.parse_args()
    names = args.names or list(COMBINATIONS)
    ROOT.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(names)) as pool:
        ready = dict(zip(names, pool.map(prepare, names)))
    failed = [name for name, ok in ready.items() if not ok]
    if not args.prepare:
        runnable = [name for name in names if ready[name]]
        with concurrent.futures.ThreadPoolExecutor(max_workers=PARALLEL_TESTS) as pool:
            passed = dict(zip(runnable, pool.map(run_unit_tests, runnable)))
        failed += [name for name, ok in passed.items() if not ok]
    if failed:
        log(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
