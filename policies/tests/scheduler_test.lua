-- Tests for policies/scheduler.lua. T is lua/ffdl/testing.lua; policies
-- holds every policy module of this directory.
local scheduler = policies.scheduler
local tests = {}

function tests.order_by_priority_then_submission()
  local queue = { T.job { id = "a", submitted = 2 }, T.job { id = "b", submitted = 1 },
                  T.job { id = "c", submitted = 3, priority = 5 } }
  local ordered = scheduler.order(queue, T.ctx())
  T.eq({ ordered[1].id, ordered[2].id, ordered[3].id }, { "c", "b", "a" })
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

function tests.explains_its_decision()
  local ctx = T.ctx()
  scheduler.place(T.job {}, T.cluster { { name = "n", cpus = 2, memory = 4 << 30 } }, ctx)
  T.eq(#ctx.explanations, 1)
end

return tests
