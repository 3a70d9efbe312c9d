local budget = policies.budget
local tests = {}

function tests.everything_is_admitted_by_default()
  T.eq(budget.admit(T.job { gpus = 8 }, T.usage(), T.ctx()), true)
end

function tests.team_gpu_quota()
  local saved = budget.config.gpu_quota_by_team
  budget.config.gpu_quota_by_team = { vision = 4 }
  local usage = T.usage { by_team = { vision = { gpus = 3, jobs = 1 } } }
  local ok, reason = budget.admit(T.job { team = "vision", gpus = 2 }, usage, T.ctx())
  budget.config.gpu_quota_by_team = saved
  T.eq(ok, false)
  T.ok(reason:find("holds 3 of its 4 GPUs"), reason)
end

return tests
