"""etcd's membership API: list, add, remove and promote members, through the v3 JSON gateway or v2 (/v2/members),
and the peers of a cluster still forming."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from etcd_aws_cluster.adapters.etcd.transport import EtcdRequestError, Transport
from etcd_aws_cluster.base import validate
from etcd_aws_cluster.base.errors import EtcdError
from etcd_aws_cluster.core.model import EtcdFailure, Member, MemberList


def _member(raw: Any, source: str, *, hex_ids: bool) -> Member:
    if not isinstance(raw, dict):
        raise EtcdRequestError(f"{source} sent a member that is not an object", failure=EtcdFailure.ANSWER)
    raw_id: Any = raw.get("ID", raw.get("id"))
    try:
        member_id = int(raw_id, 16) if hex_ids else int(raw_id)
        if isinstance(raw_id, bool) or not 0 < member_id < 2**64:
            raise ValueError
    except (TypeError, ValueError):
        raise EtcdRequestError(
            f"{source} sent member id {validate.shown(raw_id)}", failure=EtcdFailure.ANSWER
        ) from None
    peer_urls = raw.get("peerURLs") or []
    client_urls = raw.get("clientURLs") or []
    name = raw.get("name") or ""
    if not isinstance(peer_urls, list) or not isinstance(client_urls, list) or not isinstance(name, str):
        raise EtcdRequestError(f"{source} sent a malformed member {member_id:x}", failure=EtcdFailure.ANSWER)
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
    raise EtcdRequestError(f"{what} is {validate.shown(value)}, not true or false", failure=EtcdFailure.ANSWER)


class ClusterApi(Transport):
    """The membership calls."""

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
                    raise EtcdRequestError(f"{url} answered a non-object", failure=EtcdFailure.ANSWER)
                header = body.get("header") or {}
                cluster_id: Any = header.get("cluster_id") if isinstance(header, dict) else None
                raw_members = body.get("members") or []
                if not isinstance(raw_members, list):
                    raise EtcdRequestError(f"{url} answered a malformed member list", failure=EtcdFailure.ANSWER)
                members = tuple(_member(m, source, hex_ids=False) for m in raw_members)
                return MemberList(members, int(cluster_id) if str(cluster_id or "").isdigit() else None)
        url = f"{client_url}/v2/members"
        response = self._call("GET", url, timeout)
        if response.status_code != 200:
            raise self._error(response, url)
        body = self._json(response, url)
        raw_members = body.get("members") if isinstance(body, dict) else None
        if not isinstance(raw_members, list):
            raise EtcdRequestError(f"{url} answered a malformed member list", failure=EtcdFailure.ANSWER)
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
            raise EtcdRequestError(f"{url} answered a non-object", failure=EtcdFailure.ANSWER)
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
