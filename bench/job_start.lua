-- Job start overhead: submit to learner process running, for N trivial jobs
-- run one after another, next to spawning the same process directly.
--   build/ffdl-run bench/job_start.lua        (N: FFDL_BENCH_JOBS, default 200)
local ffdl = require "ffdl"

local here = (... or ""):match("^(.*)/[^/]*$") or "."
local manifest = here .. "/trivial.yml"
local n = tonumber(os.getenv("FFDL_BENCH_JOBS")) or 200

local function percentile(list, p)
  table.sort(list)
  return list[math.max(1, math.ceil(#list * p))]
end

local function started_at(line)
  return tonumber(line:match("started=([0-9.]+)"))
end

-- baseline: the same command, spawned directly from this process
local direct = {}
for i = 1, n do
  local t0 = ffdl.now()
  local pipe = io.popen("date +started=%s.%N")
  local t1 = started_at(pipe:read("l"))
  pipe:close()
  direct[i] = (t1 - t0) * 1000
end

local through_ffdl = {}
for i = 1, n do
  local t0 = ffdl.now()
  local job = ffdl.train { manifest = manifest }
  local t1
  job:on_log(function(line) t1 = t1 or started_at(line) end)
  assert(job:wait() == "COMPLETED", "a trivial job did not complete")
  through_ffdl[i] = (t1 - t0) * 1000
end

local d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
local f50, f99 = percentile(through_ffdl, 0.5), percentile(through_ffdl, 0.99)
print(string.format("jobs: %d", n))
print(string.format("direct spawn      p50 %7.2f ms  p99 %7.2f ms", d50, d99))
print(string.format("through ffdl-run  p50 %7.2f ms  p99 %7.2f ms", f50, f99))
print(string.format("added overhead    p50 %7.2f ms  p99 %7.2f ms  (target: p50 < 5 ms)", f50 - d50, f99 - d99))
print(string.format("ratio ffdl/direct p50 %.2fx", f50 / d50))
