from __future__ import annotations

import os
from pathlib import Path

import pytest

from etcd_aws_cluster.app import settings
from etcd_aws_cluster.base.errors import ConfigError


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
        ('asg_tag = "=value"\n', "key=value"),
        ('asg_tag = "key=va\\nlue"\n', "key=value"),
        ('asg_name = "etcd\\nETCD_NAME=x"\n', "asg_name"),
        ("asg_name = \"etcd'$(id)'\"\n", "asg_name"),
        ('launch_hook = "etcd ready"\n', "launch_hook"),
        ('termination_hook = "leave\\nX=1"\n', "termination_hook"),
        ("termination_hold = -1\n", "termination_hold"),
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


def test_an_empty_environment_is_isolated_from_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_AWS_CLUSTER_CLIENT_PORT", "5")
    assert settings.load({}, tmp_path / "none.toml", environ={}).client_port == 2379
    given = {"ETCD_AWS_CLUSTER_CLIENT_PORT": "7", "etcd_aws_cluster_peer_port": "8"}
    got = settings.load({}, tmp_path / "none.toml", environ=given)
    assert (got.client_port, got.peer_port) == (7, 8)


def test_valid_group_name_and_tag_are_kept(tmp_path: Path) -> None:
    env = {"ETCD_AWS_CLUSTER_ASG_NAME": "etcd prod:1", "ETCD_AWS_CLUSTER_ASG_TAG": "aws:role=etcd main"}
    got = settings.load({}, tmp_path / "none.toml", environ=env)
    assert (got.asg_name, got.asg_tag) == ("etcd prod:1", "aws:role=etcd main")


@pytest.mark.parametrize("which", ["config.toml", "config.d/10-dropin.toml"])
def test_a_config_file_others_may_write_is_refused(tmp_path: Path, which: str) -> None:
    config = write(tmp_path / "config.toml", "timeout = 5\n")
    path = write(tmp_path / which, "timeout = 6\n")
    path.chmod(0o664)
    with pytest.raises(ConfigError, match=r"writable by group or others \(mode 0664\)"):
        settings.load({}, config, environ={})


def test_a_dropin_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    config = write(tmp_path / "config.toml", "timeout = 5\n")
    dropin = write(tmp_path / "config.d" / "99-evil.toml", 'output = "/etc/shadow"\n')
    os.chown(dropin, 65534, 65534)
    with pytest.raises(ConfigError, match="99-evil.toml: owned by uid 65534, not by root"):
        settings.load({}, config, environ={})
