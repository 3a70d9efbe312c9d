local validate = policies.validate
local tests = {}

local function ctx()
  return T.ctx { frameworks = policies.frameworks, defaults = policies.defaults }
end

function tests.accepts_a_plain_job()
  T.eq(validate.validate(T.job {}, ctx()), true)
end

function tests.unknown_framework_is_rejected()
  local ok, errors = validate.validate(T.job { framework = { name = "theano", version = "1" } }, ctx())
  T.eq(ok, nil)
  T.eq(errors[1].path, "framework.name")
end

function tests.gpu_ceiling()
  local ok, errors = validate.validate(T.job { learners = 10, gpus = 8 }, ctx())
  T.eq(ok, nil)
  T.ok(errors[1].message:find("80 GPUs"), errors[1].message)
end

function tests.every_ffdl_framework_is_known()
  for _, name in ipairs { "tensorflow", "pytorch", "caffe", "caffe2", "horovod", "h2o3",
                          "pytorchmpi", "custom" } do
    T.ok(policies.frameworks[name], name)
  end
end

return tests
