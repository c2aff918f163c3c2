#!/usr/bin/env python3
"""A minimal push gateway (Matrix Push Gateway API) for tests: records every
/_matrix/push/v1/notify body as one JSON line in OUT_FILE and answers
{"rejected": [...]} with the pushkeys listed in REJECT (comma-separated).

usage: push_gateway.py PORT OUT_FILE [REJECT]
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port, out_file = int(sys.argv[1]), sys.argv[2]
reject = set(filter(None, (sys.argv[3] if len(sys.argv) > 3 else "").split(",")))


class Gateway(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != "/_matrix/push/v1/notify":
            self.send_response(404)
            self.end_headers()
            return
        notification = json.loads(body)
        with open(out_file, "a") as f:
            f.write(json.dumps(notification) + "\n")
        devices = notification.get("notification", {}).get("devices", [])
        rejected = [d["pushkey"] for d in devices if d.get("pushkey") in reject]
        answer = json.dumps({"rejected": rejected}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", port), Gateway).serve_forever()
