"""The one settings model and its sources.

Priority, highest first: command line > environment (`ETCD_AWS_CLUSTER_*`) > drop-ins
`<config dir>/config.d/*.toml` (sorted, later wins) > `config.toml` > defaults.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from etcd_aws_cluster.base.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10 (the RPM's target)
    import tomli as tomllib

ENV_PREFIX = "ETCD_AWS_CLUSTER_"
DEFAULT_CONFIG = Path("/etc/etcd-aws-cluster/config.toml")
DEFAULT_DATA_DIRS = (Path("/var/lib/etcd/default"), Path("/var/lib/etcd"))
# Where Debian's prometheus-node-exporter reads textfile metrics (--collector.textfile.directory in its defaults).
DEFAULT_METRICS_FILE = Path("/var/lib/prometheus/node-exporter/etcd-aws-cluster.prom")


class Settings(BaseSettings):
    """Every setting, with its default and meaning (the README table is generated from the same words)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    output: str = Field("/etc/sysconfig/etcd-cluster", description="env file to write; '-' prints it to stdout")
    data_dir: Optional[Path] = Field(  # noqa: UP045 - pydantic evaluates this on Python 3.9
        None,
        description="etcd data dir, to detect local member data; empty: /var/lib/etcd/default or /var/lib/etcd",
    )
    client_scheme: Literal["http", "https"] = Field("http", description="scheme of etcd client URLs")
    peer_scheme: Literal["http", "https"] = Field("http", description="scheme of etcd peer URLs")
    client_port: int = Field(2379, ge=1, le=65535, description="etcd client port")
    peer_port: int = Field(2380, ge=1, le=65535, description="etcd peer port")
    listen_loopback: bool = Field(True, description="also listen for clients on 127.0.0.1")
    ca_file: Optional[Path] = Field(None, description="CA bundle to verify peers' etcd client TLS")  # noqa: UP045
    cert_file: Optional[Path] = Field(None, description="client certificate for etcd client TLS")  # noqa: UP045
    key_file: Optional[Path] = Field(None, description="key of cert_file")  # noqa: UP045
    api: Literal["auto", "v3", "v2"] = Field("auto", description="etcd API: v3 JSON gateway, v2, or auto (v3 first)")
    asg_name: Optional[str] = Field(None, description="use this ASG instead of the instance's own")  # noqa: UP045
    asg_tag: Optional[str] = Field(  # noqa: UP045
        None, description="select the ASG by a tag, as key=value, instead of the instance's own"
    )
    proxy_asg: Optional[str] = Field(  # noqa: UP045
        None,
        description="proxy mode: name of the etcd cluster's ASG; this instance writes a client configuration "
        "(ETCD_PROXY=on, ETCDCTL_ENDPOINTS) for that cluster instead of joining one",
    )
    proxy_mode: Literal["auto", "v2-proxy", "gateway"] = Field(
        "auto",
        description="proxy mode: v2-proxy (ETCD_PROXY=on, etcd 3.4/3.5), gateway (settings for `etcd gateway "
        "start`, etcd 3.6+), or auto: by the local etcd's version, else the cluster's",
    )
    imds_v1_fallback: bool = Field(True, description="fall back to IMDSv1 when the token endpoint is unsupported")
    timeout: float = Field(180.0, gt=0, le=3600, description="deadline in seconds for the whole run")
    probe_timeout: float = Field(2.0, gt=0, le=60, description="seconds to wait for one peer's member list")
    imds_timeout: float = Field(2.0, gt=0, le=60, description="seconds per instance metadata request")
    aws_timeout: float = Field(10.0, gt=0, le=120, description="seconds per AWS API request")
    aws_max_attempts: int = Field(5, ge=1, le=20, description="attempts per AWS API call (botocore standard retries)")
    stale_data: Literal["move", "refuse"] = Field(
        "move", description="local data of a removed member: move it aside and rejoin, or refuse"
    )
    learner: bool = Field(
        False, description="join as a non-voting learner (etcd 3.4+, v3 API); `promote` makes it a voter"
    )
    lock_file: Path = Field(Path("/run/etcd-aws-cluster.lock"), description="lock that serializes runs on a host")
    reconcile_remove_states: Optional[str] = Field(  # noqa: UP045
        None,
        description="reconcile: comma-separated ASG lifecycle states, besides Terminated, whose members it removes "
        "(Terminating, Detaching, Detached, EnteringStandby, Standby; Terminating covers Terminating:Wait)",
    )
    reconcile_grace: float = Field(
        600.0, gt=0, le=604800, description="reconcile: seconds an added member may stay unstarted before removal"
    )
    reconcile_state_file: Path = Field(
        Path("/var/lib/etcd-aws-cluster/reconcile.json"),
        description="reconcile: records since when each member has been unstarted",
    )

    launch_hook: Optional[str] = Field(  # noqa: UP045
        None,
        description="lifecycle hooks: the launching hook `ready` completes; empty: the group's only "
        "autoscaling:EC2_INSTANCE_LAUNCHING hook, if it has one",
    )
    termination_hook: Optional[str] = Field(  # noqa: UP045
        None,
        description="lifecycle hooks: the terminating hook `leave --on-termination` completes; empty: the group's "
        "only autoscaling:EC2_INSTANCE_TERMINATING hook, if it has one",
    )
    termination_hold: float = Field(
        600.0,
        ge=0,
        le=172800,
        description="lifecycle hooks: seconds `leave --on-termination` holds a termination (with heartbeats) while "
        "leaving would break quorum, before it completes the action anyway",
    )
    stop_etcd_command: str = Field(
        "systemctl stop etcd.service",
        description="lifecycle hooks: command `leave --on-termination` runs to stop etcd after leaving, before it "
        "completes the terminating action; empty: none",
    )

    backup_url: Optional[str] = Field(  # noqa: UP045
        None,
        description="backups: s3://bucket/prefix for snapshots and the cluster record; empty: no backups, and "
        "nothing restores the data if every member is lost",
    )
    backup_sse: Literal["AES256", "aws:kms"] = Field(
        "AES256", description="backups: S3 server-side encryption, SSE-S3 (AES256) or SSE-KMS (aws:kms)"
    )
    backup_kms_key_id: Optional[str] = Field(  # noqa: UP045
        None, description="backups: KMS key id, ARN or alias for aws:kms; empty: the account's S3 KMS key"
    )
    backup_keep_last: int = Field(24, ge=1, le=10000, description="backups: keep the newest N snapshots")
    backup_keep_daily_days: int = Field(
        14, ge=0, le=3650, description="backups: also keep the newest snapshot of each of the last D days (UTC)"
    )
    backup_interval: float = Field(3600.0, ge=60, le=604800, description="backups: seconds between scheduled snapshots")
    backup_delta_interval: float = Field(
        10.0,
        ge=1,
        le=3600,
        description="backups: `backup --follow` uploads the revisions of the last N seconds as a delta (the recovery "
        "point between full snapshots)",
    )
    backup_delta_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        description="backups: `backup --follow` uploads a delta sooner once this many bytes of revisions are pending",
    )
    etcdutl: Optional[Path] = Field(  # noqa: UP045
        None,
        description="restore tool: path to etcdutl (or etcdctl on etcd 3.4), never one older than etcd; empty: the "
        "one beside etcd, then etcdutl, then etcdctl, on PATH",
    )

    metrics_file: Optional[Path] = Field(  # noqa: UP045
        DEFAULT_METRICS_FILE,
        description="monitoring: Prometheus metrics (node_exporter textfile format) every command but status updates; "
        "written only when its directory exists; empty: none",
    )
    cloudwatch_namespace: Optional[str] = Field(  # noqa: UP045
        None,
        description="monitoring: CloudWatch namespace for the backup age and the boot's exit code (PutMetricData); "
        "empty: none",
    )

    @field_validator("backup_url", "backup_kms_key_id", "etcdutl", mode="before")
    @classmethod
    def _backup_empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("backup_url")
    @classmethod
    def _backup_url_is_s3(cls, value: str | None) -> str | None:
        from etcd_aws_cluster.adapters.s3 import parse_backup_url

        if value is not None:
            try:
                parse_backup_url(value)
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("backup_url ")) from None
        return value

    @field_validator("backup_kms_key_id")
    @classmethod
    def _kms_key_needs_kms(cls, value: str | None, info: ValidationInfo) -> str | None:
        from etcd_aws_cluster.adapters.s3 import KMS_KEY_ID

        if value is not None and info.data.get("backup_sse") != "aws:kms":
            raise ValueError("needs backup_sse = aws:kms")
        if value is not None and not KMS_KEY_ID.fullmatch(value):
            raise ValueError("must be a KMS key id, ARN or alias")
        return value

    @field_validator("reconcile_remove_states", mode="before")
    @classmethod
    def _known_lifecycle_states(cls, value: Any) -> Any:
        if value is None or value == "" or value == []:
            return None
        from etcd_aws_cluster.core.reconcile import parse_states  # only when set: defaults are validated on every run

        if not isinstance(value, (str, list, tuple)):
            raise ValueError("must be a comma-separated string or a list of lifecycle states")
        return ",".join(sorted(parse_states(value))) or None

    @field_validator("proxy_asg", mode="before")
    @classmethod
    def _proxy_asg_is_a_group_name(cls, value: Any) -> Any:
        from etcd_aws_cluster.base.validate import ASG_NAME

        if value is None or value == "":
            return None
        if not isinstance(value, str) or not ASG_NAME.fullmatch(value):
            raise ValueError("must be an Auto Scaling group name")
        return value

    @field_validator("launch_hook", "termination_hook", mode="before")
    @classmethod
    def _hook_name(cls, value: Any) -> Any:
        from etcd_aws_cluster.base.validate import HOOK_NAME

        if value is None or value == "":
            return None
        if not isinstance(value, str) or not HOOK_NAME.fullmatch(value):
            raise ValueError("must be a lifecycle hook name (1-255 of letters, digits and _/-)")
        return value

    @field_validator("asg_name")
    @classmethod
    def _asg_name_is_a_group_name(cls, value: str | None) -> str | None:
        from etcd_aws_cluster.base.validate import ASG_NAME

        if value is not None and not ASG_NAME.fullmatch(value):
            raise ValueError("must be an Auto Scaling group name (letters, digits, spaces and _.:/@+=-)")
        return value

    @field_validator("asg_tag")
    @classmethod
    def _tag_has_key_and_value(cls, value: str | None) -> str | None:
        from etcd_aws_cluster.base.validate import TAG_PART

        if value is None:
            return None
        key, equals, tag_value = value.partition("=")
        if not equals or not TAG_PART.fullmatch(key) or not TAG_PART.fullmatch(tag_value):
            raise ValueError("must be key=value, each 1-128 of letters, digits, spaces and _.:/@+=-")
        return value

    @field_validator("cloudwatch_namespace", mode="before")
    @classmethod
    def _cloudwatch_namespace(cls, value: Any) -> Any:
        from etcd_aws_cluster.adapters.cloudwatch import NAMESPACE

        if value is None or value == "":
            return None
        if not isinstance(value, str) or not NAMESPACE.fullmatch(value) or value.startswith("AWS/"):
            raise ValueError("must be a CloudWatch namespace: 1-255 of letters, digits and .-_/#:, not AWS/...")
        return value

    @field_validator(
        "data_dir", "ca_file", "cert_file", "key_file", "asg_name", "asg_tag", "metrics_file", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    def data_dirs(self) -> tuple[Path, ...]:
        return (self.data_dir,) if self.data_dir else DEFAULT_DATA_DIRS


class _Environment(PydanticBaseSettingsSource):
    """Settings from ETCD_AWS_CLUSTER_* in the given environment only (names case-insensitive, as pydantic's own
    source reads them), so that load(environ=...) is isolated from os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        by_name = {key.upper(): value for key, value in environ.items()}
        self._data = {
            name: by_name[ENV_PREFIX + name.upper()]
            for name in settings_cls.model_fields
            if ENV_PREFIX + name.upper() in by_name
        }

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class _TomlFiles(PydanticBaseSettingsSource):
    """Settings from already-merged TOML data."""

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


def config_files(config: Path) -> list[Path]:
    """The main file, then its drop-ins in sorted order (later wins)."""
    dropins = sorted((config.parent / "config.d").glob("*.toml")) if config.parent.is_dir() else []
    return [config, *dropins]


def read_toml(files: list[Path]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in files:
        try:
            with path.open("rb") as handle:
                _check_trusted(path, os.fstat(handle.fileno()))
                merged.update(tomllib.load(handle))
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    return merged


def _check_trusted(path: Path, info: os.stat_result) -> None:
    """Settings decide what runs as root: refuse a file another user owns or may write (group or others), as
    a `--config` in a world-writable directory would pull in any `config.d/*.toml` there."""
    if info.st_uid not in (0, os.geteuid()):
        raise ConfigError(f"refusing {path}: owned by uid {info.st_uid}, not by root or uid {os.geteuid()}")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"refusing {path}: writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})")


def load(
    overrides: Mapping[str, Any], config: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build the settings from every source; raise ConfigError naming the bad setting and its source."""
    env = os.environ if environ is None else environ
    config = config or Path(env.get(ENV_PREFIX + "CONFIG") or DEFAULT_CONFIG)
    toml_data = read_toml(config_files(config))

    class _Sources(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, _Environment(settings_cls, env), _TomlFiles(settings_cls, toml_data)

    try:
        loaded = _Sources(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(_describe(err, toml_data) for err in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None
    return Settings.model_construct(**loaded.model_dump())


def _describe(error: Any, toml_data: Mapping[str, Any]) -> str:
    name = ".".join(str(part) for part in error.get("loc", ())) or "?"
    where = f"{ENV_PREFIX}{name.upper()}"
    if name in toml_data:
        where += " / config key " + name
    if error.get("type") == "extra_forbidden":
        return f"unknown config key {name!r}"
    return f"{name} ({where}): {error.get('msg', 'invalid')}"


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """ETCD_AWS_CLUSTER_* variables that match no setting: most likely typos worth a warning."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {ENV_PREFIX + "CONFIG"}
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
