"""Policy limits on a running server: a deadline per hook, a memory cap per
generation, what a call that runs into one leaves behind (the job waits, an
event, a counter), and policy_limits errors in the config file."""
import os
import re
import shutil
import subprocess
import time
import urllib.request

import pytest

from conftest import BUILD, ROOT
from test_server import CUSTOM, Server, add_user, call, create, multipart, wait_status, zip_bytes

SPIN = 'if job.name == "spin" then while true do end end\n'
BOMB = 'if job.name == "bomb" then local t = {} for i = 1, 1e9 do t[i] = {i} end end\n'


def policies_with(tmp_path, file, hook, code):
    """A copy of policies/ whose HOOK in FILE first runs CODE."""
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    path = policies / file
    text = path.read_text()
    head = re.search(rf"^function M\.{hook}\(.*\)\n", text, re.M)
    assert head, f"{file} has no M.{hook}"
    path.write_text(text[:head.end()] + "  " + code + text[head.end():])
    return policies


def start(tmp_path, policies, limits):
    config = tmp_path / "server.yml"
    config.write_text("on_shutdown: halt\npolicy_limits:\n" + limits)
    # two nodes: a job whose place() fails may hold one (backfill), and the
    # other still takes the jobs behind it
    nodes = tmp_path / "cluster.yml"
    nodes.write_text("nodes:\n  - {name: n1, cpus: 2, memory: 8GiB}\n  - {name: n2, cpus: 2, memory: 8GiB}\n")
    return Server(tmp_path / "data", extra_args=["--config", config, "--policies", policies],
                  env={"FFDL_NODES": str(nodes)})


def create_stuck(srv, token, name):
    """A job the broken hook trips on. It asks for more CPUs than the jobs of
    create(), so that the scheduler does not take its failure for "no room"
    for those."""
    manifest = CUSTOM.replace("cpus: 0.5", "cpus: 1").format(name=name, command='"echo never"')
    body, headers = multipart({"manifest": ("m.yml", manifest.encode()),
                               "model_definition": ("m.zip", zip_bytes({"run.sh": "echo\n"}))})
    code, doc, _ = call(srv, "POST", "/v1/models", token=token, body=body, headers=headers)
    assert code == 201, doc
    return doc["model_id"]


def metrics(srv):
    with urllib.request.urlopen(srv.url + "/metrics", timeout=30) as resp:
        return resp.read().decode()


def exceeded(srv, hook, limit):
    m = re.search(rf'^ffdl_policy_limit_exceeded_total\{{hook="{hook}",limit="{limit}"\}} (\d+)$',
                  metrics(srv), re.M)
    assert m, f"no counter for {hook}/{limit}"
    return int(m.group(1))


def health(srv):
    with urllib.request.urlopen(srv.url + "/health", timeout=30) as resp:
        return resp.status, resp.read()


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def events(srv, hook, limit):
    code, doc, _ = call(srv, "GET", "/v1/policies")
    assert code == 200, doc
    return [e for e in doc["limit_events"] if e["hook"] == hook and e["limit"] == limit]


def decisions(srv, model_id, token):
    code, doc, _ = call(srv, "GET", f"/v1/models/{model_id}/explain", token=token)
    assert code == 200, doc
    return doc


def check_stuck_job(srv, token, model_id, hook, limit, message):
    """MODEL_ID stays QUEUED with a reason naming the limit; the event and the
    counter say the same; the server keeps answering and running other jobs."""
    hits = wait_for(f"{hook} to hit its {limit} limit", lambda: exceeded(srv, hook, limit))
    assert hits >= 1
    explained = wait_for("a decision naming the limit", lambda: [
        d for d in decisions(srv, model_id, token)["decisions"]
        if d["hook"] == hook and re.search(message, d.get("reason") or "")])
    assert re.search(rf"{hook}\(\) failed, the job stays queued: .*{message}", explained[-1]["reason"])

    code, job, _ = call(srv, "GET", f"/v1/models/{model_id}", token=token)
    assert job["training"]["training_status"]["status"] == "QUEUED"

    code, doc, _ = call(srv, "GET", "/v1/policies")
    found = events(srv, hook, limit)
    assert found, doc["limit_events"]
    event = found[-1]
    assert event["generation"] == doc["hash"]
    assert re.search(message, event["error"])
    assert event["value"] > 0 and event["max"] > 0 and event["at_ms"] > 0

    # the loop is not stalled: requests are answered and another job runs to
    # the end while the stuck one keeps being tried (each try a new event)
    assert health(srv) == (200, b"OK")
    code, other, _ = create(srv, token, name="other", command="echo fine")
    assert code == 201, other
    wait_status(srv, other["model_id"], {"COMPLETED"}, token=token)
    wait_for("another try of the stuck job", lambda: exceeded(srv, hook, limit) > hits)
    assert health(srv) == (200, b"OK")
    code, job, _ = call(srv, "GET", f"/v1/models/{model_id}", token=token)
    assert job["training"]["training_status"]["status"] == "QUEUED"
    return event


def test_place_past_its_deadline_leaves_the_job_queued(tmp_path):
    policies = policies_with(tmp_path, "scheduler.lua", "place", SPIN)
    srv = start(tmp_path, policies, "  deadline_ms: {place: 20}\n")
    try:
        token = add_user(srv, "alice")
        spin = create_stuck(srv, token, "spin")
        event = check_stuck_job(srv, token, spin, "place", "deadline",
                                r"deadline of 20 ms exceeded")
        assert event["max"] == 20 and event["unit"] == "ms"
        assert re.search(r"scheduler\.lua:\d+: deadline of 20 ms", event["error"])
        assert exceeded(srv, "admit", "deadline") == 0
    finally:
        srv.stop()
    log = (tmp_path / f"server-{srv.port}.log").read_text()
    assert re.search(r"warn: policy limit exceeded: hook=place generation=[0-9a-f]{12} "
                     r"limit=deadline max=20ms value=[0-9.]+ms: .*deadline of 20 ms exceeded", log), log


def test_a_memory_bomb_in_admit_hits_the_generations_cap(tmp_path):
    policies = policies_with(tmp_path, "budget.lua", "admit", BOMB)
    srv = start(tmp_path, policies, "  memory_mb: 16\n")
    try:
        token = add_user(srv, "alice")
        bomb = create_stuck(srv, token, "bomb")
        event = check_stuck_job(srv, token, bomb, "admit", "memory",
                                r"memory limit of 16 MiB exceeded")
        assert event["max"] == 16 << 20 and event["unit"] == "bytes"
        assert event["value"] > 16 << 20
        assert exceeded(srv, "admit", "deadline") == 0
        code, doc, _ = call(srv, "GET", "/v1/policies")
        assert doc["lua_bytes"] < 16 << 20  # the garbage of the bomb is gone
    finally:
        srv.stop()


def test_the_default_place_deadline_is_50_ms(tmp_path):
    policies = policies_with(tmp_path, "scheduler.lua", "place", SPIN)
    srv = start(tmp_path, policies, "  deadline_ms: {admit: 200}\n")
    try:
        token = add_user(srv, "alice")
        create_stuck(srv, token, "spin")
        wait_for("an event", lambda: events(srv, "place", "deadline"))
        assert events(srv, "place", "deadline")[-1]["max"] == 50
    finally:
        srv.stop()


BAD_CONFIGS = {
    "unknown_hook": ("policy_limits:\n  deadline_ms:\n    place: 20\n    plaice: 5\n",
                     "4:5: policy_limits.deadline_ms.plaice: unknown hook; the hooks are default, "
                     "validate, admit, order, rank, place, hold, on_failure"),
    "zero_deadline": ("on_shutdown: halt\npolicy_limits:\n  deadline_ms: {admit: 0}\n",
                      "3:17: policy_limits.deadline_ms.admit: must be a positive number, got 0"),
    "negative_memory": ("policy_limits:\n  memory_mb: -64\n",
                        "2:3: policy_limits.memory_mb: must be a positive number, got -64"),
    "memory_not_a_number": ("policy_limits:\n  memory_mb: lots\n",
                            '2:3: policy_limits.memory_mb: must be a positive number, got "lots"'),
    "too_long_a_deadline": ("policy_limits:\n  deadline_ms:\n    hold: 600000\n",
                            "3:5: policy_limits.deadline_ms.hold: must be at most 60000, got 600000"),
    "unknown_setting": ("policy_limits:\n  memory_mb: 64\n  cpu_ms: 5\n",
                        "3:3: policy_limits.cpu_ms: unknown setting; the settings are memory_mb, deadline_ms"),
    "not_a_mapping": ("listen: 127.0.0.1:0\npolicy_limits: 64\n",
                      "2:1: policy_limits: must be a mapping with memory_mb and deadline_ms"),
    "deadlines_not_a_mapping": ("policy_limits:\n  deadline_ms: 50\n",
                                "2:3: policy_limits.deadline_ms: must be a mapping of hook names to milliseconds"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_policy_limits_name_file_line_and_field(tmp_path, case):
    text, want = BAD_CONFIGS[case]
    config = tmp_path / "server.yml"
    config.write_text(text)
    result = subprocess.run([str(BUILD / "ffdl-server"), "--listen", "127.0.0.1:0", "--data",
                             str(tmp_path / "data"), "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"ffdl-server: {config}:{want}" in result.stderr, result.stderr


def test_ffdl_run_applies_policy_limits(tmp_path):
    """on_failure past its deadline: the job fails, with the reason."""
    policies = policies_with(tmp_path, "retry.lua", "on_failure", SPIN)
    manifest = tmp_path / "spin.yml"
    manifest.write_text("name: spin\ncpus: 0.5\nmemory: 256MiB\nmax_attempts: 3\n"
                        "framework:\n  name: custom\n  version: local\n  command: exit 3\n")
    env = dict(os.environ, FFDL_HOME=str(tmp_path / ".ffdl"), FFDL_RESULTS=str(tmp_path / "results"))
    result = subprocess.run([str(BUILD / "ffdl-run"), "--policies", str(policies), "--policy-limits",
                             '{"deadline_ms": {"on_failure": 30}}', str(manifest)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert re.search(r"on_failure\(\) failed: .*retry\.lua:\d+: deadline of 30 ms exceeded",
                     result.stderr), result.stderr
    assert re.search(r"policy limit exceeded: hook=on_failure generation=[0-9a-f]{12} "
                     r"limit=deadline max=30ms", result.stderr), result.stderr


def test_ffdl_run_rejects_bad_policy_limits(tmp_path):
    bad = subprocess.run([str(BUILD / "ffdl-run"), "--policy-limits", '{"deadline_ms": {"plaice": 5}}',
                          str(ROOT / "manifests" / "pytorch-digits.yml")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert ("ffdl-run: --policy-limits: policy_limits.deadline_ms.plaice: unknown hook"
            in bad.stderr), bad.stderr
    broken = subprocess.run([str(BUILD / "ffdl-run"), "--policy-limits", '{"memory_mb": ',
                             str(ROOT / "manifests" / "pytorch-digits.yml")],
                            capture_output=True, text=True, timeout=60)
    assert broken.returncode == 2 and "ffdl-run: --policy-limits: column" in broken.stderr
