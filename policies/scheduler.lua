--- scheduler.lua: which queued job is tried first, and where its learners go.
--- Placement is gang: every learner gets a node, or the job keeps waiting.
--- cluster:candidates() filters nodes in C; this file only scores them.
---
--- The runtime calls, per scheduling cycle:
---   rank(job, ctx)            once per job (and again after a reload): its
---                             place in the queue, lower first
---   place(job, cluster, ctx)  for each job in rank order that may start
---   hold(job, cluster, ctx)   for the first job that found no room: the
---                             nodes kept for it, so that backfilled jobs
---                             cannot delay it (nil: no job may pass it)

---@class ffdl.SchedulerPolicy
local M = {}

---@class ffdl.SchedulerConfig
---@field strategy "binpack"|"spread"
---@field aging_s number     seconds of waiting one priority level is worth
---@field backfill boolean   jobs may pass a blocked one on nodes it does not hold
---@field candidates integer nodes scored per learner
---@field scan_limit integer jobs a cycle looks at past the first blocked one

--- Settings a team is expected to edit.
---@type ffdl.SchedulerConfig
M.config = {
  strategy = "binpack", -- "binpack": fill busy nodes first; "spread": emptiest first
  -- Aging: one priority level is worth this many seconds of waiting, so a
  -- low-priority job is passed only by jobs submitted less than
  -- (difference in priority) x aging_s after it. Nothing starves.
  aging_s = 600,
  -- Backfill: jobs behind a blocked one may start on nodes not held for it.
  backfill = true,
  candidates = 4,   -- nodes scored per learner (C picks them in strategy order)
  scan_limit = 500, -- jobs a cycle looks at past the first blocked one
}

--- The queue position: submission time, moved earlier by priority.
--- Linear aging keeps this a constant for each job, which is what lets the
--- runtime keep a 100,000-job queue sorted without calling Lua each cycle.
---@param job ffdl.Job
---@param ctx ffdl.Ctx
---@return number rank  lower is tried first
function M.rank(job, ctx)
  local priority = job.priority or 0
  if priority ~= 0 then
    ctx:explain(string.format("priority %d counts as %d s of waiting", priority,
      priority * M.config.aging_s))
  end
  return job.submitted - priority * M.config.aging_s
end

---@param job ffdl.Job
---@return string
local function describe_request(job)
  local parts = { string.format("%g CPUs", job.cpus), string.format("%.1f GiB", job.memory / 2^30) }
  if (job.gpus or 0) > 0 then
    parts[#parts + 1] = string.format("%d GPUs%s", job.gpus, job.gpu_type and (" of type " .. job.gpu_type) or "")
  end
  return string.format("needs %d learner%s x %s", job.learners, job.learners > 1 and "s" or "",
    table.concat(parts, ", "))
end

--- "best node n3 has 2 GPUs free (V100)": what comes closest. Looks at a
--- bounded number of nodes, so that it stays cheap on big clusters.
---@param cluster ffdl.Cluster
---@param job ffdl.Job
local function best_free(cluster, job)
  local gpus = (job.gpus or 0) > 0
  local req = { cpus = 0, memory = 0, gpus = gpus and 1 or 0, gpu_type = job.gpu_type }
  local best
  for node in cluster:candidates(req, nil, { order = "spread", limit = 64 }) do
    if not best or (gpus and node.free_gpus > best.free_gpus)
        or (not gpus and node.free_cpus > best.free_cpus) then
      best = node
    end
  end
  if not best then
    return gpus and "no node has a free GPU of that type" or "no node has room"
  end
  if gpus then
    return string.format("best node %s has %d GPUs free (%s)", best.name, best.free_gpus,
      best.gpu_type or "no GPU type")
  end
  return string.format("best node %s has %g CPUs and %.1f GiB free", best.name, best.free_cpus,
    best.free_memory / 2^30)
end

---@param taken ffdl.Taken
---@param name string
---@param req ffdl.Request
local function add_taken(taken, name, req)
  local t = taken[name] or { cpus = 0, memory = 0, gpus = 0 }
  t.cpus, t.memory, t.gpus = t.cpus + req.cpus, t.memory + req.memory, t.gpus + (req.gpus or 0)
  taken[name] = t
end

-- candidates() options for place(), made again only when the config changes
-- (a table per call costs more than the comparison)
local place_options = { limit = 0, order = "" }

---@param config ffdl.SchedulerConfig
local function options_for(config)
  local order = config.strategy == "spread" and "spread" or "binpack"
  if place_options.limit ~= config.candidates or place_options.order ~= order then
    place_options = { limit = config.candidates, order = order }
  end
  return place_options
end

---@param job ffdl.Job
---@param cluster ffdl.Cluster
---@param ctx ffdl.Ctx
---@return string[]|nil placement  a node name per learner
---@return string? reason
function M.place(job, cluster, ctx)
  local config = M.config
  local opts = options_for(config)
  -- the score, lower is better: GPUs weigh most, so that small jobs leave
  -- whole GPUs free; "spread" turns it around (written out in the loop: a
  -- function call per candidate costs more than the arithmetic)
  local sign = config.strategy == "spread" and -1 or 1
  local learners = job.learners
  -- the job is the request (cpus, memory, gpus, gpu_type); taken is made
  -- only for a second learner, so most jobs need no table but the result
  local taken, placement = nil, {}
  for learner = 1, learners do
    local best, best_score
    for node, free_gpus, free_cpus in cluster:candidates(job, taken, opts) do
      local s = sign * (free_gpus * 1000 + free_cpus)
      if not best or s < best_score then best, best_score = node, s end
    end
    if not best then
      local reason = describe_request(job)
      if learner > 1 then
        reason = reason .. string.format("; only %d would fit now", learner - 1)
      end
      ctx:explain(reason .. "; " .. best_free(cluster, job))
      return nil, reason
    end
    local name = best.name
    placement[learner] = name
    if learner < learners then
      taken = taken or {}
      add_taken(taken, name, job)
    end
  end
  return placement
end

--- Nodes kept for a job that found no room: those with the most room now
--- among the ones big enough, so they drain towards it. Jobs behind it may
--- still start elsewhere (backfill), which cannot delay it.
---@param job ffdl.Job
---@param cluster ffdl.Cluster
---@param ctx ffdl.Ctx
---@return string[]|nil held  node names; nil stops every job behind this one
function M.hold(job, cluster, ctx)
  if not M.config.backfill then return nil end
  local req = { cpus = job.cpus, memory = job.memory, gpus = job.gpus, gpu_type = job.gpu_type }
  local opts = { capacity = true, order = "spread", limit = 1 }
  local taken, held = {}, {}
  for _ = 1, job.learners do
    local node
    for n in cluster:candidates(req, taken, opts) do node = n end
    if not node then return {} end -- it can never fit: it holds nothing
    if not taken[node.name] then held[#held + 1] = node.name end
    add_taken(taken, node.name, req)
  end
  ctx:explain(string.format("holds %s until it fits; smaller jobs may use other nodes",
    table.concat(held, ", ")))
  return held
end

return M
