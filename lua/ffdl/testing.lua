--- testing.lua: helpers for policy tests (policies/tests/*.lua), run by
--- `ffdl policy test`. A test file returns a table of functions; each gets
--- T, this module, and calls T.eq / T.ok / T.fails. Builders make fake
--- clusters, usage, contexts and job specs that behave like the runtime's,
--- so that hooks are tested without a real cluster. The types are in
--- lua/meta/ffdl_policy.lua.
---@class ffdl.Testing
local M = {}

local function where(level)
  ---@diagnostic disable-next-line: undefined-global
  local info = debug and debug.getinfo(level, "Sl") -- absent in the sandbox
  return info and (info.short_src .. ":" .. info.currentline .. ": ") or ""
end

--- V as a Lua literal, tables included (keys sorted, nesting and length bounded).
local function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" or getmetatable(v) ~= nil or depth > 3 then return tostring(v) end
  local keys, n = {}, #v
  for k in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "string" or type(a) == "number") then return a < b end
    return type(a) < type(b)
  end)
  local parts = {}
  for i = 1, n do parts[#parts + 1] = show(v[i], depth + 1) end
  for _, k in ipairs(keys) do
    local key = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. show(k) .. "]")
    parts[#parts + 1] = key .. " = " .. show(v[k], depth + 1)
  end
  local text = "{" .. table.concat(parts, ", ") .. "}"
  return #text > 400 and text:sub(1, 397) .. "..." or text
end

--- Fails unless a == b (deep for tables).
---@param actual any
---@param expected any
---@param message string?
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

--- Fails unless v is truthy; returns v.
---@generic V
---@param v V
---@param message string?
---@return V
function M.ok(v, message)
  if not v then error(where(3) .. (message or "expected a true value"), 2) end
  return v
end

--- Fails unless fn(...) raises; returns the error message.
---@param fn function
---@param ... any
---@return string
function M.fails(fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then error(where(3) .. "expected an error", 2) end
  return tostring(err)
end

--- A job as hooks see it. Fields default to one small CPU learner.
---@param fields table?  any ffdl.Job field
---@return ffdl.Job
function M.job(fields)
  local job = {
    id = "training-test", name = "test", attempt = 1, submitted = 0, priority = 0,
    learners = 1, cpus = 1, memory = 1 << 30, gpus = 0,
    framework = { name = "pytorch", version = "2.1.0", command = "python3 train.py" },
    resources = {}, retry = { max_attempts = 3 }, labels = {}, data_stores = {},
  }
  for k, v in pairs(fields or {}) do job[k] = v end
  job.resources.cpus, job.resources.gpus = job.cpus, job.gpus
  job.resources.memory_bytes, job.resources.gpu_type = job.memory, job.gpu_type
  return job
end

---------------------------------------------------------------------------
-- The fake cluster
---------------------------------------------------------------------------

---@class ffdl.FakeNode
---@field name string
---@field cpus number
---@field memory integer?  bytes; default 0
---@field gpus integer?    default 0
---@field gpu_type string?
---@field labels table<string, string>?
---@field used ffdl.Taken? what running jobs hold on it
---@field held boolean?    kept for a blocked job: candidates() leaves it out, nodes() does not

local function number(v)
  return type(v) == "number" and v or tonumber(v) or 0
end

--- What hooks see of NODE: read-only, like the runtime's nodes.
local function node_view(node, t)
  local used = node.used or {}
  local fields = {
    name = node.name, cpus = node.cpus, memory = node.memory or 0, gpus = node.gpus or 0,
    gpu_type = node.gpu_type, labels = node.labels or {},
    free_cpus = node.cpus - (used.cpus or 0) - (t.cpus or 0),
    free_memory = (node.memory or 0) - (used.memory or 0) - (t.memory or 0),
    free_gpus = (node.gpus or 0) - (used.gpus or 0) - (t.gpus or 0),
  }
  return setmetatable({}, {
    __index = fields,
    __newindex = function() error("nodes are read-only", 2) end,
    __tostring = function() return "node " .. node.name end,
    __name = "ffdl.Node",
    __metatable = "locked",
  })
end

--- A fake cluster with the view API of the real one (src/orch/cluster.c):
---   T.cluster{ {name = "n1", cpus = 8, memory = 64 << 30, gpus = 4, gpu_type = "V100",
---               used = {cpus = 2, gpus = 1}}, ... }
--- candidates(req, taken, opts) yields the nodes with room for req beyond
--- what `taken` (by node name) already put there, held nodes left out,
--- each with its free_gpus and free_cpus as second and third values:
---   no opts.order  node order
---   "binpack"      fewest free GPUs first, then node order
---   "spread"       most free GPUs first, then node order
--- (the runtime's index also keeps nodes of one GPU type together within
--- the same count of free GPUs, in the order the types first appear)
--- The order counts what running jobs use, not `taken` (the runtime walks an
--- index of the nodes by free GPUs, which this placement has not changed).
--- opts.limit > 0 stops after that many nodes; opts.capacity judges the fit
--- by the node's whole capacity (less `taken`), while free_* still show what
--- is free now. A GPU type matters only when req.gpus > 0.
---@param nodes ffdl.FakeNode[]
---@return ffdl.Cluster
function M.cluster(nodes)
  local view = {}
  local function free_now(node, what) -- what running jobs leave free, before `taken`
    return number(node[what]) - number((node.used or {})[what])
  end
  local function fits(node, req, t, capacity)
    local function room(what)
      return number(node[what]) - (capacity and 0 or number((node.used or {})[what]))
        - number(t[what])
    end
    if room("cpus") + 1e-9 < req.cpus or room("memory") < req.memory or room("gpus") < req.gpus then
      return false
    end
    return req.gpus == 0 or not req.gpu_type
      or (node.gpu_type ~= nil and node.gpu_type:lower() == req.gpu_type:lower()) -- any case, as in C
  end

  function view:candidates(req, taken, opts)
    if type(req) ~= "table" then
      error("bad argument #1 to 'candidates' (table expected, got " .. type(req) .. ")", 2)
    end
    taken = type(taken) == "table" and taken or {}
    opts = type(opts) == "table" and opts or {}
    local order = opts.order
    if type(order) == "number" then order = tostring(order) end
    if type(order) ~= "string" then
      order = nil
    elseif order ~= "binpack" and order ~= "spread" then
      error(string.format('candidates(): order must be "binpack" or "spread", not "%s"', order), 2)
    end
    local r = {
      cpus = number(req.cpus), memory = number(req.memory), gpus = math.max(0, number(req.gpus)),
      gpu_type = type(req.gpu_type) == "string" and req.gpu_type ~= "" and req.gpu_type or nil,
    }
    local limit = number(opts.limit)
    local list = {}
    for i, node in ipairs(nodes) do
      local t = type(taken[node.name]) == "table" and taken[node.name] or {}
      if not node.held and fits(node, r, t, opts.capacity) then
        list[#list + 1] = { index = i, node = node, taken = t }
      end
    end
    if order then
      local sign = order == "spread" and -1 or 1
      table.sort(list, function(a, b)
        local ga, gb = free_now(a.node, "gpus"), free_now(b.node, "gpus")
        if ga ~= gb then return sign * ga < sign * gb end
        return a.index < b.index
      end)
    end
    local i = 0
    return function()
      i = i + 1
      if limit > 0 and i > limit then return nil end
      local e = list[i]
      if not e then return nil end
      local node = node_view(e.node, e.taken)
      return node, node.free_gpus, node.free_cpus
    end
  end

  function view:nodes()
    local i = 0
    return function()
      i = i + 1
      return nodes[i] and node_view(nodes[i], {})
    end
  end

  function view:describe()
    local parts = {}
    for _, node in ipairs(nodes) do
      local gpus = (node.gpus or 0) > 0
        and string.format("%d GPUs (%s)", node.gpus, node.gpu_type or "any type") or "no GPU"
      parts[#parts + 1] = string.format("%s: %g CPUs, %.1f GiB, %s", node.name, node.cpus,
        (node.memory or 0) / 2^30, gpus)
    end
    return table.concat(parts, "; ")
  end
  return view
end

---------------------------------------------------------------------------
-- ctx and usage
---------------------------------------------------------------------------

---@class ffdl.FakeCtx: ffdl.Ctx
---@field explanations string[]  every ctx:explain() message, in order
---@field logged string[]        every ctx.log() message, in order

--- A ctx as hooks get it, at ctx.now = 0 unless fields say otherwise:
---   T.ctx{ now = 1.7e9, frameworks = policies.frameworks, defaults = policies.defaults }
--- ctx:explain(msg) collects into ctx.explanations, ctx.log(msg) (or
--- ctx:log(msg)) into ctx.logged; like the runtime's, both want a string.
---@param fields table?
---@return ffdl.FakeCtx
function M.ctx(fields)
  local ctx = { now = 0, explanations = {}, logged = {}, generation = "test" }
  local function text(v, fn)
    if type(v) ~= "string" and type(v) ~= "number" then
      error(string.format("bad argument #1 to '%s' (string expected, got %s)", fn, type(v)), 3)
    end
    return tostring(v)
  end
  function ctx:explain(msg)
    self.explanations[#self.explanations + 1] = text(msg, "explain")
  end
  function ctx.log(a, b)
    if type(a) == "table" then a = b end
    ctx.logged[#ctx.logged + 1] = text(a, "log")
  end
  for k, v in pairs(fields or {}) do ctx[k] = v end
  return ctx
end

---@alias ffdl.FakeGpuHours number|fun(window_s: number): number
---@alias ffdl.FakeGpuHoursFn fun(kind: ffdl.UsageKind, name: string, window_s: number): number

---@class ffdl.FakeGpuHoursByKind
---@field team table<string, ffdl.FakeGpuHours>?
---@field user table<string, ffdl.FakeGpuHours>?

---@class ffdl.FakeUsageFields
---@field by_team table<string, ffdl.Holding>?
---@field by_user table<string, ffdl.Holding>?
---@field gpu_hours ffdl.FakeGpuHoursByKind|ffdl.FakeGpuHoursFn|false|nil
---@field cpus_total number?
---@field cpus_used number?
---@field gpus_total integer?
---@field gpus_used integer?
---@field memory_total integer?
---@field memory_used integer?

---@class ffdl.FakeUsage: ffdl.Usage
---@field asked {kind: ffdl.UsageKind, name: string, window_s: number}[]  every gpu_hours() call

--- Usage as budget.admit sees it; empty by default:
---   T.usage{ by_team = { vision = {gpus = 3, jobs = 1} },
---            gpu_hours = { team = { vision = 12.5 },
---                          user = { ann = function(window_s) return window_s / 3600 end } } }
--- usage:gpu_hours(kind, name, window_s) answers from gpu_hours[kind][name]
--- (a number, or a function of the window), 0 for anyone not named, and
--- records each call in usage.asked. gpu_hours may also be one function
--- (kind, name, window_s); gpu_hours = false leaves the method out, as in
--- a runtime that has no GPU-hour ledger.
---@param fields ffdl.FakeUsageFields?
---@return ffdl.FakeUsage
function M.usage(fields)
  fields = fields or {}
  local usage = {
    by_team = {}, by_user = {}, asked = {},
    cpus_total = 0, cpus_used = 0, gpus_total = 0, gpus_used = 0, memory_total = 0, memory_used = 0,
  }
  for k, v in pairs(fields) do
    if k ~= "gpu_hours" then usage[k] = v end
  end
  local source = fields.gpu_hours
  if source == false then return usage end
  source = source or {}
  function usage:gpu_hours(kind, name, window_s)
    if kind ~= "team" and kind ~= "user" then
      error("bad argument #1 to 'gpu_hours' (\"team\" or \"user\")", 2)
    end
    if type(name) ~= "string" and type(name) ~= "number" then
      error("bad argument #2 to 'gpu_hours' (string expected, got " .. type(name) .. ")", 2)
    end
    if type(window_s) ~= "number" then
      error("bad argument #3 to 'gpu_hours' (number expected, got " .. type(window_s) .. ")", 2)
    end
    name = tostring(name)
    self.asked[#self.asked + 1] = { kind = kind, name = name, window_s = window_s }
    if type(source) == "function" then return source(kind, name, window_s) end
    local v = (source[kind] or {})[name]
    if type(v) == "function" then return v(window_s) end
    return v or 0
  end
  return usage
end

return M
