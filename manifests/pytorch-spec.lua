-- A declarative Lua job spec: the same fields as a manifest, returned as a
-- table. Lua may compute values, but has no io or os here.
local epochs = 3
return {
  name = "pytorch-lua-spec",
  description = "A job spec written in Lua",
  cpus = 1,
  memory = "1GiB",
  learners = 1,
  labels = { team = "vision" },
  framework = {
    name = "pytorch",
    version = "2.1.0",
    command = "python3 train.py --epochs " .. epochs,
  },
}
