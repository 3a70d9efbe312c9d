--- budget.lua: admission. A job is admitted, or it waits in QUEUED with the
--- reason shown by `ffdl explain`. Quotas count GPUs of running jobs.

local M = {}

--- Settings a team is expected to edit.
M.config = {
  gpu_quota_by_team = {},  -- e.g. { vision = 16 }: GPUs a team may hold at once
  max_running_jobs_by_user = nil,  -- e.g. 10
}

---@class ffdl.Usage
---@field cpus_total number
---@field cpus_used number
---@field gpus_total integer
---@field gpus_used integer
---@field by_team table<string, {gpus: integer, jobs: integer}>
---@field by_user table<string, {gpus: integer, jobs: integer}>

---@param job table       the job spec plus id, attempt, cpus, gpus, memory
---@param usage ffdl.Usage what running jobs hold now
---@param ctx table        ctx.now, ctx:explain(msg)
---@return boolean admitted
---@return string? reason
function M.admit(job, usage, ctx)
  local config = M.config
  local wanted = (job.gpus or 0) * (job.learners or 1)
  local team = job.team
  local quota = team and config.gpu_quota_by_team[team]
  if quota then
    local held = usage.by_team[team] and usage.by_team[team].gpus or 0
    if held + wanted > quota then
      return false, string.format("team %s holds %d of its %d GPUs; this job needs %d more",
        team, held, quota, wanted)
    end
  end
  local limit = config.max_running_jobs_by_user
  if limit and job.user then
    local running = usage.by_user[job.user] and usage.by_user[job.user].jobs or 0
    if running >= limit then
      return false, string.format("user %s already runs %d jobs (limit %d)", job.user, running, limit)
    end
  end
  return true
end

return M
