from __future__ import annotations

import socket
from pathlib import Path

import pytest

from etcd_aws_cluster.adapters import systemd_notify as notify


def test_status_reaches_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify.status("waiting for\npeers")
        assert server.recv(1024) == b"STATUS=waiting for peers"


def test_status_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify.status("x")
