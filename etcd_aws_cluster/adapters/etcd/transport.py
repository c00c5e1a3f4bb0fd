"""How the agent talks to etcd: one HTTP(S) call with TLS, a capped answer and errors that say what failed; the
v3 JSON gateway's prefixes (/v3, /v3beta) found once per run."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etcd_aws_cluster.adapters.http_limits import TooLarge, read_capped
from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import ConfigError, EtcdError
from etcd_aws_cluster.core.model import EtcdFailure

if TYPE_CHECKING:
    import requests

V3_PREFIXES = ("/v3", "/v3beta")
# The largest answer read from etcd: a member list of hundreds of members is a few tens of KiB.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# Answers that mean "not now": retry with backoff under the deadline.
TRANSIENT_MESSAGES = (
    "unhealthy cluster",
    "not enough started members",
    "leader changed",
    "no leader",
    "timed out",
    "too many requests",
    "peer urls already exists",  # right after a remove of the same URL, briefly
    "in sync with leader",  # a learner is promoted only once it has caught up
    "learner is not ready",
    "too many learner members",  # 3.6+ allows one learner at a time (--max-learners): wait for its promotion
)


class EtcdRequestError(EtcdError):
    """One failed etcd call, and how it failed. Its `kind` stays the class's (etcd, exit 5): the failure is a detail
    of an etcd error, not a kind of error of its own."""

    def __init__(
        self, message: str, *, failure: EtcdFailure, status: int | None = None, transient: bool = False
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.status = status
        self.transient = transient


@dataclass(frozen=True)
class Tls:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def verify(self) -> bool | str:
        return str(self.ca_file) if self.ca_file else True

    def cert(self) -> tuple[str, str] | None:
        if self.cert_file and self.key_file:
            return (str(self.cert_file), str(self.key_file))
        return None

    def check_files(self) -> None:
        for what, path in (
            ("ca_file", self.ca_file),
            ("cert_file", self.cert_file),
            ("key_file", self.key_file),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{what} {path} does not exist or is not a file")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("cert_file and key_file must be set together")


def causes(exc: BaseException) -> Iterator[object]:
    """`exc` and everything it wraps (causes, contexts, urllib3's `reason`, arguments), each once: requests hides
    the OS error of a failed connection or read several layers down."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, BaseException):
            stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])


def _caused_by_refusal(exc: BaseException) -> bool:
    refused = any(
        isinstance(item, ConnectionRefusedError) or (isinstance(item, OSError) and item.errno == errno.ECONNREFUSED)
        for item in causes(exc)
    )
    return refused or "Connection refused" in str(exc)


def _uint64(value: Any) -> int | None:
    """A uint64 as the JSON gateway sends it (a decimal string); None if it is not one."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return int(text) if text.isascii() and text.isdigit() and int(text) < 2**64 else None


def stream_result(line: bytes, stream: str) -> dict[str, Any]:
    """The `result` of one message of a gateway stream (JSON lines, each `{"result": ...}` or `{"error": ...}`);
    `stream` names it in the error ("snapshot stream from URL")."""
    try:
        message = json.loads(line)
    except ValueError:
        raise EtcdRequestError(f"{stream} sent malformed JSON", failure=EtcdFailure.ANSWER) from None
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict):
        error = message.get("error") if isinstance(message, dict) else None
        detail = error.get("message") if isinstance(error, dict) else error
        raise EtcdRequestError(
            f"{stream} failed: {validate.shown(detail, 200)}", failure=EtcdFailure.ANSWER, transient=True
        )
    return result


class Transport:
    """Calls to one cluster through any of its members' client URLs.

    `api` is auto, v3 or v2; with auto the first answer fixes the API for the rest of the run.
    """

    def __init__(self, session: requests.Session, tls: Tls, api: str = "auto") -> None:
        self._session = session
        self.tls = tls  # etcd's own client on this host needs the same files (snapshot_save.py)
        self._prefixes: tuple[str, ...] = {"v3": V3_PREFIXES, "v2": ("/v2",)}.get(api, (*V3_PREFIXES, "/v2"))

    @property
    def api(self) -> str:
        return self._prefixes[0].lstrip("/") if len(self._prefixes) == 1 else "auto"

    def _call(
        self,
        method: str,
        url: str,
        timeout: float,
        body: Any = None,
        *,
        stream: bool = False,
        read_timeout: float | None = None,
    ) -> requests.Response:
        """One request; `timeout` bounds the connection and each read, unless `read_timeout` bounds the reads."""
        import requests

        try:
            response = self._session.request(
                method,
                url,
                json=body,
                timeout=timeout if read_timeout is None else (timeout, read_timeout),
                verify=self.tls.verify(),
                cert=self.tls.cert(),
                allow_redirects=False,
                stream=True,
            )
            if not stream:  # a snapshot streams the whole db; every other answer is small
                read_capped(response, MAX_ANSWER_BYTES)
            return response
        except TooLarge as exc:
            raise EtcdRequestError(f"{url}: {exc}", failure=EtcdFailure.ANSWER) from None
        except requests.exceptions.SSLError as exc:
            tls = self.tls
            ca = f"ca_file={tls.ca_file}" if tls.ca_file else "no ca_file (system CAs)"
            cert = f"cert_file={tls.cert_file}" if tls.cert_file else "no client certificate (cert_file/key_file)"
            hint = f"; check {ca} and {cert}"
            raise EtcdRequestError(
                f"TLS error talking to {url}: {validate.shown(exc, 160)}{hint}", failure=EtcdFailure.TLS
            ) from None
        except requests.exceptions.Timeout:
            raise EtcdRequestError(
                f"{url} did not answer within {timeout:.1f}s", failure=EtcdFailure.TIMEOUT, transient=True
            ) from None
        except requests.RequestException as exc:
            if _caused_by_refusal(exc):
                raise EtcdRequestError(
                    f"{url} refused the connection", failure=EtcdFailure.REFUSED, transient=True
                ) from None
            raise EtcdRequestError(
                f"cannot reach {url}: {type(exc).__name__}", failure=EtcdFailure.UNREACHABLE, transient=True
            ) from None

    def _json(self, response: requests.Response, url: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise EtcdRequestError(
                f"{url} answered HTTP {response.status_code} with malformed JSON", failure=EtcdFailure.ANSWER
            ) from None

    def _error(self, response: requests.Response, url: str) -> EtcdRequestError:
        try:
            body = response.json()
            message = str(body.get("message") or body.get("error") or "") if isinstance(body, dict) else ""
        except ValueError:
            message = response.text[:200]
        # v2 answers a bare 500 for etcd's "not enough started members": retry that too, under the deadline.
        v2_internal = response.status_code == 500 and "/v2/" in url
        transient = (
            response.status_code in (429, 503) or v2_internal or any(t in message.lower() for t in TRANSIENT_MESSAGES)
        )
        return EtcdRequestError(
            f"{url} answered HTTP {response.status_code}: {validate.shown(message, 200)}",
            failure=EtcdFailure.HTTP,
            status=response.status_code,
            transient=transient,
        )

    def _v3(self, client_url: str, action: str, body: dict[str, Any], timeout: float) -> tuple[str, Any]:
        """POST a v3 cluster call, trying the gateway prefixes the API setting allows."""
        last: EtcdRequestError | None = None
        for prefix in self._prefixes:
            url = f"{client_url}{prefix}/cluster/member/{action}"
            if prefix == "/v2":
                break
            response = self._call("POST", url, timeout, body)
            if response.status_code == 404 and len(self._prefixes) > 1 and prefix != self._prefixes[-1]:
                last = self._error(response, url)
                continue
            if response.status_code != 200:
                raise self._error(response, url)
            self._prefixes = (prefix,)
            return url, self._json(response, url)
        raise last or EtcdRequestError(f"{client_url} serves no v3 gateway", failure=EtcdFailure.HTTP, status=404)

    def _v3_prefixes(self) -> list[str]:
        """The v3 gateway prefixes the API setting allows; /v3 when it allows only v2 (calls v2 has no form of)."""
        return [p for p in self._prefixes if p != "/v2"] or ["/v3"]

    def _post_v3(
        self, client_url: str, paths: tuple[str, ...], body: dict[str, Any], timeout: float
    ) -> tuple[str, dict[str, Any]]:
        """POST `body` to the first of `paths` (under each v3 gateway prefix) that the member serves; (url, its
        answer, a JSON object)."""
        last: EtcdRequestError | None = None
        for prefix in self._v3_prefixes():
            for path in paths:
                url = f"{client_url}{prefix}/{path}"
                response = self._call("POST", url, timeout, body)
                if response.status_code == 404:
                    last = self._error(response, url)
                    continue
                if response.status_code != 200:
                    raise self._error(response, url)
                answer = self._json(response, url)
                if not isinstance(answer, dict):
                    raise EtcdRequestError(f"{url} answered a non-object", failure=EtcdFailure.ANSWER)
                return url, answer
        raise last or EtcdRequestError(f"{client_url} serves no v3 gateway", failure=EtcdFailure.HTTP, status=404)
