from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from etcd_aws_cluster.adapters import atomic_file
from etcd_aws_cluster.base.errors import OutputError, UnsafeError
from etcd_aws_cluster.core import envfile
from etcd_aws_cluster.core.model import Decision, Endpoints, Identity, Plan

ME = Identity("i-0123456789abcdef0", "10.0.0.5", "eu-west-1")
PLAN = Plan(
    Decision.NEW,
    "test",
    "new",
    (("i-0123456789abcdef0", "http://10.0.0.5:2380"), ("i-0123456789abcdef1", "http://10.0.0.6:2380")),
)


def values(**overrides: str) -> dict[str, str]:
    result = envfile.variables(ME, PLAN, Endpoints(), listen_loopback=True)
    result.update(overrides)
    return result


def test_variables() -> None:
    assert values() == {
        "ETCD_NAME": "i-0123456789abcdef0",
        "ETCD_INITIAL_CLUSTER_STATE": "new",
        "ETCD_INITIAL_CLUSTER": "i-0123456789abcdef0=http://10.0.0.5:2380,i-0123456789abcdef1=http://10.0.0.6:2380",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": "http://10.0.0.5:2380",
        "ETCD_ADVERTISE_CLIENT_URLS": "http://10.0.0.5:2379",
        "ETCD_LISTEN_PEER_URLS": "http://10.0.0.5:2380",
        "ETCD_LISTEN_CLIENT_URLS": "http://10.0.0.5:2379,http://127.0.0.1:2379",
    }


def test_loopback_listen_can_be_turned_off() -> None:
    got = envfile.variables(ME, PLAN, Endpoints(client_scheme="https"), listen_loopback=False)
    assert got["ETCD_LISTEN_CLIENT_URLS"] == "https://10.0.0.5:2379"


@pytest.mark.parametrize("bad", ["a\nb", "a b", "$(id)", "`id`", "a;b", "'a'", '"a"', "é", "a$b", ""])
def test_render_refuses_unsafe_values(bad: str) -> None:
    with pytest.raises(UnsafeError, match="ETCD_NAME"):
        envfile.render(values(ETCD_NAME=bad))


def test_sourced_by_sh_sets_exactly_the_seven_variables(tmp_path: Path) -> None:
    path = tmp_path / "etcd-cluster"
    atomic_file.write(str(path), envfile.render(values()))
    script = f'set -a; . "{path}"; set +a; env'
    env = subprocess.run(["sh", "-c", script], env={}, capture_output=True, text=True, check=True).stdout
    got = dict(line.split("=", 1) for line in env.splitlines() if line.startswith("ETCD_"))
    assert got == values()
    assert envfile.parse(path.read_text()) == values()


def test_write_is_atomic_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "etcd-cluster"
    old_umask = os.umask(0o077)
    try:
        atomic_file.write(str(path), "A=1\n")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "A=1\n"
    assert path.stat().st_mode & 0o777 == 0o644
    atomic_file.write(str(path), "A=2\n")
    assert path.read_text() == "A=2\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["etcd-cluster"]


def test_failed_write_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "etcd-cluster"
    path.write_text("OLD=1\n")
    tmp_path.chmod(0o500)
    try:
        if os.access(tmp_path, os.W_OK):  # root ignores the mode bits: use a path that cannot be a dir
            target = str(path / "child")
            with pytest.raises(OutputError):
                atomic_file.write(target, "NEW=1\n")
        else:
            with pytest.raises(OutputError):
                atomic_file.write(str(path), "NEW=1\n")
    finally:
        tmp_path.chmod(0o700)
    assert path.read_text() == "OLD=1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etcd-cluster"]


def test_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    atomic_file.write("-", "A=1\n")
    assert capsys.readouterr().out == "A=1\n"
