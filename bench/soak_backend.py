#!/usr/bin/env python3
"""One upstream instance for bench/soak.sh: a real HTTP/1.1 keep-alive server (the standard
library's ThreadingHTTPServer), one process per instance so that the soak can kill -9 exactly
one instance and start it again on the same port.

    python3 bench/soak_backend.py --port PORT --service users --instance users-1

Every answer says who made it (`instance`) and echoes what the client can check cheaply:

  GET  /healthz                 "ok" (active health checks)
  GET  /users/ID                {"id": ID, "name": "user-ID", "address_id": "a-ID", ...}   (aggregation)
  GET  /orders?user=ID          [{"id": 1, "user": ID}, {"id": 2, "user": ID}]             (aggregation)
  GET  /addresses/AID           {"id": AID, "street": ..., "city": ...}, max-age=5          (aggregation)
  GET  /cached/KEY              {"key": KEY, ...}, Cache-Control: public, max-age=2          (response cache)
  GET  /stream/KIB              KIB KiB, chunked, of the request's x-soak-token repeated      (streaming)
  *    anything else            {"token", "method", "path", "consumer", "proto", "body_len",
                                 "body_sha256", ...}; the token is also in x-soak-token      (echo)

Standard library only. Access logging is off (the gateway has its own).
"""

import argparse
import hashlib
import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SERVICE = "?"
INSTANCE = "?"


def stream_bytes(token, total):
    """The body of GET /stream/KIB: the token and a newline, repeated, cut at `total` bytes
    (soak_client.py computes the same to check it)."""
    unit = (token or "-").encode() + b"\n"
    reps = total // len(unit) + 1
    return (unit * reps)[:total]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def version_string(self):
        return "soak-backend"

    def setup(self):
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK
        # add 40 ms to some answers
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # the gateway logs requests
        pass

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunked body")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # trailers until an empty line
                    while True:
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(3)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def send_json(self, status, obj, extra=None):
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        tok = self.headers.get("x-soak-token")
        if tok:
            self.send_header("x-soak-token", tok)
        self.send_header("x-soak-instance", INSTANCE)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        try:
            body = self.read_body()
        except (ValueError, ConnectionError):
            self.close_connection = True
            return
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        if url.path == "/healthz":
            data = b"ok"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if len(parts) == 2 and parts[0] == "users" and self.command == "GET":
            uid = parts[1]
            self.send_json(200, {"id": uid, "name": "user-" + uid, "address_id": "a-" + uid,
                                 "instance": INSTANCE})
            return
        if len(parts) == 1 and parts[0] == "orders" and self.command == "GET":
            user = (parse_qs(url.query).get("user") or [""])[0]
            self.send_json(200, [{"id": 1, "user": user}, {"id": 2, "user": user}])
            return
        if len(parts) == 2 and parts[0] == "addresses" and self.command == "GET":
            aid = parts[1]
            self.send_json(200, {"id": aid, "street": "Main St " + aid, "city": "Springfield",
                                 "zip": "00000"}, {"Cache-Control": "max-age=5"})
            return
        if len(parts) == 2 and parts[0] == "cached" and self.command in ("GET", "HEAD"):
            self.send_json(200, {"key": parts[1], "instance": INSTANCE},
                           {"Cache-Control": "public, max-age=2"})
            return
        if len(parts) == 2 and parts[0] == "stream" and self.command == "GET":
            kib = max(0, min(int(parts[1]) if parts[1].isdigit() else 0, 16384))
            data = stream_bytes(self.headers.get("x-soak-token"), kib * 1024)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("x-soak-instance", INSTANCE)
            self.end_headers()
            step = 16384
            for i in range(0, len(data), step):
                chunk = data[i:i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_json(200, {
            "service": SERVICE,
            "instance": INSTANCE,
            "method": self.command,
            "path": self.path,
            "token": self.headers.get("x-soak-token"),
            "consumer": self.headers.get("x-consumer-id"),
            "proto": self.headers.get("x-forwarded-proto"),
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        })

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main():
    global SERVICE, INSTANCE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--instance", required=True)
    a = ap.parse_args()
    SERVICE, INSTANCE = a.service, a.instance
    srv = Server(("127.0.0.1", a.port), Handler)
    print(f"{INSTANCE} listening on 127.0.0.1:{a.port}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
