"""A fake EC2 instance metadata service (IMDS) for one simulated instance.

stdlib only: a ``ThreadingHTTPServer`` in a background thread, bound to 127.0.0.1 on a free port. Point the
agent at it with ``AWS_EC2_METADATA_SERVICE_ENDPOINT=<imds.url>``.

Modes (``imds.mode``, changeable at any time):

``"v2"`` (default)
    IMDSv2 as on a current instance: ``PUT /latest/api/token`` needs ``X-aws-ec2-metadata-token-ttl-seconds``
    in 1..21600 (else 400; a ``X-Forwarded-For`` header gives 403, as on AWS) and returns a random token;
    every GET needs ``X-aws-ec2-metadata-token`` with a valid, unexpired token (else 401).
``"v1"``
    An IMDS without tokens: the token endpoint answers ``v1_token_status`` (404, 403 or 405) and GETs work
    without a token.
``"status"``
    Every request answers ``error_status`` (e.g. 500, 401, 503) with a short body.
``"hang"``
    The connection is accepted and the request read, but no byte is ever sent back, until the mode changes
    or the server stops (``stop()`` releases hung requests, so shutdown never blocks).

Every request is recorded (``requests``, ``count()``, ``tokens_used()``), so tests can assert e.g. that one
agent run asked for one token and reused it.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MODES = ("v2", "v1", "status", "hang")
TOKEN_PATH = "/latest/api/token"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
DOCUMENT_PATH = "/latest/dynamic/instance-identity/document"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
LOCAL_IPV4_PATH = "/latest/meta-data/local-ipv4"
REGION_PATH = "/latest/meta-data/placement/region"
AZ_PATH = "/latest/meta-data/placement/availability-zone"
LIFECYCLE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
MAX_TTL = 21600


@dataclass(frozen=True)
class ImdsRequest:
    """One request the fake IMDS received."""

    method: str
    path: str
    token_present: bool
    token: str | None
    status: int | None  # None: the request was left hanging
    mode: str


class FakeImds:
    """IMDS for one instance. Attributes can be changed while it runs; see the module docstring for modes."""

    def __init__(
        self,
        instance_id: str = "i-0123456789abcdef0",
        private_ip: str = "127.0.0.1",
        *,
        region: str = "us-east-1",
        availability_zone: str | None = None,
        account_id: str = "123456789012",
        image_id: str = "ami-12c6146b",
        instance_type: str = "t3.micro",
        lifecycle_state: str = "InService",
        host: str = "127.0.0.1",
        port: int = 0,
        start: bool = True,
    ) -> None:
        self.instance_id = instance_id
        self.private_ip = private_ip
        self.region = region
        self.availability_zone = availability_zone or f"{region}a"
        self.account_id = account_id
        self.image_id = image_id
        self.instance_type = instance_type
        self.lifecycle_state = lifecycle_state
        #: merged over the identity document (e.g. ``{"instanceId": "i-evil\\nX=1"}``); None values delete keys
        self.document_overrides: dict[str, Any] = {}
        #: exact path -> body served instead of the normal answer; None -> 404
        self.path_overrides: dict[str, str | None] = {}
        #: seconds to sleep before answering any request (not in "hang" mode)
        self.delay = 0.0
        self.v1_token_status = 404
        self.error_status = 500
        self._mode = "v2"
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._issued: list[str] = []
        self._requests: list[ImdsRequest] = []
        self._release = threading.Event()  # set on stop() and on leaving "hang" mode
        self._stopped = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> FakeImds:
        if self._server is not None:
            return self
        self._stopped.clear()
        self._release.clear()
        server = ThreadingHTTPServer((self._host, self._port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name=f"fake-imds-{self._port}"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release hung requests and close every open connection. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopped.set()
        self._release.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    close = stop

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT/`` (the value for ``AWS_EC2_METADATA_SERVICE_ENDPOINT``)."""
        return f"http://{self._host}:{self._port}/"

    def __enter__(self) -> FakeImds:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- behaviour --------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self.set_mode(mode)

    def set_mode(self, mode: str, status: int | None = None) -> None:
        """Switch mode. ``status`` sets ``v1_token_status`` for "v1" and ``error_status`` for "status"."""
        if mode not in MODES:
            raise ValueError(f"unknown IMDS mode {mode!r}; one of {MODES}")
        if mode == "v1" and status is not None:
            self.v1_token_status = status
        if mode == "status" and status is not None:
            self.error_status = status
        self._mode = mode
        if mode == "hang":
            self._release.clear()
        else:
            self._release.set()

    def expire_tokens(self) -> None:
        """Invalidate every token issued so far (the next GET with one of them gets 401)."""
        with self._lock:
            self._tokens.clear()

    def document(self) -> dict[str, Any]:
        """The instance identity document as served."""
        doc: dict[str, Any] = {
            "accountId": self.account_id,
            "architecture": "x86_64",
            "availabilityZone": self.availability_zone,
            "billingProducts": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "imageId": self.image_id,
            "instanceId": self.instance_id,
            "instanceType": self.instance_type,
            "kernelId": None,
            "pendingTime": "2024-01-01T00:00:00Z",
            "privateIp": self.private_ip,
            "ramdiskId": None,
            "region": self.region,
            "version": "2017-09-30",
        }
        for key, value in self.document_overrides.items():
            if value is None:
                doc.pop(key, None)
            else:
                doc[key] = value
        return doc

    def _metadata(self) -> dict[str, str]:
        hostname = "ip-" + self.private_ip.replace(".", "-") + f".{self.region}.compute.internal"
        return {
            INSTANCE_ID_PATH: self.instance_id,
            LOCAL_IPV4_PATH: self.private_ip,
            REGION_PATH: self.region,
            AZ_PATH: self.availability_zone,
            LIFECYCLE_PATH: self.lifecycle_state,
            "/latest/meta-data/ami-id": self.image_id,
            "/latest/meta-data/instance-type": self.instance_type,
            "/latest/meta-data/local-hostname": hostname,
            "/latest/meta-data/hostname": hostname,
            DOCUMENT_PATH: json.dumps(self.document(), indent=2),
        }

    def body_for(self, path: str) -> str | None:
        """What a successful GET of ``path`` returns (None = 404), including directory listings."""
        if path in self.path_overrides:
            return self.path_overrides[path]
        items = self._metadata()
        if path in items:
            return items[path]
        if path.endswith("/") and path.rstrip("/") in items:  # real IMDS serves leaves with a slash too
            return items[path.rstrip("/")]
        prefix = path.rstrip("/") + "/"
        children: set[str] = set()
        for item in items:
            if item.startswith(prefix):
                head, sep, _ = item[len(prefix) :].partition("/")
                children.add(head + ("/" if sep else ""))
        return "\n".join(sorted(children)) if children else None

    # -- statistics -------------------------------------------------------------------------------------
    @property
    def requests(self) -> list[ImdsRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def tokens_issued(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def count(self, path: str | None = None, method: str | None = None) -> int:
        """Number of requests (optionally only for ``path`` and/or ``method``)."""
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path) and (method is None or r.method == method.upper())
        )

    def counts(self) -> dict[str, int]:
        """Requests per ``"METHOD path"``."""
        return dict(Counter(f"{r.method} {r.path}" for r in self.requests))

    def tokens_used(self) -> set[str]:
        """Distinct token values sent with GET requests."""
        return {r.token for r in self.requests if r.method == "GET" and r.token is not None}

    def reset_stats(self) -> None:
        with self._lock:
            self._requests.clear()
            self._issued.clear()

    # -- internals used by the handler ------------------------------------------------------------------
    def _record(self, req: ImdsRequest) -> None:
        with self._lock:
            self._requests.append(req)

    def _issue_token(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + ttl
            self._issued.append(token)
        return token

    def _token_valid(self, token: str | None) -> bool:
        if token is None:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and expiry > time.monotonic()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def _make_handler(imds: FakeImds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
        server_version = "EC2ws"
        sys_version = ""

        def setup(self) -> None:
            super().setup()
            imds._track(self.connection, add=True)

        def finish(self) -> None:
            imds._track(self.connection, add=False)
            with contextlib.suppress(OSError):
                super().finish()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return

        def do_GET(self) -> None:
            self._handle("GET")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def do_HEAD(self) -> None:
            self._handle("HEAD")

        def _send(self, status: int, body: str, content_type: str = "text/plain") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = urlsplit(self.path).path
            token = self.headers.get(TOKEN_HEADER)
            mode = imds.mode

            if mode == "hang":
                imds._record(ImdsRequest(method, path, token is not None, token, None, mode))
                imds._release.wait()
                self.close_connection = True
                return
            if imds.delay > 0:
                imds._stopped.wait(imds.delay)
            status, body = self._answer(method, path, token, mode)
            imds._record(ImdsRequest(method, path, token is not None, token, status, mode))
            self._send(status, body)

        def _answer(self, method: str, path: str, token: str | None, mode: str) -> tuple[int, str]:
            if mode == "status":
                return imds.error_status, f"fake IMDS error {imds.error_status}\n"
            if path == TOKEN_PATH:
                if method != "PUT":
                    return 405, "Method Not Allowed\n"
                if mode == "v1":
                    return imds.v1_token_status, "token endpoint not available\n"
                if self.headers.get("X-Forwarded-For") is not None:
                    return 403, "Forbidden\n"
                raw_ttl = self.headers.get(TOKEN_TTL_HEADER)
                try:
                    ttl = int(raw_ttl) if raw_ttl is not None else 0
                except ValueError:
                    ttl = 0
                if not 1 <= ttl <= MAX_TTL:
                    return 400, "Bad Request\n"
                return 200, imds._issue_token(ttl)
            if method not in ("GET", "HEAD"):
                return 405, "Method Not Allowed\n"
            if mode == "v2" and not imds._token_valid(token):
                return 401, "Unauthorized\n"
            body = imds.body_for(path)
            if body is None:
                return 404, "Not Found\n"
            return 200, body

    return Handler
