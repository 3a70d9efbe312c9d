--- budget.lua: admission. A job is admitted, or it waits in QUEUED with the
--- reason shown by `ffdl explain`. Quotas count GPUs of running jobs;
--- budgets count GPU-hours used over a sliding window (running jobs up to
--- now included), so a team that spent its budget waits until its oldest
--- usage leaves the window.

---@class ffdl.BudgetPolicy
local M = {}

---@class ffdl.GpuHoursBudget
---@field hours number        GPU-hours allowed within the window
---@field window_days number  the window's length, at most 31 days (what the runtime keeps)

---@class ffdl.BudgetConfig
---@field gpu_quota_by_team table<string, integer>
---@field max_running_jobs_by_user integer?
---@field gpu_hours_by_team table<string, ffdl.GpuHoursBudget>
---@field gpu_hours_by_user table<string, ffdl.GpuHoursBudget>

--- Settings a team is expected to edit.
---@type ffdl.BudgetConfig
M.config = {
  gpu_quota_by_team = {},  -- e.g. { vision = 16 }: GPUs a team may hold at once
  max_running_jobs_by_user = nil,  -- e.g. 10
  -- GPU-hours over a sliding window, e.g. { vision = { hours = 500, window_days = 7 } }.
  -- A job that needs GPUs waits while its team (or user) has used them all.
  gpu_hours_by_team = {},
  gpu_hours_by_user = {},  -- e.g. { alice = { hours = 100, window_days = 7 } }
}

local DAY = 24 * 3600
local MAX_WINDOW_DAYS = 31 -- the runtime's ledger forgets older usage

local EMPTY = setmetatable({}, { __newindex = function() error("read-only", 2) end })

local function window_text(days)
  if days == math.floor(days) then
    return string.format("%d day%s", days, days == 1 and "" or "s")
  end
  return string.format("%g hours", days * 24)
end

--- Reads BUDGET (config.gpu_hours_by_KIND[name]) and fails on a setting
--- that cannot be right, so the mistake shows as the reason a job waits.
---@return number hours, number window_days
local function read_budget(budget, kind, name)
  local where = string.format("budget.config.gpu_hours_by_%s[%q]", kind, name)
  if type(budget) ~= "table" then
    error(string.format("%s must be {hours = N, window_days = D}, got %s", where, type(budget)))
  end
  local hours, days = budget.hours, budget.window_days
  if type(hours) ~= "number" or hours < 0 then
    error(string.format("%s.hours must be a number of GPU-hours >= 0, got %s", where,
      tostring(hours)))
  end
  if type(days) ~= "number" or days <= 0 or days > MAX_WINDOW_DAYS then
    error(string.format("%s.window_days must be a number of days > 0 and <= %d, got %s", where,
      MAX_WINDOW_DAYS, tostring(days)))
  end
  return hours, days
end

--- The GPU-hour budget of a team or user: a reason to wait, or nil.
---@param usage ffdl.Usage
---@param ctx ffdl.Ctx
---@param kind ffdl.UsageKind
---@param name string?
---@param budgets table<string, ffdl.GpuHoursBudget>?
---@return string? reason
local function over_budget(usage, ctx, kind, name, budgets)
  local budget = name and budgets and budgets[name]
  if not budget then return nil end
  local hours, days = read_budget(budget, kind, name)
  local used = usage:gpu_hours(kind, name, days * DAY)
  local window = window_text(days)
  ctx:explain(string.format("%s %s used %.1f of %g GPU-hours in the last %s", kind, name, used,
    hours, window))
  if used >= hours then
    return string.format("%s %s used %.1f of %s %g GPU-hours in the last %s; "
      .. "waits until usage falls under the budget", kind, name, used,
      kind == "team" and "its" or "their", hours, window)
  end
  return nil
end

---@param job ffdl.Job     the job spec plus id, attempt and one learner's cpus, gpus, memory
---@param usage ffdl.Usage what running jobs hold now, and GPU-hours used
---@param ctx ffdl.Ctx
---@return boolean admitted
---@return string? reason  why it waits, when not admitted
function M.admit(job, usage, ctx)
  local config = M.config
  local wanted = (job.gpus or 0) * (job.learners or 1)
  local team, user = job.team, job.user

  -- usage.by_team and usage.by_user are built when first read: read them
  -- only when a setting needs them
  local quota = team and config.gpu_quota_by_team[team]
  if quota then
    local holding = (usage.by_team or {})[team]
    local held = holding and holding.gpus or 0
    if held + wanted > quota then
      return false, string.format("team %s holds %d of its %d GPUs; this job needs %d more",
        team, held, quota, wanted)
    end
  end
  local limit = config.max_running_jobs_by_user
  if limit and user then
    local holding = (usage.by_user or {})[user]
    local running = holding and holding.jobs or 0
    if running >= limit then
      return false, string.format("user %s already runs %d jobs (limit %d)", user, running, limit)
    end
  end

  -- GPU-hour budgets: only jobs that need GPUs spend them; a runtime
  -- without the ledger (no usage.gpu_hours) has no budgets to check
  local team_budgets, user_budgets = config.gpu_hours_by_team, config.gpu_hours_by_user
  if wanted > 0 and (next(team_budgets or EMPTY) or next(user_budgets or EMPTY)) then
    if type(usage.gpu_hours) ~= "function" then
      ctx:explain("GPU-hour budgets are not checked: this runtime reports no GPU-hours")
    else
      local reason = over_budget(usage, ctx, "team", team, team_budgets)
        or over_budget(usage, ctx, "user", user, user_budgets)
      if reason then return false, reason end
    end
  end
  return true
end

-- A budget that cannot be right stops the reload here, with this file's
-- line, instead of keeping every job of that team waiting.
local config = M.config
for kind, budgets in pairs { team = config.gpu_hours_by_team, user = config.gpu_hours_by_user } do
  for name, budget in pairs(budgets or {}) do read_budget(budget, kind, name) end
end

return M
