"""A small web app the serve-mode tests and the preview bench run inside a sandbox.

Standard library only (HTTP/1.1 with keep-alive, and a hand-written WebSocket echo):

    python3 preview_app.py PORT [--quiet]     (--quiet: no line on stderr per request)

    GET  /headers      the request as the app saw it: method, target, headers (JSON)
    POST /echo         the body back, byte for byte (Content-Length or chunked request)
    POST /sink         {"bytes", "sha256"} of the body
    GET  /bytes?n=N    N bytes of a fixed pattern, streamed in 64 KiB writes
    GET  /hop          a response carrying hop-by-hop headers (and `X-App: yes`)
    GET  /exit         answers, then the process exits with code 3
    GET  /work?ms=N    answers after N ms (an endpoint that does some work)
    GET  /peer         {"port"}: the source port of the connection the request came on
    POST /early        413 at once, without reading the body, and the connection closes
    GET  /drop         answers (keep-alive, as far as the caller knows), then closes the connection
    GET  /ws           WebSocket: echoes text and binary messages, picks the first subprotocol
    anything else      {"method", "path"} (JSON), for every method
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PATTERN = bytes(range(256)) * 256  # 64 KiB
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
QUIET = "--quiet" in sys.argv


def pattern_bytes(n: int) -> bytes:
    """The first n bytes of what `GET /bytes?n=N` sends (tests import this)."""
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes

    def log_message(self, format: str, *args: object) -> None:
        if not QUIET:
            sys.stderr.write(f"{self.command} {self.path}\n")

    # --- bodies -------------------------------------------------------------------------

    def body_chunks(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        return
                    left -= len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def reply(self, status: int, body: bytes, ctype: str = "application/json", **extra: str):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in extra.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # --- routes -------------------------------------------------------------------------

    def handle_any(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if url.path == "/headers":
            for _ in self.body_chunks():
                pass
            seen = {"method": self.command, "target": self.path, "headers": self.headers.items()}
            return self.reply(200, json.dumps(seen).encode())
        if url.path == "/echo":
            body = b"".join(self.body_chunks())
            digest = hashlib.sha256(body).hexdigest()
            return self.reply(200, body, "application/octet-stream", X_Body_Sha256=digest)
        if url.path == "/sink":
            digest, size = hashlib.sha256(), 0
            for chunk in self.body_chunks():
                digest.update(chunk)
                size += len(chunk)
            seen = {"bytes": size, "sha256": digest.hexdigest()}
            return self.reply(200, json.dumps(seen).encode())
        if url.path == "/bytes":
            n = int(parse_qs(url.query).get("n", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            sent = 0
            while sent < n:
                chunk = PATTERN[: min(len(PATTERN), n - sent)]
                self.wfile.write(chunk)
                sent += len(chunk)
            return None
        if url.path == "/hop":
            return self.reply(
                200, b"{}", X_App="yes", Connection="X-Secret-Hop", X_Secret_Hop="1",
                Keep_Alive="timeout=5",
            )
        if url.path == "/work":
            time.sleep(int(parse_qs(url.query).get("ms", ["0"])[0]) / 1000)
            return self.reply(200, b'{"worked": true}')
        if url.path == "/peer":
            return self.reply(200, json.dumps({"port": self.client_address[1]}).encode())
        if url.path == "/early":
            self.reply(413, b'{"too": "large"}')
            self.close_connection = True
            return None
        if url.path == "/drop":
            self.reply(200, b'{"dropped": true}')
            self.close_connection = True  # without a `Connection: close`: a surprise close
            return None
        if url.path == "/exit":
            self.reply(200, b'{"bye": true}')
            self.wfile.flush()
            threading.Timer(0.2, os._exit, (3,)).start()
            return None
        for _ in self.body_chunks():
            pass
        return self.reply(200, json.dumps({"method": self.command, "path": self.path}).encode())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = handle_any

    # --- WebSocket echo -----------------------------------------------------------------

    def websocket(self) -> None:
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if offered[0]:
            self.send_header("Sec-WebSocket-Protocol", offered[0])
        self.end_headers()
        self.wfile.flush()
        message, kind = b"", 0
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            fin, opcode = head[0] & 0x80, head[0] & 0x0F
            masked, length = head[1] & 0x80, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if masked else b"\0\0\0\0"
            raw = self.rfile.read(length)
            key = (mask * (length // 4 + 1))[:length]
            data = (int.from_bytes(raw, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
            if opcode == 8:  # close: answer with the same code
                self.send_frame(8, data[:2])
                return
            if opcode == 9:
                self.send_frame(10, data)
                continue
            if opcode in (1, 2):
                message, kind = data, opcode
            elif opcode == 0:
                message += data
            if fin and kind:
                self.send_frame(kind, message)
                message, kind = b"", 0

    def send_frame(self, opcode: int, data: bytes) -> None:
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        self.wfile.write(head + data)
        self.wfile.flush()


if __name__ == "__main__":
    port = int(sys.argv[1])
    print(f"preview app listening on {port}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
