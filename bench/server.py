"""ffdl-server benchmarks; prints figures, asserts nothing.

  .venv/bin/python3 bench/server.py [BUILD_DIR]

1. wrk against /health and against GET /v1/models for a user with N jobs
   (FFDL_BENCH_JOBS, default 1000), next to the same wrk command against a
   minimal static h2o handler (bench_h2o_static) in the same run.
2. The time for `ffdl train` of a 10 MB model directory to answer 201.
3. The server's RSS holding 100,000 finished jobs (FFDL_BENCH_STORED) next
   to an empty store.
"""
import io
import json
import os
import pathlib
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "build").resolve()
TOKEN = "bench-admin-token"
JOBS = int(os.environ.get("FFDL_BENCH_JOBS", "1000"))
STORED = int(os.environ.get("FFDL_BENCH_STORED", "100000"))


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data):
    port = free_port()
    config = data.parent / f"bench-{port}.yml"
    config.write_text("creates_per_minute: 0\non_shutdown: halt\n")
    proc = subprocess.Popen([str(BUILD / "ffdl-server"), "--listen", f"127.0.0.1:{port}", "--data",
                             str(data), "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, FFDL_ADMIN_TOKEN=TOKEN))
    while "listening" not in proc.stdout.readline():
        if proc.poll() is not None:
            raise SystemExit("the server did not start")
    return proc, f"http://127.0.0.1:{port}"


def stop(proc):
    proc.terminate()
    proc.wait(timeout=60)


def rss_mib(pid):
    text = pathlib.Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def request(url, method="GET", body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    req.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.status, resp.read()


def multipart(manifest, zipped):
    b = "benchboundary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"manifest\"; filename=\"m.yml\"\r\n\r\n"
            f"{manifest}\r\n--{b}\r\nContent-Disposition: form-data; name=\"model_definition\"; "
            f"filename=\"m.zip\"\r\n\r\n").encode() + zipped + f"\r\n--{b}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={b}"}


def wrk(url, auth=False):
    args = ["wrk", "-t2", "-c32", "-d5s", "--latency", url]
    if auth:
        args[1:1] = ["-H", f"Authorization: Bearer {TOKEN}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p99 = re.search(r"99%\s+(\S+)", out).group(1)
    return rps, p99


def bench_wrk(tmp):
    proc, url = start_server(tmp / "wrk-data")
    try:
        zipped = io.BytesIO()
        with zipfile.ZipFile(zipped, "w") as z:
            z.writestr("run.sh", "true\n")
        manifest = ("name: trivial\ncpus: 0.1\nmemory: 64MiB\nframework:\n  name: custom\n"
                    "  version: local\n  command: 'true'\n")
        body, headers = multipart(manifest, zipped.getvalue())
        for _ in range(JOBS):
            request(url + "/v1/models", "POST", body, headers)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            models = json.loads(request(url + "/v1/models")[1])["models"]
            if all(m["training"]["training_status"]["status"] in ("COMPLETED", "FAILED") for m in models):
                break
            time.sleep(1)
        health = wrk(url + "/health")
        models = wrk(url + "/v1/models", auth=True)
    finally:
        stop(proc)
    port = free_port()
    base = subprocess.Popen([str(BUILD / "bench_h2o_static"), str(port)], stdout=subprocess.PIPE, text=True)
    base.stdout.readline()
    try:
        baseline = wrk(f"http://127.0.0.1:{port}/")
    finally:
        base.terminate()
        base.wait()
    print(f"wrk /health:               {health[0]:10.0f} req/s  p99 {health[1]}")
    print(f"wrk GET /v1/models ({JOBS} jobs): {models[0]:8.1f} req/s  p99 {models[1]}")
    print(f"wrk static h2o baseline:   {baseline[0]:10.0f} req/s  p99 {baseline[1]}")
    print(f"ratio /health / baseline:  {health[0] / baseline[0]:.2f}")


def bench_train(tmp):
    proc, url = start_server(tmp / "train-data")
    try:
        model = tmp / "model-10mb"
        model.mkdir()
        for i in range(10):
            (model / f"weights-{i}.bin").write_bytes(os.urandom(1 << 20))
        (model / "train.py").write_text("print('hi')\n")
        manifest = tmp / "m.yml"
        manifest.write_text("name: big\nframework:\n  name: custom\n  version: local\n  command: 'true'\n")
        started = time.monotonic()
        out = subprocess.run([str(BUILD / "ffdl"), "train", str(manifest), str(model) + "/"],
                             env=dict(os.environ, FFDL_URL=url, FFDL_TOKEN=TOKEN),
                             capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
        assert out.returncode == 0, out.stderr
    finally:
        stop(proc)
    print(f"ffdl train, 10 MB model dir: {took * 1000:.0f} ms to 201 ({out.stdout.strip()})")


def bench_memory(tmp):
    empty, _ = start_server(tmp / "mem-empty")
    time.sleep(0.5)
    base = rss_mib(empty.pid)
    stop(empty)
    data = tmp / "mem-full"
    seed, _ = start_server(data)  # creates the schema
    stop(seed)
    db = sqlite3.connect(data / "ffdl.db")
    spec = json.dumps({"name": "done", "framework": {"name": "custom", "version": "local", "command": "true"}})
    now = int(time.time() * 1000)
    db.executemany("INSERT INTO jobs (id, name, user, framework, status, submitted_ms, completed_ms, "
                   "spec_json) VALUES (?, 'done', 'admin', 'custom', 'COMPLETED', ?, ?, ?)",
                   ((f"training-bench{i:08d}", now, now, spec) for i in range(STORED)))
    db.commit()
    db.close()
    full, url = start_server(data)
    time.sleep(0.5)
    held = rss_mib(full.pid)
    stop(full)
    print(f"server RSS, empty store:        {base:7.1f} MiB")
    print(f"server RSS, {STORED} finished jobs: {held:7.1f} MiB  (ratio {held / base:.2f})")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        bench_wrk(tmp)
        bench_train(tmp)
        bench_memory(tmp)
