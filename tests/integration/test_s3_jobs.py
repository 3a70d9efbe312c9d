"""Jobs with S3 data stores, end to end against moto on loopback."""
import contextlib
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

import botocore.exceptions
import pytest

from conftest import BUILD, ROOT
from s3server import CutProxy, FakeS3, MotoServer, free_port, self_signed_cert

SECRET = "s3cr3t-never-shown"


@pytest.fixture(scope="module")
def digits_in_s3(moto, tmp_path_factory):
    local = tmp_path_factory.mktemp("digits-src") / "digits"
    subprocess.run(["/usr/bin/python3", str(ROOT / "examples" / "prepare_digits.py"), str(local)],
                   check=True, capture_output=True, timeout=300)
    s3 = moto.client(access="ffdl-key", secret=SECRET)
    s3.create_bucket(Bucket="digits-data")
    s3.create_bucket(Bucket="digits-results")
    for f in local.iterdir():
        s3.upload_file(str(f), "digits-data", f"digits/{f.name}")
    return s3


def manifest(tmp_path, endpoint, data_bucket="digits-data", secret=SECRET, prefix="digits/",
             results_bucket="digits-results"):
    text = (ROOT / "manifests" / "pytorch-digits.yml").read_text()
    store = (f"data_stores:\n  - id: cos\n    type: mount_cos\n    training_data:\n"
             f"      container: {data_bucket}\n      prefix: {prefix}\n    training_results:\n"
             f"      container: {results_bucket}\n    connection:\n      auth_url: {endpoint}\n"
             f"      user_name: ffdl-key\n      password: {secret}\n      region: us-east-1\n")
    text = re.sub(r"data_stores:\n(  .*\n|    .*\n|      .*\n)*", store, text)
    text = text.replace("../examples", str(ROOT / "examples"))
    path = tmp_path / "s3-digits.yml"
    path.write_text(text)
    return path


def run(tmp_path, path, **extra_env):
    env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"), FFDL_RESULTS=str(tmp_path / "res"),
               **extra_env)
    return subprocess.run([str(BUILD / "ffdl-run"), str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_pytorch_digits_with_data_and_results_in_s3(moto, digits_in_s3, tmp_path):
    result = run(tmp_path, manifest(tmp_path, moto.endpoint))
    assert result.returncode == 0, result.stderr[-3000:]
    tid = re.search(r"(training-[a-z0-9]+) COMPLETED", result.stderr).group(1)
    # the summary and the last transition say where the results went
    assert (f"ffdl-run: {tid} COMPLETED; results in s3://digits-results/{tid}/ and res/{tid}\n"
            in result.stderr), result.stderr[-2000:]
    history = json.loads((tmp_path / "res" / tid / "job.json").read_text())
    assert history["transitions"][-1]["reason"] == f"results stored in s3://digits-results/{tid}/"
    # progress shows as periodic lines when stderr is not a terminal
    assert re.search(rf"^{tid}: downloading the training data: [0-9.]+ of [0-9.]+ [KM]iB"
                     r"(, [0-9.]+ MiB/s)? \(done\)$",
                     result.stderr, re.M), result.stderr
    assert re.search(rf"^{tid}: uploading the results: .*\(done\)$", result.stderr, re.M)
    keys = {o["Key"] for o in digits_in_s3.list_objects_v2(Bucket="digits-results",
                                                            Prefix=f"{tid}/")["Contents"]}
    assert {f"{tid}/model/model.pt", f"{tid}/learner-1/training-log.txt",
            f"{tid}/_submitted_code/model.zip"} <= keys
    log = digits_in_s3.get_object(Bucket="digits-results",
                                  Key=f"{tid}/learner-1/training-log.txt")["Body"].read().decode()
    assert "final test accuracy" in log
    # the job's copy of the training data went when it ended
    assert not (tmp_path / ".ffdl" / "jobs" / tid / "data").exists()
    assert (tmp_path / ".ffdl" / "jobs" / tid / "model").is_dir()
    # the secret appears nowhere a person or a log can see it
    job = (tmp_path / "res" / tid / "job.json").read_text()
    shown = subprocess.run([str(BUILD / "ffdl"), "show", "--json", tid], cwd=tmp_path,
                           env=dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl")),
                           capture_output=True, text=True, timeout=30)
    for text in (result.stderr, result.stdout, job, shown.stdout, shown.stderr):
        assert SECRET not in text


def test_wrong_credentials_end_with_c103_and_s3s_code(moto, digits_in_s3, tmp_path):
    auth = MotoServer(tmp_path, auth=True).start()
    try:
        access, _ = auth.create_iam_keys()
        path = manifest(tmp_path, auth.endpoint, secret="not-the-secret")
        path.write_text(path.read_text().replace("user_name: ffdl-key", f"user_name: {access}"))
        result = run(tmp_path, path)
    finally:
        auth.stop()
    assert result.returncode == 1
    assert re.search(r"FAILED C103: checking the results bucket failed: S3 "
                     r"(SignatureDoesNotMatch|InvalidAccessKeyId)", result.stderr), result.stderr
    assert "not-the-secret" not in result.stderr


def test_missing_bucket_is_named(moto, digits_in_s3, tmp_path):
    result = run(tmp_path, manifest(tmp_path, moto.endpoint, data_bucket="no-such-bucket"))
    assert result.returncode == 1
    assert re.search(r"FAILED S302: .*NoSuchBucket.*no-such-bucket", result.stderr), result.stderr


def test_a_prefix_that_matches_nothing_is_said(moto, digits_in_s3, tmp_path):
    """"/digits/" matches none of digits/*: a warning when the manifest is
    read, and another when the download finds no object (the training
    script then fails for want of data)."""
    result = run(tmp_path, manifest(tmp_path, moto.endpoint, prefix="/digits/"))
    assert "training_data.prefix: starts with /, which S3 keys seldom do" in result.stderr
    warning = ("downloading the training data: no object under s3://digits-data//digits/; "
               "$DATA_DIR is empty")
    assert warning in result.stderr, result.stderr
    assert result.returncode == 1
    # the learner's log says it too, ahead of the script's own failure
    tid = re.search(r"(training-[a-z0-9]+) FAILED", result.stderr).group(1)
    log = digits_in_s3.get_object(Bucket="digits-results",
                                  Key=f"{tid}/learner-1/training-log.txt")["Body"].read().decode()
    assert log.startswith(f"ffdl: warning: {warning}\n"), log[:500]


def custom_text(endpoint, command, results_bucket=None, prefix="digits/", connection_extra=""):
    """A custom-framework manifest reading digits-data/PREFIX, results to
    RESULTS_BUCKET (None: no training_results), CONNECTION_EXTRA lines
    (indented) ending the connection."""
    results = (f"    training_results:\n      container: {results_bucket}\n" if results_bucket
               else "")
    return ("name: custom\ncpus: 0.5\nmemory: 256MiB\nframework:\n  name: custom\n"
            f"  version: local\n  command: {json.dumps(command)}\ndata_stores:\n  - id: cos\n"
            "    type: mount_cos\n    training_data:\n      container: digits-data\n"
            f"      prefix: {prefix}\n{results}"
            f"    connection:\n      auth_url: {endpoint}\n      user_name: ffdl-key\n"
            f"      password: {SECRET}\n{connection_extra}")


def custom_manifest(tmp_path, endpoint, command, results_bucket, prefix="digits/",
                    connection_extra=""):
    """custom_text in a file."""
    path = tmp_path / "custom.yml"
    path.write_text(custom_text(endpoint, command, results_bucket, prefix, connection_extra))
    return path


def test_a_missing_results_bucket_fails_the_job_before_it_trains(moto, digits_in_s3, tmp_path):
    result = run(tmp_path, custom_manifest(tmp_path, moto.endpoint, "echo trained",
                                           "no-such-results"))
    assert result.returncode == 1
    assert re.search(r"FAILED S303: checking the results bucket failed: S3 NoSuchBucket .*"
                     r"bucket no-such-results", result.stderr), result.stderr[-2000:]
    assert "PROCESSING" not in result.stderr and "trained" not in result.stdout


def test_a_failed_jobs_logs_that_cannot_be_stored_keep_its_failure(moto, digits_in_s3, tmp_path):
    """A learner that failed: its logs go to the results store; when that
    fails too (the learner deleted the bucket), the job still ends with the
    learner's failure, and a warning says where the logs did not go."""
    digits_in_s3.create_bucket(Bucket="doomed-results")
    delete = (f"{sys.executable} -c \"import boto3; boto3.client('s3', endpoint_url="
              f"'{moto.endpoint}', region_name='us-east-1', aws_access_key_id='k', "
              "aws_secret_access_key='s').delete_bucket(Bucket='doomed-results')\"; exit 3")
    result = run(tmp_path, custom_manifest(tmp_path, moto.endpoint, delete, "doomed-results"))
    assert result.returncode == 1
    failed = re.search(r"(training-[a-z0-9]+): FAILED (\w+):", result.stderr)
    assert failed and failed.group(2) == "C201", result.stderr[-2000:]
    assert re.search(r"the learner logs did not reach the results store: .*NoSuchBucket.*"
                     r"doomed-results", result.stderr), result.stderr[-2000:]
    tid = failed.group(1)
    assert (tmp_path / "res" / tid / "learner-1" / "training-log.txt").exists()


def test_storing_aborts_what_an_earlier_run_left_half_uploaded(moto, digits_in_s3, tmp_path):
    """An incomplete multipart upload under the job's <training-id>/ (what a
    server killed in STORING leaves; here the learner makes one) is aborted
    before the results go up, and the log names it. Uploads of other jobs
    stay."""
    other = digits_in_s3.create_multipart_upload(Bucket="digits-results",
                                                 Key="training-other/model/m.bin")["UploadId"]
    leave = (f"{sys.executable} -c \"import os, boto3; s3 = boto3.client('s3', endpoint_url="
             f"'{moto.endpoint}', region_name='us-east-1', aws_access_key_id='k', "
             "aws_secret_access_key='s'); key = os.environ['TRAINING_ID'] + '/model/big.bin'; "
             "u = s3.create_multipart_upload(Bucket='digits-results', Key=key)['UploadId']; "
             "s3.upload_part(Bucket='digits-results', Key=key, UploadId=u, PartNumber=1, "
             "Body=b'half'); print('left', u)\"")
    result = run(tmp_path, custom_manifest(tmp_path, moto.endpoint, leave, "digits-results"))
    assert result.returncode == 0, result.stderr[-3000:]
    tid = re.search(r"(training-[a-z0-9]+) COMPLETED", result.stderr).group(1)
    left = re.search(r"left (\S+)", result.stderr).group(1)
    assert (f"aborted an incomplete multipart upload of s3://digits-results/{tid}/model/big.bin "
            f"(upload id {left}) that an earlier run left") in result.stderr, result.stderr[-3000:]
    uploads = digits_in_s3.list_multipart_uploads(Bucket="digits-results").get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("training-other/model/m.bin", other)]
    keys = {o["Key"] for o in digits_in_s3.list_objects_v2(Bucket="digits-results",
                                                            Prefix=f"{tid}/")["Contents"]}
    assert f"{tid}/learner-1/training-log.txt" in keys and f"{tid}/model/big.bin" not in keys
    digits_in_s3.abort_multipart_upload(Bucket="digits-results", Key="training-other/model/m.bin",
                                        UploadId=other)


def submit(srv, token, text):
    """POSTs the manifest TEXT, with a small model zip, to the server SRV:
    the new job's model_id."""
    from test_server import call, multipart, zip_bytes
    body, headers = multipart({"manifest": ("manifest.yml", text.encode()),
                               "model_definition": ("model.zip", zip_bytes({"a": "b"}))})
    code, doc, _ = call(srv, "POST", "/v1/models", token=token, body=body, headers=headers)
    assert code == 201, doc
    return doc["model_id"]


def test_a_server_killed_while_storing_stores_again_and_aborts_its_half_upload(
        moto, digits_in_s3, tmp_path):
    """SIGKILL while a 40 MiB result goes up in parts (slowed by a proxy):
    the restarted server stores the job again, aborts the multipart upload
    the killed one left, and the result arrives whole."""
    from test_server import Server, add_user, wait_status
    proxy = CutProxy(moto.port)
    proxy.throttle(256 * 1024)
    text = custom_text(proxy.endpoint, "head -c 41943040 /dev/urandom > $RESULT_DIR/big.bin",
                       "digits-results", connection_extra="      part_size: 5MiB\n")
    data = tmp_path / "data"
    srv = Server(data)
    try:
        token = add_user(srv, "alice")
        model_id = submit(srv, token, text)

        def half_uploads():
            return digits_in_s3.list_multipart_uploads(
                Bucket="digits-results", Prefix=f"{model_id}/").get("Uploads", [])
        deadline = time.monotonic() + 60
        while not half_uploads():
            assert time.monotonic() < deadline, "no multipart upload started"
            time.sleep(0.05)
        srv.proc.kill()  # SIGKILL: no chance to abort anything
        srv.proc.wait()
        srv.log.close()
        left = half_uploads()
        assert [u["Key"] for u in left] == [f"{model_id}/model/big.bin"], left
        proxy.throttle(None)
        srv = Server(data)
        done = wait_status(srv, model_id, {"COMPLETED", "FAILED"}, token=token)
        assert done["training"]["training_status"]["status"] == "COMPLETED", done
        assert half_uploads() == []
        srv.log.seek(0)
        assert (f"aborted an incomplete multipart upload of s3://digits-results/{model_id}/model/"
                f"big.bin (upload id {left[0]['UploadId']}) that an earlier run left"
                in srv.log.read())
        got = digits_in_s3.get_object(Bucket="digits-results", Key=f"{model_id}/model/big.bin")
        mine = (data / "results" / model_id / "model" / "big.bin").read_bytes()
        assert len(mine) == 40 * 1024 * 1024 and got["Body"].read() == mine
    finally:
        srv.stop()
        proxy.close()


@pytest.mark.parametrize("code, status, level", [("NotImplemented", 501, "warn"),
                                                  ("AccessDenied", 403, "info")])
def test_a_store_that_cannot_list_uploads_still_takes_the_results(tmp_path, code, status, level):
    """Some stores refuse ListMultipartUploads: STORING says so and uploads
    anyway. A store without the call (501, retried like any 5xx) is a
    warning; AccessDenied, from the common policy without
    s3:ListBucketMultipartUploads, is said at info level only (FFDL_LOG=info),
    not on every job."""
    fake = FakeS3({("GET", "uploads"): [(status, code)] * 6})
    try:
        path = custom_manifest(tmp_path, fake.endpoint, "echo trained > $RESULT_DIR/out.txt",
                               "results")
        for log in ("warn", "info"):
            result = run(tmp_path, path, FFDL_LOG=log)
            assert result.returncode == 0, result.stderr[-3000:]
            tid = re.search(r"(training-[a-z0-9]+) COMPLETED", result.stderr).group(1)
            said = re.search(rf"ffdl {level}: cannot look for incomplete uploads under "
                             rf"s3://results/{tid}/ \(S3 {code} \(HTTP {status}\): scripted "
                             rf"{code}.*\); uploading anyway", result.stderr)
            assert bool(said) == (log == "info" or level == "warn"), result.stderr[-3000:]
            puts = {p for method, p, _, _ in fake.requests if method == "PUT"}
            assert f"/results/{tid}/model/out.txt" in puts, sorted(puts)
            fake.failures[("GET", "uploads")] = [(status, code)] * 6
    finally:
        fake.close()


def test_a_server_killed_while_downloading_stages_the_job_again_from_scratch(
        moto, digits_in_s3, tmp_path):
    """SIGKILL while the training data comes down (slowed by a proxy): the
    restarted server requeues the job and stages it from an empty $DATA_DIR,
    so its learner sees the bucket's objects only, not what the interrupted
    staging left (a .partial file; here also a file standing for an object
    deleted since)."""
    from test_server import Server, add_user, cli, wait_status
    digits_in_s3.put_object(Bucket="digits-data", Key="crash/blob.bin", Body=os.urandom(24 << 20))
    proxy = CutProxy(moto.port)
    proxy.throttle(2 << 20, direction="down")
    text = custom_text(proxy.endpoint, "ls -A $DATA_DIR", prefix="crash/")
    data = tmp_path / "data"
    srv = Server(data)
    try:
        token = add_user(srv, "alice")
        model_id = submit(srv, token, text)
        staged = data / "jobs" / model_id / "data"
        deadline = time.monotonic() + 60
        while not list(staged.glob("*.partial")):
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
        srv.proc.kill()  # SIGKILL, mid-download
        srv.proc.wait()
        srv.log.close()
        (staged / "deleted-since.bin").write_bytes(b"old")
        proxy.throttle(None)
        srv = Server(data)
        done = wait_status(srv, model_id, {"COMPLETED", "FAILED"}, token=token)
        assert done["training"]["training_status"]["status"] == "COMPLETED", done
        logs = cli(srv, "logs", model_id, token=token)
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.split() == ["blob.bin"], logs.stdout
    finally:
        srv.stop()
        proxy.close()
        digits_in_s3.delete_object(Bucket="digits-data", Key="crash/blob.bin")


def run_with_cuts(moto, tmp_path, nbytes, direction, command, results_bucket=None, **manifest):
    """Runs custom_manifest's job through a proxy that cuts every connection
    carrying more than NBYTES in DIRECTION: (the run, the job's id, what its
    FAILED line says after the code, how many connections were cut)."""
    proxy = CutProxy(moto.port)
    proxy.cut_after(nbytes, times=None, direction=direction)
    try:
        result = run(tmp_path, custom_manifest(tmp_path, proxy.endpoint, command, results_bucket,
                                               **manifest))
    finally:
        proxy.close()
    assert result.returncode == 1, result.stderr[-3000:]
    failed = re.search(r"(training-[a-z0-9]+): FAILED (\w+: .*)", result.stderr)
    assert failed, result.stderr[-3000:]
    return result, failed.group(1), failed.group(2), proxy.cuts


def test_results_cut_on_every_try_fail_with_s303_and_leave_no_half_upload(
        moto, digits_in_s3, tmp_path):
    """Every connection that carries more than 2 MiB of a part up is cut (a
    proxy): each part is retried, then the job fails with S303 naming the
    object, its multipart upload is aborted (no partial object, nothing
    billed), and the learner's logs, small enough to pass, still reach the
    results store."""
    _, tid, failure, cuts = run_with_cuts(
        moto, tmp_path, 2 << 20, "up", "head -c 12582912 /dev/urandom > $RESULT_DIR/big.bin",
        "digits-results", connection_extra="      part_size: 5MiB\n")
    assert failure.startswith("S303: "), failure
    message = failure[len("S303: "):]
    assert "ConnectionError" in message and f"{tid}/model/big.bin" in message, message
    assert "HTTP" not in message  # the "100 Continue" before each cut is no answer
    # in words, whichever way the last try broke (libcurl's own detail alone
    # can be "select/poll returned error")
    assert re.search(r"PUT object: (Failed sending data to the peer \(|Empty reply from server)",
                     message), message
    assert cuts > 1  # retried before giving up
    assert digits_in_s3.list_multipart_uploads(Bucket="digits-results",
                                                Prefix=f"{tid}/").get("Uploads", []) == []
    keys = {o["Key"] for o in digits_in_s3.list_objects_v2(
        Bucket="digits-results", Prefix=f"{tid}/").get("Contents", [])}
    assert f"{tid}/model/big.bin" not in keys
    assert f"{tid}/learner-1/training-log.txt" in keys, keys
    # the local copy keeps the results that did not go up
    assert (tmp_path / "res" / tid / "model" / "big.bin").stat().st_size == 12582912


def test_training_data_cut_on_every_try_fails_with_s302_before_training(
        moto, digits_in_s3, tmp_path):
    """Every answer that brings more than 1 MiB of an object down is cut:
    the download is retried, then the job fails with S302 naming the
    object, and no learner starts."""
    digits_in_s3.put_object(Bucket="digits-data", Key="cut/blob.bin", Body=os.urandom(6 << 20))
    try:
        result, _, failure, cuts = run_with_cuts(moto, tmp_path, 1 << 20, "down", "echo trained",
                                                 prefix="cut/")
    finally:
        digits_in_s3.delete_object(Bucket="digits-data", Key="cut/blob.bin")
    assert failure.startswith("S302: "), failure
    assert "ConnectionError" in failure and "cut/blob.bin" in failure, failure
    assert cuts > 1
    assert "PROCESSING" not in result.stderr and "trained" not in result.stdout


def test_server_job_logs_say_the_training_data_was_empty(moto, digits_in_s3, tmp_path):
    """On a server the warning reaches `ffdl logs` and the job's status."""
    from test_server import Server, add_user, cli, wait_status
    text = ("name: empty-data\ncpus: 0.5\nmemory: 256MiB\nframework:\n  name: custom\n"
            "  version: local\n  command: ls $DATA_DIR | wc -l\ndata_stores:\n  - id: cos\n"
            "    type: mount_cos\n    training_data:\n      container: digits-data\n"
            "      prefix: nothing-here/\n    training_results:\n      container: digits-results\n"
            f"    connection:\n      auth_url: {moto.endpoint}\n      user_name: ffdl-key\n"
            f"      password: {SECRET}\n")
    srv = Server(tmp_path / "data")
    try:
        token = add_user(srv, "alice")
        model_id = submit(srv, token, text)
        wait_status(srv, model_id, {"COMPLETED"}, token=token)
        logs = cli(srv, "logs", model_id, token=token)
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.splitlines() == [
            "ffdl: warning: downloading the training data: no object under "
            "s3://digits-data/nothing-here/; $DATA_DIR is empty", "0"], logs.stdout
        history = json.loads((srv.data / "results" / model_id / "job.json").read_text())
        assert [t["reason"] for t in history["transitions"]
                if t["status"] == "PROCESSING"][0].startswith(
            "warning: downloading the training data: no object under s3://digits-data/nothing-here/")
    finally:
        srv.stop()


def test_job_scripts_use_s3_with_yielding_calls(moto, digits_in_s3, tmp_path):
    out = tmp_path / "staged"
    src = tmp_path / "up"
    src.mkdir()
    (src / "a.txt").write_text("alpha")
    (src / "sub").mkdir()
    (src / "sub" / "b.txt").write_text("beta")
    script = tmp_path / "s3.lua"
    script.write_text(f"""
local ffdl = require "ffdl"
local conn = {{ auth_url = "{moto.endpoint}", user_name = "ffdl-key", password = "{SECRET}" }}
assert(ffdl.s3.put(conn, "digits-results", "notes/hello world+1.txt", "héllo"))
print(ffdl.s3.get(conn, "digits-results", "notes/hello world+1.txt"))
assert(ffdl.s3.upload_dir(conn, "{src}", "digits-results", "up"))
local keys = {{}}
for _, o in ipairs(ffdl.s3.list(conn, "digits-results", "up/")) do keys[#keys + 1] = o.key end
table.sort(keys)
print(table.concat(keys, ","))
assert(ffdl.s3.download_dir(conn, "digits-data", "digits/", "{out}"))
local none, err = ffdl.s3.get(conn, "no-such-bucket", "x")
print(none, err)
print(ffdl.s3.get(conn, "digits-results", "notes/missing.txt"))
""")
    env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"))
    result = subprocess.run([str(BUILD / "ffdl-run"), str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "héllo"
    assert lines[1] == "up/a.txt,up/sub/b.txt"
    assert lines[2].startswith("nil\tS3 NoSuchBucket") and "no-such-bucket" in lines[2]
    # a missing key is named with its bucket
    assert lines[3].startswith("nil\tS3 NoSuchKey (HTTP 404): ") and lines[3].endswith(
        "; bucket digits-results, key notes/missing.txt"), lines[3]
    assert sorted(p.name for p in out.iterdir()) == ["test.npz", "train.npz"]
    assert SECRET not in result.stdout + result.stderr


def test_job_scripts_over_https_trust_aws_ca_bundle(tmp_path):
    """S3 over https from a job script: with AWS_CA_BUNDLE naming the
    server's CA the transfers go through and come back byte for byte;
    without it the same call answers nil and an error that says what to
    do, and nothing is written."""
    import hashlib
    cert = self_signed_cert(tmp_path / "certs")
    server = MotoServer(tmp_path / "moto-tls", cert=cert).start()
    try:
        boto = server.client(access="ffdl-key", secret=SECRET)
        boto.create_bucket(Bucket="tls-bucket")
        src = tmp_path / "up"
        (src / "sub").mkdir(parents=True)
        big = os.urandom(9 * 1024 * 1024 + 3)  # more than one part
        (src / "sub" / "big.bin").write_bytes(big)
        (src / "a.txt").write_text("alpha")
        out = tmp_path / "down"
        script = tmp_path / "tls.lua"
        script.write_text(f"""
local ffdl = require "ffdl"
local conn = {{ auth_url = "{server.endpoint}", user_name = "ffdl-key", password = "{SECRET}" }}
local ok, err = ffdl.s3.put(conn, "tls-bucket", "notes/n.txt", "over tls")
print(ok, err)
if not ok then return end
print(ffdl.s3.get(conn, "tls-bucket", "notes/n.txt"))
assert(ffdl.s3.upload_dir(conn, "{src}", "tls-bucket", "up"))
assert(ffdl.s3.download_dir(conn, "tls-bucket", "up/", "{out}"))
""")

        def run_script(ca):
            env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"), AWS_CA_BUNDLE=ca)
            return subprocess.run([str(BUILD / "ffdl-run"), str(script)], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)

        refused = run_script("")
        assert refused.returncode == 0, refused.stderr
        first = refused.stdout.splitlines()[0]
        assert first.startswith("nil\tS3 ConnectionError"), refused.stdout
        assert "certificate" in first and "AWS_CA_BUNDLE" in first, first
        assert boto.list_objects_v2(Bucket="tls-bucket").get("KeyCount") == 0
        assert not out.exists()

        result = run_script(str(cert[0]))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[:2] == ["true\tnil", "over tls"], result.stdout
        got = boto.get_object(Bucket="tls-bucket", Key="up/sub/big.bin")["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()
        assert (out / "sub" / "big.bin").read_bytes() == big
        assert (out / "a.txt").read_text() == "alpha"
        assert SECRET not in result.stdout + result.stderr
    finally:
        server.stop()


@contextlib.contextmanager
def default_store_job(tmp_path, endpoint, extra="", command="echo stored"):
    """Yields (server, token, model_id): a job without data stores that ran
    COMMAND to COMPLETED on a server whose config names a default S3 store
    at ENDPOINT (bucket digits-results), plus the EXTRA config lines."""
    from test_server import Server, add_user, create, wait_status
    config = tmp_path / "server.yml"
    config.write_text(f"on_shutdown: halt\ns3_url: {endpoint}\ns3_access_key: ffdl-key\n"
                      f"s3_secret_key: {SECRET}\ns3_results_bucket: digits-results\n{extra}")
    srv = Server(tmp_path / "data", extra_args=["--config", config])
    try:
        token = add_user(srv, "alice")
        code, doc, _ = create(srv, token, command=command)
        wait_status(srv, doc["model_id"], {"COMPLETED"}, token=token)
        yield srv, token, doc["model_id"]
    finally:
        srv.stop()


def test_server_default_store_takes_results_of_manifests_without_stores(moto, digits_in_s3, tmp_path):
    from test_server import call
    with default_store_job(tmp_path, moto.endpoint) as (srv, token, model_id):
        keys = {o["Key"] for o in digits_in_s3.list_objects_v2(Bucket="digits-results",
                                                                Prefix=f"{model_id}/")["Contents"]}
        assert {f"{model_id}/learner-1/training-log.txt", f"{model_id}/_submitted_code/model.zip"} <= keys
        code, shown, _ = call(srv, "GET", f"/v1/models/{model_id}", token=token)
        assert SECRET not in json.dumps(shown)
        # the server's own store: its user sees neither its endpoint nor its key
        assert shown["data_stores"][0]["connection"] == {}, shown["data_stores"]
        assert "ffdl-key" not in json.dumps(shown) and moto.endpoint not in json.dumps(shown)
        # ... but where its results went
        assert (shown["training"]["training_status"]["status_message"] ==
                f"results stored in s3://digits-results/{model_id}/"), shown["training"]
        job_json = (srv.data / "results" / model_id / "job.json").read_text()
        assert "ffdl-key" not in job_json and SECRET not in job_json


def test_incomplete_default_store_is_refused(tmp_path):
    config = tmp_path / "server.yml"
    config.write_text("s3_url: http://127.0.0.1:1\n")
    result = subprocess.run([str(BUILD / "ffdl-server"), "--config", str(config), "--data",
                             str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "needs s3_url, s3_access_key" in result.stderr


# ---- connection.checksum (ffdl's extension): crc32c (default) or sha256 ----

@pytest.fixture
def fake():
    """The recording FakeS3, answering a listing too (an empty one), so that a
    job's DOWNLOADING finds no training data and goes on."""

    class Store(FakeS3):
        def answer(self, method, path, headers, body):
            status, out_headers, out = super().answer(method, path, headers, body)
            if method == "GET" and "list-type=2" in path and status == 200:
                return 200, {}, (b"<ListBucketResult><IsTruncated>false</IsTruncated>"
                                 b"</ListBucketResult>")
            return status, out_headers, out

    store = Store()
    yield store
    store.close()


def puts(fake):
    """{path: (headers, body)} of every PUT FAKE received."""
    return {path: (headers, body) for method, path, headers, body in fake.requests
            if method == "PUT"}


def assert_sha256_signed(headers, body):
    """The body's SHA-256 in x-amz-content-sha256, signed, and no CRC32C."""
    import hashlib
    assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest(), headers
    assert not [h for h in headers if h.lower().startswith("x-amz-checksum")], headers
    signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
    assert "x-amz-content-sha256" in signed.split(";")


def run_script(tmp_path, text):
    script = tmp_path / "s3.lua"
    script.write_text(text)
    env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"))
    return subprocess.run([str(BUILD / "ffdl-run"), str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_job_script_s3_checksum_sha256_signs_the_body(fake, tmp_path):
    from test_s3 import crc32c_b64
    result = run_script(tmp_path, f"""
local ffdl = require "ffdl"
local conn = {{ auth_url = "{fake.endpoint}", user_name = "k", password = "{SECRET}" }}
assert(ffdl.s3.put(conn, "bkt", "default", "payload one"))
conn.checksum = "sha256"
assert(ffdl.s3.put(conn, "bkt", "sha", "payload two"))
conn.checksum = "crc32c"
assert(ffdl.s3.put(conn, "bkt", "crc", "payload three"))
""")
    assert result.returncode == 0, result.stderr
    got = puts(fake)
    assert set(got) == {"/bkt/default", "/bkt/sha", "/bkt/crc"}
    for key, body in (("default", b"payload one"), ("crc", b"payload three")):
        headers, sent = got[f"/bkt/{key}"]
        assert sent == body
        assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
        assert headers["x-amz-checksum-crc32c"] == crc32c_b64(body)
    headers, sent = got["/bkt/sha"]
    assert sent == b"payload two"
    assert_sha256_signed(headers, sent)


def test_job_script_s3_bad_checksum_raises(fake, tmp_path):
    result = run_script(tmp_path, f"""
local ffdl = require "ffdl"
local conn = {{ auth_url = "{fake.endpoint}", user_name = "k", password = "{SECRET}",
               checksum = 256 }}
print(pcall(ffdl.s3.put, conn, "bkt", "k", "x"))
conn.checksum = "md5"
ffdl.s3.put(conn, "bkt", "k", "x")
""")
    assert result.returncode == 2, result.stderr
    assert ('ffdl.s3: connection.checksum must be crc32c or sha256, got number'
            in result.stdout), result.stdout
    # the message names the script's line, not ffdl.lua's
    assert ('s3.lua:7: ffdl.s3: connection.checksum must be crc32c or sha256, got "md5"'
            in result.stderr), result.stderr
    assert fake.requests == []


def test_job_script_s3_endpoint_without_scheme_raises(tmp_path):
    result = run_script(tmp_path, """
local ffdl = require "ffdl"
local conn = { auth_url = "localhost:9000", user_name = "k", password = "x" }
print(pcall(ffdl.s3.list, conn, "bkt"))
conn.auth_url = "http:///bkt"
ffdl.s3.list(conn, "bkt")
""")
    assert result.returncode == 2, result.stderr
    assert ('connection.auth_url must start with http:// or https://, got "localhost:9000"'
            in result.stdout), result.stdout
    assert 's3.lua:6: ffdl.s3: connection.auth_url names no host, got "http:///bkt"' in result.stderr


def test_job_script_s3_bad_arguments_are_named(fake, tmp_path):
    """Each argument by its name in ffdl.s3's signature, not core.s3's
    positions; nothing is sent."""
    result = run_script(tmp_path, f"""
local ffdl = require "ffdl"
local conn = {{ auth_url = "{fake.endpoint}", user_name = "k", password = "{SECRET}" }}
print(pcall(ffdl.s3.put, conn, "bkt", "k", {{}}))
print(pcall(ffdl.s3.get, conn, "", "k"))
print(pcall(ffdl.s3.get, nil, "bkt", "k"))
print(pcall(ffdl.s3.upload_dir, conn, nil, "bkt"))
print(pcall(ffdl.s3.download_dir, conn, "bkt", "p"))
ffdl.s3.get(conn, "bkt", "")
""")
    assert result.returncode == 2, result.stderr
    for expected in ("ffdl.s3.put: data must be a string, got table",
                     'ffdl.s3.get: bucket must be a non-empty string, got ""',
                     "ffdl.s3.get: the connection must be a table {auth_url=, user_name=, password=}, got nil",
                     "ffdl.s3.upload_dir: dir must be a non-empty string, got nil",
                     "ffdl.s3.download_dir: dir must be a non-empty string, got nil"):
        assert expected in result.stdout, result.stdout
    assert 's3.lua:9: ffdl.s3.get: key must be a non-empty string, got ""' in result.stderr
    assert fake.requests == []


def test_manifest_results_store_checksum_sha256(fake, tmp_path):
    """A data store whose connection says checksum: sha256 stores the
    results with each body's SHA-256 signed, and no CRC32C."""
    path = tmp_path / "sha.yml"
    path.write_text(
        "name: sha\ncpus: 0.5\nmemory: 256MiB\n"
        "data_stores:\n  - id: s3\n    type: s3_datastore\n"
        "    training_data:\n      container: data\n"
        "    training_results:\n      container: results\n"
        f"    connection:\n      auth_url: {fake.endpoint}\n      user_name: k\n"
        f"      password: {SECRET}\n      checksum: sha256\n"
        "framework:\n  name: custom\n  version: local\n"
        "  command: echo stored-with-sha256 > $RESULT_DIR/out.txt\n")
    result = run(tmp_path, path)
    assert result.returncode == 0, result.stderr[-3000:]
    tid = re.search(r"(training-[a-z0-9]+) COMPLETED", result.stderr).group(1)
    got = puts(fake)
    assert got[f"/results/{tid}/model/out.txt"][1] == b"stored-with-sha256\n"
    assert f"/results/{tid}/learner-1/training-log.txt" in got
    for headers, body in got.values():
        assert_sha256_signed(headers, body)


def test_server_s3_checksum_sha256_for_the_default_store(fake, tmp_path):
    with default_store_job(tmp_path, fake.endpoint, "s3_checksum: sha256\n") as (_, _, tid):
        got = puts(fake)
    assert f"/digits-results/{tid}/learner-1/training-log.txt" in got, list(got)
    for headers, body in got.values():
        assert_sha256_signed(headers, body)


def refused_config(tmp_path, lines):
    """(config path, stderr) of ffdl-server refusing a default store at an
    unreachable endpoint plus LINES: exit 2, and no data directory made."""
    config = tmp_path / "server.yml"
    config.write_text("s3_url: http://127.0.0.1:1\ns3_access_key: k\ns3_secret_key: s\n" + lines)
    result = subprocess.run([str(BUILD / "ffdl-server"), "--config", str(config), "--data",
                             str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "d").exists()
    return config, result.stderr


@pytest.mark.parametrize("bucket, style, rule", [
    ("-r", "path", "3 to 255 letters, digits, '.', '-' and '_', first and last not '.' or '-'"),
    ("Results_1", "virtual", "3 to 63 lowercase letters, digits, '.' and '-', first and last a "
                             "letter or digit, with s3_addressing_style: virtual"),
])
def test_server_results_bucket_must_be_a_bucket_name(tmp_path, bucket, style, rule):
    config, stderr = refused_config(tmp_path, f"s3_results_bucket: '{bucket}'\n"
                                              f"s3_addressing_style: {style}\n")
    assert (f'ffdl-server: {config}: s3_results_bucket: "{bucket}" is not an S3 bucket name '
            f"({rule})") in stderr, stderr


# ---- connection.part_size and concurrency (ffdl's extensions) ----

WRITE_12_MIB = "head -c 12582912 /dev/zero > $RESULT_DIR/big.bin"


def part_numbers(fake, key):
    """The part numbers FAKE received for KEY (a path such as /bucket/key)."""
    from urllib.parse import parse_qs, urlsplit
    return sorted(int(parse_qs(urlsplit(path).query)["partNumber"][0])
                  for method, path, _, _ in fake.requests
                  if method == "PUT" and urlsplit(path).path == key and "partNumber=" in path)


def test_manifest_part_size_and_concurrency(fake, tmp_path):
    """12 MiB of results go up in 5 MiB parts (three) with part_size: 5MiB,
    in the default 8 MiB parts (two) without it."""
    for name, extra, parts in (("five", "      part_size: 5MiB\n      concurrency: 2\n", 3),
                               ("default", "", 2)):
        path = tmp_path / f"{name}.yml"
        path.write_text(
            f"name: {name}\ncpus: 0.5\nmemory: 256MiB\n"
            "data_stores:\n  - id: s3\n    type: s3_datastore\n"
            "    training_data:\n      container: data\n"
            "    training_results:\n      container: results\n"
            f"    connection:\n      auth_url: {fake.endpoint}\n      user_name: k\n"
            f"      password: {SECRET}\n{extra}"
            f"framework:\n  name: custom\n  version: local\n  command: {WRITE_12_MIB}\n")
        result = run(tmp_path, path)
        assert result.returncode == 0, result.stderr[-3000:]
        tid = re.search(r"(training-[a-z0-9]+) COMPLETED", result.stderr).group(1)
        assert part_numbers(fake, f"/results/{tid}/model/big.bin") == list(range(1, parts + 1))


def test_job_script_s3_part_size_and_concurrency(fake, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(b"\0" * (12 << 20))
    result = run_script(tmp_path, f"""
local ffdl = require "ffdl"
local conn = {{ auth_url = "{fake.endpoint}", user_name = "k", password = "{SECRET}",
               part_size = 5 * 2^20, concurrency = 2 }}
assert(ffdl.s3.upload_dir(conn, "{src}", "bkt", "up"))
for _, bad in ipairs {{ {{ part_size = "16MiB" }}, {{ part_size = 1024 }}, {{ concurrency = 0 }},
                       {{ concurrency = 1.5 }}, {{ concurrency = {{}} }} }} do
  local c = {{ auth_url = conn.auth_url, user_name = "k", password = "x" }}
  for k, v in pairs(bad) do c[k] = v end
  print(pcall(ffdl.s3.list, c, "bkt"))
end
""")
    assert result.returncode == 0, result.stderr
    assert part_numbers(fake, "/bkt/up/big.bin") == [1, 2, 3]
    for expected in (
            'connection.part_size must be a number of bytes from 5 MiB to 5 GiB (such as '
            '16 * 2^20), got "16MiB"',
            "connection.part_size must be a number of bytes from 5 MiB to 5 GiB (such as "
            "16 * 2^20), got 1024",
            "connection.concurrency must be an integer from 1 to 256, got 0",
            "connection.concurrency must be an integer from 1 to 256, got 1.5",
            "connection.concurrency must be an integer from 1 to 256, got table"):
        assert expected in result.stdout, result.stdout
    assert [r for r in fake.requests if "list-type" in r[1]] == []


def test_server_s3_part_size_for_the_default_store(fake, tmp_path):
    with default_store_job(tmp_path, fake.endpoint, "s3_part_size_mb: 5\ns3_concurrency: 2\n",
                           command=WRITE_12_MIB) as (_, _, tid):
        assert part_numbers(fake, f"/digits-results/{tid}/model/big.bin") == [1, 2, 3]


@pytest.mark.parametrize("line, col, message", [
    ("s3_checksum: md5", 14, 'must be crc32c or sha256, got "md5"'),
    ("s3_part_size_mb: 4", 18, 'must be a whole number of MiB, 5..5120 (S3\'s bounds), got "4"'),
    ("s3_concurrency: 0", 17, 'must be a whole number, 1..256, got "0"'),
    ("s3_addressing_style: dns", 22, 'must be path or virtual, got "dns"'),
])
def test_server_bad_s3_setting_is_a_config_error(tmp_path, line, col, message):
    config, stderr = refused_config(tmp_path, f"s3_results_bucket: rrr\n{line}\n")
    key = line.split(":")[0]
    assert f"ffdl-server: {config}:5:{col}: {key}: {message}" in stderr, stderr


# ---- connection.addressing_style (ffdl's extension): path (default) or virtual ----

def hosts_of_puts(fake):
    """{(Host header, path)} of every PUT FAKE received."""
    return {(headers["Host"], path) for method, path, headers, _ in fake.requests
            if method == "PUT"}


def test_manifest_addressing_style_virtual(fake, tmp_path):
    """The bucket goes in the host name (libcurl resolves *.localhost to
    the loopback), not in the path."""
    port = fake.endpoint.rsplit(":", 1)[1]
    path = tmp_path / "vhost.yml"
    path.write_text(
        "name: vhost\ncpus: 0.5\nmemory: 256MiB\n"
        "data_stores:\n  - id: s3\n    type: s3_datastore\n"
        "    training_data:\n      container: data\n"
        "    training_results:\n      container: results\n"
        f"    connection:\n      auth_url: http://localhost:{port}\n      user_name: k\n"
        f"      password: {SECRET}\n      addressing_style: virtual\n"
        "framework:\n  name: custom\n  version: local\n  command: echo v > $RESULT_DIR/v.txt\n")
    result = run(tmp_path, path)
    assert result.returncode == 0, result.stderr[-3000:]
    tid = re.search(r"(training-[a-z0-9]+) COMPLETED", result.stderr).group(1)
    assert (f"results.localhost:{port}", f"/{tid}/model/v.txt") in hosts_of_puts(fake)
    # the results bucket's check before training, and the training data's listing
    lists = {headers["Host"] for method, p, headers, _ in fake.requests if "list-type=2" in p}
    assert lists == {f"results.localhost:{port}", f"data.localhost:{port}"}, lists


def test_job_script_s3_addressing_style(fake, tmp_path):
    port = fake.endpoint.rsplit(":", 1)[1]
    result = run_script(tmp_path, f"""
local ffdl = require "ffdl"
local conn = {{ auth_url = "http://localhost:{port}", user_name = "k", password = "{SECRET}",
               addressing_style = "virtual" }}
assert(ffdl.s3.put(conn, "bkt", "v", "virtual"))
conn.addressing_style = "path"
assert(ffdl.s3.put(conn, "bkt", "p", "path"))
conn.addressing_style = 1
print(pcall(ffdl.s3.put, conn, "bkt", "k", "x"))
conn.addressing_style = "dns"
ffdl.s3.put(conn, "bkt", "k", "x")
""")
    assert result.returncode == 2, result.stderr
    assert hosts_of_puts(fake) == {(f"bkt.localhost:{port}", "/v"), (f"localhost:{port}", "/bkt/p")}
    assert "ffdl.s3: connection.addressing_style must be path or virtual, got number" in result.stdout
    assert ('s3.lua:11: ffdl.s3: connection.addressing_style must be path or virtual, got "dns"'
            in result.stderr), result.stderr


def test_server_s3_addressing_style_for_the_default_store(fake, tmp_path):
    port = fake.endpoint.rsplit(":", 1)[1]
    with default_store_job(tmp_path, f"http://localhost:{port}",
                           "s3_addressing_style: virtual\n") as (_, _, tid):
        assert (f"digits-results.localhost:{port}", f"/{tid}/learner-1/training-log.txt") in \
            hosts_of_puts(fake)


def test_halting_a_job_stops_its_training_data_download(moto, digits_in_s3, tmp_path):
    """Ctrl-C while a large training set is downloaded (slowly, through a
    throttling proxy): the download is canceled, not waited for, and the
    job ends HALTED without the file."""
    digits_in_s3.put_object(Bucket="digits-data", Key="big/blob.bin", Body=os.urandom(48 << 20))
    proxy = CutProxy(moto.port)
    proxy.throttle(4 << 20, direction="down")  # about 12 s for the whole object
    path = tmp_path / "slow.yml"
    path.write_text(
        "name: slow-data\ncpus: 0.5\nmemory: 256MiB\nframework:\n  name: custom\n"
        "  version: local\n  command: ls $DATA_DIR\ndata_stores:\n  - id: cos\n"
        "    type: mount_cos\n    training_data:\n      container: digits-data\n"
        "      prefix: big/\n    connection:\n"
        f"      auth_url: {proxy.endpoint}\n      user_name: ffdl-key\n      password: {SECRET}\n")
    env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"), FFDL_RESULTS=str(tmp_path / "res"))
    proc = subprocess.Popen([str(BUILD / "ffdl-run"), str(path)], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if re.search(r"downloading the training data: [1-9][\d.]* ", line):
                break  # bytes are arriving
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proxy.close()
    out = "".join(seen) + rest
    assert proc.returncode == 130, out[-3000:]
    tid = re.search(r"(training-[a-z0-9]+): HALTED", out).group(1)
    data = tmp_path / ".ffdl" / "jobs" / tid / "data"
    # canceled, and what came before it dropped with the job's staged data
    assert not data.exists(), list(data.rglob("*"))


def run_s3_example(tmp_path, *args):
    env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"))
    return subprocess.run([sys.executable, str(ROOT / "examples" / "s3_example.py"),
                           "--build", str(BUILD), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def is_moto(pid):
    try:
        return b"moto" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("keep", [False, True])
def test_the_s3_example_trains_and_boto3_reads_its_results(tmp_path, keep):
    """examples/s3_example.py (scripts/example-s3.sh): a local S3 server,
    the digits put there by boto3, the example manifest trained by ffdl-run,
    the results read back by boto3; the server stopped, or with --keep left
    running for another tool."""
    port = free_port()
    result = run_s3_example(tmp_path, "--port", str(port), *(["--keep"] if keep else []))
    pid = int(re.search(r"S3 server pid (\d+)", result.stderr).group(1))
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        tid = re.search(r"(training-[a-z0-9]+) COMPLETED", result.stderr).group(1)
        for key in ("model/model.pt", "learner-1/training-log.txt", "_submitted_code/model.zip"):
            assert re.search(rf"^ +\d+  {tid}/{key}$", result.stdout, re.M), result.stdout
        assert re.search(r"final test accuracy 0\.\d+$", result.stdout, re.M), result.stdout
        # no import-time noise from the Python tools (pyOpenSSL's deprecations)
        assert "DeprecationWarning" not in result.stderr, result.stderr[:2000]
        # the copy of the manifest names the server's port and the keys it made
        home = tmp_path / ".ffdl"
        keys = dict(line.split("=", 1) for line in (home / "s3-example.env").read_text().split())
        copy = (home / "pytorch-digits-s3.yml").read_text()
        assert f"auth_url: http://127.0.0.1:{port}" in copy
        assert f"password: {keys['AWS_SECRET_ACCESS_KEY']}" in copy
        assert keys["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr
        assert is_moto(pid) == keep
        if keep:
            assert f"kill {pid}" in result.stdout
            assert f"{(BUILD / 'ffdl-run').resolve()} {home / 'pytorch-digits-s3.yml'}" in result.stdout
            # the printed command for another tool (the AWS CLI of the test tools) lists them
            hint = re.search(r"^  (\(set -a; .*\))$", result.stdout, re.M).group(1)
            listed = subprocess.run(["bash", "-c", hint], capture_output=True, text=True,
                                    timeout=120)
            assert listed.returncode == 0, listed.stderr
            assert re.search(rf" {tid}/model/model\.pt$", listed.stdout, re.M), listed.stdout
            assert "Warning" not in listed.stderr, listed.stderr
            server = MotoServer(tmp_path, port=port)
            s3 = server.client(access=keys["AWS_ACCESS_KEY_ID"],
                               secret=keys["AWS_SECRET_ACCESS_KEY"])
            keys_stored = [o["Key"] for o in s3.list_objects_v2(Bucket="digits-results")["Contents"]]
            assert f"{tid}/model/model.pt" in keys_stored
            # it checks signatures: another secret is refused
            with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
                server.client(access=keys["AWS_ACCESS_KEY_ID"],
                              secret="not-the-secret").list_objects_v2(Bucket="digits-results")
    finally:
        if is_moto(pid):
            os.kill(pid, signal.SIGTERM)


def test_the_s3_example_refuses_a_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_s3_example(tmp_path, "--port", str(port))
    assert result.returncode == 1
    assert f"127.0.0.1:{port} is in use: choose a free port with --port N" in result.stderr
    assert "S3 server pid" not in result.stderr
