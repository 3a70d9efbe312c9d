-- Throughput: N trivial jobs through one job script, all submitted at once.
-- Prints jobs per second and the peak RSS of ffdl-run.
--   build/ffdl-run bench/throughput.lua      (N: FFDL_BENCH_JOBS, default 1000)
local ffdl = require "ffdl"

local here = (... or ""):match("^(.*)/[^/]*$") or "."
local manifest = here .. "/trivial.yml"
local n = tonumber(os.getenv("FFDL_BENCH_JOBS")) or 1000

local function peak_rss_kib()
  for line in io.lines("/proc/self/status") do
    local kib = line:match("^VmHWM:%s+(%d+)")
    if kib then return tonumber(kib) end
  end
end

local rss_before = peak_rss_kib()
local t0 = ffdl.now()
local jobs = {}
for i = 1, n do jobs[i] = ffdl.train { manifest = manifest } end
local statuses = ffdl.wait_all(jobs)
local seconds = ffdl.now() - t0
local completed = 0
for _, s in ipairs(statuses) do completed = completed + (s == "COMPLETED" and 1 or 0) end
print(string.format("jobs: %d completed of %d", completed, n))
print(string.format("wall: %.2f s  throughput: %.1f jobs/s", seconds, completed / seconds))
print(string.format("peak RSS: %.1f MiB (%.1f MiB before the jobs)", peak_rss_kib() / 1024, rss_before / 1024))
