"""Who am I: the instance identity from the EC2 instance metadata service, IMDSv2 first."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from etcd_aws_cluster.adapters.http_limits import TooLarge, read_capped
from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.deadline import Deadline
from etcd_aws_cluster.base.errors import MetadataError
from etcd_aws_cluster.base.retry import IMDS, attempts
from etcd_aws_cluster.core.model import Identity

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://169.254.169.254/"
TOKEN_PATH = "latest/api/token"
IDENTITY_PATH = "latest/dynamic/instance-identity/document"
TARGET_LIFECYCLE_STATE = "latest/meta-data/autoscaling/target-lifecycle-state"
TARGET_STATE = re.compile(r"[A-Za-z]+(:[A-Za-z]+)?")
TOKEN_TTL_SECONDS = 21600
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
# Token endpoint statuses that mean "IMDSv2 is not offered here", the only case where IMDSv1 is tried.
NO_TOKEN_SUPPORT = frozenset({403, 404, 405})
# The identity document and a token are under 1 KiB; anything far larger is not IMDS.
MAX_ANSWER_BYTES = 64 * 1024


def endpoint_from(environ: Mapping[str, str]) -> str:
    if environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        raise MetadataError("instance metadata is disabled by AWS_EC2_METADATA_DISABLED=true")
    endpoint = environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_ENDPOINT
    return endpoint if endpoint.endswith("/") else endpoint + "/"


class Imds:
    """A small IMDS client: one token per run, bounded retries, the token never logged."""

    def __init__(
        self,
        session: requests.Session,
        deadline: Deadline,
        *,
        endpoint: str | None = None,
        timeout: float = 2.0,
        allow_v1: bool = True,
    ) -> None:
        self._session = session
        self._deadline = deadline
        self._endpoint = endpoint if endpoint is not None else endpoint_from(os.environ)
        self._timeout = timeout
        self._allow_v1 = allow_v1
        self._token: str | None = None
        self._v1 = False

    def _request(self, method: str, path: str, headers: dict[str, str]) -> requests.Response:
        import requests

        last = "no attempt made"
        for attempt in attempts(self._deadline, IMDS):
            try:
                timeout = self._deadline.cap(self._timeout)
                response = self._session.request(
                    method, self._endpoint + path, headers=headers, timeout=timeout, allow_redirects=False, stream=True
                )
                read_capped(response, MAX_ANSWER_BYTES)
            except TooLarge as exc:
                raise MetadataError(f"instance metadata /{path}: {exc}") from None
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}"
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return response
                last = f"HTTP {response.status_code}"
            log.debug("IMDS %s /%s failed (%s), attempt %d of %d", method, path, last, attempt + 1, IMDS.max_attempts)
        raise MetadataError(f"instance metadata at {self._endpoint} did not answer {method} /{path}: {last}")

    def _ensure_token(self) -> None:
        if self._token is not None or self._v1:
            return
        response = self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(TOKEN_TTL_SECONDS)})
        if response.status_code == 200 and response.text:
            self._token = response.text.strip()
            return
        if response.status_code in NO_TOKEN_SUPPORT:
            if not self._allow_v1:
                raise MetadataError(
                    f"IMDSv2 token request answered HTTP {response.status_code} and imds_v1_fallback is off"
                )
            log.warning("IMDSv2 token endpoint answered HTTP %d; falling back to IMDSv1", response.status_code)
            self._v1 = True
            return
        raise MetadataError(f"IMDSv2 token request answered HTTP {response.status_code}")

    def get(self, path: str) -> str:
        self._ensure_token()
        for _ in range(2):
            headers = {TOKEN_HEADER: self._token} if self._token else {}
            response = self._request("GET", path, headers)
            if response.status_code == 401 and self._token:
                log.debug("IMDS token rejected; requesting a new one")
                self._token = None
                self._ensure_token()
                continue
            if response.status_code != 200:
                raise MetadataError(f"instance metadata /{path} answered HTTP {response.status_code}")
            return response.text
        raise MetadataError(f"instance metadata /{path} rejected a fresh token (HTTP 401)")

    def identity(self) -> Identity:
        text = self.get(IDENTITY_PATH)
        try:
            document: Any = json.loads(text)
        except ValueError:
            raise MetadataError("the instance identity document is not JSON") from None
        if not isinstance(document, dict):
            raise MetadataError("the instance identity document is not a JSON object")
        source = "the instance identity document"
        return Identity(
            instance_id=validate.instance_id(document.get("instanceId"), source),
            private_ip=validate.ipv4(document.get("privateIp"), source),
            region=validate.region(document.get("region"), source),
        )

    def target_lifecycle_state(self) -> str | None:
        """What the ASG is taking this instance to (`Terminated`, `InService`, `Warmed:Stopped`, ...); None when
        IMDS does not say (HTTP 404: not in an Auto Scaling group)."""
        try:
            value = self.get(TARGET_LIFECYCLE_STATE).strip()
        except MetadataError as exc:
            if str(exc).endswith("HTTP 404"):
                return None
            raise
        if not TARGET_STATE.fullmatch(value):
            raise MetadataError(f"refusing target lifecycle state {validate.shown(value)} from instance metadata")
        return value
