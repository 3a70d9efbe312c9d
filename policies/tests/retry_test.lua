local retry = policies.retry
local tests = {}

local function failure(fields)
  local f = { kind = "exit", exit_code = 1, signal = 0, learner = 1, attempt = 1, log_tail = {} }
  for k, v in pairs(fields) do f[k] = v end
  return f
end

--- Runs fn with retry.config changed by CHANGES, and puts it back even
--- when fn fails.
local function with_config(changes, fn)
  local saved = {}
  for k, v in pairs(changes) do saved[k] = retry.config[k]; retry.config[k] = v end
  local ok, err = pcall(fn)
  for k in pairs(changes) do retry.config[k] = saved[k] end
  if not ok then error(err, 0) end
end

-- Exit codes and signals: transient or fatal

function tests.plain_exit_fails_at_once()
  local d = retry.on_failure(T.job {}, failure { exit_code = 3 }, T.ctx())
  T.eq(d.action, "fail")
  T.ok(d.reason:find("exit code 3"), d.reason)
end

function tests.a_transient_exit_code_is_retried()
  local job = T.job { retry = { max_attempts = 3 } }
  T.eq(retry.on_failure(job, failure { exit_code = 75 }, T.ctx()).action, "resume") -- EX_TEMPFAIL
  with_config({ transient_exit_codes = { [42] = true } }, function()
    T.eq(retry.on_failure(job, failure { exit_code = 42 }, T.ctx()).action, "resume")
    T.eq(retry.on_failure(job, failure { exit_code = 75 }, T.ctx()).action, "fail")
  end)
end

function tests.oom_and_node_lost_are_transient()
  for _, kind in ipairs { "oom", "node_lost" } do
    T.eq(retry.on_failure(T.job {}, failure { kind = kind }, T.ctx()).action, "resume", kind)
  end
end

function tests.a_crash_signal_is_fatal_and_a_kill_is_not()
  local job = T.job { retry = { max_attempts = 5 } }
  for _, sig in ipairs { 4, 6, 8, 11 } do
    local d = retry.on_failure(job, failure { kind = "signal", signal = sig }, T.ctx())
    T.eq(d.action, "fail", "signal " .. sig)
    T.ok(d.reason:find("crash"), d.reason)
  end
  for _, sig in ipairs { 9, 15 } do
    T.eq(retry.on_failure(job, failure { kind = "signal", signal = sig }, T.ctx()).action, "resume",
      "signal " .. sig)
  end
end

function tests.unknown_kinds_are_not_retried()
  for _, kind in ipairs { "timeout", "storage", "something new" } do
    local d = retry.on_failure(T.job {}, failure { kind = kind }, T.ctx())
    T.eq(d.action, "fail", kind)
  end
end

-- Backoff and jitter

function tests.signal_is_resumed_with_growing_delays()
  local job = T.job { retry = { max_attempts = 5 } }
  local first = retry.on_failure(job, failure { kind = "signal", signal = 9 }, T.ctx())
  local second = retry.on_failure(job, failure { kind = "signal", signal = 9, attempt = 2 },
    T.ctx())
  T.eq(first.action, "resume")
  T.ok(second.delay > first.delay, "backoff grows")
end

function tests.backoff_doubles_up_to_max_delay_without_jitter()
  with_config({ base_delay = 2, max_delay = 30, jitter = 0 }, function()
    local job = T.job { retry = { max_attempts = 10 } }
    local delays = {}
    for attempt = 1, 6 do
      local d = retry.on_failure(job, failure { kind = "oom", attempt = attempt }, T.ctx())
      delays[attempt] = d.delay
    end
    T.eq(delays, { 2, 4, 8, 16, 30, 30 })
  end)
end

function tests.jitter_stays_in_bounds_and_spreads_jobs_apart()
  with_config({ base_delay = 10, max_delay = 60, jitter = 0.5 }, function()
    local seen = {}
    for i = 1, 50 do
      local job = T.job { id = "training-" .. i, retry = { max_attempts = 3 } }
      local d = retry.on_failure(job, failure { kind = "node_lost" }, T.ctx()).delay
      T.ok(d >= 5 and d <= 15, "delay " .. d .. " is outside 10 s +/- 50%")
      seen[string.format("%.3f", d)] = true
    end
    local distinct = 0
    for _ in pairs(seen) do distinct = distinct + 1 end
    T.ok(distinct >= 40, "jobs that failed together should retry apart, got "
      .. distinct .. " delays")
  end)
end

function tests.the_decision_depends_only_on_the_arguments()
  local job = T.job { id = "training-abc", retry = { max_attempts = 3 } }
  local a = retry.on_failure(job, failure { kind = "signal", signal = 9 }, T.ctx())
  local b = retry.on_failure(job, failure { kind = "signal", signal = 9 }, T.ctx())
  T.eq(a, b)
end

-- Max attempts

function tests.gives_up_at_max_attempts()
  local d = retry.on_failure(T.job { retry = { max_attempts = 2 } },
    failure { kind = "signal", attempt = 2 }, T.ctx())
  T.eq(d.action, "fail")
  T.ok(d.reason:find("gave up after 2 attempts"), d.reason)
end

function tests.one_attempt_means_no_retry()
  local d = retry.on_failure(T.job { retry = { max_attempts = 1 } }, failure { kind = "oom" },
    T.ctx())
  T.eq(d.action, "fail")
  T.ok(d.reason:find("gave up after 1 attempts"), d.reason)
end

-- Resume from CHECKPOINT_DIR

function tests.a_retry_resumes_from_the_checkpoint()
  local ctx = T.ctx()
  local d = retry.on_failure(T.job { retry = { max_attempts = 3 } },
    failure { kind = "signal", signal = 9 }, ctx)
  T.eq(d.action, "resume") -- the runtime keeps $CHECKPOINT_DIR for the next attempt
  T.ok(d.reason:find("CHECKPOINT_DIR", 1, true), d.reason)
  T.ok(ctx.explanations[1]:find("attempt 1 of 3 failed with signal 9"), ctx.explanations[1])
end

function tests.without_resume_a_retry_starts_from_scratch()
  with_config({ resume = false }, function()
    local d = retry.on_failure(T.job { retry = { max_attempts = 3 } }, failure { kind = "oom" },
      T.ctx())
    T.eq(d.action, "restart") -- the runtime empties $CHECKPOINT_DIR
    T.ok(d.delay > 0)
  end)
end

return tests
