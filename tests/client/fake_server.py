"""A tiny loopback HTTP server that answers like an embedding backend, but wrongly on
purpose: vectors of another size, malformed bodies, slow answers.

Why not the real worker: only one model is available offline, so "a different model
deployed somewhere" and "a broken server" have to be played by something we control.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class InFlight:
    """Embed requests in flight across several fake backends, and the most at once."""

    def __init__(self) -> None:
        self.now = self.peak = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


class FakeBackend:
    """Serves ``/embed``, ``/v1/embeddings``, ``/info`` and ``/health`` on 127.0.0.1.

    ``mode``: ``ok`` (``dim``-sized vectors whose first value is the text's length),
    ``wrong_rows`` (one row short), ``not_json``, ``ragged`` (rows of unequal size),
    ``no_data`` (OpenAI shape without ``data``), ``nan`` / ``null`` / ``string`` (one
    value of each row is NaN, null or a string), ``424`` (TEI's answer when its model
    fails: ``{"error", "error_type": "Backend"}``), ``500``, ``info_missing`` / ``info_list``
    (``/info`` answers 404, or a JSON list), ``info_drop`` (``/info`` closes the
    connection without an answer), ``413_plain`` (over ``max_batch``, a 413
    that states no limit, as a proxy's). ``delay``: seconds before each embed
    answer. ``hold``: an event each embed answer waits for (up to 10 s), so a test can
    act while requests are in flight. ``max_batch``: like TEI's
    ``--max-client-batch-size``: stated in ``/info`` and enforced with TEI's 413.
    Records every request as ``(method, path, body)`` and the highest number of embed
    requests it held at once.
    """

    def __init__(
        self,
        *,
        dim: int = 7,
        mode: str = "ok",
        delay: float = 0.0,
        max_batch: int | None = None,
        group: InFlight | None = None,
        hold: threading.Event | None = None,
    ) -> None:
        self.dim, self.mode, self.delay, self.max_batch = dim, mode, delay, max_batch
        self.group, self.hold = group, hold
        self.requests: list[tuple[str, str, Any]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll: shutdown() waits for the loop to look at its flag, and at the
        # default half second the suite's ~100 fake servers spent ~30 s closing.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def embed_requests(self) -> list[Any]:
        return [body for method, _, body in self.requests if method == "POST"]

    def _vectors(self, texts: list[str]) -> list[list[float]]:
        rows = [[float(len(t))] + [0.5] * (self.dim - 1) for t in texts]
        if self.mode == "wrong_rows":
            return rows[:-1]
        if self.mode == "ragged" and rows:
            rows[0] = [*rows[0], 1.0]
        poison = {"nan": float("nan"), "null": None, "string": "0.5"}
        if self.mode in poison:
            for row in rows:
                row[-1] = poison[self.mode]  # type: ignore[call-overload]
        return rows

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any, raw: bytes | None = None) -> None:
                body = raw if raw is not None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests.append(("GET", self.path, None))
                if self.path == "/info" and fake.mode == "info_drop":
                    self.close_connection = True
                    return
                if self.path == "/info" and fake.mode == "info_missing":
                    self._send(404, {"error": "no route", "error_type": "not_found"})
                elif self.path == "/info" and fake.mode == "info_list":
                    self._send(200, [fake.dim])
                elif self.path == "/info":
                    info: dict[str, Any] = {"dimension": fake.dim, "model_id": "fake"}
                    if fake.max_batch is not None:
                        info["max_client_batch_size"] = fake.max_batch
                    self._send(200, info)
                elif self.path == "/health":
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, {"error": "no route", "error_type": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"null")
                with fake._lock:
                    fake.requests.append(("POST", self.path, body))
                    fake._in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
                if fake.group is not None:
                    fake.group.enter()
                try:
                    if fake.hold is not None:
                        fake.hold.wait(10)  # bounded: a test that forgets to release
                    if fake.delay:
                        time.sleep(fake.delay)
                    self._answer(body)
                finally:
                    with fake._lock:
                        fake._in_flight -= 1
                    if fake.group is not None:
                        fake.group.leave()

            def _answer(self, body: Any) -> None:
                if fake.mode == "not_json":
                    self._send(200, None, raw=b"<html>surprise</html>")
                    return
                if fake.mode == "500":
                    self._send(500, {"error": "boom", "error_type": "Backend"})
                    return
                if fake.mode == "424":
                    error = {"error": "Backend error: model failed", "error_type": "Backend"}
                    self._send(424, error)
                    return
                texts = body.get("inputs", body.get("input", []))
                if fake.max_batch is not None and len(texts) > fake.max_batch:
                    message = (
                        f"batch size {len(texts)} > maximum allowed batch size {fake.max_batch}"
                    )
                    if fake.mode == "413_plain":  # a proxy's refusal: no limit stated
                        message = "request entity too large"
                    self._send(413, {"error": message, "error_type": "Validation"})
                    return
                if self.path == "/embed":
                    self._send(200, fake._vectors(body["inputs"]))
                elif self.path == "/v1/embeddings":
                    rows = fake._vectors(body["input"])
                    data = [{"index": i, "embedding": r} for i, r in enumerate(rows)]
                    self._send(200, {} if fake.mode == "no_data" else {"data": data})
                else:
                    self._send(404, {"error": "no route", "error_type": "not_found"})

        return Handler
