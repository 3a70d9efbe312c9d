--- validate.lua: the team's rules, run after the built-in schema has
--- accepted a spec. Return true, or nil and a list of {path=, message=}.
--- The defaults below keep every FfDL manifest valid; tighten them here.

---@class ffdl.ValidatePolicy
local M = {}

---@class ffdl.ValidateConfig
---@field max_gpus_per_job integer  learners x gpus
---@field max_learners integer
---@field require_team_label boolean

--- Settings a team is expected to edit.
---@type ffdl.ValidateConfig
M.config = {
  max_gpus_per_job = 64,      -- learners x gpus
  max_learners = 64,
  require_team_label = false, -- true: every job needs labels.team (or team)
}

---@param entry ffdl.Framework
---@param version string
---@return boolean
local function version_allowed(entry, version)
  if entry.versions == nil or entry.versions == "*" then return true end
  for _, v in ipairs(entry.versions) do
    if v == version then return true end
  end
  return false
end

---@param spec ffdl.Spec  the normalized job spec (see lua/ffdl/manifest.lua)
---@param ctx ffdl.Ctx     ctx.frameworks, ctx.defaults, ctx.file, ctx:explain(msg)
---@return true|nil ok
---@return ffdl.ValidationError[]|nil errors  every problem, not just the first
function M.validate(spec, ctx)
  local errors = {}
  local function reject(path, message) errors[#errors + 1] = { path = path, message = message } end
  local config = M.config

  local fw = spec.framework
  local entry = ctx.frameworks[fw.name]
  if not entry then
    local names = {}
    for name in pairs(ctx.frameworks) do names[#names + 1] = name end
    table.sort(names)
    reject("framework.name", string.format("unknown framework %q; allowed: %s", fw.name,
      table.concat(names, ", ")))
  elseif not version_allowed(entry, fw.version) then
    reject("framework.version", string.format("%s %s is not allowed here; allowed: %s",
      fw.name, fw.version, table.concat(entry.versions, ", ")))
  end

  local gpus = spec.learners * spec.resources.gpus
  if gpus > config.max_gpus_per_job then
    reject("gpus", string.format("the job asks for %d GPUs (%d learners x %d); the limit is %d",
      gpus, spec.learners, spec.resources.gpus, config.max_gpus_per_job))
  end
  if spec.learners > config.max_learners then
    reject("learners", string.format("at most %d learners per job, got %d", config.max_learners,
      spec.learners))
  end
  if config.require_team_label and not spec.team then
    reject("labels.team", "every job needs a team label (labels: {team: NAME})")
  end

  if #errors > 0 then return nil, errors end
  return true
end

return M
