"""ffdl-server's stop with on_shutdown: halt, with a long queue."""
import json
import os
import signal
import sqlite3
import threading

from test_server import CUSTOM, Server, call, multipart, wait_status, zip_bytes

QUEUED = 2000


def start(tmp_path, on_shutdown):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    nodes = tmp_path / "cluster.yml"
    nodes.write_text("nodes:\n  - {name: only, cpus: 1, memory: 8GiB}\n")
    config = tmp_path / f"{on_shutdown}.yml"
    config.write_text(f"on_shutdown: {on_shutdown}\ncreates_per_minute: 0\n")
    return Server(data, extra_args=["--config", config], env={"FFDL_NODES": str(nodes)})


def queue_jobs(srv, count, submitters=4):
    """COUNT jobs of half a CPU each; returns their ids."""
    body, headers = multipart({
        "manifest": ("m.yml", CUSTOM.format(name="queued", command='"echo never"').encode()),
        "model_definition": ("m.zip", zip_bytes({"run.sh": "echo model\n"}))})
    ids, failures = [], []

    def submit(n):
        for _ in range(n):
            code, doc, _ = call(srv, "POST", "/v1/models", body=body, headers=headers)
            (ids if code == 201 else failures).append(doc["model_id"] if code == 201 else doc)

    threads = [threading.Thread(target=submit, args=(count // submitters,)) for _ in range(submitters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    return ids


def test_sigterm_halts_every_queued_job_and_a_restart_sees_them_halted(tmp_path):
    srv = start(tmp_path, "halt")
    try:
        # the blocker holds the only node's CPU, so the others stay QUEUED
        manifest = CUSTOM.replace("cpus: 0.5", "cpus: 1")
        body, headers = multipart({
            "manifest": ("m.yml", manifest.format(name="blocker", command='"sleep 300"').encode()),
            "model_definition": ("m.zip", zip_bytes({"run.sh": "sleep 300\n"}))})
        code, doc, _ = call(srv, "POST", "/v1/models", body=body, headers=headers)
        assert code == 201, doc
        blocker = doc["model_id"]
        wait_status(srv, blocker, {"PROCESSING"})
        queued = queue_jobs(srv, QUEUED)
        assert len(queued) == QUEUED
        _, one, _ = call(srv, "GET", f"/v1/models/{queued[-1]}")
        assert one["training"]["training_status"]["status"] == "QUEUED"
        os.kill(srv.proc.pid, signal.SIGTERM)
        assert srv.proc.wait(timeout=600) == 0
    finally:
        srv.stop()

    # job.json of each job, written before the server exited
    results = tmp_path / "data" / "results"
    for model_id in queued:
        doc = json.loads((results / model_id / "job.json").read_text())
        assert doc["status"] == "HALTED", (model_id, doc["status"])
        assert doc["status_message"] == "the server is shutting down"
        assert doc["transitions"][-1]["status"] == "HALTED"
        assert doc["transitions"][-1]["reason"] == "the server is shutting down"
        assert doc["completed_ms"] is not None
    blocker_doc = json.loads((results / blocker / "job.json").read_text())
    assert blocker_doc["status"] == "HALTED"

    # the store: one HALTED transition per job, nothing left active
    db = sqlite3.connect(tmp_path / "data" / "ffdl.db")
    statuses = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    halts = db.execute("SELECT COUNT(*) FROM transitions WHERE status = 'HALTED'").fetchone()[0]
    db.close()
    assert statuses == {"HALTED": QUEUED + 1}
    assert halts == QUEUED + 1

    # a restarted server takes over nothing and lists every job HALTED
    srv = start(tmp_path, "leave")
    try:
        code, doc, _ = call(srv, "GET", "/v1/models")
        assert code == 200
        listed = {m["model_id"]: m["training"]["training_status"] for m in doc["models"]}
        assert set(listed) == set(queued) | {blocker}
        assert {s["status"] for s in listed.values()} == {"HALTED"}
        assert {listed[m]["status_message"] for m in queued} == {"the server is shutting down"}
    finally:
        srv.stop()
    assert "took over" not in (tmp_path / f"server-{srv.port}.log").read_text()
