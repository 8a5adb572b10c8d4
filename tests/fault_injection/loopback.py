"""A loopback HTTP server for fault-injection tests: `http.server` in a thread on 127.0.0.1, port 0, whose
routes are plain functions of the request handler (so each test says exactly how the server misbehaves)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

Route = Callable[[BaseHTTPRequestHandler], None]


class Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}
    requests: list[tuple[str, dict]] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append((self.path, dict(self.headers)))
        route = self.routes.get(self.path.split("?", 1)[0])
        try:
            if route is None:
                reply(self, 404, b"not found")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict | None = None) -> None:
    handler.send_response(status)
    for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def redirect(location: str) -> Route:
    return lambda handler: reply(handler, 302, headers={"Location": location})


@contextmanager
def loopback(routes: dict[str, Route]) -> Iterator[tuple[str, list]]:
    """(base URL, the list of (path, headers) requested), serving `routes` while the block runs."""
    handler = type("RouteHandler", (Handler,), {"routes": routes, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()
