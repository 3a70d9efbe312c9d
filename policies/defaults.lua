--- defaults.lua: what a job gets for the fields its manifest leaves out.
--- FfDL's own defaults were constants in Go; here a team edits them.
---@class ffdl.Defaults
---@field cpus number        CPUs per learner
---@field gpus integer       GPUs per learner
---@field gpu_type string    used when gpus > 0 and the manifest names no type
---@field memory string      memory per learner, with a unit
---@field learners integer
---@field region string      S3 region when a connection names none (FfDL: us-standard)
---@field max_attempts integer  runs of a job before it fails for good
---@field priority integer
return {
  cpus = 1,
  gpus = 0,
  gpu_type = "nvidia-TeslaK80",
  memory = "1GiB",
  learners = 1,
  region = "us-standard",
  max_attempts = 3,
  priority = 0,
}
