from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from etcd_aws_cluster.base.errors import UnsafeError
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
    path.write_text(envfile.render(values()))
    script = f'set -a; . "{path}"; set +a; env'
    env = subprocess.run(["sh", "-c", script], env={}, capture_output=True, text=True, check=True).stdout
    got = dict(line.split("=", 1) for line in env.splitlines() if line.startswith("ETCD_"))
    assert got == values()
    assert envfile.parse(path.read_text()) == values()


def test_the_boot_file_is_byte_for_byte_what_it_has_always_been() -> None:
    assert envfile.render(values()) == (
        "# Written by etcd-aws-cluster at boot; changes are overwritten.\n"
        "ETCD_NAME=i-0123456789abcdef0\n"
        "ETCD_INITIAL_CLUSTER_STATE=new\n"
        "ETCD_INITIAL_CLUSTER=i-0123456789abcdef0=http://10.0.0.5:2380,i-0123456789abcdef1=http://10.0.0.6:2380\n"
        "ETCD_INITIAL_ADVERTISE_PEER_URLS=http://10.0.0.5:2380\n"
        "ETCD_ADVERTISE_CLIENT_URLS=http://10.0.0.5:2379\n"
        "ETCD_LISTEN_PEER_URLS=http://10.0.0.5:2380\n"
        "ETCD_LISTEN_CLIENT_URLS=http://10.0.0.5:2379,http://127.0.0.1:2379\n"
    )


@pytest.mark.parametrize(
    "wrong",
    [
        {key: value for key, value in values().items() if key != "ETCD_NAME"},  # one missing
        values(ETCD_PROXY="on"),  # one too many: a proxy file's key
    ],
)
def test_render_needs_exactly_the_seven_keys(wrong: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="env file needs exactly ETCD_NAME, ETCD_INITIAL_CLUSTER_STATE"):
        envfile.render(wrong)


def test_keys_are_written_in_the_declared_order_whatever_the_order_of_the_values() -> None:
    kind = envfile.EnvFile("test file", "# test\n", ("B", "A"), ("D", "C"))
    assert kind.render({"C": "3", "A": "1", "B": "2"}) == "# test\nB=2\nA=1\nC=3\n"
    assert kind.render({"D": "4", "C": "3", "A": "1", "B": "2"}) == "# test\nB=2\nA=1\nD=4\nC=3\n"
    with pytest.raises(ValueError, match="test file needs B, A and optionally D, C"):
        kind.render({"A": "1", "B": "2", "E": "5"})
