"""What a server job tells its user through the ffdl client: the manifest's
validation warnings at `ffdl train` (and in POST /v1/models' answer), the
error code in `ffdl show`, and why `ffdl logs` prints no line."""
import re

import pytest

from s3server import MotoServer
from test_server import (CUSTOM, Server, add_user, call, cli, create, multipart, wait_status,
                         zip_bytes)
from test_validate import NOT_UPLOADED

SECRET = "s3cr3t-for-feedback"


@pytest.fixture(scope="module")
def moto(moto):
    """conftest's server, with this module's buckets."""
    s3 = moto.client(access="ffdl-key", secret=SECRET)
    for bucket in ("data", "results"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="data", Key="in.txt", Body=b"some data\n")
    return moto


def typo_manifest(endpoint, secret=SECRET, access="ffdl-key"):
    """A job whose results store is misspelt (training_result, line 11)."""
    return ("name: typo\ncpus: 0.5\nmemory: 256MiB\nframework:\n  name: custom\n"
            "  version: local\n  command: cp $DATA_DIR/in.txt $RESULT_DIR/model.txt\n"
            "data_stores:\n  - id: cos\n    type: mount_cos\n    training_result:\n"
            "      container: results\n    training_data:\n      container: data\n"
            f"    connection:\n      auth_url: {endpoint}\n      user_name: {access}\n"
            f"      password: {secret}\n")


def typo_warnings(name):
    return [f"{name}:11:5: warning: data_stores[0].training_result: unknown field, ignored",
            f'{name}:11:5: warning: data_stores[0].training_results: is not set ("training_result" '
            f"is not a field: did you mean training_results?): {NOT_UPLOADED}"]


@pytest.mark.parametrize("default_store", [False, True], ids=["no-default-store", "default-store"])
def test_train_prints_the_servers_warnings_and_they_hold(moto, tmp_path, default_store):
    """The walkthrough's `training_result:` typo: POST /v1/models answers the
    warnings next to FfDL's fields, `ffdl train` prints them with the path
    it was given, and what they say is what happens: nothing reaches S3
    (even when the server has a default S3 store), the results wait on the
    server for `ffdl download --trainedmodel`."""
    extra = []
    if default_store:
        config = tmp_path / "server.yml"
        config.write_text(f"on_shutdown: halt\ns3_url: {moto.endpoint}\ns3_access_key: ffdl-key\n"
                          f"s3_secret_key: {SECRET}\ns3_results_bucket: results\n")
        extra = ["--config", config]
    srv = Server(tmp_path / "data", extra_args=extra)
    try:
        token = add_user(srv, "alice")
        text = typo_manifest(moto.endpoint)
        body, headers = multipart({"manifest": ("typo.yml", text.encode()),
                                   "model_definition": ("model.zip", zip_bytes({"a": "b"}))})
        code, doc, _ = call(srv, "POST", "/v1/models", token=token, body=body, headers=headers)
        assert code == 201, doc
        assert set(doc) == {"model_id", "location", "warnings"}
        assert doc["warnings"] == typo_warnings("typo.yml")

        manifest = tmp_path / "jobs" / "typo.yml"
        manifest.parent.mkdir()
        manifest.write_text(text)
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "run.sh").write_text("true\n")
        result = cli(srv, "train", manifest, tmp_path / "model", token=token)
        assert result.returncode == 0, result.stderr
        model_id = re.fullmatch(r"Model ID: (training-[a-z0-9]+)\n", result.stdout).group(1)
        assert [l for l in result.stderr.splitlines() if l.startswith(str(manifest))] == \
            typo_warnings(str(manifest))

        for job in (doc["model_id"], model_id):
            wait_status(srv, job, {"COMPLETED"}, token=token)
            listed = moto.client(access="ffdl-key", secret=SECRET).list_objects_v2(
                Bucket="results", Prefix=f"{job}/")
            assert listed.get("KeyCount", 0) == 0, listed.get("Contents")
        got = cli(srv, "download", model_id, "--trainedmodel", "--filename", tmp_path / "m.zip",
                  token=token)
        assert got.returncode == 0, got.stderr
        import zipfile
        names = zipfile.ZipFile(tmp_path / "m.zip").namelist()
        assert "model/model.txt" in names and "learner-1/training-log.txt" in names
    finally:
        srv.stop()


def test_a_clean_manifest_answers_no_warnings(tmp_path):
    srv = Server(tmp_path / "data")
    try:
        token = add_user(srv, "alice")
        code, doc, _ = create(srv, token)
        assert code == 201 and doc["warnings"] == [], doc
        wait_status(srv, doc["model_id"], {"COMPLETED"}, token=token)
    finally:
        srv.stop()


def test_show_and_logs_of_a_job_that_failed_before_its_learners(tmp_path):
    """A wrong S3 secret: FAILED C103 in DOWNLOADING. `ffdl show` gives the
    code as the local `ffdl show` does, and `ffdl logs` (with and without
    --follow) says why it has no line instead of printing nothing."""
    auth = MotoServer(tmp_path / "moto", auth=True).start()
    srv = None
    try:
        access, secret = auth.create_iam_keys()
        s3 = auth.client(access=access, secret=secret)
        s3.create_bucket(Bucket="data")
        srv = Server(tmp_path / "data")
        token = add_user(srv, "alice")
        manifest = tmp_path / "wrong-secret.yml"
        manifest.write_text(typo_manifest(auth.endpoint, secret="not-the-secret", access=access)
                            .replace("training_result:", "training_results:"))
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "run.sh").write_text("true\n")
        result = cli(srv, "train", manifest, tmp_path / "model", token=token)
        assert result.returncode == 0, result.stderr
        model_id = re.fullmatch(r"Model ID: (training-[a-z0-9]+)\n", result.stdout).group(1)
        doc = wait_status(srv, model_id, {"COMPLETED", "FAILED", "HALTED"}, token=token)
        message = doc["training"]["training_status"]["status_message"]
        assert doc["training"]["training_status"]["error_code"] == "C103", doc

        shown = cli(srv, "show", model_id, token=token)
        assert shown.returncode == 0, shown.stderr
        assert "Status:    FAILED (C103)\n" in shown.stdout, shown.stdout

        for args in (["logs", model_id], ["logs", "--follow", model_id]):
            logs = cli(srv, *args, token=token)
            assert logs.returncode == 0 and logs.stdout == "", (logs.stdout, logs.stderr)
            assert logs.stderr.splitlines() == [
                f"ffdl: {model_id} has no learner log: it ended FAILED (C103) before its "
                f"learners started: {message.splitlines()[0]}"], logs.stderr
            assert re.search(r"S3 (SignatureDoesNotMatch|InvalidAccessKeyId)", logs.stderr)
            assert "not-the-secret" not in logs.stderr
    finally:
        if srv:
            srv.stop()
        auth.stop()


def test_logs_of_a_queued_job_and_of_a_silent_one(tmp_path):
    """A job waiting for room has no learner log yet; one whose learner
    printed nothing has an empty one: each is said, exit 0."""
    nodes = tmp_path / "cluster.yml"
    nodes.write_text("nodes:\n  - {name: box, cpus: 1, memory: 8GiB}\n")
    srv = Server(tmp_path / "data", env={"FFDL_NODES": str(nodes)})
    try:
        token = add_user(srv, "alice")
        one_cpu = CUSTOM.replace("cpus: 0.5", "cpus: 1")
        ids = []
        for name, command in (("blocker", '"sleep 120"'), ("silent", "true")):
            body, headers = multipart({
                "manifest": ("m.yml", one_cpu.format(name=name, command=command).encode()),
                "model_definition": ("m.zip", zip_bytes({"a": "b"}))})
            code, doc, _ = call(srv, "POST", "/v1/models", token=token, body=body, headers=headers)
            assert code == 201, doc
            ids.append(doc["model_id"])
            if name == "blocker":
                wait_status(srv, doc["model_id"], {"PROCESSING"}, token=token)
        blocker, silent = ids
        doc = wait_status(srv, silent, {"QUEUED"}, token=token)
        logs = cli(srv, "logs", silent, token=token)
        assert logs.returncode == 0 and logs.stdout == ""
        assert re.fullmatch(rf"ffdl: {silent} has no learner log yet: it is QUEUED; its learners "
                            rf"have not started \(ffdl explain {silent} says why\)\n", logs.stderr), \
            logs.stderr

        assert cli(srv, "halt", blocker, token=token).returncode == 0
        wait_status(srv, silent, {"COMPLETED"}, token=token)
        logs = cli(srv, "logs", silent, token=token)
        assert logs.returncode == 0 and logs.stdout == ""
        assert logs.stderr == (f"ffdl: {silent} has no learner log lines: its learners wrote "
                               f"none; it ended COMPLETED: results stored\n"), logs.stderr
    finally:
        srv.stop()
