--- frameworks.lua: which frameworks and versions jobs may ask for, and how
--- each one runs.
---   image          format string for the Kubernetes backend; %s is the
---                  version (or framework.image_tag when the manifest sets it)
---   versions       "*" for any version (as FfDL), or a list of allowed ones
---   default_version  used when a manifest gives none
---   ["local"]      how the local backend runs it: interpreter and env, or
---                  installed = false with the reason
--- Like FfDL, any version string is accepted by default, so old manifests
--- keep validating. Narrow `versions` to pin what your cluster supports.
--- (ffdl.Framework is in lua/meta/ffdl_policy.lua.)
---@type table<string, ffdl.Framework>
return {
  tensorflow = {
    image = "tensorflow/tensorflow:%s", versions = "*", default_version = "2.16.1",
    ["local"] = { interpreter = ".venv-tf/bin/python3" },
  },
  pytorch = {
    image = "pytorch/pytorch:%s", versions = "*", default_version = "2.1.0",
    -- Debian's torch imports only under Debian's own interpreter
    ["local"] = { interpreter = "/usr/bin/python3" },
  },
  caffe = {
    image = "bvlc/caffe:%s", versions = "*",
    ["local"] = { installed = false },
  },
  caffe2 = {
    image = "caffe2ai/caffe2:%s", versions = "*",
    ["local"] = { installed = false },
  },
  horovod = {
    image = "uber/horovod:%s", versions = "*",
    ["local"] = { installed = false },
  },
  h2o3 = {
    image = "opsh2oai/h2o3-ffdl:%s", versions = "*",
    ["local"] = { installed = false },
  },
  pytorchmpi = {
    image = "pytorch/pytorch:%s", versions = "*",
    ["local"] = { interpreter = "/usr/bin/python3" },
  },
  -- the names FfDL's early GPU examples used; the version carries "-gpu"
  ["tensorflow-gpu"] = {
    image = "tensorflow/tensorflow:%s", versions = "*",
    ["local"] = { interpreter = ".venv-tf/bin/python3" },
  },
  ["caffe-gpu"] = {
    image = "bvlc/caffe:%s", versions = "*",
    ["local"] = { installed = false },
  },
  custom = {
    image = "%s", versions = "*",
    ["local"] = { command_as_is = true },
  },
}
