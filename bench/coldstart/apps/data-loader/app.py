# data-loader: reads its 300 MiB data file completely at startup (SHA-256 over it, as a server
# loading a model or an index would), then answers GET / with the digest and a byte it looks up.
import hashlib
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

h = hashlib.sha256()
with open("/data/blob.bin", "rb") as f:
    data = f.read()
h.update(data)
DIGEST = h.hexdigest()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"sha256={DIGEST} size={len(data)} byte0={data[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("FC_SERVER_PORT", "9000"))), Handler).serve_forever()
