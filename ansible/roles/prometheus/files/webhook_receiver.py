"""Alertmanager webhook receiver that writes each notification as one JSON line to stdout
(the unit's journal). Standard library only: python3 prometheus-webhook-receiver ADDRESS PORT."""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

MAX_BODY = 1024 * 1024


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self.send_error(413 if length else 411)
            return
        try:
            notification = json.loads(self.rfile.read(length))
        except ValueError:
            self.send_error(400, "not JSON")
            return
        print(json.dumps(notification, separators=(",", ":"), sort_keys=True), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        """Only the notifications reach the journal, not an access log."""


def main():
    address, port = sys.argv[1], int(sys.argv[2])
    HTTPServer((address, port), Receiver).serve_forever()


if __name__ == "__main__":
    main()
