"""A keep-alive HTTP client for ffdl-server's API, shared by the benchmarks
that drive a server (reload.py, shutdown.py)."""
import http.client
import json

TOKEN = "bench-admin-token"  # the benchmarks start their servers with FFDL_ADMIN_TOKEN set to it


class Client:
    """One keep-alive connection to the server (one per thread)."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def call(self, method, path, body=None, headers=None):
        headers = dict(headers or {}, Authorization=f"Bearer {TOKEN}")
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            # the server closes idle connections: once more, on a new one
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data[:1] in (b"{", b"[") else data
