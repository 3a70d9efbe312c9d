--- ffdl.lua: the `ffdl` module for job scripts (`ffdl-run script.lua`).
--- Jobs run on the platform's loop; the script runs as a coroutine on the
--- same loop. A call that waits (job:wait()) yields, and the orchestrator's
--- events resume it, so one script can drive many jobs at once.
---
---   local ffdl = require "ffdl"
---   local job = ffdl.train{ manifest = "manifests/pytorch-digits.yml",
---                           args = { lr = 0.05 } }
---   job:on_log(function(line, learner) io.write(line, "\n") end)
---   print(job:wait())               --> COMPLETED
---   job:download("results/")
local core = require "ffdl.core"

local M = {}

---@class ffdl.ScriptJob
---@field id string
local Job = {}
Job.__index = Job

local jobs = {}      -- id -> Job
local TERMINAL = { COMPLETED = true, FAILED = true, HALTED = true }

--- Resumes CO; an error in it ends the run with its traceback.
local function resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then core.fail(debug.traceback(co, err)) end
end

--- Submits a job. opts: manifest (required), model (directory of the model
--- code; default: the manifest's `model` field), args (appended to the
--- command as --key value), name, learners.
---@return ffdl.ScriptJob
function M.train(opts)
  assert(type(opts) == "table", "ffdl.train{manifest = ..., ...} takes a table")
  local id, err = core.submit(opts)
  if not id then error(err, 2) end
  local job = setmetatable({ id = id, status_ = "QUEUED", waiters = {}, log_handlers = {},
                             metric_handlers = {} }, Job)
  jobs[id] = job
  return job
end

--- The job's current status: QUEUED ... COMPLETED, FAILED or HALTED.
function Job:status()
  return self.status_
end

--- Waits for the job to end (yields); returns its final status.
function Job:wait()
  if TERMINAL[self.status_] then return self.status_ end
  local co, is_main = coroutine.running()
  if is_main then error("job:wait() must be called from the script or a coroutine of ffdl.spawn", 2) end
  table.insert(self.waiters, co)
  return coroutine.yield()
end

--- Calls fn(line, learner) for every line a learner prints.
function Job:on_log(fn)
  table.insert(self.log_handlers, fn)
  return self
end

--- Calls fn(record) for every evaluation-metrics record.
function Job:on_metric(fn)
  table.insert(self.metric_handlers, fn)
  return self
end

--- Halts the job: its learners are killed; it ends HALTED.
function Job:halt()
  core.halt(self.id)
end

--- The job as the store holds it: transitions, learners, final_metrics.
function Job:info()
  return core.job(self.id)
end

--- The last value of each metric: {group = {name = value, ...}}.
function Job:metrics()
  local info = core.job(self.id) or {}
  local out = {}
  for group, values in pairs(info.final_metrics or {}) do
    out[group] = {}
    for name, v in pairs(values) do out[group][name] = tonumber(v.value) or v.value end
  end
  return out
end

--- Copies the job's results (model/, learner logs, job.json) into DIR.
function Job:download(dir)
  local ok, err = core.download(self.id, dir)
  if not ok then error(err, 2) end
  return dir
end

--- Where the job's results are.
function Job:results_dir()
  return core.results_dir(self.id)
end

--- Wall-clock seconds, with sub-microsecond digits.
M.now = core.now

--- Runs fn(...) as a coroutine on the loop; returns at its first wait.
function M.spawn(fn, ...)
  local co = coroutine.create(fn)
  resume(co, ...)
  return co
end

--- Waits for every job of the list; returns their statuses in order.
function M.wait_all(list)
  local out = {}
  for i, job in ipairs(list) do out[i] = job:wait() end
  return out
end

--- S3 from scripts: each call yields until the transfer is done.
--- CONN is FfDL's connection table {auth_url=, user_name=, password=,
--- region=} (or endpoint/access_key/secret_key), plus ffdl's checksum=:
--- what S3 checks uploaded bodies against, "crc32c" (the default) or
--- "sha256" (the body's SHA-256 is signed: tamper-proof over plain http,
--- ~0.6 CPU s/GiB more); any other value raises. Failures return nil, err.
M.s3 = {}
local s3_waiting = {}

-- Errors name the script's line: the M.s3 functions tail-call this one, so
-- their caller is level 2 here.
local function s3_call(op, conn, bucket, a, b)
  local co, is_main = coroutine.running()
  if is_main then error("ffdl.s3 calls must run in the script or a coroutine of ffdl.spawn", 2) end
  local started, token = pcall(core.s3, op, conn, bucket, a, b)
  if not started then error(token, 2) end
  s3_waiting[token] = co
  local ev = coroutine.yield()
  if not ev.ok then return nil, ev.error end
  return ev.result == nil and true or ev.result
end

--- Puts the string DATA at BUCKET/KEY.
function M.s3.put(conn, bucket, key, data) return s3_call("put", conn, bucket, key, data) end
--- Returns the object at BUCKET/KEY as a string.
function M.s3.get(conn, bucket, key) return s3_call("get", conn, bucket, key) end
--- Lists {key=, size=, etag=} under PREFIX.
function M.s3.list(conn, bucket, prefix) return s3_call("list", conn, bucket, prefix or "") end
--- Uploads every file under DIR to BUCKET/PREFIX/.
function M.s3.upload_dir(conn, dir, bucket, prefix) return s3_call("upload_dir", conn, bucket, dir, prefix or "") end
--- Downloads every object under PREFIX into DIR.
function M.s3.download_dir(conn, bucket, prefix, dir) return s3_call("download_dir", conn, bucket, prefix or "", dir) end

local handlers = {}

function handlers.s3(ev)
  local co = s3_waiting[ev.token]
  s3_waiting[ev.token] = nil
  if co then resume(co, ev) end
end

function handlers.transition(ev, job)
  job.status_ = ev.status
end

function handlers.line(ev, job)
  for _, fn in ipairs(job.log_handlers) do fn(ev.line, ev.learner) end
end

function handlers.metric(ev, job)
  for _, fn in ipairs(job.metric_handlers) do fn(ev.record) end
end

handlers["end"] = function(ev, job)
  job.status_ = ev.status
  local waiters = job.waiters
  job.waiters = {}
  for _, co in ipairs(waiters) do resume(co, ev.status) end
end

core.set_dispatcher(function(ev)
  if ev.type == "s3" then return handlers.s3(ev) end
  local job = jobs[ev.id]
  if job then handlers[ev.type](ev, job) end
end)

--- Runs the script's main chunk as a coroutine. A chunk that returns a
--- table without waiting is a declarative job spec: it is returned.
--- Returns true and the spec table (or nil), or false and the error with
--- the script's traceback.
function M.__start(chunk, path)
  local co = coroutine.create(chunk)
  local ok, result = coroutine.resume(co, path)
  if not ok then return false, debug.traceback(co, result) end
  if coroutine.status(co) == "dead" and type(result) == "table" and next(jobs) == nil then
    return true, result
  end
  return true, nil
end

return M
