--- scheduler.lua: which queued job is tried first, and where its learners go.
--- Placement is gang: every learner gets a node, or the job keeps waiting.
--- cluster:candidates() filters nodes in C; this file only scores them.

local M = {}

--- Settings a team is expected to edit.
M.config = {
  strategy = "binpack", -- "binpack": fill busy nodes first; "spread": emptiest first
}

---@class ffdl.Node
---@field name string
---@field free_cpus number
---@field free_memory integer
---@field free_gpus integer
---@field gpu_type string?
---@field labels table<string, string>

---@param queue table[]  jobs waiting (spec fields plus id, submitted, priority)
---@param ctx table
---@return table[] queue in the order to try
function M.order(queue, ctx)
  table.sort(queue, function(a, b)
    local pa, pb = a.priority or 0, b.priority or 0
    if pa ~= pb then return pa > pb end
    if a.submitted ~= b.submitted then return a.submitted < b.submitted end
    return a.id < b.id
  end)
  return queue
end

local function score(node, strategy)
  -- lower is better; GPUs weigh most, so small jobs leave whole GPUs free
  local s = node.free_gpus * 1000 + node.free_cpus
  if strategy == "spread" then return -s end
  return s
end

local function describe_request(job)
  local parts = { string.format("%g CPUs", job.cpus), string.format("%.1f GiB", job.memory / 2^30) }
  if (job.gpus or 0) > 0 then
    parts[#parts + 1] = string.format("%d GPUs%s", job.gpus, job.gpu_type and (" of type " .. job.gpu_type) or "")
  end
  return string.format("needs %d learner%s x %s", job.learners, job.learners > 1 and "s" or "",
    table.concat(parts, ", "))
end

--- "best node n3 has 2 GPUs, 4 CPUs free": what comes closest.
local function best_free(cluster, job)
  local best
  for node in cluster:nodes() do
    if not best or node.free_gpus > best.free_gpus
        or (node.free_gpus == best.free_gpus and node.free_cpus > best.free_cpus) then
      best = node
    end
  end
  if not best then return "the cluster has no nodes" end
  if (job.gpus or 0) > 0 then
    return string.format("best node %s has %d GPUs free (%s)", best.name, best.free_gpus,
      best.gpu_type or "no GPU type")
  end
  return string.format("best node %s has %g CPUs and %.1f GiB free", best.name, best.free_cpus,
    best.free_memory / 2^30)
end

---@param job table
---@param cluster table  cluster:candidates(req, taken), cluster:nodes(), cluster:describe()
---@param ctx table
---@return string[]|nil placement  a node name per learner
---@return string? reason
function M.place(job, cluster, ctx)
  local req = { cpus = job.cpus, memory = job.memory, gpus = job.gpus, gpu_type = job.gpu_type }
  local taken, placement = {}, {}
  for learner = 1, job.learners do
    local best, best_score
    for node in cluster:candidates(req, taken) do
      local s = score(node, M.config.strategy)
      if not best or s < best_score then best, best_score = node, s end
    end
    if not best then
      local reason = describe_request(job)
      if learner > 1 then
        reason = reason .. string.format("; only %d would fit now", learner - 1)
      end
      ctx:explain(reason .. "; " .. best_free(cluster, job))
      return nil, reason .. "; nodes: " .. cluster:describe()
    end
    placement[learner] = best.name
    local t = taken[best.name] or { cpus = 0, memory = 0, gpus = 0 }
    t.cpus, t.memory, t.gpus = t.cpus + req.cpus, t.memory + req.memory, t.gpus + (req.gpus or 0)
    taken[best.name] = t
  end
  ctx:explain(string.format("placed %d learner(s) with %s", job.learners, M.config.strategy))
  return placement
end

return M
