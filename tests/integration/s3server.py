"""A local S3 for the tests: moto's server as a subprocess on loopback.

MotoServer starts `moto_server` from the test virtual environment on a free
loopback port, waits until it answers (polling with a deadline, never a blind
sleep) and stops it by its PID. With auth=True moto checks SigV4 signatures:
INITIAL_NO_AUTH_ACTION_COUNT lets exactly the IAM calls that create a user
and its access key through unauthenticated; every later request must be
signed with those keys (moto's own IAM).

self_signed_cert() makes a throwaway certificate for 127.0.0.1 and
localhost with openssl; MotoServer(cert=...) serves HTTPS with it, and the
certificate file itself is the CA bundle a client must be given.

FakeS3 is a scripted S3 on loopback, in this process, for the answers moto
never gives (5xx, throttling, an <Error> in a 200); it records every request.

CutProxy is a loopback TCP proxy the tests control: it forwards to the
server and can cut connections after a number of client bytes, to inject
connection failures in the middle of a transfer.
"""
import hashlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

VENV_BIN = pathlib.Path(sys.executable).parent

# The IAM calls of create_iam_keys(): the unauthenticated actions to allow.
IAM_SETUP_ACTIONS = 3


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, what):
    """Polls PREDICATE until it is true; raises TimeoutError after TIMEOUT s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # a poll interval, not a wait for the condition
        delay = min(delay * 2, 0.2)


def self_signed_cert(directory, name="server"):
    """A self-signed certificate (its own CA) for 127.0.0.1 and localhost,
    valid for a day: (cert.pem, key.pem) under DIRECTORY."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN=ffdl test {name}", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class MotoServer:
    def __init__(self, log_dir, auth=False, port=None, ssl=False, cert=None):
        self.log_dir = pathlib.Path(log_dir)
        self.auth = auth
        # HTTPS: with CERT, a (cert.pem, key.pem) pair; else, with ssl=True,
        # moto's ad-hoc self-signed certificate
        self.cert = cert
        self.ssl = ssl or cert is not None
        self.port = port or free_port()
        self.proc = None
        self.log_path = self.log_dir / f"moto-{self.port}.log"

    @property
    def endpoint(self):
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    def _tls_context(self):
        """How the harness itself reaches the server: trusting CERT, or, for
        moto's ad-hoc certificate, without verification."""
        import ssl
        if self.cert:
            return ssl.create_default_context(cafile=str(self.cert[0]))
        return ssl._create_unverified_context() if self.ssl else None

    def _answers(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {self.proc.returncode}:\n"
                               + self.log_path.read_text(errors="replace")[-3000:])
        try:
            # the dashboard: answers without counting as an S3/IAM action
            with urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1,
                                        context=self._tls_context()) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
            return False

    def start(self, timeout=30):
        env = dict(os.environ)
        env.pop("AWS_ACCESS_KEY_ID", None)
        env.pop("AWS_SECRET_ACCESS_KEY", None)
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(IAM_SETUP_ACTIONS)
        moto = VENV_BIN / "moto_server"
        cmd = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        args = ["-H", "127.0.0.1", "-p", str(self.port)]
        if self.cert:
            args += ["--ssl-cert", str(self.cert[0]), "--ssl-key", str(self.cert[1])]
        elif self.ssl:
            args += ["--ssl"]
        self.proc = subprocess.Popen(cmd + args, env=env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_until(self._answers, timeout, f"moto_server on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        """Stops the server by its PID (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self):
        """Kills the server at once by its PID (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, timeout=30):
        self.stop()
        return self.start(timeout)

    def reset(self):
        """Forgets every bucket and object (moto's /moto-api/reset)."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10, context=self._tls_context()) as r:
            json.loads(r.read() or b"{}")

    def client(self, access="test", secret="test", **config):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access, aws_secret_access_key=secret,
                            verify=str(self.cert[0]) if self.cert else None,
                            config=Config(s3={"addressing_style": "path"}, **config))

    def create_iam_keys(self, user="ffdl-test"):
        """A user allowed everything on S3 and its access key: (id, secret).

        On an auth server these are the IAM_SETUP_ACTIONS unauthenticated
        actions; afterwards moto checks every signature."""
        import boto3
        iam = boto3.client("iam", endpoint_url=self.endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all-s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class CutProxy:
    """A TCP proxy on loopback in front of TARGET_PORT.

    cut_after(n, times, direction): the next TIMES connections that carry
    more than N bytes in DIRECTION ("up": client to server, "down": server
    to client) are cut there, both sides closed; times=None cuts every such
    connection. refuse(): new connections are closed at once. `cuts` counts
    the connections cut; `ranges` lists the (first, last) byte of every
    Range header the client sent."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.limit = None
        self.times = 0
        self.direction = "up"
        self.from_byte = 0
        self.cuts = 0
        self.refusing = False
        self.rate = None
        self.rate_direction = "up"
        self.closed = False
        self.ranges = []  # the Range header of each request that had one, in order
        self.conns = set()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, nbytes, times=1, direction="up", from_byte=0):
        """FROM_BYTE > 0: only answers to ranges that start there or later
        are cut (a download's first part passes)."""
        with self.lock:
            self.limit, self.times, self.direction = nbytes, times, direction
            self.from_byte = from_byte

    def throttle(self, bytes_per_s, direction="up"):
        """Slows each connection's bytes in DIRECTION ("up": client to
        server, "down": server to client) to BYTES_PER_S (None: full speed),
        so that a test can act in mid-transfer."""
        with self.lock:
            self.rate, self.rate_direction = bytes_per_s, direction

    def refuse(self, on=True):
        with self.lock:
            self.refusing = on

    def _may_cut(self, direction, carried, n, range_start):
        """How many of the N next bytes pass, or None to pass them all."""
        with self.lock:
            if self.limit is None or direction != self.direction or carried + n <= self.limit:
                return None
            if range_start < self.from_byte:
                return None
            if self.times is not None:
                if self.times <= 0:
                    return None
                self.times -= 1
            self.cuts += 1
            return max(0, self.limit - carried)

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                refusing = self.refusing
            if refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            state = {"decided": False}
            with self.lock:
                self.conns.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, state, "up"),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, state, "down"),
                             daemon=True).start()

    def _note_ranges(self, data, state):
        found = re.findall(rb"\r\nRange: bytes=(\d+)-(\d+)\r\n", data, re.IGNORECASE)
        if found:
            state["range_start"] = int(found[-1][0])
            with self.lock:
                self.ranges.extend((int(a), int(b)) for a, b in found)

    def _close_pair(self, a, b):
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
            with self.lock:
                self.conns.discard(s)

    def _pipe(self, src, dst, state, direction):
        carried = 0
        started = time.monotonic()
        try:
            while True:
                with self.lock:
                    rate = self.rate if direction == self.rate_direction else None
                if rate:
                    # pacing the stream, not waiting for a condition
                    ahead = carried / rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                data = src.recv(16384 if rate else 65536)
                if not data:
                    break
                if not state["decided"]:
                    keep = self._may_cut(direction, carried, len(data),
                                         state.get("range_start", 0))
                    if keep is not None:
                        state["decided"] = True
                        dst.sendall(data[:keep])
                        self._close_pair(src, dst)
                        return
                if direction == "up":
                    self._note_ranges(data, state)
                carried += len(data)
                dst.sendall(data)
        except OSError:
            pass
        self._close_pair(src, dst)

    def close(self):
        self.closed = True
        self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            try:
                s.close()
            except OSError:
                pass


class FakeS3:
    """A scripted S3 on loopback for what moto never does: 5xx, throttling,
    a 200 whose body is an <Error>. FAILURES maps (method, query-name) to a
    list of (status, code) answers served first; then it answers like S3.
    A GET answers "fake body" with ETag "x" and the headers in get_headers,
    a GET ?uploads (ListMultipartUploads) the next of upload_pages (XML), a
    ListObjectsV2 (?list-type=2) an empty listing.
    Every request is recorded with its headers and body."""

    def __init__(self, failures=None):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.get_headers = {}
        self.upload_pages = []
        self.requests = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                status, headers, out = fake.answer(self.command, self.path, self.headers, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, method, path, headers, body):
        from urllib.parse import parse_qs, urlsplit
        query = parse_qs(urlsplit(path).query, keep_blank_values=True)
        name = ("uploadId" if "uploadId" in query and "partNumber" not in query
                else "partNumber" if "partNumber" in query
                else "uploads" if "uploads" in query else "")
        with self.lock:
            self.requests.append((method, path, dict(headers), body))
            script = self.failures.get((method, name))
            fail = script.pop(0) if script else None
        if fail:
            status, code = fail
            return status, {}, (f"<Error><Code>{code}</Code><Message>scripted {code}</Message>"
                                f"</Error>").encode()
        if method == "POST" and name == "uploads":
            return 200, {}, (b"<InitiateMultipartUploadResult><UploadId>fake-id</UploadId>"
                             b"</InitiateMultipartUploadResult>")
        if method == "POST" and name == "uploadId":
            return 200, {}, b"<CompleteMultipartUploadResult></CompleteMultipartUploadResult>"
        if method == "PUT":
            return 200, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, b""
        if method == "GET" and name == "uploads" and self.upload_pages:
            return 200, {}, self.upload_pages.pop(0).encode()
        if method == "GET" and "list-type" in query:
            return 200, {}, b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"
        if method == "GET":
            return 200, {"ETag": '"x"', **self.get_headers}, b"fake body"
        return 204, {}, b""

    def close(self):
        self.server.shutdown()
        self.server.server_close()
