-- A hyper-parameter sweep: three PyTorch jobs with different learning rates,
-- submitted at once and awaited concurrently. Each job:wait() yields to the
-- loop, so the jobs run side by side (as many at once as the machine fits).
--
--   ffdl-run examples/sweep.lua
local ffdl = require "ffdl"

-- the manifest next to this script's directory, wherever ffdl-run starts
local here = (... or ""):match("^(.*)/[^/]*$") or "."
local manifest = here .. "/../manifests/pytorch-digits.yml"
local rates = { 0.01, 0.05, 0.1 }

local jobs = {}
for i, lr in ipairs(rates) do
  jobs[i] = ffdl.train { manifest = manifest, name = "digits-lr-" .. lr, args = { lr = lr } }
  print(string.format("submitted %s with lr=%g", jobs[i].id, lr))
end

-- one coroutine per job: each waits on its own job
local results = {}
for i, job in ipairs(jobs) do
  ffdl.spawn(function()
    local status = job:wait()
    local test = job:metrics().test or {}
    results[i] = { lr = rates[i], status = status, accuracy = test.accuracy or 0 }
    print(string.format("%s lr=%g %s accuracy=%.4f", job.id, rates[i], status, results[i].accuracy))
  end)
end

-- the script's own coroutine waits for all of them as well
ffdl.wait_all(jobs)

local best
for _, r in ipairs(results) do
  if r.status == "COMPLETED" and (not best or r.accuracy > best.accuracy) then best = r end
end
if not best then
  print("no job completed")
  os.exit(1)
end
print(string.format("best: lr=%g accuracy=%.4f", best.lr, best.accuracy))
