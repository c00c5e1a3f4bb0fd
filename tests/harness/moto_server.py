"""moto in server mode as a subprocess on 127.0.0.1, for autoscaling + ec2, with lifecycle hooks that act
(tests/harness/moto_lifecycle.py).

The server is started through a :class:`~tests.harness.procs.ProcessRegistry`, so it is stopped by PID.
Its environment carries fake credentials and no real AWS endpoint, and it never needs the network.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from tests.harness.procs import ProcessRegistry, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def s3_client(moto_url: str) -> Any:
    """An S3 client of the moto server at `moto_url`, with its fake credentials (tests, benches)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies from the environment: everything here is loopback
    return session


def reset_moto(url: str, timeout: float = 10.0) -> None:
    """Drop every resource in the moto server (``POST /moto-api/reset``)."""
    with _session() as session:
        resp = session.post(url.rstrip("/") + "/moto-api/reset", timeout=timeout)
        resp.raise_for_status()


def moto_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        with _session() as session:
            return session.get(url.rstrip("/") + "/moto-api/", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


class MotoServer:
    """A moto server subprocess. ``with MotoServer() as moto: boto3.client(..., endpoint_url=moto.url)``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        log_dir: Path | None = None,
        registry: ProcessRegistry | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._own_registry = registry is None
        self.registry = registry if registry is not None else ProcessRegistry()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="moto-")
            log_dir = Path(self._tmp.name)
        self.log_path = log_dir / f"moto-{self.port}.log"
        # tests/harness/moto_lifecycle.py: the lifecycle actions the server saw, one JSON line each
        self.lifecycle_record = log_dir / f"moto-{self.port}-lifecycle.jsonl"
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        """Start the server and wait until it answers; returns its URL."""
        if self.pid is not None and self.registry.is_running(self.pid):
            return self.url
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(FAKE_CREDENTIALS)
        env["PYTHONUNBUFFERED"] = "1"
        env["MOTO_LIFECYCLE_RECORD"] = str(self.lifecycle_record)
        pythonpath = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{pythonpath}" if pythonpath else str(REPO_ROOT)
        # moto's server with lifecycle hooks that act (moto alone stores them only)
        proc = self.registry.start(
            [sys.executable, "-m", "tests.harness.moto_lifecycle", "-H", self.host, "-p", str(self.port)],
            log_path=self.log_path,
            env=env,
        )
        self.pid = proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {proc.returncode}; log:\n{self.log_tail()}")
            if moto_ready(self.url):
                return self.url
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto server did not answer within {timeout}s; log:\n{self.log_tail()}")

    def reset(self) -> None:
        reset_moto(self.url)

    def stop(self) -> None:
        if self.pid is not None:
            self.registry.stop(self.pid)
            self.pid = None
        if self._own_registry:
            self.registry.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    close = stop

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_moto(
    host: str = "127.0.0.1", *, log_dir: Path | None = None, registry: ProcessRegistry | None = None
) -> MotoServer:
    """Start a moto server and return it (call ``.stop()`` or use it as a context manager)."""
    server = MotoServer(host, log_dir=log_dir, registry=registry)
    server.start()
    return server
