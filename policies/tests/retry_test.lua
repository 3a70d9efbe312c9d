local retry = policies.retry
local tests = {}

local function failure(fields)
  local f = { kind = "exit", exit_code = 1, signal = 0, learner = 1, attempt = 1, log_tail = {} }
  for k, v in pairs(fields) do f[k] = v end
  return f
end

function tests.plain_exit_fails_at_once()
  local d = retry.on_failure(T.job {}, failure { exit_code = 3 }, T.ctx())
  T.eq(d.action, "fail")
end

function tests.signal_is_resumed_with_growing_delays()
  local job = T.job { retry = { max_attempts = 5 } }
  local first = retry.on_failure(job, failure { kind = "signal", signal = 9, attempt = 1 }, T.ctx())
  local second = retry.on_failure(job, failure { kind = "signal", signal = 9, attempt = 2 }, T.ctx())
  T.eq(first.action, "resume")
  T.ok(second.delay > first.delay, "backoff grows")
end

function tests.oom_and_node_lost_are_transient()
  for _, kind in ipairs { "oom", "node_lost" } do
    T.eq(retry.on_failure(T.job {}, failure { kind = kind }, T.ctx()).action, "resume", kind)
  end
end

function tests.gives_up_at_max_attempts()
  local d = retry.on_failure(T.job { retry = { max_attempts = 2 } },
    failure { kind = "signal", attempt = 2 }, T.ctx())
  T.eq(d.action, "fail")
  T.ok(d.reason:find("gave up after 2 attempts"), d.reason)
end

return tests
