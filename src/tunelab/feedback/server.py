"""The HTTP side of ``tunelab feedback``: GET / shows the next pair, POST /judge saves a decision."""
from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

MAX_FORM_BYTES = 16 * 1024  # a judgement form is a few short fields


def _handler(app):
    class Handler(BaseHTTPRequestHandler):
        server_version = "tunelab-feedback"

        def log_message(self, format, *args):  # quiet: one line per request to stderr only if asked
            if getattr(self.server, "verbose", False):
                super().log_message(format, *args)

        def _send(self, status: int, body: str, content_type: str = "text/html; charset=utf-8", location=None):
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.split("?")[0] != "/":
                return self._send(404, "not found", "text/plain; charset=utf-8")
            try:
                self._send(200, app.render())
            except Exception as exc:  # e.g. generation failed: say so on the page, keep serving
                self._send(500, f"error: {exc}", "text/plain; charset=utf-8")

        def do_POST(self):
            if self.path != "/judge":
                return self._send(404, "not found", "text/plain; charset=utf-8")
            if "application/x-www-form-urlencoded" not in self.headers.get("Content-Type", ""):
                return self._send(415, "send an HTML form (application/x-www-form-urlencoded)", "text/plain; charset=utf-8")
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._send(411, "Content-Length required", "text/plain; charset=utf-8")
            if not 0 <= length <= MAX_FORM_BYTES:
                return self._send(413, "form too large", "text/plain; charset=utf-8")
            try:
                form = parse_qs(self.rfile.read(length).decode("utf-8"), keep_blank_values=True, strict_parsing=False)
            except UnicodeDecodeError:
                return self._send(400, "form is not UTF-8", "text/plain; charset=utf-8")
            status, message = app.judge(form)
            if status == 303:  # post/redirect/get: reloading the next page never re-posts
                return self._send(303, message, "text/plain; charset=utf-8", location="/")
            self._send(status, message, "text/plain; charset=utf-8")

    return Handler


def make_server(app, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A server for ``app`` (port 0: any free port; the bound one is ``server.server_address[1]``)."""
    server = ThreadingHTTPServer((host, port), _handler(app))
    server.daemon_threads = True
    return server


def serve(app, host: str = "127.0.0.1", port: int = 8765) -> None:
    server = make_server(app, host, port)
    bound_host, bound_port = server.server_address[:2]
    print(f"feedback page: http://{bound_host}:{bound_port}/  (saving to {app.store.directory}; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
