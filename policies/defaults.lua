--- defaults.lua: what a job gets for the fields its manifest leaves out.
--- FfDL's own defaults were constants in Go; here a team edits them.
--- The fields are typed as ffdl.Defaults in lua/meta/ffdl_policy.lua: cpus,
--- gpus and memory per learner; gpu_type when gpus > 0 and the manifest
--- names none; learners; region for S3 connections that name none (FfDL:
--- us-standard); max_attempts, the runs of a job before it fails for good;
--- priority.
---@type ffdl.Defaults
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
