"""A small web app: GET / answers {"status": "ok"}, GET /add?a=1&b=2 answers {"sum": 3}.

Test mode starts it with PORT set to the `app.port` of the request.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/":
            self.send(200, {"status": "ok"})
        elif url.path == "/add":
            query = parse_qs(url.query)
            try:
                self.send(200, {"sum": int(query["a"][0]) + int(query["b"][0])})
            except (KeyError, ValueError):
                self.send(400, {"error": "a and b must be integers"})
        else:
            self.send(404, {"error": "not found"})

    def send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}", flush=True)


port = int(os.environ.get("PORT", "5000"))
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"listening on port {port}", flush=True)
server.serve_forever()
