--- testing.lua: helpers for policy tests (policies/tests/*.lua), run by
--- `ffdl policy test`. A test file returns a table of functions; each gets
--- T, this module, and calls T.eq / T.ok / T.fails. Builders make fake
--- clusters and job specs, so that hooks are tested without a real cluster.
local M = {}

local function where(level)
  local info = debug and debug.getinfo(level, "Sl") -- absent in the sandbox
  return info and (info.short_src .. ":" .. info.currentline .. ": ") or ""
end

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  return tostring(v)
end

--- Fails unless a == b (deep for tables).
function M.eq(actual, expected, message)
  local function same(a, b)
    if type(a) ~= "table" or type(b) ~= "table" then return a == b end
    for k, v in pairs(a) do if not same(v, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
  end
  if not same(actual, expected) then
    error(string.format("%sexpected %s, got %s%s", where(3), show(expected), show(actual),
      message and (" (" .. message .. ")") or ""), 2)
  end
end

--- Fails unless v is truthy.
function M.ok(v, message)
  if not v then error(where(3) .. (message or "expected a true value"), 2) end
  return v
end

--- Fails unless fn(...) raises; returns the error message.
function M.fails(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error(where(3) .. "expected an error", 2) end
  return tostring(err)
end

--- A job as hooks see it. Fields default to one small CPU learner.
function M.job(fields)
  local job = {
    id = "training-test", name = "test", attempt = 1, submitted = 0, priority = 0,
    learners = 1, cpus = 1, memory = 1 << 30, gpus = 0,
    framework = { name = "pytorch", version = "2.1.0", command = "python3 train.py" },
    resources = {}, retry = { max_attempts = 3 }, labels = {},
  }
  for k, v in pairs(fields or {}) do job[k] = v end
  job.resources.cpus, job.resources.gpus = job.cpus, job.gpus
  job.resources.memory_bytes, job.resources.gpu_type = job.memory, job.gpu_type
  return job
end

--- A fake cluster with the view API of the real one:
--- T.cluster{ {name = "n1", cpus = 8, memory = 64 << 30, gpus = 4, gpu_type = "V100",
---             used = {cpus = 2, gpus = 1}}, ... }
function M.cluster(nodes)
  local view = {}
  local function free(node, taken)
    local t = taken and taken[node.name] or {}
    local used = node.used or {}
    return {
      name = node.name, cpus = node.cpus, memory = node.memory or 0, gpus = node.gpus or 0,
      gpu_type = node.gpu_type, labels = node.labels or {},
      free_cpus = node.cpus - (used.cpus or 0) - (t.cpus or 0),
      free_memory = (node.memory or 0) - (used.memory or 0) - (t.memory or 0),
      free_gpus = (node.gpus or 0) - (used.gpus or 0) - (t.gpus or 0),
    }
  end
  --- Like the real view: opts = {limit = n, order = "binpack"|"spread",
  --- capacity = true}; binpack walks nodes by fewest free GPUs, spread by
  --- most, node order within the same count.
  function view:candidates(req, taken, opts)
    opts = opts or {}
    local list = {}
    for i, node in ipairs(nodes) do
      local f = free(node, taken)
      local room = f
      if opts.capacity then
        local t = taken and taken[node.name] or {}
        room = { free_cpus = node.cpus - (t.cpus or 0), free_memory = (node.memory or 0) - (t.memory or 0),
                 free_gpus = (node.gpus or 0) - (t.gpus or 0) }
      end
      local fits = room.free_cpus >= (req.cpus or 0) and room.free_memory >= (req.memory or 0)
        and room.free_gpus >= (req.gpus or 0)
        and ((req.gpus or 0) == 0 or not req.gpu_type or req.gpu_type == node.gpu_type)
      if fits then list[#list + 1] = { index = i, node = f } end
    end
    if opts.order then
      local used = function(e) -- the bucket: free GPUs before this placement's own
        local n = nodes[e.index]
        return (n.gpus or 0) - ((n.used or {}).gpus or 0)
      end
      table.sort(list, function(a, b)
        local fa, fb = used(a), used(b)
        if fa ~= fb then
          if opts.order == "spread" then return fa > fb end
          return fa < fb
        end
        return a.index < b.index
      end)
    end
    local i = 0
    return function()
      i = i + 1
      if opts.limit and i > opts.limit then return nil end
      return list[i] and list[i].node
    end
  end
  function view:nodes()
    return self:candidates({})
  end
  function view:describe()
    local parts = {}
    for _, node in ipairs(nodes) do
      parts[#parts + 1] = string.format("%s: %g CPUs, %d GPUs", node.name, node.cpus, node.gpus or 0)
    end
    return table.concat(parts, "; ")
  end
  return view
end

--- A ctx as hooks get it; explanations land in ctx.explanations.
function M.ctx(fields)
  local ctx = { now = 0, explanations = {} }
  function ctx:explain(msg) self.explanations[#self.explanations + 1] = msg end
  function ctx.log() end
  for k, v in pairs(fields or {}) do ctx[k] = v end
  return ctx
end

--- An empty usage table for budget.admit.
function M.usage(fields)
  local usage = { by_team = {}, by_user = {}, gpus_used = 0, gpus_total = 0 }
  for k, v in pairs(fields or {}) do usage[k] = v end
  return usage
end

return M
