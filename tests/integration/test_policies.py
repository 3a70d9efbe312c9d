"""Policies in production: checked hot reload on a running server."""
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest

from conftest import BUILD, ROOT
from test_server import Server, add_user, call, cli, create, wait_status


@pytest.fixture
def live(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    srv = Server(tmp_path / "data", extra_args=["--policies", policies])
    yield srv, policies
    srv.stop()


def status(srv):
    code, doc, _ = call(srv, "GET", "/v1/policies")
    assert code == 200
    return doc


def wait_for_hash_change(srv, old, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = status(srv)
        if doc["hash"] != old:
            return doc
        time.sleep(0.05)
    raise AssertionError("the edit was not picked up")


def failures_metric(srv):
    with urllib.request.urlopen(srv.url + "/metrics") as resp:
        return int(re.search(r"^ffdl_policy_reload_failures_total (\d+)$", resp.read().decode(), re.M).group(1))


def test_status_shows_the_generation(live):
    srv, policies = live
    doc = status(srv)
    assert re.fullmatch(r"[0-9a-f]{64}", doc["hash"])
    names = {f["name"] for f in doc["files"]}
    assert {"validate.lua", "scheduler.lua", "budget.lua", "retry.lua"} <= names
    assert doc["last_error"] is None if "last_error" in doc else True


def test_a_file_change_is_picked_up(live):
    srv, policies = live
    old = status(srv)["hash"]
    budget = policies / "budget.lua"
    budget.write_text(budget.read_text().replace("max_running_jobs_by_user = nil", "max_running_jobs_by_user = 50"))
    new = wait_for_hash_change(srv, old)
    sha = {f["name"]: f["sha256"] for f in new["files"]}
    import hashlib
    assert sha["budget.lua"] == hashlib.sha256(budget.read_bytes()).hexdigest()
    assert new["last_error"] is None if "last_error" in new else True


def test_sighup_reloads(live):
    srv, policies = live
    old = status(srv)["hash"]
    srv_watchless = policies / "budget.lua"
    srv_watchless.write_text(srv_watchless.read_text() + "\n-- touched\n")
    srv.proc.send_signal(signal.SIGHUP)
    wait_for_hash_change(srv, old)


BROKEN = {
    "syntax_error": ("scheduler.lua", lambda t: t.replace("local M = {}", "local M = {", 1), r"scheduler\.lua:\d+:"),
    "runtime_error_at_load": ("budget.lua", lambda t: "local x = nil; x.y = 1\n" + t, r"budget\.lua:1: attempt to index"),
    "failing_policy_test": ("tests/retry_test.lua", lambda t: t.replace('T.eq(d.action, "fail")', 'T.eq(d.action, "retry")', 1), r"FAIL .*retry_test\.lua"),
    "infinite_loop": ("validate.lua", lambda t: "while true do end\n" + t, r"validate\.lua:1: deadline of \d+ ms exceeded"),
    "memory_bomb": ("validate.lua", lambda t: "local t = {} for i = 1, 1e9 do t[i] = {i} end\n" + t, r"memory limit of \d+ MiB exceeded"),
    "uses_os": ("retry.lua", lambda t: t.replace("local M = {}", "local M = {}\nos.remove('x')", 1), r"retry\.lua:\d+: attempt to index a nil value \(global 'os'\)"),
    "hook_missing": ("budget.lua", lambda t: t.replace("function M.admit(", "function M.admit_renamed(", 1), r"budget\.lua: admit\(\) is missing"),
    "wrong_return_shape": ("scheduler.lua", lambda t: t.replace("function M.place(job, cluster, ctx)", "function M.place(job, cluster, ctx)\n  do return 42 end", 1), r"scheduler\.lua: place\(\) must return"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_policy_is_rejected_and_the_old_one_serves(live, case):
    srv, policies = live
    file, edit, pattern = BROKEN[case]
    before = status(srv)["hash"]
    failures = failures_metric(srv)
    path = policies / file
    path.write_text(edit(path.read_text()))
    result = cli(srv, "policy", "reload")
    assert result.returncode != 0
    assert re.search(pattern, result.stderr), result.stderr
    doc = status(srv)
    assert doc["hash"] == before
    assert re.search(pattern, doc["last_error"])
    assert failures_metric(srv) >= failures + 1
    # jobs still run on the old generation
    token = add_user(srv, f"u{abs(hash(case)) % 10000}")
    code, created, _ = create(srv, token)
    assert code == 201
    wait_status(srv, created["model_id"], {"COMPLETED"}, token=token)


def test_policy_test_command_fails_with_file_and_line(tmp_path):
    policies = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", policies)
    test = policies / "tests" / "budget_test.lua"
    test.write_text(test.read_text().replace("T.eq(budget.admit(T.job { gpus = 8 }, T.usage(), T.ctx()), true)",
                                             "T.eq(budget.admit(T.job { gpus = 8 }, T.usage(), T.ctx()), false)"))
    result = subprocess.run([str(BUILD / "ffdl"), "policy", "test", str(policies)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert re.search(r"FAIL .*budget_test\.lua everything_is_admitted_by_default: .*budget_test\.lua:\d+: expected false, got true", result.stdout), result.stdout
    assert re.search(r"^\d+ passed, 1 failed$", result.stdout, re.M)


def test_a_policy_that_fills_its_memory_cap_fails_its_calls_and_the_server_stays_up(live):
    """A policy that keeps memory up to the generation's cap, and only in
    production (its tests pass): its calls fail and the job waits; the
    server itself keeps serving (the runtime once ran out of the cap while
    building a job's table between calls, which ended the process), and a
    fixed policy lets the job run."""
    srv, policies = live
    scheduler = policies / "scheduler.lua"
    good = scheduler.read_text()
    scheduler.write_text(good.replace(
        "function M.rank(job, ctx)\n",
        "local kept = {}\nfunction M.rank(job, ctx)\n"
        "  if job.user == 'hoarder' then while true do kept[#kept + 1] = {} end end\n", 1))
    result = cli(srv, "policy", "reload")
    assert result.returncode == 0, result.stderr
    token = add_user(srv, "hoarder")
    code, created, _ = create(srv, token)
    assert code == 201, created
    model = created["model_id"]
    deadline = time.monotonic() + 30
    while "memory limit" not in json.dumps(call(srv, "GET", f"/v1/models/{model}/explain", token=token)[1]):
        assert srv.proc.poll() is None, "the server ended"
        assert time.monotonic() < deadline, "rank() never hit the memory cap"
        time.sleep(0.2)
    time.sleep(1)  # cycles go on with the cap full
    assert srv.proc.poll() is None, "the server ended"
    assert status(srv)["hash"]
    scheduler.write_text(good)
    result = cli(srv, "policy", "reload")
    assert result.returncode == 0, result.stderr
    wait_status(srv, model, {"COMPLETED"}, token=token)  # the swap itself starts a cycle


def wait_for_failures(srv, at_least, timeout=10):
    """Waits until the file watcher's reloads have been rejected AT_LEAST
    times in all; returns the status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if failures_metric(srv) >= at_least:
            return status(srv)
        time.sleep(0.05)
    raise AssertionError("the edit was not picked up")


FAILING_TEST = "return { always_fails = function(T) T.eq(1, 2) end }\n"


def test_a_tests_directory_made_again_is_still_watched(live):
    """A watch follows a directory's inode: tests/ deleted and made again
    (a checkout, a deploy) must be watched anew, or edits in it go unseen."""
    srv, policies = live
    saved = policies.parent / "saved-tests"
    shutil.move(policies / "tests", saved)
    shutil.copytree(saved, policies / "tests")
    time.sleep(1)  # the debounced reloads of the move and the copy
    failures = failures_metric(srv)
    (policies / "tests" / "new_test.lua").write_text(FAILING_TEST)
    doc = wait_for_failures(srv, failures + 1)
    assert "new_test.lua" in doc["last_error"], doc["last_error"]


def test_a_policy_directory_swapped_by_symlink_is_followed(tmp_path):
    """--policies names a symlink that a deploy moves to a new release: the
    watcher follows it, and then watches the new release's files."""
    v1, v2, current = tmp_path / "v1", tmp_path / "v2", tmp_path / "current"
    shutil.copytree(ROOT / "policies", v1)
    shutil.copytree(ROOT / "policies", v2)
    budget = v2 / "budget.lua"
    budget.write_text(budget.read_text().replace("max_running_jobs_by_user = nil",
                                                 "max_running_jobs_by_user = 50"))
    current.symlink_to(v1)
    srv = Server(tmp_path / "data", extra_args=["--policies", current])
    try:
        old = status(srv)["hash"]
        (tmp_path / "next").symlink_to(v2)
        (tmp_path / "next").replace(current)  # rename(2): the swap is atomic
        swapped = wait_for_hash_change(srv, old)
        sha = {f["name"]: f["sha256"] for f in swapped["files"]}
        import hashlib
        assert sha["budget.lua"] == hashlib.sha256(budget.read_bytes()).hexdigest()
        budget.write_text(budget.read_text().replace("max_running_jobs_by_user = 50",
                                                     "max_running_jobs_by_user = 60"))
        wait_for_hash_change(srv, swapped["hash"])
    finally:
        srv.stop()
