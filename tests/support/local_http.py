"""A small JSON-answering HTTP server on loopback for tests (auth endpoints, backend proxies)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


class LocalJsonServer:
    """``POST`` handler on ``127.0.0.1:<free port>`` in a daemon thread.

    Subclasses implement :meth:`handle_post`; an exception there answers 500 with its repr so
    a bug reaches the test instead of hanging it.
    """

    thread_name = "local-http"
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def handle_post(self, path: str, body: bytes) -> tuple[int, Any]:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        assert self._server is not None, f"{self.thread_name} not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    status, payload = owner.handle_post(self.path, body)
                except Exception as exc:
                    status, payload = 500, {"error": repr(exc)}
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
