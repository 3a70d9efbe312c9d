--- manifest.lua: the built-in schema for FfDL manifests and Lua job specs.
--- It checks types, ranges, units and required fields, warns about unknown
--- fields, fills defaults from policies/defaults.lua, and returns one
--- normalized job spec. Team rules come after it, in policies/validate.lua.
--- It runs in the policy sandbox and keeps no state between calls.
local M = {}

local fmt = string.format

---------------------------------------------------------------------------
-- Describing values in messages
---------------------------------------------------------------------------

local function is_list(t)
  if type(t) ~= "table" then return false end
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n > 0 and n == #t
end

--- How a value reads in a message: "two", 3, a mapping, a list.
local function describe(v)
  local t = type(v)
  if t == "string" then
    if #v > 40 then v = v:sub(1, 37) .. "..." end
    return fmt("%q", v):gsub("\\\n", "\\n")
  elseif t == "number" then
    if math.type(v) == "float" and v == math.floor(v) and v > -1e15 and v < 1e15 then
      return fmt("%.1f", v)
    end
    return tostring(v)
  elseif t == "table" then
    if next(v) == nil then return "an empty mapping" end
    return is_list(v) and "a list" or "a mapping"
  elseif t == "nil" then
    return "nothing"
  end
  return "a " .. t
end

---------------------------------------------------------------------------
-- The checker: collects diagnostics, knows the raw text of YAML scalars
---------------------------------------------------------------------------

local function new_checker(pos)
  local c = { diags = {}, pos = pos or {} }
  function c.error(path, message)
    c.diags[#c.diags + 1] = { path = path, message = message }
  end
  --- AT (optional) is another path whose position the warning takes: the
  --- misspelt key that explains a missing field.
  function c.warn(path, message, at_key, at)
    c.diags[#c.diags + 1] = { path = path, message = message, warning = true, at_key = at_key, at = at }
  end
  --- The scalar exactly as written in YAML (1.10 stays "1.10"), if known.
  function c.raw(path)
    local p = c.pos[path]
    return p and p.raw
  end
  return c
end

local function join(path, key)
  if type(key) == "number" then return fmt("%s[%d]", path, key) end
  return path == "" and key or (path .. "." .. key)
end

---------------------------------------------------------------------------
-- Schema nodes: {kind=..., required=..., ...}
---------------------------------------------------------------------------

local S = {}
local function node(kind)
  return function(opts)
    opts = opts or {}
    opts.kind = kind
    return opts
  end
end
S.string, S.integer, S.number, S.boolean = node("string"), node("integer"), node("number"), node("boolean")
S.size, S.record, S.list, S.dict, S.any = node("size"), node("record"), node("list"), node("dict"), node("any")

local SIZE_UNITS = {
  [""] = false, b = 1,
  k = 1000, kb = 1000, kib = 1024,
  m = 1000 ^ 2, mb = 1000 ^ 2, mib = 1024 ^ 2,
  g = 1000 ^ 3, gb = 1000 ^ 3, gib = 1024 ^ 3,
  t = 1000 ^ 4, tb = 1000 ^ 4, tib = 1024 ^ 4,
  -- Kubernetes' binary suffixes, as in a pod's resources
  ki = 1024, mi = 1024 ^ 2, gi = 1024 ^ 3, ti = 1024 ^ 4,
}
local SIZE_HINT = "a size such as 1Gb, 1000MiB, 16GB or 2GiB"

--- Parses "16GB" into bytes; returns nil and the reason when it cannot.
function M.parse_size(text)
  if type(text) ~= "string" then return nil, "not a string" end
  local number, unit = text:match("^%s*(%d+%.?%d*)%s*(%a*)%s*$")
  if not number then return nil, "not a number followed by a unit" end
  local factor = SIZE_UNITS[unit:lower()]
  if factor == nil then return nil, fmt("unknown unit %q", unit) end
  if factor == false then return nil, "the unit is missing" end
  return math.floor(tonumber(number) * factor + 0.5)
end

--- Whether NAME is a bucket name the S3 client takes (src/store/s3_util.c,
--- ffdl_s3_bucket_ok): LEGACY (path style) also allows capitals and "_".
function M.bucket_ok(name, legacy)
  if #name < 3 or #name > (legacy and 255 or 63) then return false end
  local inner = legacy and "^[%w._-]+$" or "^[a-z0-9.-]+$"
  local edge = legacy and "^[%w_].*[%w_]$" or "^[a-z0-9].*[a-z0-9]$"
  return name:match(inner) ~= nil and name:match(edge) ~= nil
end

local check -- forward

local checkers = {}

function checkers.string(n, v, path, c)
  local t = type(v)
  if t == "number" or t == "boolean" then
    v = c.raw(path) or (t == "number" and describe(v)) or tostring(v)
  elseif t ~= "string" then
    c.error(path, "must be a string, got " .. describe(v))
    return nil
  end
  if n.nonempty and v:match("^%s*$") then
    c.error(path, "must not be empty")
    return nil
  end
  if n.one_of then
    for _, allowed in ipairs(n.one_of) do
      if v == allowed then return v end
    end
    c.error(path, fmt("must be one of %s, got %s", table.concat(n.one_of, ", "), describe(v)))
    return nil
  end
  return v
end

local FFDL_ZERO_HINT = " (FfDL read 0 as its default; ffdl asks for the number you mean)"

local function check_range(n, v, path, c, what)
  local low = n.min and v < n.min or n.above and v <= n.above
  if low then
    local bound = n.min and (">= " .. n.min) or ("> " .. n.above)
    c.error(path, fmt("must be %s %s, got %s%s", what, bound, describe(v),
      v == 0 and not n.ffdl_only and FFDL_ZERO_HINT or ""))
    return nil
  end
  if n.max and v > n.max then
    c.error(path, fmt("must be %s <= %s, got %s", what, n.max, describe(v)))
    return nil
  end
  return v
end

function checkers.integer(n, v, path, c)
  if type(v) ~= "number" or v ~= v or v ~= math.floor(v) or v == math.huge or v == -math.huge then
    local what = n.min and fmt("an integer >= %s", n.min) or "an integer"
    c.error(path, fmt("must be %s, got %s", what, describe(v)))
    return nil
  end
  return check_range(n, math.tointeger(v) or v, path, c, "an integer")
end

function checkers.number(n, v, path, c)
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
    local what = n.min and fmt("a number >= %s", n.min) or n.above and fmt("a number > %s", n.above)
      or "a number"
    c.error(path, fmt("must be %s, got %s", what, describe(v)))
    return nil
  end
  return check_range(n, v, path, c, "a number")
end

function checkers.boolean(n, v, path, c)
  if type(v) ~= "boolean" then
    c.error(path, "must be true or false, got " .. describe(v))
    return nil
  end
  return v
end

function checkers.size(n, v, path, c)
  local text = type(v) == "string" and v or nil
  if not text then
    c.error(path, fmt("must be %s, got %s (the unit is missing)", SIZE_HINT, describe(v)))
    return nil
  end
  local bytes, why = M.parse_size(text)
  if not bytes then
    c.error(path, fmt("must be %s, got %s (%s)", SIZE_HINT, describe(v), why))
    return nil
  end
  if n.min and bytes < n.min then
    c.error(path, fmt("must be at least %s, got %s", n.min_text or n.min, describe(v)))
    return nil
  end
  if n.max and bytes > n.max then
    c.error(path, fmt("must be at most %s, got %s", n.max_text or n.max, describe(v)))
    return nil
  end
  return { text = text, bytes = bytes }
end

function checkers.record(n, v, path, c)
  if type(v) ~= "table" or (is_list(v) and not n.allow_list) then
    c.error(path, "must be a mapping, got " .. describe(v))
    return nil
  end
  local out = {}
  for key, child in pairs(n.fields) do
    local value = v[key]
    if value == nil then
      if child.required then c.error(join(path, key), "is required") end
    else
      out[key] = check(child, value, join(path, key), c)
    end
  end
  for key in pairs(v) do
    if type(key) ~= "string" then
      c.warn(join(path, tostring(key)), "unknown field, ignored", true)
    elseif n.fields[key] == nil and not (n.extensions and n.extensions[key]) then
      c.warn(join(path, key), "unknown field, ignored", true)
    end
  end
  return out
end

function checkers.list(n, v, path, c)
  if type(v) ~= "table" or (next(v) ~= nil and not is_list(v)) then
    c.error(path, "must be a list, got " .. describe(v))
    return nil
  end
  if n.nonempty and #v == 0 then
    c.error(path, "must not be empty")
    return nil
  end
  local out = setmetatable({}, { __jsontype = "array" })
  for i, item in ipairs(v) do out[i] = check(n.of, item, join(path, i - 1), c) end
  return out
end

function checkers.dict(n, v, path, c)
  if type(v) ~= "table" or is_list(v) then
    c.error(path, "must be a mapping, got " .. describe(v))
    return nil
  end
  local out = {}
  for key, item in pairs(v) do
    if type(key) ~= "string" then
      c.error(join(path, tostring(key)), "keys must be strings")
    else
      out[key] = check(n.of, item, join(path, key), c)
    end
  end
  return out
end

function checkers.any(n, v)
  return v
end

check = function(n, v, path, c)
  return checkers[n.kind](n, v, path, c)
end

---------------------------------------------------------------------------
-- The manifest schema (FfDL's fields, plus ffdl's extensions)
---------------------------------------------------------------------------

local DATA_STORE_TYPES = { "s3_datastore", "mount_cos", "mount_volume", "local" }
local METRIC_TYPES = { "tensorboard", "regex_extractor", "emetrics_file", "file", "logger", "none" }

local connection = S.record { fields = {
  auth_url = S.string {}, user_name = S.string {}, password = S.string {},
  region = S.string {}, type = S.string {}, name = S.string {}, path = S.string {},
  bucket = S.string {},
  -- ffdl's extensions (src/store/s3.h): what S3 checks uploaded bodies
  -- against, the multipart part size (S3's bounds), parallel requests, and
  -- whether the bucket goes in the path or the host name (boto3's name)
  checksum = S.string { one_of = { "crc32c", "sha256" } },
  addressing_style = S.string { one_of = { "path", "virtual" } },
  part_size = S.size { min = 5 << 20, min_text = "5MiB", max = 5 << 30, max_text = "5GiB" },
  concurrency = S.integer { min = 1, max = 256, ffdl_only = true }, -- (FfDL had no 0 for it)
} }

local container = S.record { fields = {
  container = S.string { required = true, nonempty = true },
  prefix = S.string {},
} }

local data_store = S.record { fields = {
  id = S.string { required = true, nonempty = true },
  type = S.string { required = true, one_of = DATA_STORE_TYPES },
  training_data = container,
  training_results = container,
  connection = connection,
} }

local scalar_spec = S.record { fields = { type = S.string {}, value = S.string {} } }

local metric_group = S.record { fields = {
  regex = S.string { required = true, nonempty = true },
  meta = S.dict { of = S.any {} },
  scalars = S.dict { of = scalar_spec },
  etimes = S.dict { of = scalar_spec },
} }

local evaluation_metrics = S.record { fields = {
  type = S.string { required = true, one_of = METRIC_TYPES },
  ["in"] = S.string {},
  line_lookahead = S.integer { min = 1 },
  eventTypes = S.list { of = S.string {} },
  groups = S.dict { of = metric_group },
} }

M.schema = S.record { fields = {
  -- FfDL's fields
  name = S.string { required = true, nonempty = true },
  description = S.string {},
  version = S.string {},
  gpus = S.integer { min = 0 },
  gpu_type = S.string { nonempty = true },
  cpus = S.number { above = 0 },
  memory = S.size { min = 1 << 20, min_text = "1MiB" },
  storage = S.size {},
  learners = S.integer { min = 1, max = 1024 },
  data_stores = S.list { of = data_store },
  framework = S.record { required = true, fields = {
    name = S.string { required = true, nonempty = true },
    version = S.string {},
    image_tag = S.string {},
    command = S.string { required = true, nonempty = true },
  } },
  evaluation_metrics = evaluation_metrics,
  -- ffdl's extensions
  user = S.string { nonempty = true },
  team = S.string { nonempty = true },
  priority = S.integer {},
  labels = S.dict { of = S.string {} },
  env = S.dict { of = S.string {} },
  args = S.dict { of = S.any {} },
  max_attempts = S.integer { min = 1, max = 100 },
  model = S.string { nonempty = true },
} }

---------------------------------------------------------------------------
-- Cross-field rules the schema cannot say alone
---------------------------------------------------------------------------

--- Edit distance between two short strings (Levenshtein).
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

--- The key of RAW (a mapping as written) that is no field of FIELDS but
--- reads like NAME misspelt: "training_result", "trainingResults".
local function near_miss(raw, fields, name)
  if type(raw) ~= "table" then return nil end
  local want = name:lower():gsub("[^%a]", "")
  for key in pairs(raw) do
    if type(key) == "string" and fields[key] == nil then
      if distance(key:lower():gsub("[^%a]", ""), want) <= 3 then return key end
    end
  end
  return nil
end

--- An S3 store without training_results: nothing goes to S3 after the job.
--- orch.c uploads only to a store's training_results, and the server's
--- default store (s3_results_bucket) is used only for a manifest that names
--- no data store (api.c), so it does not take these results either.
local function warn_no_results(raw, path, c)
  local typo = near_miss(raw, data_store.fields, "training_results")
  c.warn(join(path, "training_results"), fmt(
    "is not set%s: the job's results will not be uploaded to S3; they stay in the local results "
      .. "directory ($FFDL_RESULTS/<training-id>/, ./ffdl-results/ by default, with ffdl-run; "
      .. "under the server's --data, fetched with ffdl download ID --trainedmodel), and a "
      .. "server's default S3 store takes only manifests that name no data store. Set "
      .. "training_results.container to the results bucket to upload them",
    typo and fmt(" (%s is not a field: did you mean training_results?)", describe(typo)) or ""),
    typo and true or nil, typo and join(path, typo) or nil)
end

local function check_data_store(store, path, c, raw)
  if not store then return end
  if store.training_data == nil then
    c.error(join(path, "training_data"), "is required (training_data.container names the bucket or directory)")
  end
  local conn = store.connection
  if store.type == "s3_datastore" or store.type == "mount_cos" then
    -- (after a bad training_data, its error is enough)
    if type(store.training_data) == "table" and store.training_data.container ~= nil
        and store.training_results == nil then
      warn_no_results(raw, path, c)
    end
    if conn == nil then
      c.error(join(path, "connection"), "is required for " .. store.type .. " (auth_url, user_name, password)")
      return
    end
    for _, key in ipairs { "auth_url", "user_name", "password" } do
      if conn[key] == nil then
        c.error(join(join(path, "connection"), key), "is required for " .. store.type)
      end
    end
    -- S3 keys seldom start with "/": "/data/" matches none of data/*, and
    -- the job would start with an empty $DATA_DIR
    for _, which in ipairs { "training_data", "training_results" } do
      local prefix = type(store[which]) == "table" and store[which].prefix
      if type(prefix) == "string" and prefix:sub(1, 1) == "/" then
        c.warn(join(join(path, which), "prefix"),
          fmt("starts with /, which S3 keys seldom do: %s matches no key %s...", describe(prefix),
            (prefix:gsub("^/+", ""))))
      end
    end
    -- the S3 client's bucket names (ffdl_s3_bucket_ok), said here for the
    -- same reason as the endpoint below: S3's rules, stricter when the
    -- bucket goes in the host name
    local virtual = conn.addressing_style == "virtual"
    for _, which in ipairs { "training_data", "training_results" } do
      local name = type(store[which]) == "table" and store[which].container
      if type(name) == "string" and not M.bucket_ok(name, not virtual) then
        c.error(join(join(path, which), "container"), fmt("must be an S3 bucket name (%s), got %s",
          virtual and "3 to 63 lowercase letters, digits, '.' and '-', first and last a letter or "
            .. "digit, with addressing_style: virtual"
            or "3 to 255 letters, digits, '.', '-' and '_', first and last not '.' or '-'",
          describe(name)))
      end
    end
    -- the S3 client's own rule (ffdl_s3_endpoint_problem), said here so that
    -- the manifest is refused, not the job failed when it stages data
    local url = conn.auth_url
    if type(url) == "string" and not url:match("^https?://[^/?#@]+") then
      c.error(join(join(path, "connection"), "auth_url"),
        fmt("must be an http:// or https:// URL with a host (such as https://s3.us-east-1.amazonaws.com), got %s",
          describe(url)))
    end
  else
    -- ffdl's S3 settings mean nothing to a directory: said, not dropped silently
    for _, key in ipairs { "checksum", "part_size", "concurrency", "addressing_style" } do
      if type(conn) == "table" and conn[key] ~= nil then
        c.warn(join(join(path, "connection"), key),
          fmt("applies to S3 stores only (s3_datastore, mount_cos), not to %s; ignored",
            describe(store.type)), true)
      end
    end
  end
  if store.type == "mount_volume" then
    if conn == nil then
      c.error(join(path, "connection"), "is required for mount_volume (type: host_mount, name, path)")
      return
    end
    if conn.type ~= nil and conn.type ~= "host_mount" then
      c.error(join(join(path, "connection"), "type"), "must be host_mount for mount_volume, got " .. describe(conn.type))
    end
    if conn.path == nil then
      c.error(join(join(path, "connection"), "path"), "is required for mount_volume (the directory on the host)")
    end
  end
end

local function resolve_framework(fw, frameworks, path, c)
  local entry = type(frameworks) == "table" and frameworks[fw.name] or nil
  if fw.version == nil then
    if fw.name == "custom" then
      c.error(join(path, "version"), "is required for custom: it names the image to run")
    elseif type(entry) == "table" and entry.default_version then
      fw.version = tostring(entry.default_version)
    else
      c.error(join(path, "version"), "is required")
    end
  end
  if type(entry) == "table" and type(entry.image) == "string" and fw.version then
    local ok, image = pcall(string.format, entry.image, fw.image_tag or fw.version)
    if ok then fw.image = image end
  end
end

---------------------------------------------------------------------------
-- Entry points, called from C through ffdl_policy_call
---------------------------------------------------------------------------

local function default(defaults, key, fallback_message, c)
  local v = type(defaults) == "table" and defaults[key] or nil
  if v == nil then c.error("(policy)", "policies/defaults.lua has no default for " .. key .. ": " .. fallback_message) end
  return v
end

--- Returns the normalized spec (or nil) and the list of diagnostics.
function M.normalize(doc, pos, ctx)
  local c = new_checker(pos)
  if type(doc) ~= "table" or (is_list(doc)) then
    c.error("(file)", "a job spec must be a mapping of fields (name, framework, ...), got " .. describe(doc))
    return nil, c.diags
  end
  local m = check(M.schema, doc, "", c)
  if not m then return nil, c.diags end
  local defaults = ctx and ctx.defaults or {}

  local stores = m.data_stores or setmetatable({}, { __jsontype = "array" })
  for i, store in ipairs(doc.data_stores and stores or {}) do
    check_data_store(store, join("data_stores", i - 1), c, doc.data_stores[i])
    if i > 1 then -- staging and storing use the first store only
      c.warn(join("data_stores", i - 1), "only the first data store is staged into $DATA_DIR "
        .. "and receives the results; this one is not used", true)
    end
  end
  for _, store in ipairs(stores) do
    if store and store.connection and (store.type == "s3_datastore" or store.type == "mount_cos") then
      store.connection.region = store.connection.region or defaults.region
      local part = store.connection.part_size -- {text, bytes}: the text stays, as memory's
      if part then
        store.connection.part_size, store.connection.part_size_bytes = part.text, part.bytes
      end
    end
  end
  if m.framework and m.framework.command then
    -- FfDL ran the command as one line: a folded (>) block ends in a newline
    -- and keeps line breaks before more-indented lines; they become spaces
    m.framework.command = m.framework.command:gsub("%s+$", ""):gsub("\n%s*", " ")
  end
  if m.framework then resolve_framework(m.framework, ctx and ctx.frameworks, "framework", c) end
  if m.evaluation_metrics and m.evaluation_metrics.type == "file" then
    m.evaluation_metrics.type = "emetrics_file" -- FfDL's two names for one thing
  end

  local gpus = m.gpus or default(defaults, "gpus", "set gpus", c)
  local memory = m.memory or (defaults.memory and { text = defaults.memory, bytes = M.parse_size(defaults.memory) })
  if not memory then default(defaults, "memory", "set memory", c) end
  local labels = m.labels or {}
  local model = m.model
  if model and not model:match("^/") and ctx and ctx.file then
    -- relative to the manifest, so that it runs from any directory
    local dir = ctx.file:match("^(.*)/[^/]*$")
    if dir then model = dir .. "/" .. model end
  end
  local spec = {
    name = m.name, description = m.description, version = m.version,
    user = m.user, team = m.team or labels.team, priority = m.priority or defaults.priority or 0,
    labels = labels, env = m.env, args = m.args, model = model,
    framework = m.framework,
    learners = m.learners or default(defaults, "learners", "set learners", c),
    resources = {
      cpus = m.cpus or default(defaults, "cpus", "set cpus", c),
      gpus = gpus,
      gpu_type = m.gpu_type or ((gpus or 0) > 0 and defaults.gpu_type or nil),
      memory = memory and memory.text, memory_bytes = memory and memory.bytes,
      storage = m.storage and m.storage.text, storage_bytes = m.storage and m.storage.bytes,
    },
    data_stores = stores,
    evaluation_metrics = m.evaluation_metrics,
    retry = { max_attempts = m.max_attempts or defaults.max_attempts or 1 },
  }
  for _, d in ipairs(c.diags) do
    if not d.warning then return nil, c.diags end
  end
  return spec, c.diags
end

--- A deep copy, so that a hook cannot change what C keeps.
function M.copy(v, seen)
  if type(v) ~= "table" then return v end
  seen = seen or {}
  if seen[v] then return seen[v] end
  local out = setmetatable({}, getmetatable(v))
  seen[v] = out
  for k, item in pairs(v) do out[k] = M.copy(item, seen) end
  return out
end

local SHAPE = "validate() must return true, or nil and a list of {path=, message=}"

--- Appends the verdict of policies/validate.lua to LIST.
function M.merge_policy(list, ok, errs, call_error)
  local function add(path, message) list[#list + 1] = { path = path, message = message } end
  if call_error then
    add("(policy)", "validate() failed: " .. call_error)
  elseif ok == true then
    return
  elseif (ok == nil or ok == false) and type(errs) == "table" then
    for _, e in ipairs(errs) do
      if type(e) == "table" and type(e.message) == "string" then
        add(type(e.path) == "string" and e.path ~= "" and e.path or "(policy)", e.message)
      else
        add("(policy)", SHAPE .. "; an entry is " .. describe(e))
      end
    end
    if #errs == 0 then add("(policy)", "validate() rejected the spec without saying why") end
  else
    add("(policy)", SHAPE .. "; got " .. describe(ok))
  end
end

--- Fills line and col of each diagnostic from the position map. A path
--- that is not in the file (a missing field) points at its closest parent.
function M.locate(pos, list)
  pos = pos or {}
  for _, d in ipairs(list) do
    local path = d.at or d.path or ""
    local wanted = path
    local p = pos[path]
    while not p and path ~= "" do
      path = path:match("^(.*)[%.%[][^%.%[]*$") or ""
      p = pos[path]
    end
    if p then
      if d.at_key or path ~= wanted then
        d.line, d.col = p.kline or p.line, p.kcol or p.col
      else
        d.line, d.col = p.line, p.col
      end
    else
      d.line, d.col = 1, 1
    end
    d.at_key, d.at = nil, nil
  end
end

return M
