"""What people see of long transfers: ffdl-run's S3 staging and storing
lines, and `ffdl download`'s bar on a terminal.

The rates shown are compared with the proxy's throttle by a wide margin
(the old display showed millions of MiB/s on its first line); no test
asserts how long anything took."""
import json
import os
import pty
import re
import subprocess

import pytest

from conftest import BUILD
from s3server import CutProxy
from test_server import Server, add_user, create, wait_status, zip_bytes

MIB = 1 << 20
SECRET = "progress-secret"


@pytest.fixture(scope="module")
def data_in_s3(moto):
    s3 = moto.client(access="k", secret=SECRET)
    s3.create_bucket(Bucket="progress-data")
    s3.create_bucket(Bucket="progress-results")
    s3.put_object(Bucket="progress-data", Key="set/blob.bin", Body=os.urandom(6 * MIB))
    return s3


def manifest(tmp_path, endpoint, command="true", data_bucket="progress-data"):
    path = tmp_path / "job.yml"
    path.write_text(
        "name: progress\ncpus: 0.5\nmemory: 256MiB\nframework:\n  name: custom\n"
        f"  version: local\n  command: {json.dumps(command)}\ndata_stores:\n  - id: cos\n"
        f"    type: mount_cos\n    training_data:\n      container: {data_bucket}\n"
        "      prefix: set/\n    training_results:\n      container: progress-results\n"
        f"    connection:\n      auth_url: {endpoint}\n      user_name: k\n"
        f"      password: {SECRET}\n")
    return path


def run(tmp_path, path):
    env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"), FFDL_RESULTS=str(tmp_path / "res"))
    return subprocess.run([str(BUILD / "ffdl-run"), str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def rates(lines):
    return [float(r) for line in lines for r in re.findall(r"([0-9.]+) MiB/s", line)]


def progress_lines(stderr, what):
    return [line for line in stderr.splitlines() if re.match(rf"training-\w+: {what}: ", line)]


def test_staging_lines_show_no_absurd_rate(moto, data_in_s3, tmp_path):
    """6 MiB at 2 MiB/s: the first line comes a moment after the start with
    megabytes already moved; it says the rate is not known yet instead of
    dividing by the microseconds since the bar appeared."""
    proxy = CutProxy(moto.port)
    try:
        proxy.throttle(2 * MIB, direction="down")
        result = run(tmp_path, manifest(tmp_path, proxy.endpoint))
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr[-3000:]
    lines = progress_lines(result.stderr, "downloading the training data")
    assert len(lines) >= 2, result.stderr
    assert re.search(r"MiB, \? MiB/s, ETA \?$", lines[0]), lines
    assert lines[-1].endswith("(done)"), lines
    assert rates(lines) and max(rates(lines)) < 40, lines


def test_a_retried_upload_says_it_retries(moto, data_in_s3, tmp_path):
    """The results upload is cut once half-way: the bytes it had sent are
    sent again, and the lines say that a retry is going on instead of a
    count that goes back to 0 with an ETA of weeks."""
    proxy = CutProxy(moto.port)
    try:
        proxy.throttle(2 * MIB, direction="up")
        proxy.cut_after(3 * MIB, times=1, direction="up")
        command = 'head -c 6291456 /dev/urandom > "$RESULT_DIR/model.bin"'
        result = run(tmp_path, manifest(tmp_path, proxy.endpoint, command=command))
        cuts = proxy.cuts
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert cuts == 1
    lines = progress_lines(result.stderr, "uploading the results")
    assert any(re.search(r", retrying \([0-9.]+ MiB to send again\)$", line) for line in lines), \
        lines
    for line in lines:
        eta = re.search(r"ETA ([0-9]+) s", line)
        assert not eta or int(eta.group(1)) < 3600, lines
    assert lines[-1].endswith("(done)") and "retrying" not in lines[-1], lines


def test_a_failed_download_does_not_say_done(moto, data_in_s3, tmp_path):
    result = run(tmp_path, manifest(tmp_path, moto.endpoint, data_bucket="no-such-data"))
    assert result.returncode == 1
    assert re.search(r"FAILED S302: .*NoSuchBucket", result.stderr), result.stderr
    lines = progress_lines(result.stderr, "downloading the training data")
    assert lines and lines[-1].endswith("(failed)"), result.stderr
    assert not any(line.endswith("(done)") for line in lines), lines


def pty_run(args, env, cwd):
    """Runs ARGS with stderr on a terminal; returns (exit status, what the
    terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    got = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            got += chunk
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, got.decode(errors="replace")


@pytest.fixture
def trained(tmp_path):
    """A server with a COMPLETED job whose trained model holds 6 MiB that
    do not compress."""
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data)
    try:
        token = add_user(server, "alice")
        code, doc, _ = create(server, token,
                              command='head -c 6291456 /dev/urandom > "$RESULT_DIR/model.bin"',
                              zip_data=zip_bytes({"run.sh": "true\n"}))
        assert code == 201, doc
        wait_status(server, doc["model_id"], {"COMPLETED"}, token=token)
        yield server, token, doc["model_id"]
    finally:
        server.stop()


def test_download_on_a_terminal_draws_each_frame_once(trained, tmp_path):
    server, token, model_id = trained
    proxy = CutProxy(server.port)
    try:
        proxy.throttle(2 * MIB, direction="down")
        env = dict(os.environ, FFDL_URL=proxy.endpoint, FFDL_TOKEN=token)
        status, screen = pty_run([str(BUILD / "ffdl"), "download", model_id, "--trainedmodel"],
                                 env, tmp_path)
    finally:
        proxy.close()
    assert status == 0, screen
    assert (tmp_path / f"{model_id}-trainedmodel.zip").stat().st_size > 6 * MIB
    frames = [f.replace("\x1b[K", "").strip() for f in screen.split("\r") if f.strip()]
    assert len(frames) >= 2, screen
    for before, after in zip(frames, frames[1:]):
        assert before != after, frames
    assert sum(" 0.0 MiB," in f or "] 0.0 of" in f for f in frames) <= 2, frames
    assert max(rates(frames)) < 40, frames
    assert frames[-1].endswith("(done)"), frames


def test_a_failed_download_on_a_terminal_does_not_say_done(trained, tmp_path):
    server, token, model_id = trained
    env = dict(os.environ, FFDL_URL=server.url, FFDL_TOKEN="not-a-token")
    status, screen = pty_run([str(BUILD / "ffdl"), "download", model_id, "--trainedmodel"],
                             env, tmp_path)
    assert status != 0, screen
    assert "(done)" not in screen and "(failed)" in screen, screen
