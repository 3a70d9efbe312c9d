"""Jobs with S3 data stores, end to end against moto on loopback."""
import json
import os
import re
import subprocess

import pytest

from conftest import BUILD, ROOT
from s3server import MotoServer, self_signed_cert

SECRET = "s3cr3t-never-shown"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto-jobs")).start()
    yield server
    server.stop()


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


def manifest(tmp_path, endpoint, data_bucket="digits-data", secret=SECRET, prefix="digits/"):
    text = (ROOT / "manifests" / "pytorch-digits.yml").read_text()
    store = (f"data_stores:\n  - id: cos\n    type: mount_cos\n    training_data:\n"
             f"      container: {data_bucket}\n      prefix: {prefix}\n    training_results:\n"
             f"      container: digits-results\n    connection:\n      auth_url: {endpoint}\n"
             f"      user_name: ffdl-key\n      password: {secret}\n      region: us-east-1\n")
    text = re.sub(r"data_stores:\n(  .*\n|    .*\n|      .*\n)*", store, text)
    text = text.replace("../examples", str(ROOT / "examples"))
    path = tmp_path / "s3-digits.yml"
    path.write_text(text)
    return path


def run(tmp_path, path):
    env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"), FFDL_RESULTS=str(tmp_path / "res"))
    return subprocess.run([str(BUILD / "ffdl-run"), str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_pytorch_digits_with_data_and_results_in_s3(moto, digits_in_s3, tmp_path):
    result = run(tmp_path, manifest(tmp_path, moto.endpoint))
    assert result.returncode == 0, result.stderr[-3000:]
    tid = re.search(r"(training-[a-z0-9]+) COMPLETED", result.stderr).group(1)
    # progress shows as periodic lines when stderr is not a terminal
    assert re.search(rf"^{tid}: downloading the training data: [0-9.]+ of [0-9.]+ MiB, .* \(done\)$",
                     result.stderr, re.M), result.stderr
    assert re.search(rf"^{tid}: uploading the results: .*\(done\)$", result.stderr, re.M)
    keys = {o["Key"] for o in digits_in_s3.list_objects_v2(Bucket="digits-results",
                                                            Prefix=f"{tid}/")["Contents"]}
    assert {f"{tid}/model/model.pt", f"{tid}/learner-1/training-log.txt",
            f"{tid}/_submitted_code/model.zip"} <= keys
    log = digits_in_s3.get_object(Bucket="digits-results",
                                  Key=f"{tid}/learner-1/training-log.txt")["Body"].read().decode()
    assert "final test accuracy" in log
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
    assert re.search(r"FAILED C103: downloading the training data failed: S3 "
                     r"(SignatureDoesNotMatch|InvalidAccessKeyId)", result.stderr), result.stderr
    assert "not-the-secret" not in result.stderr


def test_missing_bucket_is_named(moto, digits_in_s3, tmp_path):
    result = run(tmp_path, manifest(tmp_path, moto.endpoint, data_bucket="no-such-bucket"))
    assert result.returncode == 1
    assert re.search(r"FAILED S302: .*NoSuchBucket.*no-such-bucket", result.stderr), result.stderr


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
""")
    env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"))
    result = subprocess.run([str(BUILD / "ffdl-run"), str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "héllo"
    assert lines[1] == "up/a.txt,up/sub/b.txt"
    assert lines[2].startswith("nil\tS3 NoSuchBucket") and "no-such-bucket" in lines[2]
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


def test_server_default_store_takes_results_of_manifests_without_stores(moto, digits_in_s3, tmp_path):
    from test_server import Server, add_user, create, wait_status, call
    config = tmp_path / "server.yml"
    config.write_text(f"on_shutdown: halt\ns3_url: {moto.endpoint}\ns3_access_key: ffdl-key\n"
                      f"s3_secret_key: {SECRET}\ns3_results_bucket: digits-results\n")
    srv = Server(tmp_path / "data", extra_args=["--config", config])
    try:
        token = add_user(srv, "alice")
        code, doc, _ = create(srv, token, command="echo stored")
        model_id = doc["model_id"]
        wait_status(srv, model_id, {"COMPLETED"}, token=token)
        keys = {o["Key"] for o in digits_in_s3.list_objects_v2(Bucket="digits-results",
                                                                Prefix=f"{model_id}/")["Contents"]}
        assert {f"{model_id}/learner-1/training-log.txt", f"{model_id}/_submitted_code/model.zip"} <= keys
        code, shown, _ = call(srv, "GET", f"/v1/models/{model_id}", token=token)
        assert SECRET not in json.dumps(shown)
        assert shown["data_stores"][0]["connection"]["password"] == "***"
    finally:
        srv.stop()


def test_incomplete_default_store_is_refused(tmp_path):
    config = tmp_path / "server.yml"
    config.write_text("s3_url: http://127.0.0.1:1\n")
    result = subprocess.run([str(BUILD / "ffdl-server"), "--config", str(config), "--data",
                             str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "needs s3_url, s3_access_key" in result.stderr
