"""A TCP server on 127.0.0.1 that accepts every connection and never answers: an endpoint that hangs.

What a stuck S3 (or a black-holing proxy) looks like to a client: the connection is made, the request is sent,
no byte ever comes back. ``with SilentServer() as silent: ... silent.url ...``; closing it closes every socket.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class SilentServer:
    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._accepted: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, name="silent server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._accepted.append(conn)  # kept open, never read from or written to
                self.connections += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            accepted, self._accepted = self._accepted, []
        with contextlib.suppress(OSError):  # not connected: nothing to shut down
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in accepted:
            conn.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
