--- conformance.lua: what a new policy generation must pass before it goes
--- live: every hook is there, and each returns the shape the runtime
--- expects when called on small sample inputs. Errors name file and line.
local M = {}

local HOOKS = {
  { "validate", "validate" }, { "budget", "admit" }, { "scheduler", "place" },
  { "retry", "on_failure" },
}

--- Returns a list of problems (empty when the generation conforms).
---@param policies table  every policy module, by file name
---@param T table         lua/ffdl/testing.lua (builders of sample inputs)
function M.check(policies, T)
  local problems = {}
  local function add(fmt, ...) problems[#problems + 1] = string.format(fmt, ...) end
  for _, hook in ipairs(HOOKS) do
    local file, name = hook[1], hook[2]
    if type(policies[file]) ~= "table" or type(policies[file][name]) ~= "function" then
      add("policies/%s.lua: %s() is missing or not a function", file, name)
    end
  end
  local scheduler = policies.scheduler
  if type(scheduler) == "table" and type(scheduler.rank) ~= "function"
      and type(scheduler.order) ~= "function" then
    add("policies/scheduler.lua: needs rank(job, ctx) or order(queue, ctx) to set the trial order")
  end
  if #problems > 0 then return problems end

  local ctx = T.ctx { frameworks = policies.frameworks, defaults = policies.defaults }
  local job = T.job {}
  local function call(file, name, ...)
    local ok, a, b = pcall(policies[file][name], ...)
    if not ok then add("policies/%s.lua: %s() raised an error on a sample job: %s", file, name, tostring(a)) end
    return ok, a, b
  end

  local ok, a, b = call("validate", "validate", job, ctx)
  if ok and not (a == true or (not a and type(b) == "table")) then
    add("policies/validate.lua: validate() must return true, or nil and a list of {path=, message=}")
  end
  ok, a, b = call("budget", "admit", job, T.usage(), ctx)
  if ok and (type(a) ~= "boolean" or (a == false and type(b) ~= "string")) then
    add("policies/budget.lua: admit() must return true, or false and a reason")
  end
  if scheduler.order then
    ok, a = call("scheduler", "order", { T.job { id = "a" }, T.job { id = "b" } }, ctx)
    if ok and (type(a) ~= "table" or #a ~= 2) then
      add("policies/scheduler.lua: order() must return the queue it was given, reordered")
    end
  else
    ok, a = call("scheduler", "rank", T.job { id = "a", priority = 3 }, ctx)
    if ok and (math.type(a) == nil or a ~= a) then
      add("policies/scheduler.lua: rank() must return a number (lower is tried first)")
    end
  end
  local cluster = T.cluster { { name = "sample-node", cpus = 8, memory = 64 << 30 } }
  if scheduler.hold then
    ok, a = call("scheduler", "hold", T.job { learners = 2, cpus = 8 }, cluster, ctx)
    if ok and a ~= nil and type(a) ~= "table" then
      add("policies/scheduler.lua: hold() must return a list of node names, or nil")
    end
  end
  ok, a, b = call("scheduler", "place", job, cluster, ctx)
  if ok and not ((type(a) == "table" and a[1] == "sample-node") or (a == nil and type(b) == "string")) then
    add("policies/scheduler.lua: place() must return a node name per learner, or nil and a reason")
  end
  ok, a = call("retry", "on_failure", job, { kind = "signal", exit_code = 0, signal = 9, learner = 1,
                                               attempt = 1, log_tail = {} }, ctx)
  local actions = { restart = true, resume = true, fail = true }
  if ok and (type(a) ~= "table" or not actions[a.action]) then
    add("policies/retry.lua: on_failure() must return {action = \"restart\"|\"resume\"|\"fail\", ...}")
  end
  return problems
end

return M
