"""`ffdl policy simulate`: a workload trace replayed in virtual time through
the same scheduling cycle and policy hooks as the server."""
import collections
import json
import random
import re

import pytest

from conftest import run_ffdl

HEADER = "submit_s,name,user,team,learners,gpus,cpus,memory,gpu_type,duration_s,priority"


def write(path, text):
    path.write_text(text)
    return path


def cluster_file(tmp_path, text=None):
    return write(tmp_path / "cluster.yml", text or (
        "nodes:\n"
        "  - {name: v100, count: 3, cpus: 32, memory: 256GiB, gpus: 8, gpu_type: V100}\n"
        "  - {name: k80, count: 2, cpus: 16, memory: 128GiB, gpus: 4, gpu_type: K80, labels: {zone: b}}\n"
        "  - {name: cpu, cpus: 64, memory: 256GiB}\n"))


def random_trace(tmp_path, jobs=300, seed=11):
    rng = random.Random(seed)
    rows = [HEADER + ",comment"]
    for i in range(jobs):
        gpus = rng.choice([0, 1, 1, 2, 4, 8])
        gpu_type = rng.choice(["V100", "K80", ""]) if gpus else ""
        rows.append(f"{i * 15 + rng.randint(0, 40)},job{i},u{i % 5},{rng.choice(['vision', 'nlp'])},"
                    f"{rng.choice([1, 1, 2, 3])},{gpus},{rng.choice([1, 2, 4])},"
                    f"{rng.choice(['4GiB', '16GiB'])},{gpu_type},{rng.randint(30, 2000)},"
                    f"{rng.choice([0, 0, 1, 3])},\"free text, with a comma\"")
    rows.append("100,too-big,u1,vision,2,16,4,8GiB,V100,60,0,x")
    return write(tmp_path / "trace.csv", "\n".join(rows) + "\n")


def simulate(*args, policies=None):
    extra = ["--policies", str(policies)] if policies else []
    return run_ffdl("policy", "simulate", *map(str, args), *extra, timeout=300)


def simulate_json(cluster, trace, *args, policies=None):
    result = simulate("--cluster", cluster, "--workload", trace, "--json", *args, policies=policies)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_figures_are_consistent_and_no_node_is_oversubscribed(tmp_path):
    cluster, trace = cluster_file(tmp_path), random_trace(tmp_path)
    out = simulate_json(cluster, trace, "--per-job")
    for key in ("jobs", "completed", "makespan_s", "mean_queue_s", "p95_queue_s", "mean_jct_s",
                "gpu_utilization", "share_by_team", "placements_per_s"):
        assert key in out, key
    assert out["jobs"] == 301
    assert out["completed"] + out["never_fit"] + out["unscheduled"] == out["jobs"]
    assert out["never_fit"] >= 1 and out["completed"] > 250
    assert 0 < out["gpu_utilization"] <= 1 and 0 < out["cpu_utilization"] <= 1
    assert out["placements_per_s"] > 0 and out["placements"] == out["completed"]
    assert abs(sum(out["share_by_team"].values()) - 1) < 1e-6
    assert out["mean_jct_s"] >= out["mean_queue_s"] >= 0
    jobs = out["per_job"]
    too_big = next(j for j in jobs if j["name"] == "too-big")
    assert too_big["status"] == "never_fits" and "can never fit" in too_big["reason"]
    gpus = {**{f"v100-{i}": 8 for i in (1, 2, 3)}, **{f"k80-{i}": 4 for i in (1, 2)}, "cpu": 0}
    events = []
    for j in jobs:
        if j["status"] != "completed":
            continue
        assert j["start_s"] >= j["submit_s"] and j["end_s"] >= j["start_s"]
        assert set(j["nodes"]) <= set(gpus), j["nodes"]
    rows = {r["name"]: r for r in csv_rows(trace)}
    for j in jobs:
        if j["status"] != "completed":
            continue
        row = rows[j["name"]]
        assert len(j["nodes"]) == int(row["learners"]), j
        if row["gpu_type"] and int(row["gpus"]):
            assert all(n.startswith(row["gpu_type"].lower()) for n in j["nodes"]), j
        for node in j["nodes"]:
            events.append((j["end_s"], -int(row["gpus"]), node))
            events.append((j["start_s"], int(row["gpus"]), node))
    used = collections.Counter()
    for _, delta, node in sorted(events):  # ends sort before starts at the same instant
        used[node] += delta
        assert used[node] <= gpus[node], (node, used[node])


def csv_rows(path):
    import csv
    with open(path) as f:
        return list(csv.DictReader(f))


def test_text_report_lists_what_did_not_complete(tmp_path):
    result = simulate("--cluster", cluster_file(tmp_path), "--workload", random_trace(tmp_path, jobs=40))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^completed\s+\d+", result.stdout, re.M)
    assert re.search(r"^GPU utilization\s+0\.\d+", result.stdout, re.M)
    assert "too-big: never_fits: needs 2 learners" in result.stdout


def test_priority_aging_lets_a_waiting_job_through(tmp_path):
    """One GPU; an old low-priority job, then a stream of high-priority jobs.
    Aging puts the old job ahead of the high-priority jobs submitted more
    than (priority x aging_s) after it."""
    cluster = cluster_file(tmp_path, "nodes:\n  - {name: g, cpus: 8, memory: 64GiB, gpus: 1}\n")
    rows = [HEADER, "0,first,u,t,1,1,1,1GiB,,100,0", "1,old,u,t,1,1,1,1GiB,,100,0"]
    rows += [f"{10 + 100 * i},hot{i},u,t,1,1,1,1GiB,,100,1" for i in range(30)]
    out = simulate_json(cluster, write(tmp_path / "t.csv", "\n".join(rows) + "\n"), "--per-job")
    order = {j["name"]: j["order"] for j in out["per_job"]}
    # aging_s is 600: only hot jobs submitted before t=601 pass "old"
    passed = [name for name, o in order.items() if name.startswith("hot") and o < order["old"]]
    assert sorted(passed) == sorted(f"hot{i}" for i in range(6)), passed
    assert out["completed"] == 32


def test_backfill_runs_small_jobs_without_delaying_the_blocked_one(tmp_path, policies_copy):
    cluster = cluster_file(tmp_path, "nodes:\n  - {name: n, count: 2, cpus: 16, memory: 64GiB, gpus: 4}\n")
    rows = [HEADER,
            "0,long,u,t,1,3,1,1GiB,,1000,0",   # n-1: 1 GPU left until t=1000
            "0,short,u,t,1,3,1,1GiB,,100,0",   # n-2: 1 GPU left until t=100
            "1,whole,u,t,1,4,1,1GiB,,100,0",   # needs a whole node: blocked until t=100
            "2,small,u,t,1,1,1,1GiB,,50,0"]    # would fit now, behind "whole"
    trace = write(tmp_path / "t.csv", "\n".join(rows) + "\n")
    strict = policies_copy
    text = (strict / "scheduler.lua").read_text()
    (strict / "scheduler.lua").write_text(text.replace("backfill = true", "backfill = false"))
    out = simulate_json(cluster, trace, "--per-job", "--compare", strict)
    backfilled = {j["name"]: j for j in out["per_job"]}
    assert out["completed"] == 4 and out["compare"]["completed"] == 4
    diffs = {d["name"]: d for d in out["differences"]}
    assert backfilled["small"]["start_s"] == 2
    assert diffs["small"]["compare"]["start_s"] == 100  # strict order: after "whole"
    # "whole" starts when "short" ends, with or without backfill
    assert backfilled["whole"]["start_s"] == 100
    assert diffs.get("whole", {}).get("compare", backfilled["whole"])["start_s"] == 100
    assert out["mean_queue_s"] < out["compare"]["mean_queue_s"]


def test_compare_reports_both_sets_and_what_differs(tmp_path, policies_copy):
    text = (policies_copy / "scheduler.lua").read_text()
    (policies_copy / "scheduler.lua").write_text(text.replace('strategy = "binpack"', 'strategy = "spread"'))
    cluster, trace = cluster_file(tmp_path), random_trace(tmp_path, jobs=80)
    result = simulate("--cluster", cluster, "--workload", trace, "--compare", policies_copy)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+policies\s+compare$", result.stdout, re.M), result.stdout
    m = re.search(r"^(\d+) job\(s\) placed or ordered differently", result.stdout, re.M)
    assert m and int(m.group(1)) > 0, result.stdout
    out = simulate_json(cluster, trace, "--compare", policies_copy)
    assert out["compare"]["jobs"] == out["jobs"] == 81
    assert len(out["differences"]) == int(m.group(1))
    assert all(d["differs"] in ("placement", "order", "placement and order") for d in out["differences"])


def test_same_policies_give_no_differences(tmp_path):
    cluster, trace = cluster_file(tmp_path), random_trace(tmp_path, jobs=60)
    from conftest import ROOT
    out = simulate_json(cluster, trace, "--compare", ROOT / "policies")
    assert out["differences"] == []


BAD_TRACES = [
    ("missing-column", "submit_s,name,user,team,learners,gpus,cpus,memory,duration_s,priority\n",
     "trace.csv:1:1: gpu_type: this column is missing from the header"),
    ("bad-number", HEADER + "\n0,a,u,t,1,1,1,1GiB,,ten,0\n",
     "trace.csv:2:21: duration_s: must be a number of seconds >= 0"),
    ("negative-submit", HEADER + "\n-5,a,u,t,1,1,1,1GiB,,10,0\n",
     "trace.csv:2:1: submit_s: must be a number of seconds >= 0"),
    ("zero-learners", HEADER + "\n0,a,u,t,0,1,1,1GiB,,10,0\n",
     "trace.csv:2:9: learners: must be a whole number 1..1024"),
    ("bad-memory", HEADER + "\n0,a,u,t,1,1,1,lots,,10,0\n",
     "trace.csv:2:15: memory: must be a size such as 16GiB or a byte count"),
    ("short-row", HEADER + "\n0,a,u,t,1,1\n", "trace.csv:2:1: (row): has 6 fields, the header has 11"),
    ("empty", "", "trace.csv:1:1: (file): the trace is empty: a header line is required"),
    ("empty-name", HEADER + "\n0,,u,t,1,1,1,1GiB,,10,0\n", "trace.csv:2:3: name: must not be empty"),
]


@pytest.mark.parametrize("name,text,expected", BAD_TRACES, ids=[b[0] for b in BAD_TRACES])
def test_bad_trace_is_named_with_line_and_column(tmp_path, name, text, expected):
    trace = write(tmp_path / "trace.csv", text)
    result = simulate("--cluster", cluster_file(tmp_path), "--workload", trace, "--json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{tmp_path}/{expected}" in result.stderr, result.stderr


def test_bad_cluster_and_missing_files_and_options(tmp_path):
    trace = random_trace(tmp_path, jobs=3)
    bad = cluster_file(tmp_path, "nodes:\n  - {name: a, cpus: 0, memory: 1GiB}\n")
    result = simulate("--cluster", bad, "--workload", trace)
    assert result.returncode == 2 and f"{bad}:2:21: nodes[0].cpus: must be a number > 0" in result.stderr
    result = simulate("--cluster", tmp_path / "nope.yml", "--workload", trace)
    assert result.returncode == 2 and "nope.yml" in result.stderr and "cannot open" in result.stderr
    result = simulate("--cluster", cluster_file(tmp_path), "--workload", tmp_path / "nope.csv")
    assert result.returncode == 2 and "nope.csv:1:1: (file): No such file" in result.stderr
    result = simulate("--cluster", cluster_file(tmp_path))
    assert result.returncode == 2 and "--workload are required" in result.stderr
    result = simulate("--cluster", cluster_file(tmp_path), "--workload", trace, "--frobnicate")
    assert result.returncode == 2 and "--frobnicate is not an option" in result.stderr


@pytest.mark.parametrize("text, expected", [
    # a typo in a field name would leave the GPUs untyped without a word
    ("nodes:\n  - {name: a, cpus: 8, memory: 1GiB, gpus: 2, gpu-type: V100}\n",
     "2:47: nodes[0].gpu-type: unknown field (known: name, count, cpus, memory, gpus, gpu_type, labels)"),
    ("nodes:\n  - name: a\n    cpus: 8\n    memory: 1GiB\n    gpus: eight\n",
     "5:11: nodes[0].gpus: must be a whole number 0..64"),
    ("nodes:\n  - {name: a, cpus: 8, memory: 1GiB, gpus: 65}\n", "2:44: nodes[0].gpus: must be a whole number 0..64"),
    ("nodes:\n  - {name: a, count: two, cpus: 8, memory: 1GiB}\n", "2:22: nodes[0].count: must be a whole number"),
    ("nodes:\n  - {name: a, cpus: 8x, memory: 1GiB}\n", "2:21: nodes[0].cpus: must be a number > 0"),
    ("nodes:\n  - {name: a, cpus: 8, memory: nan}\n", "2:32: nodes[0].memory: must be a size"),
    ("nodes:\n  - {name: a, cpus: 8, memory: 1e9}\n", "2:32: nodes[0].memory: must be a size"),
    ("nodes:\n  - {name: a, cpus: 8, memory: 1GiB, labels: [x]}\n",
     "2:46: nodes[0].labels: must be a mapping of label names to values"),
    ("nodes:\n  - {name: a, cpus: 8, memory: 1GiB, gpus: [1]}\n", "2:44: nodes[0].gpus: must be a single value"),
    ("nodes:\n  - {cpus: 8, memory: 1GiB}\n", "2:5: nodes[0].name: is required"),
    # count N names nodes NAME-1..NAME-N, which can collide with a named node
    ("nodes:\n  - {name: g, count: 2, cpus: 8, memory: 1GiB}\n  - {name: g-2, cpus: 8, memory: 1GiB}\n",
     "3:12: nodes[1].name: node g-2 is named twice"),
])
def test_bad_cluster_fields_are_named_with_line_and_column(tmp_path, text, expected):
    cluster = write(tmp_path / "cluster.yml", text)
    result = simulate("--cluster", cluster, "--workload", random_trace(tmp_path, jobs=3), "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert f"{cluster}:{expected}" in result.stderr, result.stderr


def test_spreadsheet_trace_and_kubernetes_sizes(tmp_path):
    """A trace saved by a spreadsheet (byte order mark, CRLF, quoted names),
    sizes with Kubernetes' suffixes, GPU types in another case than the
    cluster's, and count: 0 for a pool switched off."""
    cluster = write(tmp_path / "cluster.yml",
                    "nodes:\n  - {name: a, count: 2, cpus: 32, memory: 256Gi, gpus: 8, gpu_type: a100}\n"
                    "  - {name: off, count: 0, cpus: 32, memory: 256Gi, gpus: 8, gpu_type: A100}\n")
    rows = [HEADER, '0,"big, first",u,t,2,8,4,16Gi,A100,100,0', "1,small,u,t,1,1,2,512Mi,A100,10,0"]
    trace = tmp_path / "trace.csv"
    trace.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    out = simulate_json(cluster, trace, "--per-job")
    assert out["jobs"] == 2 and out["completed"] == 2, out
    jobs = {j["name"]: j for j in out["per_job"]}
    assert sorted(jobs["big, first"]["nodes"]) == ["a-1", "a-2"]
    assert jobs["small"]["start_s"] == 100  # both nodes' GPUs were taken until then
    # 16Gi is 2^34 bytes: a node of 256Gi takes 16 such learners, not 17 of 16GB
    over = write(tmp_path / "over.csv", HEADER + "\n0,fits,u,t,1,0,1,16Gi,,10,0\n0,full,u,t,1,0,1,241Gi,,10,0\n")
    out = simulate_json(cluster, over, "--per-job")
    starts = {j["name"]: j.get("start_s") for j in out["per_job"]}
    assert starts == {"fits": 0, "full": 0}, out["per_job"]


def test_broken_policies_are_refused_before_simulating(tmp_path, policies_copy):
    (policies_copy / "scheduler.lua").write_text("return {\n  place = function( end\n}\n")
    result = simulate("--cluster", cluster_file(tmp_path), "--workload", random_trace(tmp_path, jobs=3),
                      policies=policies_copy)
    assert result.returncode == 2
    assert "scheduler.lua:2:" in result.stderr


def test_gpu_hour_budget_holds_a_team_until_the_window_slides(tmp_path, policies_copy):
    text = (policies_copy / "budget.lua").read_text()
    budget = "gpu_hours_by_team = { vision = { hours = 10, window_days = 1 } },"
    (policies_copy / "budget.lua").write_text(re.sub(r"gpu_hours_by_team\s*=\s*\{\s*\},", budget, text, count=1))
    assert budget in (policies_copy / "budget.lua").read_text()
    cluster = cluster_file(tmp_path, "nodes:\n  - {name: g, count: 4, cpus: 32, memory: 256GiB, gpus: 8}\n")
    rows = [HEADER,
            "0,v1,ann,vision,1,4,1,1GiB,,7200,0",      # 8 GPU-hours each
            "0,v2,ann,vision,1,4,1,1GiB,,7200,0",
            "10800,v3,ann,vision,1,4,1,1GiB,,3600,0",  # 16 of 10 used: waits
            "10800,n1,bob,nlp,1,4,1,1GiB,,3600,0"]     # another team: no wait
    out = simulate_json(cluster, write(tmp_path / "t.csv", "\n".join(rows) + "\n"), "--per-job",
                        policies=policies_copy)
    jobs = {j["name"]: j for j in out["per_job"]}
    assert out["completed"] == 4
    assert jobs["n1"]["start_s"] == 10800
    # usage falls under 10 GPU-hours once less than 1.25 h of the two jobs'
    # 2 h is inside the last 24 h: at about t = 24.75 h
    assert 24 * 3600 < jobs["v3"]["start_s"] <= 25.5 * 3600, jobs["v3"]


def test_a_job_that_is_never_admitted_is_reported_unscheduled(tmp_path, policies_copy):
    text = (policies_copy / "budget.lua").read_text()
    (policies_copy / "budget.lua").write_text(
        re.sub(r"gpu_quota_by_team\s*=\s*\{\s*\},", "gpu_quota_by_team = { frozen = 0 },", text, count=1))
    cluster = cluster_file(tmp_path, "nodes:\n  - {name: g, cpus: 8, memory: 64GiB, gpus: 2}\n")
    rows = [HEADER, "0,stuck,ann,frozen,1,1,1,1GiB,,60,0", "5,fine,bob,other,1,1,1,1GiB,,60,0"]
    out = simulate_json(cluster, write(tmp_path / "t.csv", "\n".join(rows) + "\n"), policies=policies_copy)
    assert out["completed"] == 1 and out["unscheduled"] == 1
    stuck = out["not_completed"][0]
    assert stuck["name"] == "stuck" and stuck["status"] == "unscheduled"
    assert "team frozen" in stuck["reason"], stuck


def test_a_policy_with_order_instead_of_rank_is_honoured(tmp_path, policies_copy):
    """order(queue, ctx) is still a valid hook: here, newest first (LIFO)."""
    text = (policies_copy / "scheduler.lua").read_text()
    text = text.replace("function M.rank(job, ctx)", "function M.unused_rank(job, ctx)")
    text = text.replace("function M.hold(job, cluster, ctx)", "function M.unused_hold(job, cluster, ctx)")
    text = text.replace("\nreturn M", "\nfunction M.order(queue, ctx)\n"
                        "  table.sort(queue, function(a, b) return a.submitted > b.submitted end)\n"
                        "  return queue\nend\nreturn M")
    (policies_copy / "scheduler.lua").write_text(text)
    for test in (policies_copy / "tests").glob("scheduler_test.lua"):
        test.unlink()  # its tests are about rank() and hold()
    cluster = cluster_file(tmp_path, "nodes:\n  - {name: g, cpus: 8, memory: 64GiB, gpus: 1}\n")
    rows = [HEADER, "0,first,u,t,1,1,1,1GiB,,100,0"] + [f"{i},w{i},u,t,1,1,1,1GiB,,100,0" for i in (1, 2, 3)]
    out = simulate_json(cluster, write(tmp_path / "t.csv", "\n".join(rows) + "\n"), "--per-job",
                        policies=policies_copy)
    starts = sorted((j["start_s"], j["name"]) for j in out["per_job"])
    assert [name for _, name in starts] == ["first", "w3", "w2", "w1"]


def test_ctx_explanations_hold_only_this_calls_messages(tmp_path, policies_copy):
    """Hooks share one ctx per generation: rank()'s explanations of earlier
    jobs must not show in a later admit() (they did, and the list grew
    with every call)."""
    text = (policies_copy / "budget.lua").read_text()
    (policies_copy / "budget.lua").write_text(text.replace(
        "function M.admit(job, usage, ctx)\n",
        "function M.admit(job, usage, ctx)\n"
        "  if ctx.explanations then return false, #ctx.explanations .. ' explanations of other calls' end\n", 1))
    cluster = cluster_file(tmp_path, "nodes:\n  - {name: g, cpus: 8, memory: 64GiB, gpus: 2}\n")
    rows = [HEADER] + [f"{i},j{i},u,t,1,1,1,1GiB,,60,2" for i in range(5)]  # priority 2: rank() explains
    out = simulate_json(cluster, write(tmp_path / "t.csv", "\n".join(rows) + "\n"), policies=policies_copy)
    assert out["completed"] == 5, out["not_completed"]
