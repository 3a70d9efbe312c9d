local budget = policies.budget
local tests = {}

--- Runs fn with budget.config changed by CHANGES, and puts it back even
--- when fn fails.
local function with_config(changes, fn)
  local saved = {}
  for k, v in pairs(changes) do saved[k] = budget.config[k]; budget.config[k] = v end
  local ok, err = pcall(fn)
  for k in pairs(changes) do budget.config[k] = saved[k] end
  if not ok then error(err, 0) end
end

local WEEK = 7 * 24 * 3600

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

function tests.running_jobs_per_user()
  with_config({ max_running_jobs_by_user = 2 }, function()
    local usage = T.usage { by_user = { ann = { gpus = 0, jobs = 2 } } }
    local ok, reason = budget.admit(T.job { user = "ann" }, usage, T.ctx())
    T.eq(ok, false)
    T.eq(reason, "user ann already runs 2 jobs (limit 2)")
    T.eq(budget.admit(T.job { user = "bob" }, usage, T.ctx()), true)
  end)
end

function tests.team_over_its_gpu_hours_waits()
  with_config({ gpu_hours_by_team = { vision = { hours = 500, window_days = 7 } } }, function()
    local usage = T.usage { gpu_hours = { team = { vision = 512.34 } } }
    local ctx = T.ctx()
    local ok, reason = budget.admit(T.job { team = "vision", gpus = 1 }, usage, ctx)
    T.eq(ok, false)
    T.eq(reason, "team vision used 512.3 of its 500 GPU-hours in the last 7 days; "
      .. "waits until usage falls under the budget")
    T.eq(usage.asked, { { kind = "team", name = "vision", window_s = WEEK } })
    T.eq(ctx.explanations, { "team vision used 512.3 of 500 GPU-hours in the last 7 days" })
  end)
end

function tests.exactly_at_the_budget_waits_and_just_under_is_admitted()
  with_config({ gpu_hours_by_team = { vision = { hours = 500, window_days = 7 } } }, function()
    local job = T.job { team = "vision", gpus = 2, learners = 4 }
    local at = T.usage { gpu_hours = { team = { vision = 500 } } }
    T.eq(budget.admit(job, at, T.ctx()), false)
    local under = T.usage { gpu_hours = { team = { vision = 499.9 } } }
    local ctx = T.ctx()
    T.eq(budget.admit(job, under, ctx), true)
    T.eq(ctx.explanations, { "team vision used 499.9 of 500 GPU-hours in the last 7 days" })
  end)
end

function tests.usage_falls_under_the_budget_as_the_window_slides()
  -- 100 GPU-hours a day for the last 10 days: a 7-day window sees 700, a
  -- 3-day window 300; the same usage is over one budget and under the other
  local usage = T.usage { gpu_hours = { team = {
    vision = function(window_s) return 100 * math.min(10, window_s / 86400) end } } }
  local job = T.job { team = "vision", gpus = 1 }
  with_config({ gpu_hours_by_team = { vision = { hours = 500, window_days = 7 } } }, function()
    local ok, reason = budget.admit(job, usage, T.ctx())
    T.eq(ok, false)
    T.ok(reason:find("used 700.0 of its 500 GPU-hours in the last 7 days", 1, true), reason)
  end)
  with_config({ gpu_hours_by_team = { vision = { hours = 500, window_days = 3 } } }, function()
    T.eq(budget.admit(job, usage, T.ctx()), true)
  end)
  with_config({ gpu_hours_by_team = { vision = { hours = 20, window_days = 0.25 } } }, function()
    local ok, reason = budget.admit(job, usage, T.ctx())
    T.eq(ok, false)
    T.ok(reason:find("used 25.0 of its 20 GPU-hours in the last 6 hours", 1, true), reason)
  end)
end

function tests.user_gpu_hours()
  with_config({ gpu_hours_by_user = { ann = { hours = 100, window_days = 1 } } }, function()
    local usage = T.usage { gpu_hours = { user = { ann = 130 } } }
    local job = T.job { user = "ann", team = "vision", gpus = 1 }
    local ok, reason = budget.admit(job, usage, T.ctx())
    T.eq(ok, false)
    T.eq(reason, "user ann used 130.0 of their 100 GPU-hours in the last 1 day; "
      .. "waits until usage falls under the budget")
    T.eq(usage.asked, { { kind = "user", name = "ann", window_s = 86400 } })
    T.eq(budget.admit(T.job { user = "bob", gpus = 1 }, usage, T.ctx()), true)
  end)
end

function tests.team_and_user_budgets_both_apply()
  with_config({ gpu_hours_by_team = { vision = { hours = 500, window_days = 7 } },
                gpu_hours_by_user = { ann = { hours = 10, window_days = 7 } } }, function()
    local usage = T.usage { gpu_hours = { team = { vision = 20 }, user = { ann = 12 } } }
    local ctx = T.ctx()
    local ok, reason = budget.admit(T.job { team = "vision", user = "ann", gpus = 1 }, usage, ctx)
    T.eq(ok, false)
    T.ok(reason:find("^user ann used 12.0 of their 10 GPU%-hours"), reason)
    T.eq(#ctx.explanations, 2)
  end)
end

function tests.a_team_without_a_budget_is_not_asked_about()
  with_config({ gpu_hours_by_team = { vision = { hours = 1, window_days = 7 } } }, function()
    local usage = T.usage { gpu_hours = { team = { nlp = 1e6 } } }
    T.eq(budget.admit(T.job { team = "nlp", gpus = 8 }, usage, T.ctx()), true)
    T.eq(budget.admit(T.job { gpus = 8 }, usage, T.ctx()), true) -- no team at all
    T.eq(usage.asked, {})
  end)
end

function tests.cpu_only_jobs_spend_no_gpu_hours()
  with_config({ gpu_hours_by_team = { vision = { hours = 500, window_days = 7 } } }, function()
    local usage = T.usage { gpu_hours = { team = { vision = 9999 } } }
    T.eq(budget.admit(T.job { team = "vision", gpus = 0, cpus = 4 }, usage, T.ctx()), true)
    T.eq(usage.asked, {})
  end)
end

function tests.no_gpu_hours_method_means_no_budget_check()
  with_config({ gpu_hours_by_team = { vision = { hours = 1, window_days = 7 } } }, function()
    local ctx = T.ctx()
    local job = T.job { team = "vision", gpus = 1 }
    T.eq(budget.admit(job, T.usage { gpu_hours = false }, ctx), true)
    T.ok(ctx.explanations[1]:find("not checked"), ctx.explanations[1])
    -- a bare table, as an older runtime would pass
    T.eq(budget.admit(job, { by_team = {}, by_user = {} }, T.ctx()), true)
  end)
end

function tests.a_wrong_budget_setting_is_an_error_that_names_it()
  with_config({ gpu_hours_by_team = { vision = { hours = 500, window_days = 60 } } }, function()
    local err = T.fails(budget.admit, T.job { team = "vision", gpus = 1 }, T.usage(), T.ctx())
    T.ok(err:find('gpu_hours_by_team["vision"].window_days must be', 1, true), err)
    T.ok(err:find("<= 31"), err)
  end)
  with_config({ gpu_hours_by_user = { ann = 100 } }, function()
    local err = T.fails(budget.admit, T.job { user = "ann", gpus = 1 }, T.usage(), T.ctx())
    T.ok(err:find("must be {hours = N, window_days = D}", 1, true), err)
  end)
end

return tests
