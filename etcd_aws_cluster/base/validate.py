"""Checks for strings that come from IMDS, AWS or etcd before they reach a log line or the env file.

Values are validated, never quoted: the env file must be readable unchanged by systemd, `sh` and
`docker run --env-file`, so anything outside a strict charset is refused.
"""

from __future__ import annotations

import ipaddress
import re

from etcd_aws_cluster.base.errors import UnsafeError

INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
URL = re.compile(r"(?P<scheme>https?)://(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9a-fA-F:.]+\]):(?P<port>[0-9]{1,5})")
# What an env-file value may contain at all; every value is also checked by its own rule above.
ENV_VALUE = re.compile(r"[A-Za-z0-9._:/,=\[\]-]+")
ASG_NAME = re.compile(r"[A-Za-z0-9_.:/@+=-][A-Za-z0-9 _.:/@+=-]{0,254}")
# A lifecycle hook name, as AWS allows it.
HOOK_NAME = re.compile(r"[A-Za-z0-9_/-]{1,255}")
# (major, minor, patch) as groups 1-3: local_etcd.parse_version reads them
ETCD_VERSION = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,4})([-+][A-Za-z0-9.+-]{1,40})?")
TAG_PART = re.compile(r"[A-Za-z0-9 _.:/@+=-]{1,128}")


def shown(value: object, limit: int = 80) -> str:
    """Render an untrusted value for a message: quoted, escaped, cut to `limit` characters."""
    text = ascii(str(value))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _refuse(what: str, source: str, value: object) -> UnsafeError:
    return UnsafeError(f"refusing {what} from {source}: {shown(value)} is not a valid {what}")


def _matching(pattern: re.Pattern[str], what: str, value: object, source: str) -> str:
    if isinstance(value, str) and pattern.fullmatch(value):
        return value
    raise _refuse(what, source, value)


def instance_id(value: object, source: str) -> str:
    return _matching(INSTANCE_ID, "instance id", value, source)


def ipv4(value: object, source: str) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9.]{7,15}", value):
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            pass
    raise _refuse("IPv4 address", source, value)


def region(value: object, source: str) -> str:
    return _matching(REGION, "region", value, source)


def member_name(value: object, source: str) -> str:
    return _matching(MEMBER_NAME, "member name", value, source)


def url(value: object, source: str) -> str:
    if isinstance(value, str):
        match = URL.fullmatch(value)
        if match and 0 < int(match["port"]) < 65536:
            return value
    raise _refuse("URL", source, value)


def asg_name(value: object, source: str) -> str:
    return _matching(ASG_NAME, "Auto Scaling group name", value, source)


def env_value(key: str, value: str) -> str:
    if ENV_VALUE.fullmatch(value):
        return value
    raise UnsafeError(f"refusing to write {key}: value {shown(value)} has characters outside [A-Za-z0-9._:/,=-]")
