"""A TCP server that reads each request's first bytes and closes the connection without
an answer: the request was sent and no answer came (httpx raises RemoteProtocolError or
ReadError). Counts the connections it dropped."""

from __future__ import annotations

import contextlib
import socket
import threading


class Dropper:
    """A TCP server that reads each request's first bytes and closes the connection
    without an answer: the request was sent, no answer came. Counts connections."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2.0)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                self.connections += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> Dropper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
