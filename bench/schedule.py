#!/usr/bin/env python3
"""Scheduling throughput: the default Lua policies on a simulated cluster.

Builds a 5,000-node, 40,000-GPU cluster and a trace of 100,000 jobs of mixed
size (all queued at once), runs `ffdl policy simulate --json` on it, and
prints placements per second of wall-clock time (and per CPU-second of the
replay, which other load on a shared machine inflates far less; the load
average is printed too). The baseline, in the same
run, is the same trace through a minimal first-fit scheduler.lua (no
scoring, no aging, no holds), so the ratio shows what the default
policies cost on top of the runtime.

FFDL_BENCH_NODES and FFDL_BENCH_JOBS change the sizes.
"""
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = pathlib.Path(os.environ.get("FFDL_BUILD", ROOT / "build"))
NODES = int(os.environ.get("FFDL_BENCH_NODES", 5000))
JOBS = int(os.environ.get("FFDL_BENCH_JOBS", 100000))

FIRST_FIT = """
local M = { config = {} }
function M.rank(job, ctx) return job.submitted end
function M.place(job, cluster, ctx)
  local req = { cpus = job.cpus, memory = job.memory, gpus = job.gpus, gpu_type = job.gpu_type }
  local taken, placement = {}, {}
  for learner = 1, job.learners do
    local node
    for n in cluster:candidates(req, taken, { limit = 1, order = "binpack" }) do node = n end
    if not node then return nil, "no room" end
    placement[learner] = node.name
    local t = taken[node.name] or { cpus = 0, memory = 0, gpus = 0 }
    t.cpus, t.memory, t.gpus = t.cpus + req.cpus, t.memory + req.memory, t.gpus + req.gpus
    taken[node.name] = t
  end
  return placement
end
return M
"""


def write_inputs(work):
    per_type = NODES // 2
    (work / "cluster.yml").write_text(
        "nodes:\n"
        f"  - {{name: a100, count: {per_type}, cpus: 64, memory: 512GiB, gpus: 8, gpu_type: A100}}\n"
        f"  - {{name: v100, count: {NODES - per_type}, cpus: 48, memory: 384GiB, gpus: 8, gpu_type: V100}}\n")
    rng = random.Random(7)
    shapes = [(1, 0, 4), (1, 1, 4), (1, 2, 8), (1, 4, 16), (1, 8, 32), (2, 8, 32), (4, 8, 32), (2, 2, 8)]
    lines = ["submit_s,name,user,team,learners,gpus,cpus,memory,gpu_type,duration_s,priority"]
    for i in range(JOBS):
        learners, gpus, cpus = rng.choice(shapes)
        gpu_type = rng.choice(["A100", "V100", ""]) if gpus else ""
        lines.append(f"0,job{i},user{i % 97},team{i % 7},{learners},{gpus},{cpus},{cpus * 4}GiB,"
                     f"{gpu_type},{rng.randint(600, 36000)},{rng.choice([0, 0, 0, 1, 2])}")
    (work / "trace.csv").write_text("\n".join(lines) + "\n")


def simulate(work, policies):
    out = subprocess.run([str(BUILD / "ffdl"), "policy", "simulate", "--cluster", str(work / "cluster.yml"),
                          "--workload", str(work / "trace.csv"), "--policies", str(policies), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="ffdl-bench-sched-"))
    try:
        write_inputs(work)
        baseline = work / "first-fit"
        shutil.copytree(ROOT / "policies", baseline, ignore=shutil.ignore_patterns("tests"))
        (baseline / "scheduler.lua").write_text(FIRST_FIT)
        print(f"{NODES} nodes, {NODES * 8} GPUs, {JOBS} jobs queued at t=0", flush=True)
        runs = {"default policies": simulate(work, ROOT / "policies"),
                "first-fit baseline": simulate(work, baseline)}
        for label, r in runs.items():
            print(f"{label:>20}: {r['placements_per_s']:>9.0f} placements/s  "
                  f"({r['placements_per_cpu_s']:.0f} per CPU-second; {r['placements']} placements, "
                  f"{r['cycles']} cycles, {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU; "
                  f"completed {r['completed']}/{r['jobs']}, "
                  f"GPU utilization {r['gpu_utilization']:.3f}, mean queue {r['mean_queue_s']:.0f} s)")
        ratio = runs["default policies"]["placements_per_s"] / runs["first-fit baseline"]["placements_per_s"]
        print(f"default / first-fit throughput ratio: {ratio:.2f}  (target: >= 50,000 placements/s)")
        # wall time includes waiting for a CPU when the machine is shared;
        # the CPU time of the replay is what the scheduler itself costs
        print(f"load average while running: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
