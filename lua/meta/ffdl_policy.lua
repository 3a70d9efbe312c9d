---@meta
--- ffdl_policy.lua: the types that policy hooks receive and return, for
--- editors (lua-language-server reads this through .luarc.json). It holds
--- declarations only: the runtime never loads lua/meta/, and nothing here
--- runs. The hooks and their files:
---
---   validate.validate(spec, ctx)         -> true | nil, ffdl.ValidationError[]
---   budget.admit(job, usage, ctx)        -> boolean, string?
---   scheduler.rank(job, ctx)             -> number
---   scheduler.place(job, cluster, ctx)   -> string[] | nil, string
---   scheduler.hold(job, cluster, ctx)    -> string[] | nil
---   retry.on_failure(job, failure, ctx)  -> ffdl.RetryDecision

-- ---------------------------------------------------------------------
-- Jobs
-- ---------------------------------------------------------------------

---@alias ffdl.DataStoreType "s3_datastore"|"mount_cos"|"mount_volume"|"local"

---@class ffdl.JobFramework
---@field name string       e.g. "pytorch", "tensorflow", "custom"
---@field version string    the version asked for (or frameworks.lua's default_version)
---@field image_tag string? overrides the version in the image name
---@field command string    the learner's command, on one line
---@field image string?     the image, from frameworks.lua's format and the version

---@class ffdl.Container
---@field container string  bucket or directory
---@field prefix string?

---@class ffdl.Connection
---@field auth_url string?
---@field user_name string?
---@field password string?
---@field region string?
---@field type string?      "host_mount" for mount_volume
---@field name string?
---@field path string?
---@field bucket string?
---@field checksum "crc32c"|"sha256"?  ffdl's extension: how S3 checks uploads (default crc32c)

---@class ffdl.DataStore
---@field id string
---@field type ffdl.DataStoreType
---@field training_data ffdl.Container?     where the training data is read from
---@field training_results ffdl.Container?  where the results are written
---@field connection ffdl.Connection?

---@class ffdl.EvaluationMetrics
---@field type "tensorboard"|"regex_extractor"|"emetrics_file"|"logger"|"none"
---@field in string?
---@field line_lookahead integer?
---@field eventTypes string[]?
---@field groups table<string, table>?

---@class ffdl.Resources
---@field cpus number         CPUs per learner
---@field gpus integer        GPUs per learner
---@field gpu_type string?    nil: any GPU type
---@field memory string?      memory per learner as written, e.g. "4GiB"
---@field memory_bytes integer?
---@field storage string?
---@field storage_bytes integer?

---@class ffdl.RetrySettings
---@field max_attempts integer  runs of the job before it fails for good (first run included)

--- A job spec after the built-in schema (lua/ffdl/manifest.lua) has
--- checked and normalized it, with defaults from policies/defaults.lua.
--- This is what validate() sees.
---@class ffdl.Spec
---@field name string
---@field description string?
---@field version string?
---@field framework ffdl.JobFramework
---@field learners integer
---@field resources ffdl.Resources
---@field data_stores ffdl.DataStore[]
---@field evaluation_metrics ffdl.EvaluationMetrics?
---@field retry ffdl.RetrySettings
---@field labels table<string, string>
---@field team string?        the team field, or labels.team
---@field user string?
---@field priority integer    higher is tried earlier (see scheduler.rank)
---@field env table<string, string>?
---@field args table<string, any>?
---@field model string?       directory of the model code

--- A job as admit, rank, place, hold and on_failure see it: the spec plus
--- what the runtime knows. The request of one learner is also flat here
--- (cpus, memory in bytes, gpus, gpu_type); the job needs it learners times.
---@class ffdl.Job: ffdl.Spec
---@field id string           "training-..."
---@field attempt integer     1 on the first run, 2 on the first retry, ...
---@field submitted number    seconds on the scheduler's clock; with priority, what rank() orders by
---@field cpus number         per learner
---@field memory integer      bytes per learner
---@field gpus integer        per learner
---@field gpu_type string?    nil: any GPU type

---@class ffdl.ValidationError
---@field path string     the field, e.g. "framework.version" or "labels.team"
---@field message string  what is wrong and what to do

-- ---------------------------------------------------------------------
-- The context every hook gets
-- ---------------------------------------------------------------------

---@class ffdl.Ctx
---@field now number                 seconds since the epoch (virtual in `ffdl policy simulate`)
---@field generation string?         the hash of the policy generation
---@field defaults ffdl.Defaults     policies/defaults.lua
---@field frameworks table<string, ffdl.Framework>  policies/frameworks.lua
---@field file string?               the manifest being validated, when there is one
---@field explanations string[]?     what this call has passed to explain() so far
---@field log fun(msg: string)|fun(self: ffdl.Ctx, msg: string)  a line in the server log
local Ctx = {}

--- Records reasoning in the job's decision log (`ffdl explain ID`).
---@param msg string
function Ctx:explain(msg) end

-- ---------------------------------------------------------------------
-- The cluster, as place() and hold() see it (a view backed by C)
-- ---------------------------------------------------------------------

--- One learner's request.
---@class ffdl.Request
---@field cpus number?
---@field memory integer?   bytes
---@field gpus integer?
---@field gpu_type string?  only matters when gpus > 0; nil: any type

--- What this placement already put on a node, by node name.
---@class ffdl.Taken
---@field cpus number?
---@field memory integer?
---@field gpus integer?

--- Options of cluster:candidates(). order "binpack": fewest free GPUs
--- first, then fewest free CPUs, then node order; "spread": most free GPUs
--- first, then most free CPUs, then node order; absent: node order. The
--- order counts what running jobs use, not `taken`. capacity: the fit is
--- judged by the node's whole capacity (less `taken`), ignoring what is in
--- use; free_* still show what is free now.
---@class ffdl.CandidateOptions
---@field limit integer?           at most this many nodes (0 or absent: all)
---@field order "binpack"|"spread"|nil
---@field capacity boolean?

--- A node, read-only. free_* are what is free now, less what `taken` names.
---@class ffdl.Node
---@field name string
---@field cpus number
---@field memory integer      bytes
---@field gpus integer
---@field gpu_type string?
---@field labels table<string, string>
---@field free_cpus number
---@field free_memory integer
---@field free_gpus integer

---@class ffdl.Cluster
local Cluster = {}

--- The nodes with room for REQ beyond TAKEN; the filtering runs in C.
---   for node, free_gpus, free_cpus in cluster:candidates(req, taken, {order = "binpack", limit = 4}) do ... end
--- Each step also gives the node's free_gpus and free_cpus (the same as
--- node.free_gpus and node.free_cpus, without a field read each).
--- Nodes held for a blocked job are left out.
---@param req ffdl.Request
---@param taken table<string, ffdl.Taken>?
---@param opts ffdl.CandidateOptions?
---@return fun(): ffdl.Node?, integer?, number?
function Cluster:candidates(req, taken, opts) end

--- Every node, in node order, held or not.
---@return fun(): ffdl.Node?
function Cluster:nodes() end

--- One line per node, for messages.
---@return string
function Cluster:describe() end

-- ---------------------------------------------------------------------
-- Usage, as admit() sees it
-- ---------------------------------------------------------------------

---@class ffdl.Holding
---@field gpus integer  GPUs held by running jobs (and jobs placed earlier in this cycle)
---@field jobs integer  running jobs

---@alias ffdl.UsageKind "team"|"user"

---@class ffdl.Usage
---@field cpus_total number
---@field cpus_used number
---@field gpus_total integer
---@field gpus_used integer
---@field memory_total integer
---@field memory_used integer
---@field by_team table<string, ffdl.Holding>
---@field by_user table<string, ffdl.Holding>
local Usage = {}

--- GPU-hours that a team or user used in the last WINDOW_S seconds,
--- running jobs counted up to now. The runtime keeps 31 days.
---@param kind ffdl.UsageKind
---@param name string
---@param window_s number
---@return number gpu_hours
function Usage:gpu_hours(kind, name, window_s) end

-- ---------------------------------------------------------------------
-- Failures and retries
-- ---------------------------------------------------------------------

---@alias ffdl.FailureKind "exit"|"signal"|"oom"|"node_lost"|"timeout"|"storage"

---@class ffdl.Failure
---@field kind ffdl.FailureKind
---@field exit_code integer   the learner's exit code (kind "exit")
---@field signal integer      the signal that killed it (kind "signal"), else 0
---@field learner integer     which learner failed first, from 1
---@field attempt integer     the attempt that failed, from 1
---@field log_tail string[]   its last log lines

---@alias ffdl.RetryAction "restart"|"resume"|"fail"

---@class ffdl.RetryDecision
---@field action ffdl.RetryAction  resume: keep $CHECKPOINT_DIR; restart: start from scratch
---@field delay number?            seconds before the next attempt
---@field reason string

-- ---------------------------------------------------------------------
-- Data files: policies/defaults.lua and policies/frameworks.lua
-- ---------------------------------------------------------------------

---@class ffdl.Defaults
---@field cpus number           CPUs per learner
---@field gpus integer          GPUs per learner
---@field gpu_type string?      used when gpus > 0 and the manifest names no type; nil: any
---@field memory string         memory per learner, with a unit
---@field learners integer
---@field region string         S3 region when a connection names none (FfDL: us-standard)
---@field max_attempts integer  runs of a job before it fails for good
---@field priority integer

--- How the local backend runs a framework.
---@class ffdl.FrameworkLocal
---@field interpreter string?     the Python for the command; relative paths are from the repo
---@field installed boolean?      false: not on this machine (it runs on Kubernetes)
---@field command_as_is boolean?  the command runs as written (custom)

---@class ffdl.Framework
---@field image string                format string of the image; %s is the version or image_tag
---@field versions "*"|string[]       "*": any version
---@field default_version string?     used when a manifest gives none
---@field ["local"] ffdl.FrameworkLocal

-- ---------------------------------------------------------------------
-- Policy tests (policies/tests/*.lua): the globals they see
-- ---------------------------------------------------------------------

--- The policy modules of the generation under test, by file name.
---@class ffdl.Policies
---@field validate ffdl.ValidatePolicy
---@field budget ffdl.BudgetPolicy
---@field scheduler ffdl.SchedulerPolicy
---@field retry ffdl.RetryPolicy
---@field defaults ffdl.Defaults
---@field frameworks table<string, ffdl.Framework>
---@field [string] table

--- The hooks of policies/scheduler.lua.
---@class ffdl.SchedulerPolicy
---@field config ffdl.SchedulerConfig
---@field rank fun(job: ffdl.Job, ctx: ffdl.Ctx): number
---@field order? fun(queue: ffdl.Job[], ctx: ffdl.Ctx): ffdl.Job[]
---@field place fun(job: ffdl.Job, cluster: ffdl.Cluster, ctx: ffdl.Ctx): string[]?, string?
---@field hold? fun(job: ffdl.Job, cluster: ffdl.Cluster, ctx: ffdl.Ctx): string[]?

--- lua/ffdl/testing.lua: assertions and fakes.
---@type ffdl.Testing
T = nil

---@type ffdl.Policies
policies = nil
