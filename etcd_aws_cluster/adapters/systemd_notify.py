"""sd_notify(3) without a library: `STATUS=` lines so `systemctl status` shows what the agent waits for."""

from __future__ import annotations

import contextlib
import os
import socket


def status(text: str) -> bool:
    """Send STATUS=text to systemd when NOTIFY_SOCKET is set; False when there is nobody to tell."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    message = "STATUS=" + text.replace("\n", " ")[:400]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode("utf-8", "replace"), target)
        return True
    return False
