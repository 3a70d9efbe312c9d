--- retry.lua: what happens when a learner fails.
--- A plain non-zero exit is the program's own verdict: fail at once.
--- What looks transient (killed by a signal, out of memory, node lost) is
--- retried with exponential backoff, resuming from CHECKPOINT_DIR.

local M = {}

--- Settings a team is expected to edit.
M.config = {
  base_delay = 1,          -- seconds before the first retry
  max_delay = 60,
  jitter = 0.1,            -- +/- fraction of the delay, so retries do not stampede
  transient_kinds = { signal = true, oom = true, node_lost = true },
  transient_exit_codes = {}, -- e.g. { [75] = true } for "try again later"
}

---@class ffdl.Failure
---@field kind "exit"|"signal"|"oom"|"node_lost"|"timeout"|"storage"
---@field exit_code integer
---@field signal integer
---@field learner integer
---@field attempt integer    the attempt that failed, from 1
---@field log_tail string[]  the last log lines

---@param job table  the job spec; job.retry.max_attempts bounds the attempts
---@param failure ffdl.Failure
---@param ctx table
---@return {action: "restart"|"resume"|"fail", delay: number?, reason: string}
function M.on_failure(job, failure, ctx)
  local config = M.config
  local transient = config.transient_kinds[failure.kind]
    or (failure.kind == "exit" and config.transient_exit_codes[failure.exit_code])
  if not transient then
    return { action = "fail", reason = "a non-zero exit is not retried" }
  end
  local max_attempts = job.retry and job.retry.max_attempts or 1
  if failure.attempt >= max_attempts then
    return { action = "fail", reason = string.format("gave up after %d attempts", failure.attempt) }
  end
  local delay = math.min(config.max_delay, config.base_delay * 2 ^ (failure.attempt - 1))
  delay = delay * (1 + config.jitter * (2 * math.random() - 1))
  return { action = "resume", delay = delay,
           reason = string.format("%s looks transient; resuming from the checkpoint", failure.kind) }
end

return M
