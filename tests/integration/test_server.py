"""ffdl-server and the ffdl client: FfDL's REST API, auth, tenants, uploads."""
import base64
import io
import json
import os
import re
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zipfile

import pytest

from conftest import BUILD, ROOT

ADMIN = "admin-token-for-tests"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data, extra_args=(), env=None, leave=False):
        """A server on a free port. Unless LEAVE, its config halts the jobs on
        SIGTERM, so that stopping it stops every learner a test started."""
        self.port = free_port()
        extra_args = list(extra_args)
        if not leave and "--config" not in extra_args:
            config = data.parent / f"server-{self.port}.yml"
            config.write_text("on_shutdown: halt\n")
            extra_args += ["--config", config]
        self.data = data
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data.parent / f"server-{self.port}.log", "w+")
        full_env = dict(os.environ, FFDL_ADMIN_TOKEN=ADMIN)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [str(BUILD / "ffdl-server"), "--listen", f"127.0.0.1:{self.port}", "--data", str(data),
             *map(str, extra_args)], stdout=subprocess.PIPE, stderr=self.log, text=True, env=full_env)
        self.banner = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.banner.append(line)
            if "listening on" in line:
                return
        self.stop()
        raise AssertionError("the server did not start: " + "".join(self.banner))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def server(tmp_path, digits):
    data = tmp_path / "data"
    (data / "datasets").mkdir(parents=True)
    (data / "datasets" / "digits").symlink_to(digits)
    srv = Server(data)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    dest = tmp_path_factory.mktemp("server-datasets") / "digits"
    subprocess.run(["/usr/bin/python3", str(ROOT / "examples" / "prepare_digits.py"), str(dest)],
                   check=True, capture_output=True, timeout=300)
    return dest


def call(server, method, path, token=ADMIN, body=None, headers=None, raw=False):
    req = urllib.request.Request(server.url + path, method=method, data=body,
                                 headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = resp.read()
            return resp.status, (data if raw else json.loads(data) if data[:1] in b"{[" else data), resp.headers
    except urllib.error.HTTPError as e:
        data = e.read()
        return e.code, json.loads(data) if data[:1] == b"{" else data, e.headers


def cli(server, *args, token=ADMIN, timeout=120, env=None, cwd=None):
    full_env = dict(os.environ, FFDL_URL=server.url, FFDL_TOKEN=token or "")
    full_env.update(env or {})
    return subprocess.run([str(BUILD / "ffdl"), *map(str, args)], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def add_user(server, name, admin=False):
    result = cli(server, "user", "add", name, *(["--admin"] if admin else []))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def multipart(fields):
    boundary = "ffdltestboundary7"
    out = io.BytesIO()
    for name, (filename, data) in fields.items():
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                  f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def zip_bytes(entries):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return out.getvalue()


CUSTOM = ("name: {name}\ncpus: 0.5\nmemory: 256MiB\nframework:\n  name: custom\n  version: local\n"
          "  command: {command}\n")


def create(server, token, command="echo hi", name="job", zip_data=None):
    body, headers = multipart({
        "manifest": ("manifest.yml", CUSTOM.format(name=name, command=json.dumps(command)).encode()),
        "model_definition": ("model.zip", zip_data or zip_bytes({"run.sh": "echo model\n"}))})
    return call(server, "POST", "/v1/models", token=token, body=body, headers=headers)


def wait_status(server, model_id, statuses, token=ADMIN, timeout=120):
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        code, doc, _ = call(server, "GET", f"/v1/models/{model_id}", token=token)
        assert code == 200, doc
        status = doc["training"]["training_status"]["status"]
        if status in statuses:
            return doc
        time.sleep(0.1)
    raise AssertionError(f"{model_id} stayed {status}")


def test_health_and_no_credentials(server):
    with urllib.request.urlopen(server.url + "/health") as resp:
        assert resp.read() == b"OK"
    code, doc, _ = call(server, "GET", "/v1/models", token=None)
    assert code == 401 and set(doc) == {"code", "error", "description"}
    code, _, _ = call(server, "GET", "/v1/models", token="wrong")
    assert code == 401


def test_first_start_prints_a_generated_admin_token_once(tmp_path):
    data = tmp_path / "fresh"
    env = {"FFDL_ADMIN_TOKEN": ""}
    first = Server(data, env=env)
    first.stop()
    token = re.search(r"admin token .*: (ffdl_[0-9a-f]{64})", "".join(first.banner))
    assert token, first.banner
    assert token.group(1) not in (data / "ffdl.db").read_bytes().decode("latin-1")
    second = Server(data, env=env)
    try:
        assert "admin token" not in "".join(second.banner)
        code, _, _ = call(second, "GET", "/v1/models", token=token.group(1))
        assert code == 200
    finally:
        second.stop()


def test_users_are_managed_by_the_admin(server):
    token = add_user(server, "alice")
    assert token.startswith("ffdl_")
    assert "alice" in cli(server, "user", "list").stdout
    denied = cli(server, "user", "add", "mallory", token=token)
    assert denied.returncode != 0 and "only an admin" in denied.stderr
    assert cli(server, "user", "remove", "alice").returncode == 0
    code, _, _ = call(server, "GET", "/v1/models", token=token)
    assert code == 401


def test_train_follow_show_download_through_the_cli(server, tmp_path):
    token = add_user(server, "alice")
    result = cli(server, "train", ROOT / "manifests" / "pytorch-digits.yml",
                 str(ROOT / "examples" / "pytorch-digits") + "/", token=token)
    assert result.returncode == 0, result.stderr
    model_id = re.fullmatch(r"Model ID: (training-[a-z0-9]+)\n", result.stdout).group(1)
    assert re.search(r"^uploading the model: .*[KM]iB.*\(done\)$", result.stderr, re.M), result.stderr
    listing = cli(server, "list", token=token).stdout
    assert re.search(rf"^{model_id}\s+pytorch-digits\s+pytorch\s+", listing, re.M)
    assert listing.splitlines()[0].split() == ["ID", "Name", "Framework", "Status", "Submitted",
                                               "Completed"]
    logs = cli(server, "logs", "--follow", model_id, token=token, timeout=300)
    assert logs.returncode == 0 and "final test accuracy" in logs.stdout
    shown = json.loads(cli(server, "show", "--json", model_id, token=token).stdout)
    assert shown["training"]["training_status"]["status"] == "COMPLETED"
    assert shown["model_id"] == model_id and shown["framework"]["name"] == "pytorch"
    got = cli(server, "download", model_id, "--trainedmodel", token=token, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    names = zipfile.ZipFile(tmp_path / f"{model_id}-trainedmodel.zip").namelist()
    assert "model/model.pt" in names and "learner-1/training-log.txt" in names
    got = cli(server, "download", model_id, "--definition", "--filename", "def.zip", token=token,
              cwd=tmp_path)
    assert got.returncode == 0 and "train.py" in zipfile.ZipFile(tmp_path / "def.zip").namelist()


def test_create_answers_201_with_a_location(server):
    token = add_user(server, "alice")
    code, doc, headers = create(server, token)
    assert code == 201, doc
    assert doc["location"] == f"/v1/models/{doc['model_id']}" == headers["Location"]
    wait_status(server, doc["model_id"], {"COMPLETED"}, token=token)
    code, lines, _ = call(server, "GET", f"/v1/logs/{doc['model_id']}/loglines?pagesize=5&version=2017-02-13",
                          token=token)
    assert code == 200 and lines["models"][0]["line"] == "hi"
    uploads = server.data / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())  # the upload went with the job
    assert lines["models"][0]["meta"]["training_id"] == doc["model_id"]


def test_tenants_do_not_see_each_other(server):
    alice, bob = add_user(server, "alice"), add_user(server, "bob")
    code, doc, _ = create(server, alice, command="sleep 30")
    model_id = doc["model_id"]
    for method, path, body in [("GET", "", None), ("PATCH", "", b'{"status":"halt"}'),
                               ("DELETE", "", None), ("GET", "/definition", None),
                               ("GET", "/trained_model", None), ("GET", "/logs", None)]:
        code, doc, _ = call(server, method, f"/v1/models/{model_id}{path}", token=bob, body=body)
        assert code == 404, (method, path, doc)
    code, doc, _ = call(server, "GET", f"/v1/logs/{model_id}/loglines", token=bob)
    assert code == 404
    code, doc, _ = call(server, "GET", "/v1/models", token=bob)
    assert doc["models"] == []
    # FfDL's identity header does nothing for a non-admin...
    code, doc, _ = call(server, "GET", "/v1/models", token=bob,
                        headers={"X-Watson-Userinfo": "bluemix-instance-id=alice"})
    assert doc["models"] == []
    # ...and lets an authenticated admin act for a user
    code, doc, _ = call(server, "GET", "/v1/models", headers={"X-Watson-Userinfo": "bluemix-instance-id=alice"})
    assert [m["model_id"] for m in doc["models"]] == [model_id]
    code, doc, _ = call(server, "GET", f"/v1/models/{model_id}")
    assert code == 200  # the admin sees all
    call(server, "PATCH", f"/v1/models/{model_id}", token=alice, body=b'{"status":"halt"}')
    wait_status(server, model_id, {"HALTED"}, token=alice)


def test_basic_auth_as_ffdl_clients_send_it(server):
    token = add_user(server, "carol")
    result = cli(server, "list", token=None, env={"FFDL_URL": "", "DLAAS_URL": server.url,
                                                  "DLAAS_USERNAME": "carol", "DLAAS_PASSWORD": token})
    assert result.returncode == 0, result.stderr
    auth = base64.b64encode(f"dave:{token}".encode()).decode()
    code, _, _ = call(server, "GET", "/v1/models", token=None, headers={"Authorization": f"Basic {auth}"})
    assert code == 401  # the password is carol's, not dave's


def alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def test_halt_really_stops_the_learners(server, tmp_path):
    token = add_user(server, "alice")
    pidfile = tmp_path / "pid"
    code, doc, _ = create(server, token, command=f"echo $$ > {pidfile}; sleep 300")
    model_id = doc["model_id"]
    wait_status(server, model_id, {"PROCESSING"}, token=token)
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    assert alive(pid)
    code, doc, _ = call(server, "PATCH", f"/v1/models/{model_id}", token=token, body=b'{"status":"halt"}')
    assert code == 202 and doc == {"model_id": model_id}
    wait_status(server, model_id, {"HALTED"}, token=token)
    assert not alive(pid)
    code, doc, _ = call(server, "PATCH", f"/v1/models/{model_id}", token=token, body=b'{"status":"run"}')
    assert code == 400


def test_bad_manifest_is_c101_with_file_line_col(server):
    token = add_user(server, "alice")
    body, headers = multipart({"manifest": ("job.yml", b"name: t\nlearners: two\nframework:\n  name: pytorch\n"),
                               "model_definition": ("m.zip", zip_bytes({"a.py": "x"}))})
    code, doc, _ = call(server, "POST", "/v1/models", token=token, body=body, headers=headers)
    assert code == 400 and doc["error"] == "C101"
    assert 'job.yml:2:11: learners: must be an integer >= 1, got "two"' in doc["description"]
    assert "job.yml:3:1: framework.command: is required" in doc["description"]


@pytest.mark.parametrize("entries", [{"../evil.sh": "x"}, {"/etc/evil": "x"}, {"a/../../b": "x"}])
def test_zip_slip_is_c102_and_leaves_nothing(server, entries):
    token = add_user(server, "alice")
    code, doc, _ = create(server, token, zip_data=zip_bytes(entries))
    assert code == 400 and doc["error"] == "C102" and "outside the model directory" in doc["description"]
    uploads = server.data / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    assert call(server, "GET", "/v1/models", token=token)[1]["models"] == []


def test_zip_bomb_stops_at_the_cap(tmp_path, digits):
    data = tmp_path / "data"
    config = tmp_path / "server.yml"
    config.write_text("max_unzipped_mb: 1\non_shutdown: halt\n")
    srv = Server(data, extra_args=["--config", config])
    try:
        token = add_user(srv, "alice")
        code, doc, _ = create(srv, token, zip_data=zip_bytes({"big.bin": b"\0" * (8 << 20)}))
        assert code == 400 and doc["error"] == "C102" and "size limit" in doc["description"]
        code, doc, _ = create(srv, token, zip_data=b"this is not a zip")
        assert code == 400 and doc["error"] == "C102"
    finally:
        srv.stop()


def test_rate_limit_answers_429(tmp_path):
    data = tmp_path / "data"
    config = tmp_path / "server.yml"
    config.write_text("creates_per_minute: 2\non_shutdown: halt\n")
    srv = Server(data, extra_args=["--config", config])
    try:
        token = add_user(srv, "alice")
        codes = [create(srv, token)[0] for _ in range(3)]
        assert codes == [201, 201, 429]
    finally:
        srv.stop()


@pytest.mark.parametrize("text, expected", [
    ("max_upload_mb: 10\ncolour: blue\n", "2:1: colour: unknown setting"),
    # values that were read as 0 or taken as they came
    ("policy_debounce_ms: fast\n", '1:21: policy_debounce_ms: must be a whole number of ms, 0..60000, got "fast"'),
    ("creates_per_minute: -1\n", '1:21: creates_per_minute: must be a number >= 0 (0: no limit), got "-1"'),
    ("max_upload_mb: 1e99\n", "1:16: max_upload_mb: must be a whole number of MiB"),
    ("max_unzipped_mb: 12x\n", "1:18: max_unzipped_mb: must be a whole number of MiB"),
    ("on_shutdown: maybe\n", "1:14: on_shutdown: must be leave (learners go on for the next start) or halt"),
    ("listen: [127.0.0.1, 8080]\n", "1:9: listen: must be a single value"),
    ("- listen\n", "1:1: (file): must be a mapping of settings (key: value)"),
    ("s3_url: minio:9000\n", '1:9: s3_url: must start with http:// or https://, got "minio:9000"'),
])
def test_config_file_errors_name_the_line(tmp_path, text, expected):
    config = tmp_path / "server.yml"
    config.write_text(text)
    result = subprocess.run([str(BUILD / "ffdl-server"), "--config", str(config), "--data",
                             str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{config}:{expected}" in result.stderr, result.stderr


def test_listen_port_must_be_a_number(tmp_path):
    result = subprocess.run([str(BUILD / "ffdl-server"), "--listen", "127.0.0.1:http", "--data",
                             str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--listen wants HOST:PORT, got 127.0.0.1:http" in result.stderr


def test_a_hundred_followers_get_every_line(server):
    token = add_user(server, "alice")
    code, doc, _ = create(server, token, command="sleep 1; for i in $(seq 1 50); do echo line-$i; sleep 0.02; done")
    model_id = doc["model_id"]
    results = [None] * 100

    def follow(i):
        req = urllib.request.Request(f"{server.url}/v1/models/{model_id}/logs?follow=true",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            results[i] = resp.read().decode()

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    expected = "".join(f"line-{i}\n" for i in range(1, 51))
    assert all(r == expected for r in results), [r for r in results if r != expected][:1]


def test_emetrics_and_metrics_endpoint(server):
    token = add_user(server, "alice")
    code, doc, _ = create(server, token)
    wait_status(server, doc["model_id"], {"COMPLETED"}, token=token)
    code, em, _ = call(server, "GET", f"/v1/logs/{doc['model_id']}/emetrics?pos=0&pagesize=10", token=token)
    assert code == 200 and em["models"] == []
    with urllib.request.urlopen(server.url + "/metrics") as resp:
        text = resp.read().decode()
    assert re.search(r"^ffdl_trainings_created_total 1$", text, re.M)
    assert re.search(r"^ffdl_trainings_completed_total 1$", text, re.M)
    assert re.search(r"^ffdl_queue_length 0$", text, re.M)
    assert int(re.search(r"^ffdl_policy_call_seconds_count (\d+)$", text, re.M).group(1)) > 0
    assert int(re.search(r"^ffdl_store_write_seconds_count (\d+)$", text, re.M).group(1)) >= 5
    assert re.search(r'^ffdl_cpus\{state="free"\} \d', text, re.M)
    assert re.search(r'^ffdl_api_request_seconds_count\{route="/v1/models",status="201"\} 1$', text, re.M)
    assert re.search(r'^ffdl_api_request_seconds_bucket\{route="/v1/models/\{id\}",status="200",le="\+Inf"\} \d+$', text, re.M)


def test_delete_removes_the_job(server):
    token = add_user(server, "alice")
    code, doc, _ = create(server, token)
    model_id = doc["model_id"]
    wait_status(server, model_id, {"COMPLETED"}, token=token)
    assert cli(server, "delete", model_id, token=token).returncode == 0
    code, _, _ = call(server, "GET", f"/v1/models/{model_id}", token=token)
    assert code == 404


def test_openapi_document_is_valid_and_served(server):
    from openapi_spec_validator import validate
    doc = json.loads((ROOT / "docs" / "openapi.json").read_text())
    validate(doc)
    code, served, _ = call(server, "GET", "/v1/openapi.json", token=None, raw=True)
    assert code == 200 and json.loads(served) == doc
    documented = set(doc["paths"])
    for path in ["/v1/models", "/v1/models/{id}", "/v1/models/{id}/definition",
                 "/v1/models/{id}/trained_model", "/v1/models/{id}/logs",
                 "/v1/logs/{id}/loglines", "/v1/logs/{id}/emetrics", "/health"]:
        assert path in documented


def test_schemathesis_finds_no_server_error_and_no_schema_break(server):
    add_user(server, "alice")
    create(server, ADMIN)
    schemathesis = ROOT / ".venv" / "bin" / "schemathesis"
    result = subprocess.run(
        [str(schemathesis), "run", str(ROOT / "docs" / "openapi.json"), "--base-url", server.url,
         "-H", f"Authorization: Bearer {ADMIN}",
         "--checks", "not_a_server_error,response_schema_conformance",
         "--hypothesis-max-examples", "25", "--hypothesis-seed", "7", "--hypothesis-derandomize"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert re.search(r"not_a_server_error\s+(\d+) / \1 passed", result.stdout), result.stdout[-2000:]


def wait_file(path, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def test_no_job_is_lost_when_the_server_is_killed(tmp_path):
    data = tmp_path / "data"
    nodes = tmp_path / "cluster.yml"
    nodes.write_text("nodes:\n  - {name: box, cpus: 2, memory: 8GiB}\n")
    env = {"FFDL_NODES": str(nodes)}
    srv = Server(data, env=env)
    token = add_user(srv, "alice")
    # one keeps running across the crash, one ends while the server is down,
    # one waits in QUEUED for room
    code, keeps, _ = create(srv, token, name="keeps",
                            command="for i in $(seq 1 40); do echo tick-$i; sleep 0.1; done")
    code, ends, _ = create(srv, token, name="ends", command="echo bye; sleep 0.5; exit 3")
    for model_id in (keeps["model_id"], ends["model_id"]):
        wait_status(srv, model_id, {"PROCESSING"}, token=token)
    body_more = CUSTOM.replace("cpus: 0.5", "cpus: 2")
    from test_server import multipart as mp, zip_bytes as zb
    body, headers = mp({"manifest": ("m.yml", body_more.format(name="queued", command='"echo later"').encode()),
                        "model_definition": ("m.zip", zb({"a": "b"}))})
    code, queued, _ = call(srv, "POST", "/v1/models", token=token, body=body, headers=headers)
    assert code == 201
    srv.proc.kill()  # SIGKILL: no chance to save anything
    srv.proc.wait()
    srv.log.close()
    wait_file(data / "jobs" / ends["model_id"] / "learner-1" / "exit_status")
    srv = Server(data, env=env)
    try:
        done = {m: wait_status(srv, m, {"COMPLETED", "FAILED", "HALTED"}, token=token)
                for m in (keeps["model_id"], ends["model_id"], queued["model_id"])}
        status = {m: d["training"]["training_status"] for m, d in done.items()}
        assert status[keeps["model_id"]]["status"] == "COMPLETED"
        assert status[ends["model_id"]]["status"] == "FAILED"
        assert "exited with code 3" in status[ends["model_id"]]["status_message"]
        assert status[queued["model_id"]]["status"] == "COMPLETED"
        code, lines, _ = call(srv, "GET", f"/v1/logs/{keeps['model_id']}/loglines?pagesize=1000", token=token)
        assert [l["line"] for l in lines["models"]] == [f"tick-{i}" for i in range(1, 41)]
        job = json.loads((data / "results" / keeps["model_id"] / "job.json").read_text())
        assert [(l["learner"], l["attempt"]) for l in job["learners"]] == [(1, 1)]  # never ran twice
        # the store says which job started over: the queued one, not those reattached
        db = sqlite3.connect(data / "ffdl.db")
        requeued = {row[0] for row in db.execute(
            "SELECT job_id FROM transitions WHERE status = 'QUEUED' AND reason = ?",
            ("requeued after a server restart",))}
        db.close()
        assert requeued == {queued["model_id"]}
    finally:
        srv.stop()


def test_sigterm_leaves_learners_running_for_the_next_start(tmp_path):
    data = tmp_path / "data"
    srv = Server(data, leave=True)
    token = add_user(srv, "alice")
    pidfile = tmp_path / "pid"
    code, doc, _ = create(srv, token, command=f"echo $$ > {pidfile}; sleep 2; echo finished")
    pid = int(wait_file(pidfile))
    srv.proc.terminate()
    assert srv.proc.wait(timeout=30) == 0
    srv.log.close()
    assert alive(pid)
    srv = Server(data)
    try:
        finished = wait_status(srv, doc["model_id"], {"COMPLETED", "FAILED"}, token=token)
        assert finished["training"]["training_status"]["status"] == "COMPLETED"
    finally:
        srv.stop()


ROUTES = [("GET", "/v1/models/{id}", None), ("PATCH", "/v1/models/{id}", b'{"status":"halt"}'),
          ("GET", "/v1/models/{id}/definition", None), ("GET", "/v1/models/{id}/trained_model", None),
          ("GET", "/v1/models/{id}/logs", None), ("GET", "/v1/logs/{id}/loglines", None),
          ("GET", "/v1/logs/{id}/emetrics", None), ("GET", "/v1/models/{id}/explain", None),
          ("DELETE", "/v1/models/{id}", None)]


@pytest.mark.parametrize("method,path,body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_auth_matrix(server, method, path, body):
    """Every job endpoint x {no credentials, wrong user, owner, admin}."""
    owner, other = add_user(server, "owner"), add_user(server, "other")
    code, doc, _ = create(server, owner)
    model_id = doc["model_id"]
    wait_status(server, model_id, {"COMPLETED"}, token=owner)
    url = path.format(id=model_id)
    assert call(server, method, url, token=None, body=body)[0] == 401
    assert call(server, method, url, token=other, body=body)[0] == 404
    expected = {"PATCH": 202}.get(method, 200)
    assert call(server, method, url, token=owner, body=body)[0] == expected
    if method != "DELETE":
        assert call(server, method, url, token=ADMIN, body=body)[0] == expected
    else:
        assert call(server, "GET", f"/v1/models/{model_id}", token=ADMIN)[0] == 404


def test_failures_are_counted_by_error_code(server):
    token = add_user(server, "alice")
    code, doc, _ = create(server, token, command="exit 3")
    wait_status(server, doc["model_id"], {"FAILED"}, token=token)
    with urllib.request.urlopen(server.url + "/metrics") as resp:
        text = resp.read().decode()
    assert re.search(r'^ffdl_trainings_failed_by_code_total\{code="C201"\} 1$', text, re.M)


def test_upload_size_limit(tmp_path):
    config = tmp_path / "server.yml"
    config.write_text("max_upload_mb: 1\non_shutdown: halt\n")
    srv = Server(tmp_path / "data", extra_args=["--config", config])
    try:
        token = add_user(srv, "alice")
        model = tmp_path / "model"
        model.mkdir()
        (model / "weights.bin").write_bytes(os.urandom(2 << 20))
        manifest = tmp_path / "m.yml"
        manifest.write_text(CUSTOM.format(name="big", command='"true"'))
        result = cli(srv, "train", manifest, model, token=token)
        assert result.returncode != 0 and "HTTP 413" in result.stderr
        assert not (srv.data / "uploads").exists() or not any((srv.data / "uploads").iterdir())
    finally:
        srv.stop()


def test_train_with_an_empty_model_directory(server, tmp_path):
    """A job whose command needs no model code: the empty directory goes as
    an empty zip (libzip writes no file at all for one, and the upload
    failed with "Failed to open/read local data")."""
    token = add_user(server, "alice")
    model = tmp_path / "empty"
    model.mkdir()
    manifest = tmp_path / "m.yml"
    manifest.write_text(CUSTOM.format(name="nocode", command='"echo no code needed"'))
    result = cli(server, "train", manifest, model, token=token)
    assert result.returncode == 0, result.stderr
    model_id = re.fullmatch(r"Model ID: (training-[a-z0-9]+)\n", result.stdout).group(1)
    wait_status(server, model_id, {"COMPLETED"}, token=token)


def ffdl_run_remote(server, *args, token, cwd, timeout=300):
    env = dict(os.environ, FFDL_TOKEN=token, FFDL_HOME=str(cwd / ".ffdl-client"))
    return subprocess.run([str(BUILD / "ffdl-run"), "--server", server.url, *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_ffdl_run_runs_a_manifest_on_the_server(server, tmp_path):
    token = add_user(server, "alice")
    result = ffdl_run_remote(server, ROOT / "manifests" / "pytorch-digits.yml", token=token, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    model_id = re.search(r"(training-[a-z0-9]+) COMPLETED on ", result.stderr).group(1)
    assert "[1] final test accuracy" in result.stderr
    code, doc, _ = call(server, "GET", f"/v1/models/{model_id}", token=token)
    assert doc["training"]["training_status"]["status"] == "COMPLETED"
    assert not (tmp_path / ".ffdl-client" / "jobs").exists()  # nothing ran here


def test_ffdl_run_runs_job_scripts_on_the_server(server, tmp_path):
    token = add_user(server, "alice")
    script = tmp_path / "remote.lua"
    script.write_text(f'local ffdl = require "ffdl"\n'
                      f'local job = ffdl.train{{manifest = "{ROOT}/manifests/pytorch-digits.yml", '
                      f'args = {{epochs = 3}}}}\n'
                      f'local lines = 0\n'
                      f'job:on_log(function() lines = lines + 1 end)\n'
                      f'print(job:wait(), lines > 0, job:metrics().test.epoch)\n'
                      f'job:download("{tmp_path}/got")\n')
    result = ffdl_run_remote(server, script, token=token, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["COMPLETED", "true", "3"]
    assert (tmp_path / "got" / "model" / "model.pt").exists()
    assert (tmp_path / "got" / "learner-1" / "training-log.txt").exists()


def test_a_job_killed_in_downloading_is_staged_again(tmp_path):
    """The training data is a FIFO, so staging blocks until the test writes:
    the server is killed while the job sits in DOWNLOADING, deterministically."""
    host = tmp_path / "host" / "data"
    host.mkdir(parents=True)
    fifo = host / "train.csv"
    os.mkfifo(fifo)
    data = tmp_path / "data"
    srv = Server(data)
    token = add_user(srv, "alice")
    extra = ("data_stores:\n  - id: host\n    type: mount_volume\n    training_data:\n"
             f"      container: data\n    connection:\n      type: host_mount\n      path: {host.parent}\n")
    body, headers = multipart({"manifest": ("m.yml", (CUSTOM.format(name="staged", command='"cat $DATA_DIR/train.csv"') + extra).encode()),
                               "model_definition": ("m.zip", zip_bytes({"a": "b"}))})
    code, doc, _ = call(srv, "POST", "/v1/models", token=token, body=body, headers=headers)
    assert code == 201, doc
    model_id = doc["model_id"]
    wait_status(srv, model_id, {"DOWNLOADING"}, token=token)
    srv.proc.kill()
    srv.proc.wait()
    srv.log.close()
    srv = Server(data)
    try:
        def feed():  # unblocks the new server's staging
            with open(fifo, "w") as writer:
                writer.write("1,2,3\n")

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        feeder.join(60)
        assert not feeder.is_alive(), "the restarted server never staged the data again"
        done = wait_status(srv, model_id, {"COMPLETED", "FAILED"}, token=token)
        assert done["training"]["training_status"]["status"] == "COMPLETED"
        code, lines, _ = call(srv, "GET", f"/v1/logs/{model_id}/loglines", token=token)
        assert [l["line"] for l in lines["models"]] == ["1,2,3"]
    finally:
        srv.stop()
