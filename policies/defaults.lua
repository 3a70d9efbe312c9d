--- defaults.lua: what a job gets for the fields its manifest leaves out.
--- FfDL's own defaults were constants in Go; here a team edits them.
---@class ffdl.Defaults
---@field cpus number        CPUs per learner
---@field gpus integer       GPUs per learner
---@field gpu_type string?   used when gpus > 0 and the manifest names no type;
---                          nil matches any GPU (FfDL defaulted to nvidia-TeslaK80)
---@field memory string      memory per learner, with a unit
---@field learners integer
---@field region string      S3 region when a connection names none (FfDL: us-standard)
---@field max_attempts integer  runs of a job before it fails for good
---@field priority integer
return {
  cpus = 1,
  gpus = 0,
  gpu_type = nil, -- any GPU type; set "nvidia-TeslaK80" for FfDL's old default
  memory = "1GiB",
  learners = 1,
  region = "us-standard",
  max_attempts = 3,
  priority = 0,
}
