"""Shutdown with on_shutdown: halt; prints figures, asserts nothing.

  .venv/bin/python3 bench/shutdown.py [BUILD_DIR]

Starts ffdl-server three times with `on_shutdown: halt` and sends each one
SIGTERM: with no job, with one job that holds the whole (one-node) cluster,
and with that job plus FFDL_BENCH_QUEUED jobs (default 100,000) queued
behind it. Prints the time from SIGTERM to the process's exit for each, and
then counts, in the store and in the results' job.json files, how many jobs
ended HALTED. Then the restart: a server left with SIGTERM at the default
`on_shutdown` (its jobs stay), with the running job alone and with the
queued jobs too, and the time its successor takes from exec to listening,
having taken them over. FFDL_BENCH_KEEP=DIR keeps the data and the server
logs there.
"""
import io
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zipfile

import apiclient
from apiclient import Client

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILD = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "build").resolve()
QUEUED = int(os.environ.get("FFDL_BENCH_QUEUED", "100000"))
SUBMITTERS = 4


def start_server(data, nodes, on_shutdown="halt"):
    """A server on NODES that creates no learner pods by itself; with
    ON_SHUTDOWN None, on_shutdown stays at its default (jobs stay)."""
    config = "creates_per_minute: 0\n" + (f"on_shutdown: {on_shutdown}\n" if on_shutdown else "")
    return apiclient.start_server(BUILD, data, config, nodes=nodes)


def seconds_to_exit(proc):
    """SIGTERM (by pid) to exit, in seconds."""
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return float("inf")
    return time.monotonic() - started


def submission(name, command="true", cpus=0.5):
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("run.sh", "true\n")
    manifest = (f"name: {name}\ncpus: {cpus}\nmemory: 64MiB\nframework:\n  name: custom\n"
                f"  version: local\n  command: '{command}'\n")
    b = "benchboundary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"manifest\"; filename=\"m.yml\"\r\n\r\n"
            f"{manifest}\r\n--{b}\r\nContent-Disposition: form-data; name=\"model_definition\"; "
            f"filename=\"m.zip\"\r\n\r\n").encode() + zipped.getvalue() + f"\r\n--{b}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={b}"}


def submit_blocker(port):
    """A job that holds the only node's CPU until it is halted."""
    client = Client(port)
    code, doc = client.call("POST", "/v1/models", *submission("blocker", "sleep 86400", cpus=1))
    assert code == 201, doc
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        code, doc = client.call("GET", f"/v1/models/{doc['model_id']}")
        if doc["training"]["training_status"]["status"] == "PROCESSING":
            return
        time.sleep(0.1)
    raise SystemExit("the blocker never started")


def fill_queue(port, count):
    body, headers = submission("queued")
    return apiclient.submit_many(port, body, headers, count, SUBMITTERS)


def halted_counts(data):
    """(jobs in the store by status, job.json files by status)."""
    db = sqlite3.connect(data / "ffdl.db")
    stored = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    db.close()
    files = {}
    for path in (data / "results").glob("*/job.json"):
        status = json.loads(path.read_text())["status"]
        files[status] = files.get(status, 0) + 1
    return stored, files


def one_node(tmp):
    """A cluster file: one node of one CPU."""
    nodes = tmp / "cluster.yml"
    nodes.write_text("nodes:\n  - {name: only, cpus: 1, memory: 4GiB}\n")
    return nodes


def run(tmp, name, queued, blocker=True):
    nodes = one_node(tmp)
    data = tmp / name / "data"
    proc, port = start_server(data, nodes)
    rate = None
    if blocker:
        submit_blocker(port)
    if queued:
        rate = fill_queue(port, queued)
        time.sleep(2)  # a few scheduling cycles over the full queue
    took = seconds_to_exit(proc)
    stored, files = halted_counts(data)
    return took, rate, stored, files


def restart(tmp, name, queued):
    """Seconds from exec to listening of a server that takes over QUEUED
    queued jobs (and a running one) that its predecessor left behind with
    SIGTERM (on_shutdown at its default: jobs stay). The second server
    halts everything when it stops, the blocker's learner included."""
    nodes = one_node(tmp)
    data = tmp / name / "data"
    proc, port = start_server(data, nodes, on_shutdown=None)
    submit_blocker(port)
    if queued:
        fill_queue(port, queued)
    seconds_to_exit(proc)
    started = time.monotonic()
    proc, _ = start_server(data, nodes)
    took = time.monotonic() - started
    seconds_to_exit(proc)
    return took


def main():
    keep = os.environ.get("FFDL_BENCH_KEEP")
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(keep or d)
        tmp.mkdir(parents=True, exist_ok=True)
        empty, _, _, _ = run(tmp, "empty", 0, blocker=False)
        alone, _, _, _ = run(tmp, "blocker", 0)
        full, rate, stored, files = run(tmp, "queued", QUEUED)
        takeover_none = restart(tmp, "restart-empty", 0)
        takeover_full = restart(tmp, "restart-queued", QUEUED)
    print(f"shutdown (on_shutdown: halt), SIGTERM to exit, {BUILD.name}:")
    print(f"  no job:                              {empty:8.2f} s")
    print(f"  one running job:                     {alone:8.2f} s")
    print(f"  one running job + {QUEUED:>7} queued:    {full:8.2f} s  (submitted at {rate:.0f}/s)")
    print(f"  store after the stop:  {json.dumps(stored, sort_keys=True)}")
    print(f"  job.json after the stop: {json.dumps(files, sort_keys=True)}")
    print("restart after SIGTERM (on_shutdown at its default), exec to listening:")
    print(f"  one running job:                     {takeover_none:8.2f} s")
    print(f"  one running job + {QUEUED:>7} queued:    {takeover_full:8.2f} s  "
          f"({takeover_full / takeover_none:.1f} times the first)")


if __name__ == "__main__":
    main()
