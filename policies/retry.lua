--- retry.lua: what happens when a learner fails.
--- A plain non-zero exit is the program's own verdict: fail at once.
--- What looks transient (killed by a signal, out of memory, node lost, or an
--- exit code listed below) is retried with exponential backoff and jitter,
--- up to the job's max_attempts, resuming from CHECKPOINT_DIR.

---@class ffdl.RetryPolicy
local M = {}

---@class ffdl.RetryConfig
---@field base_delay number   seconds before the first retry
---@field max_delay number    the backoff stops growing here
---@field jitter number       +/- this fraction of the delay
---@field transient_kinds table<ffdl.FailureKind, boolean>
---@field transient_exit_codes table<integer, boolean>
---@field fatal_signals table<integer, boolean>
---@field resume boolean      true: "resume" (keep CHECKPOINT_DIR); false: "restart" (empty it)

--- Settings a team is expected to edit.
---@type ffdl.RetryConfig
M.config = {
  base_delay = 1,          -- seconds before the first retry
  max_delay = 60,
  jitter = 0.1,            -- +/- fraction of the delay, so retries do not stampede
  transient_kinds = { signal = true, oom = true, node_lost = true },
  -- exit codes that mean "try again later"; 75 is EX_TEMPFAIL (sysexits.h)
  transient_exit_codes = { [75] = true },
  -- a learner that crashes (SIGILL, SIGABRT, SIGFPE, SIGSEGV) would crash again
  fatal_signals = { [4] = true, [6] = true, [8] = true, [11] = true },
  -- a retried learner finds what the failed one left in $CHECKPOINT_DIR
  resume = true,
}

local function describe(failure)
  local kind = failure.kind
  if kind == "exit" then return string.format("exit code %d", failure.exit_code) end
  if kind == "signal" then return string.format("signal %d", failure.signal) end
  if kind == "oom" then return "out of memory" end
  if kind == "node_lost" then return "a lost node" end
  return tostring(kind)
end

--- A number in [0, 1) drawn from the job and attempt: jobs that failed
--- together retry apart, and the hook stays a function of its arguments.
local function spread(job, failure)
  local h = 2166136261 -- FNV-1a
  for i = 1, #(job.id or "") do h = ((h ~ job.id:byte(i)) * 16777619) & 0xffffffff end
  h = ((h ~ (failure.attempt & 0xff)) * 16777619) & 0xffffffff
  return h / 2 ^ 32
end

--- Why this failure is not worth another attempt, or nil when it is.
---@param failure ffdl.Failure
---@return string? reason
local function fatal(failure)
  local config = M.config
  if failure.kind == "exit" then
    if config.transient_exit_codes[failure.exit_code] then return nil end
    return string.format("exit code %d is the program's own verdict: "
      .. "a non-zero exit is not retried", failure.exit_code)
  end
  if failure.kind == "signal" and config.fatal_signals[failure.signal] then
    return string.format("signal %d is a crash, which would happen again: not retried",
      failure.signal)
  end
  if not config.transient_kinds[failure.kind] then
    return string.format("%s is not retried", describe(failure))
  end
  return nil
end

--- The delay before attempt failure.attempt + 1: base_delay doubled per
--- attempt, at most max_delay, then moved by up to +/- jitter.
---@param job ffdl.Job
---@param failure ffdl.Failure
---@return number seconds
local function backoff(job, failure)
  local config = M.config
  local delay = math.min(config.max_delay, config.base_delay * 2 ^ (failure.attempt - 1))
  return delay * (1 + config.jitter * (2 * spread(job, failure) - 1))
end

---@param job ffdl.Job  job.retry.max_attempts bounds the attempts
---@param failure ffdl.Failure
---@param ctx ffdl.Ctx
---@return ffdl.RetryDecision
function M.on_failure(job, failure, ctx)
  local config = M.config
  local why = fatal(failure)
  if why then
    return { action = "fail", reason = why }
  end
  local max_attempts = job.retry and job.retry.max_attempts
    or (ctx.defaults and ctx.defaults.max_attempts) or 1
  if failure.attempt >= max_attempts then
    return { action = "fail", reason = string.format("gave up after %d attempts", failure.attempt) }
  end
  local delay = backoff(job, failure)
  ctx:explain(string.format("attempt %d of %d failed with %s; the next starts in %.1f s",
    failure.attempt, max_attempts, describe(failure), delay))
  if config.resume then
    return { action = "resume", delay = delay,
             reason = string.format("%s looks transient; resuming from CHECKPOINT_DIR",
               describe(failure)) }
  end
  return { action = "restart", delay = delay,
           reason = string.format("%s looks transient; restarting from scratch",
             describe(failure)) }
end

return M
