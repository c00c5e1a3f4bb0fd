from __future__ import annotations

from pathlib import Path

import pytest

from etcd_aws_cluster import settings
from etcd_aws_cluster.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    got = settings.load({}, tmp_path / "none.toml", environ={})
    assert got.output == "/etc/sysconfig/etcd-cluster"
    assert (got.client_port, got.peer_port, got.api, got.listen_loopback) == (2379, 2380, "auto", True)
    assert got.data_dirs() == (Path("/var/lib/etcd/default"), Path("/var/lib/etcd"))


def test_priority_cli_env_dropins_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path / "config.toml", 'client_port = 1\npeer_port = 1\napi = "v2"\nasg_name = "file"\n')
    write(tmp_path / "config.d" / "10-a.toml", 'client_port = 10\npeer_port = 10\napi = "v3"\n')
    write(tmp_path / "config.d" / "20-b.toml", "client_port = 20\npeer_port = 20\n")
    monkeypatch.setenv("ETCD_AWS_CLUSTER_PEER_PORT", "30")
    monkeypatch.setenv("ETCD_AWS_CLUSTER_CLIENT_PORT", "30")
    got = settings.load({"client_port": 40}, config)
    assert got.client_port == 40  # CLI
    assert got.peer_port == 30  # env
    assert got.api == "v3"  # drop-in
    assert got.asg_name == "file"  # main file


def test_config_path_from_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "c.toml", "timeout = 5\n")
    got = settings.load({}, environ={"ETCD_AWS_CLUSTER_CONFIG": str(config)})
    assert got.timeout == 5


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("client_port = 0\n", "client_port"),
        ('api = "v4"\n', "api"),
        ("no_such = 1\n", "unknown config key 'no_such'"),
        ('asg_tag = "novalue"\n', "key=value"),
        ("client_port = [\n", "cannot read"),
    ],
)
def test_invalid_settings_name_the_setting(tmp_path: Path, toml: str, message: str) -> None:
    config = write(tmp_path / "config.toml", toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        settings.load({}, config, environ={})


def test_unknown_environment_variables_are_reported() -> None:
    env = {"ETCD_AWS_CLUSTER_CLIENTPORT": "1", "ETCD_AWS_CLUSTER_CONFIG": "x", "ETCD_AWS_CLUSTER_OUTPUT": "-"}
    assert settings.unknown_env(env) == ["ETCD_AWS_CLUSTER_CLIENTPORT"]
