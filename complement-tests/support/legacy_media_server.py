#!/usr/bin/env python3
"""A homeserver from before authenticated media, for the federation media tests.

Usage: legacy_media_server.py PORT CERT KEY

Serves HTTPS on 127.0.0.1:PORT. The federation media endpoints answer 400 M_UNRECOGNIZED (as
such a server does); GET /_matrix/media/v3/download/{server}/{id} answers the bytes
b"legacy bytes of <id>" as text/plain with a file name. Anything else is a 404.
"""
import http.server
import json
import ssl
import sys

PORT, CERT, KEY = int(sys.argv[1]), sys.argv[2], sys.argv[3]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/_matrix/federation/v1/media/"):
            body = json.dumps({"errcode": "M_UNRECOGNIZED", "error": "unrecognized"}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
        elif path.startswith("/_matrix/media/v3/download/"):
            media_id = path.rsplit("/", 1)[-1]
            body = b"legacy bytes of " + media_id.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Disposition", 'inline; filename="legacy.txt"')
        else:
            body = b"{}"
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(CERT, KEY)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
