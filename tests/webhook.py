"""A real HTTP server on 127.0.0.1 that takes webhook POSTs (apprise's ``json://``), for the
notification tests: it records each body, and can answer slowly or fail the first N."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Webhook:
    """``with Webhook() as hook: ... hook.url ... hook.posts``."""

    def __init__(self, *, delay: float = 0.0, fail_first: int = 0, port: int = 0) -> None:
        self.posts: list[dict[str, Any]] = []
        self.attempts = 0
        self.delay, self.fail_first = delay, fail_first
        self.got = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server contract
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook.got:
                    hook.attempts += 1
                    failing = hook.attempts <= hook.fail_first
                if hook.delay:
                    time.sleep(hook.delay)
                self.send_response(500 if failing else 200)
                self.end_headers()
                if not failing:
                    with hook.got:
                        hook.posts.append(json.loads(body))
                        hook.got.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"json://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Block until ``n`` posts arrived (or the timeout); return them."""
        with self.got:
            self.got.wait_for(lambda: len(self.posts) >= n, timeout)
            return list(self.posts)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
