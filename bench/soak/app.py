"""The soak's replica program (run behind `sluice queue`; a program not written by Sluice).

HTTP: answers any request with "<sha256 of the body> rev=<K_REVISION> pid=<pid>\n" and the
body itself, so the driver can check both directions byte for byte. WebSocket (`Upgrade:
websocket`): echoes every binary or text frame until the client closes. Standard library only.
"""

import base64
import hashlib
import os
import struct
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY = int(os.environ.get("DELAY_MS", "10")) / 1000.0
REVISION = os.environ.get("K_REVISION", "?")
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(rfile, n):
    data = b""
    while len(data) < n:
        chunk = rfile.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        time.sleep(DELAY)
        head = "%s rev=%s pid=%d\n" % (hashlib.sha256(body).hexdigest(), REVISION, os.getpid())
        out = head.encode() + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = answer
    do_POST = answer

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        try:
            while True:
                b0, b1 = read_exact(self.rfile, 2)
                opcode, masked, n = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack(">H", read_exact(self.rfile, 2))
                elif n == 127:
                    (n,) = struct.unpack(">Q", read_exact(self.rfile, 8))
                mask = read_exact(self.rfile, 4) if masked else b"\0\0\0\0"
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(read_exact(self.rfile, n)))
                if opcode == 8:  # close: answer it and end
                    self.wfile.write(b"\x88\x00")
                    self.wfile.flush()
                    break
                header = bytes([0x80 | opcode])
                if len(data) < 126:
                    header += bytes([len(data)])
                elif len(data) < 65536:
                    header += bytes([126]) + struct.pack(">H", len(data))
                else:
                    header += bytes([127]) + struct.pack(">Q", len(data))
                self.wfile.write(header + data)
                self.wfile.flush()
        except (EOFError, ConnectionError):
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


ThreadingHTTPServer.request_queue_size = 256
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
