"""ffdl-run: real jobs on this machine through the orchestrator core."""
import json
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest

from conftest import BUILD, ROOT

STATES = ["QUEUED", "PENDING", "DOWNLOADING", "PROCESSING", "STORING", "COMPLETED"]


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The digits data set as files, written once by the data-prep script."""
    dest = tmp_path_factory.mktemp("datasets") / "digits"
    subprocess.run(["/usr/bin/python3", str(ROOT / "examples" / "prepare_digits.py"), str(dest)],
                   check=True, capture_output=True, timeout=300)
    return dest


@pytest.fixture
def workdir(tmp_path, digits):
    """A fresh FFDL_HOME with the digits data in its local data store."""
    datasets = tmp_path / ".ffdl" / "datasets"
    datasets.mkdir(parents=True)
    (datasets / "digits").symlink_to(digits)
    return tmp_path


def env_for(workdir, **extra):
    env = dict(os.environ, FFDL_HOME=str(workdir / ".ffdl"),
               FFDL_RESULTS=str(workdir / "ffdl-results"))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def ffdl_run(workdir, *args, timeout=300, **env):
    return subprocess.run([str(BUILD / "ffdl-run"), *map(str, args)], cwd=workdir,
                          env=env_for(workdir, **env), capture_output=True, text=True,
                          timeout=timeout)


def training_id(stderr):
    found = re.search(r"(training-[a-z0-9]+)", stderr)
    assert found, stderr
    return found.group(1)


def job_json(workdir, tid):
    return json.loads((workdir / "ffdl-results" / tid / "job.json").read_text())


def status_sequence(stderr, tid):
    """The statuses ffdl-run showed for TID, in order, repeats collapsed."""
    seen = []
    for m in re.finditer(rf"\] {tid}: ([A-Z]+)\b", stderr):
        if m.group(1) in STATES + ["FAILED", "HALTED"] and (not seen or seen[-1] != m.group(1)):
            seen.append(m.group(1))
    return seen


def custom_manifest(workdir, command, name="custom", extra=""):
    path = workdir / f"{name}.yml"
    path.write_text(f"name: {name}\ncpus: 0.5\nmemory: 256MiB\n{extra}"
                    f"framework:\n  name: custom\n  version: local\n  command: {json.dumps(command)}\n")
    return path


def check_digits_results(workdir, result, learners):
    assert result.returncode == 0, result.stderr[-4000:]
    tid = training_id(result.stderr)
    assert status_sequence(result.stderr, tid) == STATES
    assert re.search(r"^\[1\] epoch \d+ loss", result.stderr, re.M), "learner lines are prefixed"
    assert f"{tid}: progress: epoch" in result.stderr
    assert f"results in ffdl-results/{tid}" in result.stderr
    results = workdir / "ffdl-results" / tid
    for n in range(1, learners + 1):
        log = (results / f"learner-{n}" / "training-log.txt").read_text()
        assert "epoch" in log
    assert (results / "_submitted_code" / "model.zip").stat().st_size > 0
    assert any((results / "model").iterdir())
    doc = job_json(workdir, tid)
    assert doc["status"] == "COMPLETED"
    assert [t["status"] for t in doc["transitions"]] == STATES
    times = [t["time_ms"] for t in doc["transitions"]]
    assert times == sorted(times)
    accuracy = float(doc["final_metrics"]["test"]["accuracy"]["value"])
    assert accuracy >= 0.95
    return tid, doc


def test_pytorch_digits(workdir):
    result = ffdl_run(workdir, ROOT / "manifests" / "pytorch-digits.yml")
    tid, doc = check_digits_results(workdir, result, 1)
    assert (workdir / "ffdl-results" / tid / "model" / "model.pt").exists()
    listing = subprocess.run([str(BUILD / "ffdl"), "list"], cwd=workdir, env=env_for(workdir),
                             capture_output=True, text=True, timeout=30)
    assert re.search(rf"^{tid}\s+pytorch-digits\s+pytorch\s+COMPLETED", listing.stdout, re.M)
    shown = subprocess.run([str(BUILD / "ffdl"), "show", "--json", tid], cwd=workdir,
                           env=env_for(workdir), capture_output=True, text=True, timeout=30)
    assert json.loads(shown.stdout)["status"] == "COMPLETED"


def test_pytorch_digits_two_learners(workdir):
    result = ffdl_run(workdir, ROOT / "manifests" / "pytorch-digits-2.yml")
    check_digits_results(workdir, result, 2)
    assert re.search(r"^\[2\] ", result.stderr, re.M)


def test_tensorflow_digits(workdir):
    result = ffdl_run(workdir, ROOT / "manifests" / "tensorflow-digits.yml")
    check_digits_results(workdir, result, 1)


def test_tensorflow_digits_two_learners(workdir):
    result = ffdl_run(workdir, ROOT / "manifests" / "tensorflow-digits-2.yml")
    check_digits_results(workdir, result, 2)


def test_sweep_script(workdir):
    result = ffdl_run(workdir, ROOT / "examples" / "sweep.lua", timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    best = re.search(r"best: lr=([0-9.]+) accuracy=([0-9.]+)", result.stdout)
    assert best, result.stdout
    assert float(best.group(2)) >= 0.95
    ids = set(re.findall(r"training-[a-z0-9]+", result.stderr))
    assert len(ids) == 3
    for tid in ids:
        assert job_json(workdir, tid)["status"] == "COMPLETED"


def test_script_syntax_error(workdir):
    script = workdir / "broken.lua"
    script.write_text('local ffdl = require "ffdl"\nlocal x = = 1\n')
    result = ffdl_run(workdir, script)
    assert result.returncode == 2
    assert "ffdl-run: broken.lua:2: unexpected symbol" in result.stderr


def test_script_runtime_error_has_traceback(workdir):
    script = workdir / "fails.lua"
    script.write_text('local ffdl = require "ffdl"\nlocal function f() error("boom") end\nf()\n')
    result = ffdl_run(workdir, script)
    assert result.returncode == 2
    assert "fails.lua:2: boom" in result.stderr
    assert "stack traceback" in result.stderr


def test_failed_job_shows_the_last_20_lines(workdir):
    manifest = custom_manifest(workdir, "for i in $(seq 1 30); do echo line-$i; done; exit 3")
    result = ffdl_run(workdir, manifest)
    assert result.returncode == 1, result.stderr
    tid = training_id(result.stderr)
    assert re.search(rf"{tid}: FAILED C201: learner 1 exited with code 3", result.stderr)
    tail = result.stderr.split("last log lines:")[1]
    assert "line-30" in tail and "line-11" in tail and "line-10\n" not in tail
    doc = job_json(workdir, tid)
    assert doc["status"] == "FAILED" and doc["error_code"] == "C201"
    assert len(doc["learners"]) == 1  # a plain non-zero exit is not retried


def test_transient_failure_is_retried_with_backoff(workdir, policies_copy):
    retry = policies_copy / "retry.lua"
    retry.write_text(retry.read_text().replace("base_delay = 1,", "base_delay = 0.3,")
                     .replace("jitter = 0.1,", "jitter = 0,"))
    # killed by a signal on attempts 1 and 2, succeeds on 3; the checkpoint survives
    command = ('n=$(cat "$CHECKPOINT_DIR/n" 2>/dev/null || echo 0); n=$((n+1)); '
               'echo $n > "$CHECKPOINT_DIR/n"; echo attempt $n; '
               'if [ $n -lt 3 ]; then kill -9 $$; fi; echo done')
    manifest = custom_manifest(workdir, command, extra="max_attempts: 3\n")
    result = ffdl_run(workdir, "--policies", policies_copy, manifest)
    assert result.returncode == 0, result.stderr
    tid = training_id(result.stderr)
    doc = job_json(workdir, tid)
    assert sorted({l["attempt"] for l in doc["learners"]}) == [1, 2, 3]
    retries = [t for t in doc["transitions"] if t["status"] == "QUEUED"][1:]
    assert len(retries) == 2
    delays = [float(re.search(r"in ([0-9.]+) s", t["reason"]).group(1)) for t in retries]
    assert delays == sorted(delays) and delays[1] > delays[0]  # exponential backoff
    assert "killed by signal 9" in retries[0]["reason"]


def test_retries_stop_at_the_limit(workdir, policies_copy):
    retry = policies_copy / "retry.lua"
    retry.write_text(retry.read_text().replace("base_delay = 1,", "base_delay = 0.1,"))
    manifest = custom_manifest(workdir, "kill -9 $$", extra="max_attempts: 2\n")
    result = ffdl_run(workdir, "--policies", policies_copy, manifest)
    assert result.returncode == 1
    doc = job_json(workdir, training_id(result.stderr))
    assert doc["status"] == "FAILED" and "gave up after 2 attempts" in doc["status_message"]


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for its parent is dead for our purpose
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_halt_kills_every_learner_process(workdir, sig):
    pidfile = workdir / "pids"
    command = f"sleep 300 & echo $! > {pidfile}; echo $$ >> {pidfile}; echo started; wait"
    manifest = custom_manifest(workdir, command)
    proc = subprocess.Popen([str(BUILD / "ffdl-run"), str(manifest)], cwd=workdir,
                            env=env_for(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert wait_for(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2)
        pids = [int(p) for p in pidfile.read_text().split()]
        assert all(alive(p) for p in pids)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert re.search(r"training-[a-z0-9]+: HALTED", stderr)
    assert wait_for(lambda: not any(alive(p) for p in pids), timeout=10), "a learner survived"


def test_job_that_can_never_fit_fails_with_s100(workdir):
    manifest = custom_manifest(workdir, "true", extra="gpus: 4\n")
    result = ffdl_run(workdir, manifest, timeout=60)
    assert result.returncode == 1
    tid = training_id(result.stderr)
    assert re.search(rf"{tid}: FAILED S100: .*4 GPUs.*nodes: local: .*no GPU.*can never fit", result.stderr)


def nodes_file(workdir, text):
    path = workdir / "cluster.yml"
    path.write_text(text)
    return path


def test_gpus_are_assigned_per_learner_on_simulated_nodes(workdir):
    nodes = nodes_file(workdir, "nodes:\n  - {name: gpu, count: 1, cpus: 8, memory: 16GiB, "
                       "gpus: 4, gpu_type: nvidia-TeslaV100}\n")
    manifest = custom_manifest(workdir, 'echo "devices=$CUDA_VISIBLE_DEVICES rank=$RANK"',
                               extra="gpus: 2\nlearners: 2\ngpu_type: nvidia-TeslaV100\n")
    result = ffdl_run(workdir, manifest, FFDL_NODES=nodes)
    assert result.returncode == 0, result.stderr
    assert "[1] devices=0,1 rank=0" in result.stderr
    assert "[2] devices=2,3 rank=1" in result.stderr


def test_gang_placement_is_all_or_nothing(workdir):
    nodes = nodes_file(workdir, "nodes:\n  - {name: gpu, count: 2, cpus: 8, memory: 16GiB, "
                       "gpus: 2, gpu_type: nvidia-TeslaV100}\n")
    manifest = custom_manifest(workdir, "true", extra="gpus: 2\nlearners: 3\n"
                               "gpu_type: nvidia-TeslaV100\n")
    result = ffdl_run(workdir, manifest, FFDL_NODES=nodes, timeout=60)
    assert result.returncode == 1
    assert "S100" in result.stderr and "only 2 would fit" in result.stderr


def test_wrong_gpu_type_never_fits(workdir):
    nodes = nodes_file(workdir, "nodes:\n  - {name: gpu, cpus: 8, memory: 16GiB, gpus: 4, "
                       "gpu_type: nvidia-TeslaK80}\n")
    manifest = custom_manifest(workdir, "true", extra="gpus: 1\ngpu_type: nvidia-TeslaV100\n")
    result = ffdl_run(workdir, manifest, FFDL_NODES=nodes, timeout=60)
    assert result.returncode == 1 and "S100" in result.stderr and "TeslaV100" in result.stderr


def test_jobs_wait_in_queued_until_resources_free(workdir):
    nodes = nodes_file(workdir, "nodes:\n  - {name: small, cpus: 1, memory: 4GiB}\n")
    manifest = custom_manifest(workdir, "sleep 1; echo finished", extra="")
    manifest.write_text(manifest.read_text().replace("cpus: 0.5", "cpus: 1"))
    script = workdir / "two.lua"
    script.write_text(f'local ffdl = require "ffdl"\n'
                      f'local a = ffdl.train{{manifest = "{manifest}"}}\n'
                      f'local b = ffdl.train{{manifest = "{manifest}"}}\n'
                      f'print(a:wait(), b:wait())\n')
    result = ffdl_run(workdir, script, FFDL_NODES=nodes, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "COMPLETED\tCOMPLETED"
    assert "QUEUED, waiting: needs 1 learner x 1 CPUs" in result.stderr
    waited = re.search(r"(training-[a-z0-9]+): QUEUED, waiting", result.stderr).group(1)
    explained = subprocess.run([str(BUILD / "ffdl"), "explain", waited], cwd=workdir,
                               env=env_for(workdir), capture_output=True, text=True, timeout=30)
    assert explained.returncode == 0
    lines = explained.stdout.splitlines()
    assert lines[0].startswith(f"{waited}: COMPLETED since ")
    assert any(re.search(r"admit\(\): admitted  \[generation [0-9a-f]{12}\]", l) for l in lines)
    assert any("place(): waiting: needs 1 learner x 1 CPUs" in l for l in lines), explained.stdout
    assert any("policy: needs 1 learner x 1 CPUs" in l and "best node small has 0 CPUs" in l
               for l in lines), explained.stdout
    assert any("place(): placed: placed 1 learner on small" in l for l in lines), explained.stdout
    ids = re.findall(r"training-[a-z0-9]+", result.stderr)
    first, second = (job_json(workdir, tid) for tid in dict.fromkeys(ids))
    started = sorted(t["time_ms"] for d in (first, second) for t in d["transitions"]
                     if t["status"] == "PROCESSING")
    ended = sorted(d["completed_ms"] for d in (first, second))
    assert started[1] >= ended[0] - 50  # the second ran only once the first was done


def test_learner_environment(workdir):
    command = ("env | grep -E '^(TRAINING_ID|LEARNER_ID|NUM_LEARNERS|RANK|WORLD_SIZE|"
               "MASTER_ADDR|MASTER_PORT|DATA_DIR|RESULT_DIR|CHECKPOINT_DIR|JOB_STATE_DIR|"
               "LOG_DIR|MODEL_DIR|GPU_COUNT|TF_CONFIG)=' | sort")
    manifest = custom_manifest(workdir, command, extra="learners: 2\n")
    result = ffdl_run(workdir, manifest)
    assert result.returncode == 0, result.stderr
    tid = training_id(result.stderr)
    lines = [l[4:] for l in result.stderr.splitlines() if l.startswith("[2] ")]
    env = dict(l.split("=", 1) for l in lines)
    assert env["TRAINING_ID"] == tid and env["LEARNER_ID"] == "2" and env["RANK"] == "1"
    assert env["NUM_LEARNERS"] == "2" and env["WORLD_SIZE"] == "2"
    assert env["MASTER_ADDR"] == "127.0.0.1" and int(env["MASTER_PORT"]) > 0
    tf = json.loads(env["TF_CONFIG"])
    assert tf["task"] == {"type": "worker", "index": 1} and len(tf["cluster"]["worker"]) == 2
    for key in ("RESULT_DIR", "CHECKPOINT_DIR", "JOB_STATE_DIR", "LOG_DIR"):
        assert os.path.isdir(env[key]), key
    # the staged data was there for the learners, and went when the job ended
    assert env["DATA_DIR"] == str(workdir / ".ffdl" / "jobs" / tid / "data")
    assert not os.path.exists(env["DATA_DIR"])


def test_host_mount_data_is_staged(workdir):
    host = workdir / "host-data" / "mnist"
    host.mkdir(parents=True)
    (host / "train.csv").write_text("1,2,3\n")
    extra = ("data_stores:\n  - id: host\n    type: mount_volume\n    training_data:\n"
             "      container: mnist\n    training_results:\n      container: out\n"
             f"    connection:\n      type: host_mount\n      name: host\n      path: {host.parent}\n")
    manifest = custom_manifest(workdir, 'cat "$DATA_DIR/train.csv"', extra=extra)
    result = ffdl_run(workdir, manifest)
    assert result.returncode == 0, result.stderr
    assert "[1] 1,2,3" in result.stderr


def test_missing_training_data_fails_with_s302(workdir):
    extra = ("data_stores:\n  - id: host\n    type: mount_volume\n    training_data:\n"
             "      container: nowhere\n    connection:\n      type: host_mount\n"
             f"      path: {workdir}/missing\n")
    result = ffdl_run(workdir, custom_manifest(workdir, "true", extra=extra))
    assert result.returncode == 1
    assert "S302" in result.stderr and "missing/nowhere" in result.stderr


def test_emetrics_file_metrics(workdir):
    command = ("for e in 1 2; do echo '{\"grouplabel\":\"test\",\"etimes\":{\"epoch\":{\"type\":"
               "\"INT\",\"value\":'$e'}},\"values\":{\"acc\":{\"type\":\"FLOAT\",\"value\":0.9'$e'}}}' "
               ">> $JOB_STATE_DIR/logs/evaluation-metrics.txt; done")
    extra = ("evaluation_metrics:\n  type: emetrics_file\n"
             "  in: \"$JOB_STATE_DIR/logs/evaluation-metrics.txt\"\n")
    result = ffdl_run(workdir, custom_manifest(workdir, command, extra=extra))
    assert result.returncode == 0, result.stderr
    doc = job_json(workdir, training_id(result.stderr))
    assert doc["final_metrics"]["test"]["acc"]["value"] == 0.92
    assert len(doc["metrics"]) == 2


def test_framework_not_installed_here(workdir):
    result = ffdl_run(workdir, ROOT / "manifests" / "caffe-lenet.yml")
    assert result.returncode == 2
    assert "caffe is not installed on this machine" in result.stderr
    assert "bvlc/caffe:cpu" in result.stderr


def test_bad_manifest_exits_2(workdir):
    result = ffdl_run(workdir, ROOT / "tests" / "data" / "bad" / "learners-zero.yml")
    assert result.returncode == 2
    assert "learners: must be an integer >= 1, got 0" in result.stderr


def gpu_reason():
    info = subprocess.run([str(BUILD / "ffdl"), "info"], capture_output=True, text=True,
                          timeout=30).stdout
    line = next(l for l in info.splitlines() if l.startswith("gpus:"))
    return line.split("no GPU:", 1)[1].strip() if "no GPU" in line else None


@pytest.mark.gpu
def test_pytorch_digits_on_a_gpu(workdir):
    reason = gpu_reason()
    if reason:
        pytest.skip(f"no GPU on this machine: {reason}")
    manifest = workdir / "gpu.yml"
    manifest.write_text((ROOT / "manifests" / "pytorch-digits.yml").read_text()
                        .replace("learners: 1", "learners: 1\ngpus: 1")
                        .replace("../examples", str(ROOT / "examples")))
    result = ffdl_run(workdir, manifest)
    check_digits_results(workdir, result, 1)
    assert "device cuda" in result.stderr


def test_model_code_beside_the_manifest_by_default(workdir):
    model = workdir / "my-model"
    model.mkdir()
    (model / "train.py").write_text("import sys\nprint('hello from', sys.executable)\n")
    (model / "manifest.yml").write_text("name: beside\nframework:\n  name: pytorch\n"
                                        "  version: '2.1.0'\n  command: python3 train.py\n")
    result = ffdl_run(workdir, model / "manifest.yml")
    assert result.returncode == 0, result.stderr
    assert "[1] hello from" in result.stderr
    tid = training_id(result.stderr)
    import zipfile
    names = zipfile.ZipFile(workdir / "ffdl-results" / tid / "_submitted_code" / "model.zip").namelist()
    assert sorted(names) == ["manifest.yml", "train.py"]


def test_the_workdir_as_model_leaves_out_ffdl_state(workdir):
    # the manifest sits in the directory that also holds .ffdl and ffdl-results
    result = ffdl_run(workdir, custom_manifest(workdir, "ls -a"))
    assert result.returncode == 0, result.stderr
    assert "[1] .ffdl" not in result.stderr and "[1] ffdl-results" not in result.stderr
    assert "[1] custom.yml" in result.stderr


def test_run_from_below_the_model_directory_keeps_the_runtime_out(tmp_path):
    """ffdl-run started in a subdirectory of the model directory keeps its
    data home and results there: the model copy and model.zip leave them
    out (before, the copy copied itself until a path was too long, and every
    job copied the earlier jobs' copies)."""
    model = tmp_path / "model"
    sub = model / "sub"
    sub.mkdir(parents=True)
    (sub / "helper.py").write_text("X = 1\n")
    manifest = model / "m.yml"
    manifest.write_text("name: below\ncpus: 0.5\nmemory: 64MiB\nframework:\n  name: custom\n"
                        "  version: local\n  command: ls -a $MODEL_DIR/sub\n")
    env = dict(os.environ, FFDL_HOME=str(sub / ".ffdl"), FFDL_RESULTS=str(sub / "ffdl-results"))
    ids = []
    for _ in range(2):
        result = subprocess.run([str(BUILD / "ffdl-run"), str(manifest)], cwd=sub, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        ids.append(training_id(result.stderr))
    for tid in ids:
        copied = sub / ".ffdl" / "jobs" / tid / "model" / "sub"
        assert sorted(p.name for p in copied.iterdir()) == ["helper.py"]
        import zipfile
        with zipfile.ZipFile(sub / "ffdl-results" / tid / "_submitted_code" / "model.zip") as z:
            names = z.namelist()
        assert "sub/helper.py" in names and "m.yml" in names
        assert not [n for n in names if n.startswith(("sub/.ffdl", "sub/ffdl-results"))], names
