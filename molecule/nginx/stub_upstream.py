"""Stub upstream for the nginx scenario: serves /srv/stub, sets the app's
internal headers (X-Served-By, X-App-Version), answers GET /echo with the
request headers it received and POST with the size of the body it read.

Usage: stub_upstream.py <bind address> <host name>"""

import functools
import http.server
import json
import sys
from urllib.parse import urlsplit

BIND, NAME = sys.argv[1], sys.argv[2]


class Handler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self):
        self.send_header("X-Served-By", NAME)
        self.send_header("X-App-Version", "stub-1")
        super().end_headers()

    def send_json(self, document):
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if urlsplit(self.path).path == "/echo":
            self.send_json({name: self.headers.get_all(name) for name in self.headers})
        else:
            super().do_GET()

    def do_POST(self):
        received = len(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_json({"received": received})


handler = functools.partial(Handler, directory="/srv/stub")
http.server.ThreadingHTTPServer((BIND, 8000), handler).serve_forever()
