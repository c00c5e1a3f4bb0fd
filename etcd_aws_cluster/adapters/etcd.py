"""etcd's membership API behind one small interface: the v3 JSON gateway (/v3, /v3beta) or v2 (/v2/members)."""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from etcd_aws_cluster.adapters.http_limits import TooLarge, read_capped
from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import ConfigError, EtcdError
from etcd_aws_cluster.core.model import EndpointStatus, Member, MemberList

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

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
    """One failed etcd call: `kind` is refused, timeout, tls, http or answer."""

    def __init__(self, message: str, *, kind: str, status: int | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
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


def _caused_by_refusal(exc: BaseException) -> bool:
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ConnectionRefusedError) or (isinstance(item, OSError) and item.errno == errno.ECONNREFUSED):
            return True
        if isinstance(item, BaseException):
            stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return "Connection refused" in str(exc)


def _member(raw: Any, source: str, *, hex_ids: bool) -> Member:
    if not isinstance(raw, dict):
        raise EtcdRequestError(f"{source} sent a member that is not an object", kind="answer")
    raw_id: Any = raw.get("ID", raw.get("id"))
    try:
        member_id = int(raw_id, 16) if hex_ids else int(raw_id)
        if isinstance(raw_id, bool) or not 0 < member_id < 2**64:
            raise ValueError
    except (TypeError, ValueError):
        raise EtcdRequestError(f"{source} sent member id {validate.shown(raw_id)}", kind="answer") from None
    peer_urls = raw.get("peerURLs") or []
    client_urls = raw.get("clientURLs") or []
    name = raw.get("name") or ""
    if not isinstance(peer_urls, list) or not isinstance(client_urls, list) or not isinstance(name, str):
        raise EtcdRequestError(f"{source} sent a malformed member {member_id:x}", kind="answer")
    return Member(
        id=member_id,
        name=validate.member_name(name, source) if name else "",
        peer_urls=tuple(validate.url(u, source) for u in peer_urls),
        client_urls=tuple(validate.url(u, source) for u in client_urls),
        is_learner=_flag(raw.get("isLearner", False), f"{source} member {member_id:x} isLearner"),
    )


def _flag(value: Any, what: str) -> bool:
    """A JSON boolean, or the strings "true"/"false" some gateways send; anything else is a bad answer."""
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return bool(value == "true")
    raise EtcdRequestError(f"{what} is {validate.shown(value)}, not true or false", kind="answer")


class EtcdClient:
    """Talks to one cluster through any of its members' client URLs.

    `api` is auto, v3 or v2; with auto the first answer fixes the API for the rest of the run.
    """

    def __init__(self, session: requests.Session, tls: Tls, api: str = "auto") -> None:
        self._session = session
        self._tls = tls
        self._prefixes: tuple[str, ...] = {"v3": V3_PREFIXES, "v2": ("/v2",)}.get(api, (*V3_PREFIXES, "/v2"))

    @property
    def api(self) -> str:
        return self._prefixes[0].lstrip("/") if len(self._prefixes) == 1 else "auto"

    def _call(
        self, method: str, url: str, timeout: float, body: Any = None, *, stream: bool = False
    ) -> requests.Response:
        import requests

        try:
            response = self._session.request(
                method,
                url,
                json=body,
                timeout=timeout,
                verify=self._tls.verify(),
                cert=self._tls.cert(),
                allow_redirects=False,
                stream=True,
            )
            if not stream:  # a snapshot streams the whole db; every other answer is small
                read_capped(response, MAX_ANSWER_BYTES)
            return response
        except TooLarge as exc:
            raise EtcdRequestError(f"{url}: {exc}", kind="answer") from None
        except requests.exceptions.SSLError as exc:
            tls = self._tls
            ca = f"ca_file={tls.ca_file}" if tls.ca_file else "no ca_file (system CAs)"
            cert = f"cert_file={tls.cert_file}" if tls.cert_file else "no client certificate (cert_file/key_file)"
            hint = f"; check {ca} and {cert}"
            raise EtcdRequestError(
                f"TLS error talking to {url}: {validate.shown(exc, 160)}{hint}", kind="tls"
            ) from None
        except requests.exceptions.Timeout:
            raise EtcdRequestError(
                f"{url} did not answer within {timeout:.1f}s", kind="timeout", transient=True
            ) from None
        except requests.RequestException as exc:
            if _caused_by_refusal(exc):
                raise EtcdRequestError(f"{url} refused the connection", kind="refused", transient=True) from None
            raise EtcdRequestError(
                f"cannot reach {url}: {type(exc).__name__}", kind="unreachable", transient=True
            ) from None

    def _json(self, response: requests.Response, url: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise EtcdRequestError(
                f"{url} answered HTTP {response.status_code} with malformed JSON", kind="answer"
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
            kind="http",
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
        raise last or EtcdRequestError(f"{client_url} serves no v3 gateway", kind="http", status=404)

    def _uses_v2(self, client_url: str, timeout: float) -> bool:
        if self._prefixes == ("/v2",):
            return True
        if "/v2" not in self._prefixes:
            return False
        try:
            self.list_members(client_url, timeout, v3_only=True)
        except EtcdRequestError as exc:
            if exc.status == 404:
                self._prefixes = ("/v2",)
                return True
            raise
        return False

    def list_members(
        self, client_url: str, timeout: float, *, v3_only: bool = False, linearizable: bool = False
    ) -> MemberList:
        """The member list. `linearizable`: etcd 3.5+ answers only with the leader's current list (it needs a
        quorum, so a probe of a cluster without one times out); etcd 3.4 ignores the field and answers its own
        view, as v2 does."""
        source = f"etcd at {client_url}"
        if self._prefixes != ("/v2",):
            try:
                url, body = self._v3(client_url, "list", {"linearizable": True} if linearizable else {}, timeout)
            except EtcdRequestError as exc:
                if exc.status != 404 or v3_only or "/v2" not in self._prefixes:
                    raise
            else:
                if not isinstance(body, dict):
                    raise EtcdRequestError(f"{url} answered a non-object", kind="answer")
                header = body.get("header") or {}
                cluster_id: Any = header.get("cluster_id") if isinstance(header, dict) else None
                raw_members = body.get("members") or []
                if not isinstance(raw_members, list):
                    raise EtcdRequestError(f"{url} answered a malformed member list", kind="answer")
                members = tuple(_member(m, source, hex_ids=False) for m in raw_members)
                return MemberList(members, int(cluster_id) if str(cluster_id or "").isdigit() else None)
        url = f"{client_url}/v2/members"
        response = self._call("GET", url, timeout)
        if response.status_code != 200:
            raise self._error(response, url)
        body = self._json(response, url)
        raw_members = body.get("members") if isinstance(body, dict) else None
        if not isinstance(raw_members, list):
            raise EtcdRequestError(f"{url} answered a malformed member list", kind="answer")
        self._prefixes = ("/v2",)
        header_id = response.headers.get("X-Etcd-Cluster-Id", "")
        cluster_id = int(header_id, 16) if header_id and all(c in "0123456789abcdef" for c in header_id) else None
        return MemberList(tuple(_member(m, source, hex_ids=True) for m in raw_members), cluster_id)

    def add_member(self, client_url: str, peer_urls: Iterable[str], timeout: float, *, learner: bool = False) -> Member:
        urls = list(peer_urls)
        source = f"etcd at {client_url}"
        if self._uses_v2(client_url, timeout):
            if learner:
                raise EtcdError('learners need the v3 API; set api = "v3" or turn learner off')
            url = f"{client_url}/v2/members"
            response = self._call("POST", url, timeout, {"peerURLs": urls})
            if response.status_code not in (200, 201):
                raise self._error(response, url)
            return _member(self._json(response, url), source, hex_ids=True)
        url, body = self._v3(client_url, "add", {"peerURLs": urls, "isLearner": learner}, timeout)
        if not isinstance(body, dict):
            raise EtcdRequestError(f"{url} answered a non-object", kind="answer")
        return _member(body.get("member"), source, hex_ids=False)

    def remove_member(self, client_url: str, member_id: int, timeout: float) -> bool:
        """Remove a member; False when it was already gone (removals are idempotent)."""
        try:
            if self._uses_v2(client_url, timeout):
                url = f"{client_url}/v2/members/{member_id:x}"
                response = self._call("DELETE", url, timeout)
                if response.status_code in (404, 410):  # 410: "Member permanently removed"
                    return False
                if response.status_code not in (200, 204):
                    raise self._error(response, url)
                return True
            self._v3(client_url, "remove", {"ID": str(member_id)}, timeout)
        except EtcdRequestError as exc:
            if any(gone in str(exc).lower() for gone in ("member not found", "permanently removed")):
                return False
            raise
        return True

    def promote_member(self, client_url: str, member_id: int, timeout: float) -> None:
        self._v3(client_url, "promote", {"ID": str(member_id)}, timeout)

    def bootstrapping_peers(self, peer_url: str, timeout: float) -> frozenset[str] | None:
        """Peer URLs of a cluster this etcd is still forming (cluster version not decided), else None.

        Asked on the peer port, which etcd serves before it has quorum; its client port does not answer then.
        """
        version = self._call("GET", f"{peer_url}/version", timeout)
        body = self._json(version, peer_url) if version.status_code == 200 else None
        if not isinstance(body, dict) or body.get("etcdcluster") != "not_decided":
            return None
        response = self._call("GET", f"{peer_url}/members", timeout)
        raw = self._json(response, peer_url) if response.status_code == 200 else None
        if not isinstance(raw, list):
            return None
        source = f"etcd peer {peer_url}"
        return frozenset(u for m in raw for u in _member(m, source, hex_ids=False).peer_urls)

    def endpoint_status(self, client_url: str, timeout: float) -> EndpointStatus | None:
        """What this member says about itself (POST /v3/maintenance/status): its id and its leader's.

        None when the endpoint has no v3 gateway (v2 only): the leader is then unknown.
        """
        for prefix in [p for p in self._prefixes if p != "/v2"]:
            url = f"{client_url}{prefix}/maintenance/status"
            response = self._call("POST", url, timeout, {})
            if response.status_code == 404:
                continue
            if response.status_code != 200:
                raise self._error(response, url)
            body = self._json(response, url)
            header = body.get("header") if isinstance(body, dict) else None
            if not isinstance(body, dict) or not isinstance(header, dict):
                raise EtcdRequestError(f"{url} answered a malformed status", kind="answer")
            member_id, leader = _uint64(header.get("member_id")), _uint64(body.get("leader", "0"))
            if member_id is None or leader is None:
                raise EtcdRequestError(f"{url} answered a malformed status", kind="answer")
            revision = _uint64(header.get("revision", "0")) or 0
            version = body.get("version", "")
            if not isinstance(version, str) or not validate.ETCD_VERSION.fullmatch(version):
                version = ""
            db_size = _uint64(body.get("dbSize", "0")) or 0
            return EndpointStatus(member_id, leader, body.get("isLearner") is True, revision, version, db_size)
        return None

    def snapshot(self, client_url: str, timeout: float) -> Iterator[bytes]:
        """Stream this member's snapshot (POST /v3/maintenance/snapshot): the db bytes, chunk by chunk.

        The last chunk is the db's sha256 as etcd appends it (`snapshot restore` checks it); it is verified here
        first, so a cut or garbled stream raises EtcdRequestError instead of ending quietly. `timeout` bounds
        each read, not the whole stream.
        """
        import requests

        for prefix in [p for p in self._prefixes if p != "/v2"]:
            url = f"{client_url}{prefix}/maintenance/snapshot"
            with self._call("POST", url, timeout, {}, stream=True) as response:
                if response.status_code == 404:
                    continue
                if response.status_code != 200:
                    raise self._error(response, url)
                try:
                    yield from _snapshot_chunks(response.iter_lines(chunk_size=64 * 1024), url)
                except requests.RequestException as exc:
                    raise EtcdRequestError(
                        f"snapshot stream from {url} broke: {type(exc).__name__}", kind="unreachable", transient=True
                    ) from None
                return
        raise EtcdRequestError(f"{client_url} serves no v3 gateway for snapshots", kind="http", status=404)


def _uint64(value: Any) -> int | None:
    """A uint64 as the JSON gateway sends it (a decimal string); None if it is not one."""
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return int(text) if text.isascii() and text.isdigit() and int(text) < 2**64 else None


# -- snapshots ---------------------------------------------------------------------------------------------------

# One gateway line carries one of etcd's 32 KiB chunks, base64'd; far longer lines are not etcd's.
SNAPSHOT_LINE_LIMIT = 1024 * 1024


def _snapshot_chunks(lines: Iterable[bytes], url: str) -> Iterator[bytes]:
    digest = hashlib.sha256()
    db_done = False
    for line in lines:
        if not line:
            continue
        blob, remaining = _snapshot_message(line, url)
        if db_done:
            if blob != digest.digest():
                raise EtcdRequestError(f"snapshot from {url} does not match its own sha256", kind="answer")
            yield blob
            return
        digest.update(blob)
        yield blob
        db_done = remaining == 0
    raise EtcdRequestError(f"snapshot stream from {url} ended early", kind="answer", transient=True)


def _snapshot_message(line: bytes, url: str) -> tuple[bytes, int]:
    if len(line) > SNAPSHOT_LINE_LIMIT:
        raise EtcdRequestError(f"snapshot stream from {url} sent an oversized message", kind="answer")
    try:
        message = json.loads(line)
    except ValueError:
        raise EtcdRequestError(f"snapshot stream from {url} sent malformed JSON", kind="answer") from None
    result = message.get("result") if isinstance(message, dict) else None
    if not isinstance(result, dict):
        error = message.get("error") if isinstance(message, dict) else None
        detail = error.get("message") if isinstance(error, dict) else error
        raise EtcdRequestError(
            f"snapshot stream from {url} failed: {validate.shown(detail, 200)}", kind="answer", transient=True
        )
    remaining = _uint64(result.get("remaining_bytes", "0"))
    try:
        blob = base64.b64decode(result.get("blob", ""), validate=True)
    except (ValueError, TypeError):
        blob, remaining = b"", None
    if remaining is None:
        raise EtcdRequestError(f"snapshot stream from {url} sent a malformed chunk", kind="answer")
    return blob, remaining
