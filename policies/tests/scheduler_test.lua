-- Tests for policies/scheduler.lua. T is lua/ffdl/testing.lua; policies
-- holds every policy module of this directory.
local scheduler = policies.scheduler
local tests = {}

local function ranked(jobs)
  local ctx = T.ctx()
  table.sort(jobs, function(a, b) return scheduler.rank(a, ctx) < scheduler.rank(b, ctx) end)
  local ids = {}
  for i, job in ipairs(jobs) do ids[i] = job.id end
  return ids
end

function tests.rank_by_submission_when_priorities_are_equal()
  T.eq(ranked { T.job { id = "late", submitted = 20 }, T.job { id = "early", submitted = 10 } },
       { "early", "late" })
end

function tests.priority_counts_as_time_waited()
  local aging = scheduler.config.aging_s
  -- one level of priority passes jobs submitted up to aging_s earlier, not more
  T.eq(ranked { T.job { id = "old", submitted = 0 },
                T.job { id = "urgent", submitted = aging - 1, priority = 1 } }, { "urgent", "old" })
  T.eq(ranked { T.job { id = "old", submitted = 0 },
                T.job { id = "urgent", submitted = aging + 1, priority = 1 } }, { "old", "urgent" })
end

function tests.nothing_starves_behind_a_stream_of_high_priority_jobs()
  local aging = scheduler.config.aging_s
  local queue = { T.job { id = "low", submitted = 0, priority = 0 } }
  for i = 1, 50 do
    queue[#queue + 1] = T.job { id = "high" .. i, submitted = i * aging / 4, priority = 2 }
  end
  local ids = ranked(queue)
  local position
  for i, id in ipairs(ids) do if id == "low" then position = i end end
  -- only the high-priority jobs submitted within 2 x aging_s of it go first
  T.eq(position, 9)
end

function tests.rank_explains_a_priority()
  local ctx = T.ctx()
  scheduler.rank(T.job { priority = 3 }, ctx)
  T.ok(ctx.explanations[1]:find("priority 3"), ctx.explanations[1])
end

function tests.gang_places_every_learner_or_none()
  local cluster = T.cluster { { name = "n1", cpus = 8, memory = 64 << 30, gpus = 2, gpu_type = "V100" },
                              { name = "n2", cpus = 8, memory = 64 << 30, gpus = 2, gpu_type = "V100" } }
  local two = scheduler.place(T.job { learners = 2, gpus = 2, gpu_type = "V100" }, cluster, T.ctx())
  T.eq(#two, 2)
  T.ok(two[1] ~= two[2], "each learner needs a whole node")
  local three, reason = scheduler.place(T.job { learners = 3, gpus = 2, gpu_type = "V100" }, cluster, T.ctx())
  T.eq(three, nil)
  T.ok(reason:find("only 2 would fit"), reason)
end

function tests.binpack_fills_the_busiest_node()
  local cluster = T.cluster { { name = "idle", cpus = 8, memory = 64 << 30, gpus = 4 },
                              { name = "busy", cpus = 8, memory = 64 << 30, gpus = 4, used = { gpus = 3 } } }
  local placement = scheduler.place(T.job { gpus = 1 }, cluster, T.ctx())
  T.eq(placement[1], "busy")
end

function tests.gpu_type_must_match()
  local cluster = T.cluster { { name = "k80", cpus = 8, memory = 64 << 30, gpus = 4, gpu_type = "K80" } }
  local placement, reason = scheduler.place(T.job { gpus = 1, gpu_type = "V100" }, cluster, T.ctx())
  T.eq(placement, nil)
  T.ok(reason:find("V100"), reason)
end

function tests.spread_takes_the_emptiest_node()
  local saved = scheduler.config.strategy
  scheduler.config.strategy = "spread"
  local cluster = T.cluster { { name = "busy", cpus = 8, memory = 64 << 30, gpus = 4, used = { gpus = 3 } },
                              { name = "idle", cpus = 8, memory = 64 << 30, gpus = 4 } }
  local placement = scheduler.place(T.job { gpus = 1 }, cluster, T.ctx())
  scheduler.config.strategy = saved
  T.eq(placement[1], "idle")
end

function tests.a_blocked_job_holds_the_nodes_with_most_room()
  local cluster = T.cluster { { name = "full", cpus = 8, memory = 64 << 30, gpus = 4, used = { gpus = 4 } },
                              { name = "half", cpus = 8, memory = 64 << 30, gpus = 4, used = { gpus = 2 } },
                              { name = "small", cpus = 8, memory = 64 << 30, gpus = 1 } }
  local job = T.job { gpus = 4 }
  T.eq(scheduler.place(job, cluster, T.ctx()), nil)
  local ctx = T.ctx()
  local held = scheduler.hold(job, cluster, ctx)
  -- "small" can never take it; "half" drains towards it soonest
  T.eq(held, { "half" })
  T.ok(ctx.explanations[1]:find("holds half"), ctx.explanations[1])
end

function tests.a_gang_holds_a_node_per_learner_that_needs_one()
  local cluster = T.cluster { { name = "a", cpus = 8, memory = 64 << 30, gpus = 4, used = { gpus = 1 } },
                              { name = "b", cpus = 8, memory = 64 << 30, gpus = 4, used = { gpus = 1 } } }
  local held = scheduler.hold(T.job { learners = 2, gpus = 4 }, cluster, T.ctx())
  table.sort(held)
  T.eq(held, { "a", "b" })
end

function tests.without_backfill_nothing_passes_a_blocked_job()
  local saved = scheduler.config.backfill
  scheduler.config.backfill = false
  local held = scheduler.hold(T.job { gpus = 4 }, T.cluster { { name = "n", cpus = 8, gpus = 2 } }, T.ctx())
  scheduler.config.backfill = saved
  T.eq(held, nil)
end

function tests.explains_why_a_job_waits()
  local ctx = T.ctx()
  local placement = scheduler.place(T.job { cpus = 4 }, T.cluster { { name = "n", cpus = 2, memory = 4 << 30 } }, ctx)
  T.eq(placement, nil)
  T.eq(#ctx.explanations, 1)
  T.ok(ctx.explanations[1]:find("best node n has 2 CPUs"), ctx.explanations[1])
end

return tests
