local validate = policies.validate
local tests = {}

local function ctx()
  return T.ctx { frameworks = policies.frameworks, defaults = policies.defaults }
end

function tests.accepts_a_plain_job()
  T.eq(validate.validate(T.job {}, ctx()), true)
end

function tests.unknown_framework_is_rejected()
  local job = T.job { framework = { name = "theano", version = "1" } }
  local ok, errors = validate.validate(job, ctx())
  T.eq(ok, nil)
  T.eq(errors[1].path, "framework.name")
end

function tests.gpu_ceiling()
  local ok, errors = validate.validate(T.job { learners = 10, gpus = 8 }, ctx())
  T.eq(ok, nil)
  T.ok(errors[1].message:find("80 GPUs"), errors[1].message)
end

function tests.learner_limit()
  local ok, errors = validate.validate(T.job { learners = 65 }, ctx())
  T.eq(ok, nil)
  T.eq(errors[1].path, "learners")
  T.eq(errors[1].message, "at most 64 learners per job, got 65")
end

function tests.every_problem_is_reported_at_once()
  local ok, errors = validate.validate(T.job { learners = 100, gpus = 1,
    framework = { name = "theano", version = "1" } }, ctx())
  T.eq(ok, nil)
  local paths = {}
  for i, e in ipairs(errors) do paths[i] = e.path end
  T.eq(paths, { "framework.name", "gpus", "learners" })
end

function tests.team_label_when_required()
  local saved = validate.config.require_team_label
  validate.config.require_team_label = true
  local ok, errors = validate.validate(T.job {}, ctx())
  local labelled = validate.validate(T.job { team = "vision" }, ctx())
  validate.config.require_team_label = saved
  T.eq(ok, nil)
  T.eq(errors[1].path, "labels.team")
  T.eq(labelled, true)
end

function tests.a_narrowed_version_list()
  local frameworks = { pytorch = { image = "pytorch/pytorch:%s", versions = { "2.1.0", "2.2.0" } } }
  local c = T.ctx { frameworks = frameworks, defaults = policies.defaults }
  T.eq(validate.validate(T.job {}, c), true)
  local ok, errors = validate.validate(
    T.job { framework = { name = "pytorch", version = "0.4", command = "python3 train.py" } }, c)
  T.eq(ok, nil)
  T.eq(errors[1].message, "pytorch 0.4 is not allowed here; allowed: 2.1.0, 2.2.0")
end

function tests.every_ffdl_framework_is_known()
  for _, name in ipairs { "tensorflow", "pytorch", "caffe", "caffe2", "horovod", "h2o3",
                          "pytorchmpi", "custom" } do
    T.ok(policies.frameworks[name], name)
  end
end

return tests
