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


def test_backup_settings_defaults_and_values(tmp_path: Path) -> None:
    got = settings.load({}, tmp_path / "none.toml", environ={})
    assert (got.backup_url, got.backup_sse, got.backup_kms_key_id, got.etcdutl) == (None, "AES256", None, None)
    assert (got.backup_keep_last, got.backup_keep_daily_days, got.backup_interval) == (24, 14, 3600)
    config = write(
        tmp_path / "config.toml",
        'backup_url = "s3://my-bucket/etcd/"\nbackup_sse = "aws:kms"\nbackup_kms_key_id = "alias/etcd"\n'
        'etcdutl = "/opt/etcd/etcdutl"\n',
    )
    got = settings.load({}, config, environ={})
    assert (got.backup_url, got.backup_sse, got.backup_kms_key_id) == ("s3://my-bucket/etcd/", "aws:kms", "alias/etcd")
    assert got.etcdutl == Path("/opt/etcd/etcdutl")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('backup_url = "https://bucket/x"\n', "backup_url .*s3://bucket/prefix"),
        ('backup_url = "s3://Bad_Bucket/x"\n', "backup_url .*not an S3 bucket name"),
        ('backup_url = "s3://bucket/../x"\n', "backup_url .*path segments"),
        ('backup_sse = "none"\n', "backup_sse"),
        ('backup_kms_key_id = "alias/etcd"\n', "backup_kms_key_id .*needs backup_sse = aws:kms"),
        ('backup_sse = "aws:kms"\nbackup_kms_key_id = "bad key"\n', "backup_kms_key_id .*KMS key id"),
        ("backup_keep_last = 0\n", "backup_keep_last"),
        ("backup_keep_daily_days = -1\n", "backup_keep_daily_days"),
        ("backup_interval = 10\n", "backup_interval"),
    ],
)
def test_invalid_backup_settings_name_the_setting(tmp_path: Path, toml: str, message: str) -> None:
    config = write(tmp_path / "config.toml", toml)
    with pytest.raises(ConfigError, match=message):
        settings.load({}, config, environ={})
