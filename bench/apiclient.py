"""What the benchmarks that drive an ffdl-server share (reload.py,
shutdown.py): starting a server on a free port, and a keep-alive client for
its API."""
import http.client
import json
import os
import socket
import subprocess
import threading
import time

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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(build, data, config_text, policies=None, nodes=None):
    """Starts BUILD's ffdl-server on DATA with CONFIG_TEXT as its config
    file; returns (process, port) once it listens. Its log goes next to
    DATA."""
    port = free_port()
    data.parent.mkdir(parents=True, exist_ok=True)
    config = data.parent / f"bench-{port}.yml"
    config.write_text(config_text)
    args = [str(build / "ffdl-server"), "--listen", f"127.0.0.1:{port}", "--data", str(data),
            "--config", str(config)]
    if policies:
        args += ["--policies", str(policies)]
    env = dict(os.environ, FFDL_ADMIN_TOKEN=TOKEN)
    if nodes:
        env["FFDL_NODES"] = str(nodes)
    log = open(data.parent / f"server-{port}.log", "w")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    while "listening" not in proc.stdout.readline():
        if proc.poll() is not None:
            raise SystemExit(f"the server did not start (see {log.name})")
    return proc, port


def submit_many(port, body, headers, count, submitters):
    """POSTs the submission BODY COUNT times from SUBMITTERS threads, each
    with its own connection; returns submissions per second."""
    def submit(n):
        c = Client(port)
        for _ in range(n):
            code, doc = c.call("POST", "/v1/models", body, headers)
            if code != 201:
                raise SystemExit(f"submission refused: {code} {doc}")

    shares = [count // submitters + (1 if k < count % submitters else 0) for k in range(submitters)]
    threads = [threading.Thread(target=submit, args=(n,)) for n in shares]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.monotonic() - started)
